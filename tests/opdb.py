"""The op database: one OpInfo per op, read by the generic tests in test_ops.py.

Each entry gives sample inputs in awkward sizes, error inputs with the exception and message
they must raise, tolerances per dtype, and how to call the op's public forward/backward and
its PyTorch counterpart. Op-specific tests live in tests/test_<op>.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dlkernels as dk


@dataclass
class Sample:
    args: tuple  # positional arguments of the public forward; float arrays are float64
    kwargs: dict = field(default_factory=dict)
    desc: str = ""


@dataclass
class ErrorInput:
    args: tuple
    kwargs: dict
    exc: type
    match: str  # a regex the message must match; it names the argument


@dataclass
class OpInfo:
    name: str  # the registry's op name
    forward: Callable  # public forward returning (output(s), saved)
    backward: Callable  # public backward(grad(s), saved) -> grads of the differentiable args
    samples: Callable[[np.random.Generator], list[Sample]]
    error_inputs: Callable[[np.random.Generator], list[ErrorInput]]
    diff_args: tuple[int, ...]  # positions of the differentiable arrays in args
    torch_forward: Callable | None = None  # (*torch args, **kwargs) -> output tensor(s)
    tol: dict = field(default_factory=lambda: {"float64": 1e-10, "float32": 2e-5})
    outputs: Callable = lambda out: [out]  # forward's output(s) -> list of arrays
    grads_to_backward: Callable = lambda gs: gs[0]  # list of output grads -> backward's first argument

    def diff_arrays(self, s: Sample) -> list:
        return [s.args[i] for i in self.diff_args]


def cast(sample: Sample, dtype: str) -> Sample:
    """The sample with every float array in dtype."""
    def c(a: Any) -> Any:
        return a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
    return Sample(tuple(c(a) for a in sample.args), {k: c(v) for k, v in sample.kwargs.items()}, sample.desc)


# ---- conv -----------------------------------------------------------------------------------

def _conv_samples(nd: int) -> Callable[[np.random.Generator], list[Sample]]:
    def make(rng: np.random.Generator) -> list[Sample]:
        def case(N, C, K, size, k, desc, bias=True, **kw):
            g = kw.get("groups", 1)
            sp = (size,) * nd if isinstance(size, int) else size
            kk = (k,) * nd if isinstance(k, int) else k
            x = rng.standard_normal((N, C, *sp))
            w = rng.standard_normal((K, C // g, *kk)) / np.sqrt(C // g * np.prod(kk))
            b = rng.standard_normal(K) if bias else None
            return Sample((x, w, b), kw, desc)
        two = nd == 2
        return [
            case(2, 3, 4, 7, 3, "basic, padding 1", padding=1),
            case(1, 1, 1, 1, 1, "all ones"),
            case(3, 7, 5, 9 if two else 97, 3, "stride larger than kernel", stride=4, bias=False),
            case(2, 4, 6, (7, 9) if two else 13, 3, "dilation with padding", dilation=2, padding=2),
            case(2, 4, 6, 8, 4, "'same' with an even kernel (asymmetric padding)", padding="same", dilation=1),
            case(2, 4, 6, 11, 3, "'same' dilated", padding="same", dilation=3),
            case(1, 6, 4, 6, 3, "'valid', groups 2", padding="valid", groups=2),
            case(2, 8, 8, 10, 3, "depthwise", padding=1, groups=8),
            case(2, 4, 8, 9, 3, "depthwise, multiplier 2, stride 2", padding=1, groups=4, stride=2),
            case(0, 3, 4, 6, 3, "zero-size batch", padding=1),
            case(2, 17, 19, 97 if not two else 23, 5 if two else 7, "odd channels, wide", padding=2),
            case(1, 3, 2, 8, 2, "stride 2 even kernel", stride=2, padding=1),
            Sample((rng.standard_normal((3, 8) if not two else (3, 6, 6)),
                    rng.standard_normal((4, 3, 3) if not two else (4, 3, 3, 3)), None), {}, "unbatched input"),
        ]
    return make


def _conv_errors(nd: int) -> Callable[[np.random.Generator], list[ErrorInput]]:
    def make(rng: np.random.Generator) -> list[ErrorInput]:
        sp = (8,) * nd
        x = rng.standard_normal((2, 4, *sp)).astype(np.float32)
        w = rng.standard_normal((6, 4, *(3,) * nd)).astype(np.float32)
        E = ErrorInput
        return [
            E((x[0, 0], w), {}, ValueError, "input: expected a"),  # wrong rank
            E((x, w[:, :3]), {}, ValueError, "weight: expected 4 input channels per group"),  # channel mismatch
            E((x, w), {"groups": 3}, ValueError, "groups: 3 does not divide"),
            E((x, w), {"stride": 0}, ValueError, "stride: expected an int >= 1"),
            E((x, w), {"padding": -1}, ValueError, "padding: expected an int >= 0"),
            E((x, w), {"padding": "same", "stride": 2}, ValueError, "padding: 'same' is not supported with stride"),
            E((x, w), {"padding": "full"}, ValueError, "padding: expected an int, a tuple"),
            E((x, w), {"dilation": 0}, ValueError, "dilation: expected an int >= 1"),
            E((x.astype(np.int32), w), {}, TypeError, "input: expected dtype float32 or float64"),
            E((x, w.astype(np.float64)), {}, TypeError, "weight: expected dtype float32"),
            E((x, w, np.zeros(5, np.float32)), {}, ValueError, r"bias: expected shape \(6,\)"),
            E((x, w), {"groups": 1.5}, TypeError, "groups: expected an int"),
            E((x, w), {"stride": (1, 1, 1)}, ValueError, "stride: expected an int or"),
            E((x[..., :2], w), {}, ValueError, "input: padded size"),
            E(([[1.0]], w), {}, TypeError, "input: expected an array"),
        ]
    return make


def _torch_conv(nd: int) -> Callable:
    def f(x, w, b, **kw):
        import torch.nn.functional as F
        return (F.conv2d if nd == 2 else F.conv1d)(x, w, b, **kw)
    return f


# ---- matmul ---------------------------------------------------------------------------------

def _matmul_samples(rng: np.random.Generator) -> list[Sample]:
    r = rng.standard_normal
    return [
        Sample((r((7, 5)), r((5, 9))), {}, "2-D odd sizes"),
        Sample((r((1, 1)), r((1, 1))), {}, "1x1"),
        Sample((r((3, 33, 17)), r((3, 17, 65))), {}, "batched"),
        Sample((r((2, 1, 4, 6)), r((3, 6, 5))), {}, "broadcast batch dims"),
        Sample((r(6), r((6, 4))), {}, "vector @ matrix"),
        Sample((r((4, 6)), r(6)), {}, "matrix @ vector"),
        Sample((r((0, 6)), r((6, 3))), {}, "zero rows"),
        Sample((r((97, 130)), r((130, 70))), {}, "larger than one tile"),
    ]


def _matmul_errors(rng: np.random.Generator) -> list[ErrorInput]:
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 2))
    return [
        ErrorInput((a, b), {}, ValueError, "b: expected 4 rows"),
        ErrorInput((a.astype(np.int64), b), {}, TypeError, "a: expected dtype"),
        ErrorInput((a, b.astype(np.float32)), {}, TypeError, "b: expected dtype float64"),
        ErrorInput((np.array(1.0), b), {}, ValueError, "a, b: matmul needs arrays"),
        ErrorInput((1.0, b), {}, TypeError, "a: expected an array"),
        ErrorInput((rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4, 5))), {}, ValueError, "b: batch dims"),
    ]


def _torch_matmul(a, b):
    import torch
    return torch.matmul(a, b)


# ---- lstm -----------------------------------------------------------------------------------

def _lstm_samples(rng: np.random.Generator) -> list[Sample]:
    def case(T, B, I, H, desc, P=None, bias=True, state=True, batch_first=False, lengths=None):
        Pn = H if P is None else P
        k = 1 / np.sqrt(H)
        w = lambda *shape: rng.uniform(-k, k, shape) * 2  # noqa: E731  (a bit wider than torch's init)
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
        hx = rng.standard_normal((B, Pn)) if state else None
        cx = rng.standard_normal((B, H)) if state else None
        args = (x, hx, cx, w(4 * H, I), w(4 * H, Pn), w(4 * H) if bias else None, w(4 * H) if bias else None,
                w(Pn, H) if P is not None else None)
        kw = {"batch_first": batch_first}
        if lengths is not None:
            kw["lengths"] = np.array(lengths)
        return Sample(args, kw, desc)
    return [
        case(5, 3, 4, 7, "basic H 7"),
        case(1, 2, 3, 1, "T 1, H 1"),
        case(3, 2, 5, 97, "H 97"),
        case(5, 4, 3, 7, "lengths mixed order with 0 and T, batch_first", batch_first=True, lengths=[3, 0, 5, 1]),
        case(4, 3, 2, 7, "proj_size 3, lengths, no bias", P=3, bias=False, lengths=[2, 4, 0]),
        case(6, 2, 3, 5, "proj_size 2", P=2),
        case(4, 3, 4, 6, "no initial state", state=False),
        case(3, 1, 17, 33, "batch 1, odd sizes", lengths=[3]),
    ]


def _lstm_errors(rng: np.random.Generator) -> list[ErrorInput]:
    T, B, I, H = 4, 3, 5, 6
    x = rng.standard_normal((T, B, I))
    hx, cx = np.zeros((B, H)), np.zeros((B, H))
    wi, wh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    E = ErrorInput
    return [
        E((x, hx, cx, wi[:-1], wh), {}, ValueError, r"w_ih: expected shape \(24, 5\)"),
        E((x, hx, cx, wi, wh[:-2]), {}, ValueError, r"w_hh: expected shape \(24, 6\)"),
        E((x, hx[:2], cx, wi, wh), {}, ValueError, r"hx: expected shape \(3, 6\)"),
        E((x, hx, cx[:, :2], wi, wh), {}, ValueError, r"cx: expected shape \(3, 6\)"),
        E((x, hx, cx, wi, wh), {"lengths": np.array([1, 5, 2])}, ValueError, r"lengths: expected every length in \[0, 4\]"),
        E((x, hx, cx, wi, wh), {"lengths": np.array([1, -1, 2])}, ValueError, "lengths: expected every length"),
        E((x, hx, cx, wi, wh), {"lengths": np.array([1.0, 2.0, 2.0])}, TypeError, "lengths: expected an integer"),
        E((x, hx, cx, wi, wh), {"lengths": np.array([1, 2])}, ValueError, r"lengths: expected shape \(3,\)"),
        E((x.astype(np.int64), hx, cx, wi, wh), {}, TypeError, "input: expected dtype float32 or float64"),
        E((x, hx, cx, wi.astype(np.float32), wh), {}, TypeError, "w_ih: expected dtype float64"),
        E((x[0], hx, cx, wi, wh), {}, ValueError, "input: expected a 3-D array"),
        E((x, hx, cx, wi, wh, np.zeros(5)), {}, ValueError, r"b_ih: expected shape \(24,\)"),
        E((x, hx, cx, wi, wh, None, None, np.zeros((2, 5))), {}, ValueError, r"w_hh: expected shape \(20, 2\)"),
    ]


def _lstm_cell_samples(rng: np.random.Generator) -> list[Sample]:
    def case(B, I, H, desc, bias=True, unbatched=False):
        w = lambda *shape: rng.uniform(-1, 1, shape) / np.sqrt(H)  # noqa: E731
        lead = () if unbatched else (B,)
        return Sample((rng.standard_normal(lead + (I,)), rng.standard_normal(lead + (H,)),
                       rng.standard_normal(lead + (H,)), w(4 * H, I), w(4 * H, H), w(4 * H) if bias else None,
                       w(4 * H) if bias else None), {}, desc)
    return [
        case(3, 4, 7, "basic H 7"),
        case(2, 3, 1, "H 1"),
        case(2, 5, 97, "H 97"),
        case(1, 2, 5, "no bias", bias=False),
        case(1, 6, 4, "unbatched", unbatched=True),
    ]


def _lstm_cell_errors(rng: np.random.Generator) -> list[ErrorInput]:
    B, I, H = 3, 5, 6
    x, hx, cx = rng.standard_normal((B, I)), np.zeros((B, H)), np.zeros((B, H))
    wi, wh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    E = ErrorInput
    return [
        E((x, hx, cx, wi[:-1], wh), {}, ValueError, r"w_ih: expected shape \(24, 5\)"),
        E((x, hx, cx, wi, wh[:, :-1]), {}, ValueError, r"w_hh: expected shape \(20, 5\)"),
        E((x, hx[:2], cx, wi, wh), {}, ValueError, r"hx: expected shape \(3, 6\)"),
        E((x.astype(np.int32), hx, cx, wi, wh), {}, TypeError, "input: expected dtype float32 or float64"),
        E((x[None], hx, cx, wi, wh), {}, ValueError, "input: expected a 1-D or 2-D array"),
    ]


def _torch_lstm(x, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_first=False, lengths=None):
    """torch.nn.LSTM's kernel (torch.lstm), run sequence by sequence when lengths are given."""
    import torch
    xt = x.transpose(0, 1) if batch_first else x
    T, B, _ = xt.shape
    H = w_hh.shape[0] // 4
    P = w_hh.shape[1]
    has_b = b_ih is not None or b_hh is not None
    zero = xt.new_zeros(4 * H)
    params = [w_ih, w_hh] + ([b_ih if b_ih is not None else zero, b_hh if b_hh is not None else zero] if has_b else [])
    params += [w_hr] if w_hr is not None else []
    hx = hx if hx is not None else xt.new_zeros(B, P)
    cx = cx if cx is not None else xt.new_zeros(B, H)
    L = [T] * B if lengths is None else [int(v) for v in lengths]
    outs, hs, cs = [], [], []
    for b in range(B):
        if L[b] == 0:
            outs.append(xt.new_zeros(T, 1, P))
            hs.append(hx[b:b + 1])
            cs.append(cx[b:b + 1])
            continue
        o, h, c = torch.lstm(xt[:L[b], b:b + 1], (hx[None, b:b + 1], cx[None, b:b + 1]), params, has_b, 1, 0.0,
                             False, False, False)
        outs.append(torch.cat([o, o.new_zeros(T - L[b], 1, P)]))
        hs.append(h[0])
        cs.append(c[0])
    out = torch.cat(outs, dim=1)
    return (out.transpose(0, 1) if batch_first else out), torch.cat(hs), torch.cat(cs)


def _torch_lstm_cell(x, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    import torch
    un = x.dim() == 1
    if un:
        x, hx, cx = x[None], hx[None], cx[None]
    h, c = torch._VF.lstm_cell(x, (hx, cx), w_ih, w_hh, b_ih, b_hh)
    return (h[0], c[0]) if un else (h, c)


OPS = [
    OpInfo("matmul", dk.matmul_forward, dk.matmul_backward, _matmul_samples, _matmul_errors, (0, 1),
           torch_forward=_torch_matmul),
    OpInfo("conv2d", dk.conv2d_forward, dk.conv2d_backward, _conv_samples(2), _conv_errors(2), (0, 1, 2),
           torch_forward=_torch_conv(2)),
    OpInfo("conv2d", dk.conv1d_forward, dk.conv1d_backward, _conv_samples(1), _conv_errors(1), (0, 1, 2),
           torch_forward=_torch_conv(1)),
    OpInfo("lstm", dk.lstm_forward, dk.lstm_backward, _lstm_samples, _lstm_errors, (0, 1, 2, 3, 4, 5, 6, 7),
           torch_forward=_torch_lstm, tol={"float64": 1e-10, "float32": 5e-5},
           outputs=lambda out: [out[0], *out[1]], grads_to_backward=tuple),
    OpInfo("lstm_cell", dk.lstm_cell_forward, dk.lstm_cell_backward, _lstm_cell_samples, _lstm_cell_errors,
           (0, 1, 2, 3, 4, 5, 6), torch_forward=_torch_lstm_cell, tol={"float64": 1e-10, "float32": 5e-5},
           outputs=list, grads_to_backward=tuple),
]
OPS_BY_ID = {f"{op.forward.__name__.removesuffix('_forward')}": op for op in OPS}
