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


def _random(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 numbers of mean 0 and variance 1, uniform: 5x faster to draw than normals, which
    matters for A5's 4 GiB of keys and values (the draw had taken 17 s of the default run)."""
    x = rng.random(shape, dtype=np.float32)
    x -= 0.5
    x *= np.float32(np.sqrt(12))
    return x


def _case(id: str, shape: str, B: int, H: int, L: int, S: int, E: int, causal: bool = False, padding: bool = False,
          backward: bool = True, quick: bool = False, oracle: str = "reference") -> Case:
    def setup() -> State:
        rng = np.random.default_rng(0)
        q, k, v = _random(rng, (B, H, L, E)), _random(rng, (B, H, S, E)), _random(rng, (B, H, S, E))
        mask = None
        if padding:  # key padding: batch b keeps its first S - 37 * b keys
            mask = (np.arange(S)[None, :] < (S - 37 * np.arange(B))[:, None]).reshape(B, 1, 1, S)
        return {"q": q, "k": k, "v": v, "mask": mask, "dy": _random(rng, (B, H, L, E))}

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
        if backward:  # (A5's keys and values alone are 4 GiB: no copies it does not use)
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
                peers={"torch": torch_peer}, quick=quick, backends=("cpp",), oracle=oracle)


CASES = [
    _case("A1", "B8 H8 L=S=1024 E64", 8, 8, 1024, 1024, 64),
    _case("A2", "B1 H8 L=S=4096 E64", 1, 8, 4096, 4096, 64),
    _case("A2c", "B1 H8 L=S=4096 E64, causal", 1, 8, 4096, 4096, 64, causal=True),
    _case("A3", "B4 H12 L=S=512 E64, key padding mask", 4, 12, 512, 512, 64, padding=True, quick=True),
    # A5 is validated against torch's SDPA where torch is installed: the reference's gather of the
    # keys and values for each output (k[kv_index]) would copy their 4 GiB once more.
    _case("A5", "decoding B16 H32 L=1 S=8192 E128", 16, 32, 1, 8192, 128, backward=False, oracle="torch"),
]
