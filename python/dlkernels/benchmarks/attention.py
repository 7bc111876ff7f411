"""Benchmark cases A1–A5 (issue 4's canonical attention shapes), float32, peer torch SDPA on the CPU.

A4 (B1 H4 L=S=16384, forward only) is a memory check: bench/bench_attention_memory.py runs it
in a subprocess and reports the peak resident memory beyond inputs and outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlkernels as dk
from dlkernels.ops.attention import flops

from .case import Case, State


def _case(id: str, shape: str, B: int, H: int, L: int, S: int, E: int, causal: bool = False, padding: bool = False,
          backward: bool = True, quick: bool = False) -> Case:
    def setup() -> State:
        rng = np.random.default_rng(0)
        q = rng.standard_normal((B, H, L, E), dtype=np.float32)
        k = rng.standard_normal((B, H, S, E), dtype=np.float32)
        v = rng.standard_normal((B, H, S, E), dtype=np.float32)
        mask = None
        if padding:  # key padding: batch b keeps its first S - 37 * b keys
            mask = (np.arange(S)[None, :] < (S - 37 * np.arange(B))[:, None]).reshape(B, 1, 1, S)
        return {"q": q, "k": k, "v": v, "mask": mask, "dy": rng.standard_normal((B, H, L, E), dtype=np.float32)}

    def forward(s: State) -> Any:
        return dk.scaled_dot_product_attention(s["q"], s["k"], s["v"], s["mask"], is_causal=causal)

    def forward_backward(s: State) -> Any:
        _, saved = dk.scaled_dot_product_attention_forward(s["q"], s["k"], s["v"], s["mask"], is_causal=causal)
        return dk.scaled_dot_product_attention_backward(s["dy"], saved)

    def torch_peer(s: State):
        import torch
        import torch.nn.functional as F
        q, k, v, dy = (torch.from_numpy(s[n]) for n in ("q", "k", "v", "dy"))
        m = None if s["mask"] is None else torch.from_numpy(s["mask"])
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

        def fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)

        def fwdbwd():
            out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m, is_causal=causal)
            return torch.autograd.grad(out, (qg, kg, vg), dy)

        return fwd, (fwdbwd if backward else None)

    return Case(id, "scaled_dot_product_attention", shape, setup, forward, forward_backward if backward else None,
                flops=lambda s: flops(B * H, L, S, E, E, causal),
                backward_flops=lambda s: 2.5 * flops(B * H, L, S, E, E, causal),
                peers={"torch": torch_peer}, quick=quick, backends=("cpp",))


CASES = [
    _case("A1", "B8 H8 L=S=1024 E64", 8, 8, 1024, 1024, 64),
    _case("A2", "B1 H8 L=S=4096 E64", 1, 8, 4096, 4096, 64),
    _case("A2c", "B1 H8 L=S=4096 E64, causal", 1, 8, 4096, 4096, 64, causal=True),
    _case("A3", "B4 H12 L=S=512 E64, key padding mask", 4, 12, 512, 512, 64, padding=True, quick=True),
    _case("A5", "decoding B16 H32 L=1 S=8192 E128", 16, 32, 1, 8192, 128, backward=False),
]
