"""Glue to the CUDA graph kernels (kernels/graph.cu): the registry's graph kernels on CuPy arrays.

Same signatures as the cpp/numba kernels of ops/graph/common.py:
    aggregate/scatter forward  (csr, x (N, F), w (E,) | None, reduce) -> out (R, F)
    aggregate/scatter backward (csr, g (R, F), x, w, out | None, reduce) -> (dx, dw | None)
    sddmm forward  (csr, a (N, H, F), b (R, H, F)) -> (E, H);  backward (csr, g, a, b) -> (da, db)
    edge_softmax forward (csr, s (E, H)) -> y;  backward (csr, g, y) -> ds
The Csr (NumPy, on the host) is copied to the device once per (csr, device) and kept
alongside it (a WeakKeyDictionary: it goes when the graph goes), with the transpose and the
work list that cuts hub rows into CHUNK-edge pieces.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from ... import _cuda
from ..._arrays import cupy_module
from ..._registry import register

FILE = "graph.cu"
CHUNK = 256  # edges per work item: a row with more (a hub) is cut and its partials summed in order
VEC = 4  # features per thread (graph.cu's VEC)
NULL = np.uint64(0)  # a null pointer argument
VARIANTS = ("csr",)  # what register_all registers (kernels/graph.cu's header lists the same)

_lock = threading.Lock()
_device_csr: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kernel(name: str, x, index=None, extra: str = "") -> Any:
    t = _cuda.c_type(x)
    i = "" if index is None else (", int" if np.dtype(index) == np.int32 else ", long long")
    expr = f"{name}<{t}{i}{extra}>"
    return _cuda.kernel(FILE, expr, _family(t))


def _family(t: str) -> list[str]:
    names = []
    for i in ("int", "long long"):
        names += [f"graph_segment_sum_cuda<{t}, {i}>", f"graph_segment_maxmin_cuda<{t}, {i}, 0>",
                  f"graph_segment_maxmin_cuda<{t}, {i}, 1>", f"graph_maxmin_share_cuda<{t}, {i}>",
                  f"graph_maxmin_dx_cuda<{t}, {i}>", f"graph_maxmin_dw_cuda<{t}, {i}>",
                  f"graph_edge_dot_cuda<{t}, {i}>"]
    return names + [f"graph_segment_merge_cuda<{t}>", f"graph_softmax_forward_cuda<{t}>",
                    f"graph_softmax_backward_cuda<{t}>"]


class _Rows:
    """One CSR (by target, or the transpose by source) on the device, with its sum work list."""

    def __init__(self, indptr: np.ndarray, col: np.ndarray, perm: np.ndarray | None):
        cp = cupy_module()
        self.R = indptr.shape[0] - 1
        self.indptr, self.col = cp.asarray(indptr), cp.asarray(col)
        self.perm = None if perm is None else cp.asarray(perm)
        self.index_dtype = col.dtype
        # work items (row, k0, k1, slot): a row of at most CHUNK edges is one item written
        # straight to out (slot -1); a hub row is cut into CHUNK-edge items with partial slots
        deg = np.diff(indptr)
        pieces = np.maximum(1, -(-deg // CHUNK))
        rows = np.repeat(np.arange(self.R, dtype=np.int64), pieces)
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        j = np.arange(rows.shape[0], dtype=np.int64) - first
        k0 = indptr[:-1][rows] + j * CHUNK
        k1 = np.minimum(k0 + CHUNK, indptr[1:][rows])
        hub = pieces[rows] > 1
        slot = np.full(rows.shape[0], -1, np.int64)
        slot[hub] = np.arange(int(hub.sum()), dtype=np.int64)
        self.work = cp.asarray(np.stack([rows, k0, k1, slot], axis=1).reshape(-1))
        self.n_work = int(rows.shape[0])
        hubs = np.flatnonzero(pieces > 1).astype(np.int64)
        self.n_hubs, self.n_slots = int(hubs.shape[0]), int(hub.sum())
        self.hubs = cp.asarray(hubs)
        self.hub_slots = cp.asarray(np.concatenate([[0], np.cumsum(pieces[hubs])]).astype(np.int64))


class _DeviceCsr:
    def __init__(self, csr):
        self.rows = _Rows(csr.indptr, csr.col, csr.perm)
        self._csr = weakref.ref(csr)
        self._t: _Rows | None = None
        self._scale: dict[str, Any] = {}

    @property
    def t(self) -> _Rows:
        if self._t is None:
            t = self._csr().transpose
            self._t = _Rows(t.indptr, t.col, t.perm)
        return self._t

    def inv_degree(self, acc: str):
        if acc not in self._scale:
            self._scale[acc] = cupy_module().asarray(self._csr().inv_degree(np.dtype(acc)))
        return self._scale[acc]


def _on_device(csr) -> _DeviceCsr:
    key = _cuda.device_id()
    with _lock:
        per_device = _device_csr.setdefault(csr, {})
        if key not in per_device:
            per_device[key] = _DeviceCsr(csr)
        return per_device[key]


def _ptr(a) -> Any:
    return NULL if a is None else a


def _perm_args(rows: _Rows) -> tuple:
    return (_ptr(rows.perm), np.int32(rows.perm is not None))


def _segment_sum(rows: _Rows, w, rscale, cscale, x3, out3) -> None:
    """out3[r, h, :] = rscale[r] * sum_k w[perm[k], h] * cscale[col[k]] * x3[col[k], h, :]."""
    H, F = x3.shape[1], x3.shape[2]
    bx = min(128, max(1, 1 << (max(1, -(-F // VEC)) - 1).bit_length()))  # threads along F, power of 2
    by = max(1, 256 // bx)  # rows per block
    part = _cuda.empty((max(rows.n_slots, 1), H, F), _cuda.acc_dtype(x3))
    kern = _kernel("graph_segment_sum_cuda", x3, rows.index_dtype)
    grid = (_cuda.cdiv(rows.n_work, by), _cuda.cdiv(F, bx * VEC), H)
    _cuda.launch(kern, grid, (bx, by), (rows.work, np.int64(rows.n_work), rows.col, *_perm_args(rows),
                                        _ptr(w), _ptr(rscale), _ptr(cscale), x3, out3, part, np.int32(H),
                                        np.int32(F)))
    if rows.n_hubs:
        merge = _kernel("graph_segment_merge_cuda", x3)
        n = rows.n_hubs * H * F
        _cuda.launch(merge, (_cuda.cdiv(n, 256),), (256,), (rows.hubs, rows.hub_slots, np.int64(rows.n_hubs),
                                                             _ptr(rscale), part, out3, np.int32(H),
                                                             np.int32(F)))


def _edge_dot(rows: _Rows, a3, b3, rscale, out) -> None:
    """out[perm[k], h] = rscale[r] * <a3[col[k], h], b3[r, h]>: one warp per (row, head)."""
    H, F = a3.shape[1], a3.shape[2]
    kern = _kernel("graph_edge_dot_cuda", a3, rows.index_dtype)
    _cuda.launch(kern, (_cuda.cdiv(rows.R * H * 32, 256),), (256,),
                 (rows.indptr, np.int64(rows.R), rows.col, *_perm_args(rows), a3, b3, _ptr(rscale), out,
                  np.int32(H), np.int32(F)))


def aggregate_forward_cuda(csr, x, w, reduce: str):
    with _cuda.device_of(x):
        d = _on_device(csr)
        N, F = x.shape
        out = _cuda.empty((csr.n_dst, F), x.dtype)
        if reduce in ("sum", "mean"):
            scale = d.inv_degree(_cuda.acc_dtype(x)) if reduce == "mean" else None
            _segment_sum(d.rows, w, scale, None, x.reshape(N, 1, F), out.reshape(-1, 1, F))
        else:
            rows = d.rows
            bx = min(128, max(1, 1 << (max(1, -(-F // VEC)) - 1).bit_length()))
            by = max(1, 256 // bx)
            is_max = ", 1" if reduce == "max" else ", 0"
            kern = _kernel("graph_segment_maxmin_cuda", x, rows.index_dtype, is_max)
            _cuda.launch(kern, (_cuda.cdiv(rows.R, by), _cuda.cdiv(F, bx * VEC), 1), (bx, by),
                         (rows.indptr, np.int64(rows.R), rows.col, *_perm_args(rows), _ptr(w), x, out,
                          np.int32(F)))
        return out


# sum/mean backward on the cached transpose: dx[u] = sum_{e: u -> v} w[e] / deg(v) * g[v]
# (w through t.perm, 1/deg(v) through t.col); dw[e] = <x[u], g[v]> / deg(v) over the CSR.
# max/min: tie shares per target, then dx per source over the transpose, dw per edge.
def aggregate_backward_cuda(csr, g, x, w, out, reduce: str):
    with _cuda.device_of(x):
        d = _on_device(csr)
        N, F = x.shape
        dx = _cuda.empty(x.shape, x.dtype)
        dw = None if w is None else _cuda.empty((csr.num_edges,), x.dtype)
        acc = _cuda.acc_dtype(x)
        if reduce in ("sum", "mean"):
            scale = d.inv_degree(acc) if reduce == "mean" else None
            _segment_sum(d.t, w, None, scale, g.reshape(-1, 1, F), dx.reshape(N, 1, F))
            if dw is not None:
                _edge_dot(d.rows, x.reshape(N, 1, F), g.reshape(-1, 1, F), scale, dw.reshape(-1, 1))
            return dx, dw
        rows, t = d.rows, d.t
        share = _cuda.empty((csr.n_dst, F), acc)
        k = _kernel("graph_maxmin_share_cuda", x, rows.index_dtype)
        _cuda.launch(k, (_cuda.cdiv(csr.n_dst * F, 256),), (256,),
                     (rows.indptr, np.int64(rows.R), rows.col, *_perm_args(rows), _ptr(w), x, out, g, share,
                      np.int32(F)))
        k = _kernel("graph_maxmin_dx_cuda", x, t.index_dtype)
        _cuda.launch(k, (_cuda.cdiv(N * F, 256),), (256,),
                     (t.indptr, np.int64(t.R), t.col, *_perm_args(t), _ptr(w), x, out, share, dx,
                      np.int32(F)))
        if dw is not None:
            k = _kernel("graph_maxmin_dw_cuda", x, rows.index_dtype)
            _cuda.launch(k, (_cuda.cdiv(rows.R * 32, 256),), (256,),
                         (rows.indptr, np.int64(rows.R), rows.col, *_perm_args(rows), w, x, out, share, dw,
                          np.int32(F)))
        return dx, dw


def sddmm_forward_cuda(csr, a, b):
    with _cuda.device_of(a):
        out = _cuda.empty((csr.num_edges, a.shape[1]), a.dtype)
        _edge_dot(_on_device(csr).rows, a, b, None, out)
        return out


# da[u] = sum_{e: u -> v} g[e] * b[v] over the transpose; db[v] = sum_{e: u -> v} g[e] * a[u].
def sddmm_backward_cuda(csr, g, a, b):
    with _cuda.device_of(a):
        d = _on_device(csr)
        da, db = _cuda.empty(a.shape, a.dtype), _cuda.empty(b.shape, b.dtype)
        _segment_sum(d.t, g, None, None, b, da)
        _segment_sum(d.rows, g, None, None, a, db)
        return da, db


def edge_softmax_forward_cuda(csr, s):
    with _cuda.device_of(s):
        rows = _on_device(csr).rows
        y = _cuda.empty(s.shape, s.dtype)
        H = s.shape[1]
        k = _kernel("graph_softmax_forward_cuda", s)
        _cuda.launch(k, (_cuda.cdiv(rows.R * H * 32, 256),), (256,),
                     (rows.indptr, np.int64(rows.R), *_perm_args(rows), s, y, np.int32(H)))
        return y


def edge_softmax_backward_cuda(csr, g, y):
    with _cuda.device_of(y):
        rows = _on_device(csr).rows
        ds = _cuda.empty(y.shape, y.dtype)
        H = y.shape[1]
        k = _kernel("graph_softmax_backward_cuda", y)
        _cuda.launch(k, (_cuda.cdiv(rows.R * H * 32, 256),), (256,),
                     (rows.indptr, np.int64(rows.R), *_perm_args(rows), y, g, ds, np.int32(H)))
        return ds


def register_all() -> None:
    """Registers the CUDA graph kernels (variant "csr", the default on the GPU)."""
    for op in ("aggregate", "scatter"):
        register(op, "forward", "cuda", "csr", aggregate_forward_cuda, default=True)
        register(op, "backward", "cuda", "csr", aggregate_backward_cuda, default=True)
    register("sddmm", "forward", "cuda", "csr", sddmm_forward_cuda, default=True)
    register("sddmm", "backward", "cuda", "csr", sddmm_backward_cuda, default=True)
    register("edge_softmax", "forward", "cuda", "csr", edge_softmax_forward_cuda, default=True)
    register("edge_softmax", "backward", "cuda", "csr", edge_softmax_backward_cuda, default=True)
