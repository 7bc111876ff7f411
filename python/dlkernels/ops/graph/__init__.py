"""Sparse graph aggregation: aggregate, scatter, sddmm, edge_softmax over a Graph, with backward.

Math. A Graph holds E edges e: u -> v (u = edge_index[0, e] the source, v = edge_index[1, e]
the target) on V nodes. With w[e] the edge weight (1 without one):
    aggregate     out[v] = reduce_{e: u -> v} w[e] * x[u]           reduce: sum, mean, max, min
    scatter       out[i] = reduce_{e: index[e] = i} src[e]          (aggregate over edges e -> index[e])
    sddmm         out[e, h] = <a[u, h, :], b[v, h, :]>
    edge_softmax  out[e, h] = exp(s[e, h]) / sum_{e' -> v} exp(s[e', h])
mean divides by the in-degree; a target with no incoming edge gives 0 (and zero gradient) for
every reduce. max/min: tied messages share the gradient equally, as torch.scatter_reduce.

Shapes: x (V, *) -> out (V, *); edge_weight (E,); a, b (V, F) -> (E,) or (V, H, F) -> (E, H);
scores (E,) or (E, H). Per-edge arrays are in the user's edge order.

Forward saves (AggregateSaved, ScatterSaved, SddmmSaved, EdgeSoftmaxSaved): the graph's CSR,
the inputs as the kernels saw them (2-D/3-D, contiguous), and for max/min the output (the
backward finds the arg by comparing against it), for edge_softmax the output.

Cost, for the benchmark (float32, 4-byte indices): aggregate forward FLOPs = 2*E*F (sum);
bytes that must move = E*F*4 (gather x[u] per edge; x itself when it fits in cache is less)
+ V*F*4 (write out) + E*4 (indices) + (V+1)*8 (offsets). Backward of sum moves the same.

Kernels (the ladder; every one bitwise repeatable, no atomics):
    reference   NumPy over the edge list (np.add.at): the oracle (reference.py)
    numba       segment reduce over the CSR, rows in parallel (numba.py)
    cpp         segment reduce over the CSR, vec<T> along features (tail for F % width), rows split
                across threads by edge count; backward of sum/mean on the cached transpose (csrc/graph.cpp)
    cuda        CuPy arrays: the same CSR kernels on the GPU, hub rows cut into chunks merged in order
                (kernels/graph.cu, ops/graph/cuda.py); the Graph's CSR is copied to the device once
Dispatch follows the array: NumPy inputs run on the CPU backends, CuPy (or torch CUDA) on cuda.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..._arrays import Array, as_array, as_int, check_float, check_index, check_like, contiguous, device, wrap, xp
from ..._registry import dispatch, register
from . import cpp, numba, reference
from .structure import Csr, Graph, host  # noqa: F401  (host: for the adapters)

REDUCES = ("sum", "mean", "max", "min")


def _reduce(reduce: Any) -> str:
    r = {"add": "sum", "amax": "max", "amin": "min"}.get(reduce, reduce) if isinstance(reduce, str) else reduce
    if r not in REDUCES:
        raise ValueError(f"reduce: expected one of {', '.join(map(repr, REDUCES))}, got {reduce!r}")
    return r


def _graph(graph: Any) -> Csr:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph: expected a dlkernels.Graph, got {type(graph).__name__}")
    return graph._csr


def _float(x: Array, name: str) -> None:
    """x is a floating array of a dtype its device's backends take (NumPy: cpu backends, CuPy: cuda)."""
    check_float(x, name)


# ---- aggregate ------------------------------------------------------------------------------


class AggregateSaved(NamedTuple):
    csr: Csr
    x: Array  # (V, F) contiguous
    edge_weight: Array | None  # (E,) contiguous or None
    out: Array | None  # (V, F) for max/min (the backward compares against it), else None
    reduce: str
    x_shape: tuple[int, ...]  # the user's x shape


def aggregate_forward(graph: Graph, x: Any, reduce: str = "sum", edge_weight: Any = None) -> tuple[Any, AggregateSaved]:
    """(out, saved): aggregate plus what aggregate_backward needs."""
    csr = _graph(graph)
    r = _reduce(reduce)
    xa = as_array(x, "x")
    _float(xa, "x")
    if xa.ndim < 1 or xa.shape[0] != csr.n_src:
        raise ValueError(f"x: expected {csr.n_src} rows (num_nodes), got shape {tuple(xa.shape)}")
    w = None
    if edge_weight is not None:
        w = as_array(edge_weight, "edge_weight")
        check_like(w, "edge_weight", xa, "x")
        if w.shape != (csr.num_edges,):
            raise ValueError(f"edge_weight: expected shape ({csr.num_edges},) (one weight per edge), "
                             f"got {tuple(w.shape)}")
        w = contiguous(w)
    out, saved = aggregate_csr(csr, xa, r, w)
    return wrap(out, x), saved


def aggregate_csr(csr: Csr, x: Array, reduce: str, w: Array | None) -> tuple[Array, AggregateSaved]:
    """aggregate on a (possibly rectangular) Csr, inputs already checked: for the adapters (spmm)."""
    x2 = contiguous(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))))
    out = dispatch("aggregate", "forward", device(x2), csr, x2, w, reduce)
    saved = AggregateSaved(csr, x2, w, out if reduce in ("max", "min") else None, reduce, tuple(x.shape))
    return out.reshape((csr.n_dst,) + tuple(x.shape[1:])), saved


def aggregate_backward(grad_output: Any, saved: AggregateSaved) -> tuple[Any, Any]:
    """(grad_x, grad_edge_weight); grad_edge_weight is None without an edge_weight."""
    csr, x2, w, out, r, x_shape = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", x2, "x")
    want = (csr.n_dst,) + x_shape[1:]
    if tuple(g.shape) != want:
        raise ValueError(f"grad_output: expected shape {want}, got {tuple(g.shape)}")
    g2 = contiguous(g.reshape(csr.n_dst, x2.shape[1]))
    dx, dw = dispatch("aggregate", "backward", device(g2), csr, g2, x2, w, out, r)
    return wrap(dx.reshape(x_shape), grad_output), wrap(dw, grad_output)


def aggregate(graph: Graph, x: Any, reduce: str = "sum", edge_weight: Any = None) -> Any:
    """out[v] = reduce over edges u -> v of edge_weight[e] * x[u]; x (V, *) -> (V, *).

    reduce: 'sum', 'mean' (divides by the in-degree), 'max', 'min'. A node without incoming
    edges gets 0. Bitwise repeatable on every backend.
    """
    return aggregate_forward(graph, x, reduce, edge_weight)[0]


# ---- scatter --------------------------------------------------------------------------------


class ScatterSaved(NamedTuple):
    csr: Csr  # edges e -> index[e]: n_src = src.shape[dim], n_dst = dim_size
    src: Array  # (n, F) contiguous: src with dim moved first, the rest flattened
    out: Array | None  # (dim_size, F) for max/min
    reduce: str
    src_shape: tuple[int, ...]
    dim: int


def scatter_forward(src: Any, index: Any, dim: int = 0, dim_size: int | None = None,
                    reduce: str = "sum") -> tuple[Any, ScatterSaved]:
    """(out, saved): scatter plus what scatter_backward needs."""
    s = as_array(src, "src")
    _float(s, "src")
    idx = as_array(index, "index")
    check_index(idx, "index")
    if device(idx) != device(s):
        raise ValueError(f"index: expected an array on the {device(s)} like src, got one on the {device(idx)}")
    r = _reduce(reduce)
    if idx.ndim != 1:
        raise ValueError(f"index: expected a 1-D array, got shape {tuple(idx.shape)}")
    d = as_int(dim, "dim")
    if s.ndim == 0 or not -s.ndim <= d < s.ndim:
        raise ValueError(f"dim: expected a dimension of src (shape {tuple(s.shape)}), got {dim}")
    d %= s.ndim
    n = s.shape[d]
    if idx.shape[0] != n:
        raise ValueError(f"index: expected {n} entries (src.shape[{d}]), got {idx.shape[0]}")
    idx = host(idx)  # the CSR is built on the host, once (the cuda glue keeps device copies)
    if n and idx.min() < 0:
        p = int(np.flatnonzero(idx < 0)[0])
        raise IndexError(f"index: entry {p} is negative ({int(idx[p])})")
    size = (int(idx.max()) + 1 if n else 0) if dim_size is None else as_int(dim_size, "dim_size", minimum=0)
    if n and idx.max() >= size:
        p = int(np.flatnonzero(idx >= size)[0])
        raise IndexError(f"index: entry {p} is {int(idx[p])}, out of range for dim_size={size}")
    csr = Csr(n, size, np.arange(n, dtype=idx.dtype), idx)
    m = xp(s)
    moved = m.moveaxis(s, d, 0)
    s2 = contiguous(moved.reshape(n, int(np.prod(moved.shape[1:]))))
    out = dispatch("scatter", "forward", device(s2), csr, s2, None, r)
    res = m.moveaxis(out.reshape((size,) + moved.shape[1:]), 0, d)
    saved = ScatterSaved(csr, s2, out if r in ("max", "min") else None, r, tuple(s.shape), d)
    return wrap(contiguous(res), src), saved


def scatter_saved(src: Array, index: Array, dim: int, out: Array, reduce: str) -> ScatterSaved:
    """The ScatterSaved of a scatter that returned `out` (checked inputs): for the adapters' backward."""
    r = _reduce(reduce)
    d = dim % src.ndim
    n, size = src.shape[d], out.shape[d]
    idx = host(index)
    m = xp(src)
    moved = m.moveaxis(src, d, 0)
    s2 = contiguous(moved.reshape(n, int(np.prod(moved.shape[1:]))))
    out2 = contiguous(m.moveaxis(out, d, 0).reshape(size, s2.shape[1])) if r in ("max", "min") else None
    return ScatterSaved(Csr(n, size, np.arange(n, dtype=idx.dtype), idx), s2, out2, r, tuple(src.shape), d)


def scatter_backward(grad_output: Any, saved: ScatterSaved) -> tuple[Any]:
    """(grad_src,)."""
    csr, s2, out, r, src_shape, d = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", s2, "src")
    want = src_shape[:d] + (csr.n_dst,) + src_shape[d + 1:]
    if tuple(g.shape) != want:
        raise ValueError(f"grad_output: expected shape {want}, got {tuple(g.shape)}")
    m = xp(g)
    g2 = contiguous(m.moveaxis(g, d, 0).reshape(csr.n_dst, s2.shape[1]))
    ds, _ = dispatch("scatter", "backward", device(g2), csr, g2, s2, None, out, r)
    moved_shape = (src_shape[d],) + src_shape[:d] + src_shape[d + 1:]
    return (wrap(contiguous(m.moveaxis(ds.reshape(moved_shape), 0, d)), grad_output),)


def scatter(src: Any, index: Any, dim: int = 0, dim_size: int | None = None, reduce: str = "sum") -> Any:
    """torch_geometric.utils.scatter: reduce the slices of src along dim into out[index[i]].

    index is 1-D with src.shape[dim] entries; dim_size defaults to index.max() + 1. An empty
    group gives 0. Indices are checked (IndexError names the first bad entry) before any kernel runs.
    """
    return scatter_forward(src, index, dim, dim_size, reduce)[0]


# ---- sddmm ----------------------------------------------------------------------------------


class SddmmSaved(NamedTuple):
    csr: Csr
    a: Array  # (V, H, F) contiguous
    b: Array  # (V, H, F) contiguous
    heads: bool  # the user's a had a head dim (output (E, H)); else (E,)


def _heads(a: Array, name: str, V: int) -> Array:
    if a.ndim not in (2, 3) or a.shape[0] != V:
        raise ValueError(f"{name}: expected shape ({V}, F) or ({V}, H, F) (num_nodes rows), got {tuple(a.shape)}")
    return contiguous(a[:, None, :] if a.ndim == 2 else a)


def sddmm_forward(graph: Graph, a: Any, b: Any) -> tuple[Any, SddmmSaved]:
    """(out, saved): sddmm plus what sddmm_backward needs."""
    csr = _graph(graph)
    aa, ba = as_array(a, "a"), as_array(b, "b")
    _float(aa, "a")
    check_like(ba, "b", aa, "a")
    a3, b3 = _heads(aa, "a", csr.n_src), _heads(ba, "b", csr.n_dst)
    if a3.shape != b3.shape:
        raise ValueError(f"b: expected the shape of a {tuple(aa.shape)}, got {tuple(ba.shape)}")
    out = dispatch("sddmm", "forward", device(a3), csr, a3, b3)
    return wrap(out if aa.ndim == 3 else out[:, 0], a), SddmmSaved(csr, a3, b3, aa.ndim == 3)


def sddmm_backward(grad_output: Any, saved: SddmmSaved) -> tuple[Any, Any]:
    """(grad_a, grad_b)."""
    csr, a3, b3, heads = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", a3, "a")
    want = (csr.num_edges, a3.shape[1]) if heads else (csr.num_edges,)
    if tuple(g.shape) != want:
        raise ValueError(f"grad_output: expected shape {want}, got {tuple(g.shape)}")
    g2 = contiguous(g if heads else g[:, None])
    da, db = dispatch("sddmm", "backward", device(g2), csr, g2, a3, b3)
    if not heads:
        da, db = da[:, 0], db[:, 0]
    return wrap(da, grad_output), wrap(db, grad_output)


def sddmm(graph: Graph, a: Any, b: Any) -> Any:
    """Per edge u -> v: dot(a[u], b[v]). a, b (V, F) -> (E,); with heads (V, H, F) -> (E, H)."""
    return sddmm_forward(graph, a, b)[0]


# ---- edge_softmax ---------------------------------------------------------------------------


class EdgeSoftmaxSaved(NamedTuple):
    csr: Csr
    out: Array  # (E, H) contiguous
    heads: bool


def edge_softmax_forward(graph: Graph, scores: Any) -> tuple[Any, EdgeSoftmaxSaved]:
    """(out, saved): edge_softmax plus what edge_softmax_backward needs."""
    csr = _graph(graph)
    s = as_array(scores, "scores")
    _float(s, "scores")
    if s.ndim not in (1, 2) or s.shape[0] != csr.num_edges:
        raise ValueError(f"scores: expected shape ({csr.num_edges},) or ({csr.num_edges}, H) (one row per edge), "
                         f"got {tuple(s.shape)}")
    s2 = contiguous(s if s.ndim == 2 else s[:, None])
    y = dispatch("edge_softmax", "forward", device(s2), csr, s2)
    return wrap(y if s.ndim == 2 else y[:, 0], scores), EdgeSoftmaxSaved(csr, y, s.ndim == 2)


def edge_softmax_backward(grad_output: Any, saved: EdgeSoftmaxSaved) -> tuple[Any]:
    """(grad_scores,)."""
    csr, y, heads = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", y, "scores")
    want = y.shape if heads else (y.shape[0],)
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"grad_output: expected shape {tuple(want)}, got {tuple(g.shape)}")
    ds = dispatch("edge_softmax", "backward", device(y), csr, contiguous(g if heads else g[:, None]), y)
    return (wrap(ds if heads else ds[:, 0], grad_output),)


def edge_softmax(graph: Graph, scores: Any) -> Any:
    """Softmax of scores (E,) or (E, H) over each target's incoming edges (per head)."""
    return edge_softmax_forward(graph, scores)[0]


# ---- cost, for the benchmark ----------------------------------------------------------------


def aggregate_bytes(num_nodes: int, num_edges: int, F: int, itemsize: int = 4, index_size: int = 4) -> int:
    """Bytes a sum aggregation must move: one x row per edge, the output once, indices and offsets."""
    return num_edges * F * itemsize + num_nodes * F * itemsize + num_edges * index_size + (num_nodes + 1) * 8


# ---- registration: (op, direction, backend, variant) -> kernel ------------------------------

for _op in ("aggregate", "scatter"):
    register(_op, "forward", "reference", "edges", reference.aggregate_forward_reference, default=True)
    register(_op, "backward", "reference", "edges", reference.aggregate_backward_reference, default=True)
    register(_op, "forward", "numba", "csr", numba.aggregate_forward_numba, default=True)
    register(_op, "backward", "numba", "csr", numba.aggregate_backward_numba, default=True)
    register(_op, "forward", "cpp", "csr", cpp.aggregate_forward_cpp, default=True)
    register(_op, "backward", "cpp", "csr", cpp.aggregate_backward_cpp, default=True)
register("sddmm", "forward", "reference", "edges", reference.sddmm_forward_reference, default=True)
register("sddmm", "backward", "reference", "edges", reference.sddmm_backward_reference, default=True)
register("sddmm", "forward", "numba", "csr", numba.sddmm_forward_numba, default=True)
register("sddmm", "backward", "numba", "csr", numba.sddmm_backward_numba, default=True)
register("sddmm", "forward", "cpp", "csr", cpp.sddmm_forward_cpp, default=True)
register("sddmm", "backward", "cpp", "csr", cpp.sddmm_backward_cpp, default=True)
register("edge_softmax", "forward", "reference", "edges", reference.edge_softmax_forward_reference, default=True)
register("edge_softmax", "backward", "reference", "edges", reference.edge_softmax_backward_reference, default=True)
register("edge_softmax", "forward", "numba", "csr", numba.edge_softmax_forward_numba, default=True)
register("edge_softmax", "backward", "numba", "csr", numba.edge_softmax_backward_numba, default=True)
register("edge_softmax", "forward", "cpp", "csr", cpp.edge_softmax_forward_cpp, default=True)
register("edge_softmax", "backward", "cpp", "csr", cpp.edge_softmax_backward_cpp, default=True)
# CUDA (kernels/graph.cu through ops/graph/cuda.py, variant "csr"): the glue imports no CuPy
# until a kernel runs, so this registers without CuPy too (dispatch only reaches it for CuPy arrays)
from . import cuda as _cuda_glue  # noqa: E402

_cuda_glue.register_all()

__all__ = ["Graph", "aggregate", "aggregate_forward", "aggregate_backward", "AggregateSaved", "scatter",
           "scatter_forward", "scatter_backward", "ScatterSaved", "sddmm", "sddmm_forward", "sddmm_backward",
           "SddmmSaved", "edge_softmax", "edge_softmax_forward", "edge_softmax_backward", "EdgeSoftmaxSaved"]
