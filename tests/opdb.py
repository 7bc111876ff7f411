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
            case(2, 3, 3, (5, 41) if two else 83, 3, "depthwise, dilated, rows of several vectors", padding=2,
                 dilation=2, groups=3),
            case(2, 1, 9, 11, 5, "one input channel, 9 outputs (blocks of four channels)", padding=2),
            case(2, 2, 10, 7, 3, "depthwise, multiplier 5", padding=1, groups=2),
            case(0, 3, 4, 6, 3, "zero-size batch", padding=1),
            case(2, 17, 19, 97 if not two else 23, 5 if two else 7, "odd channels, wide", padding=2),
            case(1, 3, 2, 8, 2, "stride 2 even kernel", stride=2, padding=1),
            case(3, 1, 9, (13, 37) if two else 97, 5, "one input channel, K past a block, rows past a vector"),
            case(2, 2, 3, (6, 1) if two else 1, (3, 1) if two else 1, "two channels, width 1"),
            case(2, 1, 4, (9, 7) if two else 7, 3, "one channel, few outputs, padding", padding=2),
            Sample((rng.standard_normal((3, 8) if not two else (3, 6, 6)),
                    rng.standard_normal((4, 3, 3) if not two else (4, 3, 3, 3)), None), {}, "unbatched input"),
        ] + ([  # 3x3, stride 1: what cpp/winograd takes (2x2 output tiles, ragged at odd sizes)
            case(1, 1, 7, (7, 97), 3, "3x3 stride 1, one input channel, width 97", padding=1),
            case(2, 7, 1, (9, 7), 3, "3x3 stride 1, one output channel, padding 0"),
            case(3, 5, 6, (1, 7), 3, "3x3 stride 1, one input row", padding=1),
            case(2, 7, 7, (6, 5), 3, "3x3 stride 1, padding 2", padding=2),
            case(1, 16, 20, (13, 27), 3, "3x3 stride 1, 16+ channels, odd sizes (winograd preferred)",
                 padding=1),
        ] if two else [])
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
        # T*B >= 8 (I + P): the C++ backward's dW_ih and dW_hh as one gemm over [X H_prev]
        case(16, 5, 3, 6, "many rows: one weight-gradient gemm"),
        case(12, 6, 2, 5, "many rows, proj_size 3, lengths", P=3, lengths=[12, 0, 7, 12, 3, 9]),
        case(1, 6, 4, 9, "T 1, batch 6, proj_size 5 (one step: W_hh and W_hr read in place)", P=5),
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
        E((x, hx, cx, wi, wh), {"lengths": np.array([1, 5, 2])}, ValueError,
          r"lengths: expected every length in \[0, 4\]"),
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
        case(9, 5, 33, "batch 9 (B > 4: the C++ gemm path, W_hh read in place for one step)"),
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


# ---- graph: aggregate, scatter, sddmm, edge_softmax ------------------------------------------

def _graphs(rng: np.random.Generator) -> list[tuple[Any, str]]:
    """Small graphs with the awkward cases: (Graph, description)."""
    def g(src, dst, V, dtype=np.int64):
        return dk.Graph(np.array([src, dst], dtype=dtype).reshape(2, -1), num_nodes=V)
    hub_dst = np.where(rng.random(60) < 0.75, 0, rng.integers(0, 30, 60))
    rand_src, rand_dst = rng.integers(0, 13, 40), rng.integers(0, 13, 40)
    indptr = np.array([0, 2, 2, 5, 6], np.int64)
    return [
        (g([], [], 4), "empty graph"),
        (g([0, 1, 1, 2, 4, 5, 3], [1, 3, 3, 2, 0, 0, 5], 7), "self-loop, duplicate edge, nodes without edges"),
        (g(rng.integers(0, 30, 60), hub_dst, 30, np.int32), "a hub with most of the edges, int32"),
        (g(rand_src, rand_dst, 13, np.int32), "random, unsorted, int32"),
        (g(np.sort(rand_src), np.sort(rand_dst), 13), "edges already grouped by target"),
        (dk.Graph.from_csr(indptr, np.array([3, 1, 0, 2, 2, 1], np.int32), 4), "from_csr"),
    ]


def _aggregate_samples(rng: np.random.Generator) -> list[Sample]:
    out = []
    for i, (graph, desc) in enumerate(_graphs(rng)):
        for j, reduce in enumerate(("sum", "mean", "max", "min")):
            F = (1, 3, 97)[(i + j) % 3]
            x = rng.standard_normal((graph.num_nodes, F))
            w = rng.standard_normal(graph.num_edges) if (i + j) % 2 else None
            weighted = "weighted" if w is not None else "unweighted"
            out.append(Sample((graph, x, reduce, w), {}, f"{desc}, {reduce}, F={F}, {weighted}"))
    graph, desc = _graphs(rng)[1]
    out.append(Sample((graph, rng.standard_normal((7, 2, 3)), "mean", None), {}, f"{desc}, x (V, 2, 3)"))
    return out


def _aggregate_errors(rng: np.random.Generator) -> list[ErrorInput]:
    graph = dk.Graph(np.array([[0, 1, 2], [1, 2, 0]]), num_nodes=4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = np.ones(3, np.float32)
    E = ErrorInput
    return [
        E((graph, x[:3]), {}, ValueError, "x: expected 4 rows"),
        E((graph, x, "sum", w[:2]), {}, ValueError, r"edge_weight: expected shape \(3,\)"),
        E((graph, x, "sum", w.astype(np.float64)), {}, TypeError, "edge_weight: expected dtype float32"),
        E((graph, x.astype(np.int32)), {}, TypeError, "x: expected dtype float32 or float64"),
        E((graph, x, "prod"), {}, ValueError, "reduce: expected one of"),
        E((np.array([[0, 1], [1, 0]]), x), {}, TypeError, "graph: expected a dlkernels.Graph"),
        E((graph, [[1.0]]), {}, TypeError, "x: expected an array"),
    ]


def _torch_aggregate(graph, x, reduce, w):
    import torch
    src, dst = (torch.from_numpy(a.astype(np.int64)) for a in graph.edge_index)
    msg = x[src] if w is None else x[src] * w[:, None].reshape((-1,) + (1,) * (x.dim() - 1))
    out = x.new_zeros((graph.num_nodes,) + tuple(x.shape[1:]))
    if reduce in ("sum", "mean"):  # PyG's default path: index_add_ / scatter_reduce
        out = out.index_add(0, dst, msg)
        if reduce == "mean":
            deg = torch.bincount(dst, minlength=graph.num_nodes).clamp(min=1).to(x.dtype)
            out = out / deg.reshape((-1,) + (1,) * (x.dim() - 1))
        return out
    idx = dst.reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(msg)
    return out.scatter_reduce(0, idx, msg, reduce="a" + reduce, include_self=False)


def _scatter_samples(rng: np.random.Generator) -> list[Sample]:
    r = rng.standard_normal
    out = []
    for reduce in ("sum", "mean", "max", "min"):
        out += [
            Sample((r(9), rng.integers(0, 4, 9)), {"reduce": reduce}, f"1-D, {reduce}"),
            Sample((r((11, 3)), rng.integers(0, 5, 11).astype(np.int32)), {"dim_size": 8, "reduce": reduce},
                   f"2-D, int32, dim_size past the last index (empty groups), {reduce}"),
            Sample((r((2, 10, 97)), rng.integers(0, 3, 10)), {"dim": 1, "reduce": reduce},
                   f"3-D, dim 1, F 97, {reduce}"),
            Sample((r((4, 6)), np.zeros(6, np.int64)), {"dim": -1, "reduce": reduce}, f"dim -1, one group, {reduce}"),
        ]
    out.append(Sample((r((0, 3)), np.zeros(0, np.int64)), {"dim_size": 2}, "empty src"))
    return out


def _scatter_errors(rng: np.random.Generator) -> list[ErrorInput]:
    src = rng.standard_normal((5, 3)).astype(np.float32)
    idx = np.array([0, 1, 9, 1, 0])
    E = ErrorInput
    return [
        E((src, idx), {"dim_size": 4}, IndexError, "index: entry 2 is 9, out of range for dim_size=4"),
        E((src, np.array([0, 1, -1, 1, 0])), {}, IndexError, "index: entry 2 is negative"),
        E((src, idx.astype(np.float32)), {}, TypeError, "index: expected an integer index array"),
        E((src, idx[:4]), {}, ValueError, r"index: expected 5 entries"),
        E((src, idx.reshape(5, 1)), {}, ValueError, "index: expected a 1-D array"),
        E((src, idx), {"dim": 2}, ValueError, "dim: expected a dimension of src"),
        E((src, idx), {"reduce": "mul"}, ValueError, "reduce: expected one of"),
    ]


def _torch_scatter(src, index, **kw):
    from torch_geometric.utils import scatter
    # int64, as PyG users pass it: torch 2.13's scatter_add_ backward is wrong with an int32 index
    return scatter(src, index.long(), **kw)


def _sddmm_samples(rng: np.random.Generator) -> list[Sample]:
    out = []
    for i, (graph, desc) in enumerate(_graphs(rng)):
        V, F = graph.num_nodes, (1, 3, 97)[i % 3]
        shape = (V, F) if i % 2 else (V, 3, F)
        out.append(Sample((graph, rng.standard_normal(shape), rng.standard_normal(shape)), {}, f"{desc}, {shape}"))
    return out


def _sddmm_errors(rng: np.random.Generator) -> list[ErrorInput]:
    graph = dk.Graph(np.array([[0, 1, 2], [1, 2, 0]]), num_nodes=4)
    a = rng.standard_normal((4, 5)).astype(np.float32)
    return [
        ErrorInput((graph, a, a[:, :4]), {}, ValueError, "b: expected the shape of a"),
        ErrorInput((graph, a[:3], a[:3]), {}, ValueError, r"a: expected shape \(4, F\)"),
        ErrorInput((graph, a, a.astype(np.float64)), {}, TypeError, "b: expected dtype float32"),
    ]


def _torch_sddmm(graph, a, b):
    import torch
    src, dst = (torch.from_numpy(i.astype(np.int64)) for i in graph.edge_index)
    return (a[src] * b[dst]).sum(-1)


def _edge_softmax_samples(rng: np.random.Generator) -> list[Sample]:
    out = []
    for i, (graph, desc) in enumerate(_graphs(rng)):
        shape = (graph.num_edges,) if i % 2 else (graph.num_edges, 4)
        out.append(Sample((graph, 3 * rng.standard_normal(shape)), {}, f"{desc}, scores {shape}"))
    return out


def _edge_softmax_errors(rng: np.random.Generator) -> list[ErrorInput]:
    graph = dk.Graph(np.array([[0, 1, 2], [1, 2, 0]]), num_nodes=4)
    return [
        ErrorInput((graph, np.zeros(4, np.float32)), {}, ValueError, r"scores: expected shape \(3,\)"),
        ErrorInput((graph, np.zeros((3, 2, 2), np.float32)), {}, ValueError, r"scores: expected shape \(3,\)"),
        ErrorInput((graph, np.zeros(3, np.int64)), {}, TypeError, "scores: expected dtype"),
    ]


def _torch_edge_softmax(graph, scores):
    import torch
    from torch_geometric.utils import softmax
    dst = torch.from_numpy(graph.edge_index[1].astype(np.int64))
    return softmax(scores, dst, num_nodes=graph.num_nodes)


# ---- scaled_dot_product_attention -------------------------------------------------------------

def _attention_samples(float_mask: bool) -> Callable[[np.random.Generator], list[Sample]]:
    """Samples for the op; float_mask: only those with a float mask (its gradient is checked)."""
    def make(rng: np.random.Generator) -> list[Sample]:
        r = rng.standard_normal

        def qkv(q, k, v):
            return r(q), r(k), r(v)
        if float_mask:
            fm = r((2, 3, 7, 9))
            fm[1, 2, 4] = -np.inf  # a fully masked row
            return [
                Sample((*qkv((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 16)), r((7, 9))), {}, "float mask (L, S)"),
                Sample((*qkv((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 5)), fm), {}, "float mask, -inf row"),
                Sample((*qkv((2, 2, 5, 8), (2, 2, 300, 8), (2, 2, 300, 8)), r((2, 1, 1, 300))), {},
                       "float key mask (B, 1, 1, S), S > one tile"),
                Sample((*qkv((1, 2, 130, 24), (1, 2, 20, 24), (1, 2, 20, 24)), r((2, 130, 1))), {},
                       "float mask (H, L, 1), L > one tile"),
                Sample((*qkv((1, 2, 1, 8), (1, 2, 33, 8), (1, 2, 33, 8)), r((1, 1, 33))), {}, "decode, float mask"),
            ]
        bm = rng.random((7, 9)) > 0.3
        bm[2] = False  # a fully masked row
        kp = rng.random((2, 1, 1, 40)) > 0.5
        kp[1] = False  # a batch whose keys are all padding
        return [
            Sample(qkv((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 16)), {}, "basic"),
            Sample(qkv((1, 1, 1), (1, 1, 1), (1, 1, 1)), {}, "L = S = E = 1"),
            Sample(qkv((1, 2, 13, 8), (1, 2, 7, 8), (1, 2, 7, 8)), {"is_causal": True}, "causal, L > S"),
            Sample(qkv((1, 2, 7, 16), (1, 2, 20, 16), (1, 2, 20, 5)), {"is_causal": True}, "causal, L < S"),
            Sample((*qkv((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 16)), bm), {}, "bool mask (L, S), a masked row"),
            Sample(qkv((2, 4, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8)), {"enable_gqa": True}, "GQA 4 / 2 heads"),
            Sample(qkv((1, 2, 97, 24), (1, 2, 33, 24), (1, 2, 33, 72)), {"scale": 0.3}, "L 97, E 24 != Ev 72, scale"),
            Sample(qkv((1, 1, 130, 80), (1, 1, 300, 80), (1, 1, 300, 80)), {"is_causal": True},
                   "causal over several tiles, E 80"),
            Sample((*qkv((2, 3, 6, 8), (2, 3, 40, 8), (2, 3, 40, 8)), kp), {}, "key padding (B, 1, 1, S)"),
            Sample(qkv((2, 3, 4, 8), (1, 3, 5, 8), (1, 3, 5, 6)), {}, "key and value broadcast over batch"),
            Sample(qkv((3, 1, 97), (3, 7, 97), (3, 7, 96)), {}, "decode L 1, E 97"),
            Sample(qkv((2, 2, 3, 160), (2, 2, 300, 160), (2, 2, 300, 160)), {"is_causal": True},
                   "decode L 3, causal, E 160"),
            Sample(qkv((1, 1025, 8), (1, 7, 8), (1, 7, 8)), {}, "L 1025"),
            Sample(qkv((6, 7, 96), (1, 9, 96), (1, 9, 96)), {}, "E 96, keys shared by every batch"),
            Sample(qkv((2, 2, 9, 8), (2, 2, 11, 8), (2, 2, 11, 8)), {"dropout_p": 0.3, "seed": 123}, "dropout"),
            Sample(qkv((1, 2, 2, 8), (1, 2, 40, 8), (1, 2, 40, 8)), {"dropout_p": 0.5, "seed": 7, "is_causal": True},
                   "dropout, decode, causal"),
        ]
    return make


def _attention_errors(rng: np.random.Generator) -> list[ErrorInput]:
    q = rng.standard_normal((2, 4, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    E = ErrorInput
    return [
        E((q, k[..., :7], k), {}, ValueError, "key: expected last dim 8"),
        E((q, k, k[:, :, :5]), {}, ValueError, "value: expected shape"),
        E((q, k, k), {"attn_mask": np.ones((3, 6), bool)}, ValueError, "attn_mask: shape .* is not broadcastable"),
        E((q, k[:, :3], k[:, :3]), {"enable_gqa": True}, ValueError, "enable_gqa: query's 4 heads"),
        E((q, k, k), {"dropout_p": -0.1}, ValueError, r"dropout_p: expected a value in \[0, 1\)"),
        E((q, k, k), {"dropout_p": 1.0}, ValueError, r"dropout_p: expected a value in \[0, 1\)"),
        E((q, k, k), {"attn_mask": np.ones((5, 6), bool), "is_causal": True}, ValueError, "attn_mask: must be None"),
        E((q, k, k), {"attn_mask": np.ones((5, 6), np.int32)}, TypeError, "attn_mask: expected a bool mask"),
        E((q, k, k), {"attn_mask": np.ones((5, 6), np.float64)}, TypeError, "attn_mask: expected dtype float32"),
        E((q.astype(np.int64), k, k), {}, TypeError, "query: expected dtype float32 or float64"),
        E((q, k.astype(np.float64), k), {}, TypeError, "key: expected dtype float32"),
        E((q, k[:1, :3], k[:1, :3]), {}, ValueError, "key: batch dims"),
        E((q[0, 0, 0], k, k), {}, ValueError, "query: expected an array of shape"),
        E((q, k, k), {"seed": -1}, ValueError, "seed: expected None or an int"),
        E(([[1.0]], k, k), {}, TypeError, "query: expected an array"),
    ]


def _torch_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                     seed=None):
    """torch's SDPA; with dropout, the math formula in torch with dlkernels' own keep mask."""
    import torch
    import torch.nn.functional as F
    if dropout_p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    from dlkernels.ops.attention.common import dropout_keep, make_dropout
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    L, S = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -float("inf"))
    p = torch.softmax(s, -1)
    batch = p.shape[:-2]
    Z = int(np.prod(batch))
    d = make_dropout(dropout_p, seed)
    keep = dropout_keep(d.seed, d.threshold, np.arange(Z)[:, None, None], np.arange(L)[None, :, None],
                        np.arange(S)[None, None, :], L, S).reshape(batch + (L, S))
    return (p * torch.tensor(keep, dtype=p.dtype) * d.scale) @ v


def _attention_backward_qkv(grad, saved):
    """dq, dk, dv (these samples have no float mask, so the op's fourth gradient is None)."""
    grads = dk.scaled_dot_product_attention_backward(grad, saved)
    assert grads[3] is None
    return grads[:3]


def scaled_dot_product_attention_float_mask_forward(q, k, v, attn_mask=None, **kw):
    """The op with a float mask that takes part in the gradient (its own OpInfo id)."""
    return dk.scaled_dot_product_attention_forward(q, k, v, attn_mask, **kw)


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
    OpInfo("aggregate", dk.aggregate_forward, dk.aggregate_backward, _aggregate_samples, _aggregate_errors, (1, 3),
           torch_forward=_torch_aggregate, tol={"float64": 1e-10, "float32": 5e-5}),
    OpInfo("scatter", dk.scatter_forward, dk.scatter_backward, _scatter_samples, _scatter_errors, (0,),
           torch_forward=_torch_scatter),
    OpInfo("sddmm", dk.sddmm_forward, dk.sddmm_backward, _sddmm_samples, _sddmm_errors, (1, 2),
           torch_forward=_torch_sddmm, tol={"float64": 1e-10, "float32": 5e-5}),
    OpInfo("edge_softmax", dk.edge_softmax_forward, dk.edge_softmax_backward, _edge_softmax_samples,
           _edge_softmax_errors, (1,), torch_forward=_torch_edge_softmax),
    OpInfo("scaled_dot_product_attention", dk.scaled_dot_product_attention_forward,
           _attention_backward_qkv, _attention_samples(False), _attention_errors, (0, 1, 2),
           torch_forward=_torch_attention, tol={"float64": 1e-10, "float32": 3e-5}),
    OpInfo("scaled_dot_product_attention", scaled_dot_product_attention_float_mask_forward,
           dk.scaled_dot_product_attention_backward, _attention_samples(True), _attention_errors, (0, 1, 2, 3),
           torch_forward=_torch_attention, tol={"float64": 1e-10, "float32": 3e-5}),
]
OPS_BY_ID = {f"{op.forward.__name__.removesuffix('_forward')}": op for op in OPS}
