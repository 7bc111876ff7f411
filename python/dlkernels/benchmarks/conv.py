"""Benchmark cases C1–C5 (the foundation issue's canonical conv shapes), float32."""

from __future__ import annotations

from typing import Any

import numpy as np

import dlkernels as dk
from dlkernels.ops.conv import flops

from .case import Case, State


def _case(id: str, shape: str, N: int, C: int, K: int, size: tuple[int, ...], k: int, quick: bool = False,
          skip: dict[str, tuple[str, ...]] | None = None, **kw: Any) -> Case:
    nd = len(size)
    fwd_fn = dk.conv2d_forward if nd == 2 else dk.conv1d_forward

    def setup() -> State:
        rng = np.random.default_rng(0)
        g = kw.get("groups", 1)
        x = rng.standard_normal((N, C, *size), dtype=np.float32)
        w = (rng.standard_normal((K, C // g, *(k,) * nd)) / np.sqrt(C // g * k**nd)).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        y, saved = fwd_fn(x, w, b, **kw)
        return {"x": x, "w": w, "b": b, "dy": rng.standard_normal(y.shape, dtype=np.float32), "saved": saved}

    def forward(s: State) -> Any:
        return fwd_fn(s["x"], s["w"], s["b"], **kw)[0]

    def forward_backward(s: State) -> Any:
        _, saved = fwd_fn(s["x"], s["w"], s["b"], **kw)
        return dk.conv2d_backward(s["dy"], saved)

    def torch_peer(s: State):
        import torch
        import torch.nn.functional as F
        f = F.conv2d if nd == 2 else F.conv1d
        x, w, b, dy = (torch.from_numpy(s[n]) for n in ("x", "w", "b", "dy"))
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

        def fwd():
            with torch.no_grad():
                return f(x, w, b, **kw)

        def fwdbwd():
            return torch.autograd.grad(f(xg, wg, bg, **kw), (xg, wg, bg), dy)

        return fwd, fwdbwd

    return Case(id, "conv2d", shape, setup, forward, forward_backward,
                flops=lambda s: flops(s["saved"].input.shape, s["saved"].weight.shape, s["saved"].params),
                peers={"torch": torch_peer}, quick=quick, skip=skip or {})


# numba/direct, the ladder's first rung (a plain loop nest, ~5 GFLOP/s), is timed on C1, C4 and
# C5; on C2 and C3 one forward call takes 0.7-1.5 s and a forward+backward 2-4 s, which cost 25 s
# of the default run for the figure C5 already gives.
_SLOW = {"numba": ("direct",)}

CASES = [
    _case("C1", "N64 C1 32x32, K32 5x5", 64, 1, 32, (32, 32), 5, quick=True),
    _case("C2", "N32 C64 56x56, K64 3x3, pad 1", 32, 64, 64, (56, 56), 3, padding=1, skip=_SLOW),
    _case("C3", "N16 C128 28x28, K128 3x3, pad 1", 16, 128, 128, (28, 28), 3, quick=True, padding=1, skip=_SLOW),
    _case("C4", "depthwise N32 C256 28x28, 3x3, pad 1", 32, 256, 256, (28, 28), 3, quick=True, padding=1, groups=256),
    _case("C5", "conv1d N32 C64 L1024, K64 k7, pad 3", 32, 64, 64, (1024,), 7, padding=3),
]
