"""Benchmark cases L1–L4 (issue 3), float32: the lstm op against torch.nn.LSTM, and one
lstm_cell step against torch.nn.LSTMCell, in the same process at the same threads.

FLOPs: 8·T·B·H·(I + H) forward (the gate products; the elementwise work is not counted);
backward counted as twice that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlkernels as dk
from dlkernels.ops.lstm import flops

from .case import Case, State


def _weights(rng: np.random.Generator, I: int, H: int) -> dict[str, np.ndarray]:
    k = 1 / np.sqrt(H)
    u = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731 (torch's init)
    return {"w_ih": u(4 * H, I), "w_hh": u(4 * H, H), "b_ih": u(4 * H), "b_hh": u(4 * H)}


def _seq_case(id: str, T: int, B: int, I: int, H: int, quick: bool = False) -> Case:
    def setup() -> State:
        rng = np.random.default_rng(0)
        s: State = _weights(rng, I, H)
        s["x"] = rng.standard_normal((T, B, I), dtype=np.float32)
        s["h0"] = rng.standard_normal((B, H), dtype=np.float32)
        s["c0"] = rng.standard_normal((B, H), dtype=np.float32)
        s["dy"] = rng.standard_normal((T, B, H), dtype=np.float32)
        return s

    def args(s: State) -> tuple:
        return s["x"], s["h0"], s["c0"], s["w_ih"], s["w_hh"], s["b_ih"], s["b_hh"]

    def forward(s: State) -> Any:
        return dk.lstm(*args(s))

    def forward_backward(s: State) -> Any:
        _, saved = dk.lstm_forward(*args(s))
        return dk.lstm_backward((s["dy"], None, None), saved)

    def torch_peer(s: State):
        import torch
        m = torch.nn.LSTM(I, H)
        with torch.no_grad():
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                getattr(m, f"{'weight' if name[0] == 'w' else 'bias'}_{name[2:]}_l0").copy_(torch.from_numpy(s[name]))
        x, h0, c0, dy = (torch.from_numpy(s[n]) for n in ("x", "h0", "c0", "dy"))
        xg, h0g, c0g = (t.clone().requires_grad_() for t in (x, h0, c0))
        params = list(m.parameters())

        def fwd():
            with torch.no_grad():
                return m(x, (h0[None], c0[None]))

        def fwdbwd():
            out, _ = m(xg, (h0g[None], c0g[None]))
            return torch.autograd.grad(out, [xg, h0g, c0g, *params], dy)

        return fwd, fwdbwd

    return Case(id, "lstm", f"T{T} B{B} I{I} H{H}", setup, forward, forward_backward,
                flops=lambda s: flops(T, B, I, H), peers={"torch": torch_peer}, quick=quick)


def _cell_case(id: str, B: int, I: int, H: int, quick: bool = False) -> Case:
    def setup() -> State:
        rng = np.random.default_rng(0)
        s: State = _weights(rng, I, H)
        s["x"] = rng.standard_normal((B, I), dtype=np.float32)
        s["h0"] = rng.standard_normal((B, H), dtype=np.float32)
        s["c0"] = rng.standard_normal((B, H), dtype=np.float32)
        s["dh"] = rng.standard_normal((B, H), dtype=np.float32)
        s["dc"] = rng.standard_normal((B, H), dtype=np.float32)
        return s

    def args(s: State) -> tuple:
        return s["x"], s["h0"], s["c0"], s["w_ih"], s["w_hh"], s["b_ih"], s["b_hh"]

    def forward(s: State) -> Any:
        return dk.lstm_cell(*args(s))

    def forward_backward(s: State) -> Any:
        _, saved = dk.lstm_cell_forward(*args(s))
        return dk.lstm_cell_backward((s["dh"], s["dc"]), saved)

    def torch_peer(s: State):
        import torch
        m = torch.nn.LSTMCell(I, H)
        with torch.no_grad():
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                getattr(m, f"{'weight' if name[0] == 'w' else 'bias'}_{name[2:]}").copy_(torch.from_numpy(s[name]))
        x, h0, c0, dh, dc = (torch.from_numpy(s[n]) for n in ("x", "h0", "c0", "dh", "dc"))
        xg, h0g, c0g = (t.clone().requires_grad_() for t in (x, h0, c0))
        params = list(m.parameters())

        def fwd():
            with torch.no_grad():
                return m(x, (h0, c0))

        def fwdbwd():
            h, c = m(xg, (h0g, c0g))
            return torch.autograd.grad((h, c), [xg, h0g, c0g, *params], (dh, dc))

        return fwd, fwdbwd

    return Case(id, "lstm_cell", f"cell B{B} I{I} H{H}", setup, forward, forward_backward,
                flops=lambda s: flops(1, B, I, H), peers={"torch": torch_peer}, quick=quick)


CASES = [
    _seq_case("L1", 100, 64, 64, 256, quick=True),
    _seq_case("L2", 512, 8, 128, 512),
    _cell_case("L3", 64, 64, 256, quick=True),
    _seq_case("L4", 50, 1, 32, 128, quick=True),
]
