"""The CSR kernels of numba and cpp, written once over six primitives each backend provides.

Both backends implement the same primitives with the same arguments (numba.py in Python,
csrc/graph.cpp in C++); this module turns them into the registry's kernels. The C++
segment_sum and segment_maxmin also take a tiled CSR and its number of passes as a last
argument (Csr.tiled, Csr.passes): the forward of a large x gathers it in cache-sized ranges.

  segment_sum(indptr, col, perm, w, x, scale, out)
      out[r, h, :] = scale[r] * sum_{k in row r} w[perm[k], h] * x[col[k], h, :]
      x (N, H, F), out (R, H, F), w (E, H) or None (1), perm None = identity, scale (R,) or None (1)
  segment_maxmin(indptr, col, perm, w, x, is_max, out)
      out[r, :] = max (min) over k in row r of w[perm[k]] * x[col[k], :]; an empty row gives 0
  edge_dot(indptr, col, perm, a, b, scale, out)
      out[perm[k], h] = scale[r] * <a[col[k], h, :], b[r, h, :]> for k in row r
  maxmin_backward(indptr, col, perm, t_indptr, t_col, t_perm, w, x, out, g, dx, dw)
      ties counted per target over the CSR, then dx and dw per source over the transpose
  softmax_forward(indptr, perm, s, y) / softmax_backward(indptr, perm, y, g, ds)
      per row r and head h over the row's edges, s, y, g, ds (E, H) in edge order

Every primitive computes each output element on one thread in a fixed order: bitwise
repeatable at any thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from .structure import Csr


def make_kernels(backend: str, P: SimpleNamespace, tiled: bool = False) -> SimpleNamespace:
    """The registry's kernels for `backend`, over its primitives P (tiled: they take a tiled CSR)."""

    def aggregate_forward(csr: Csr, x: np.ndarray, w: np.ndarray | None, reduce: str) -> np.ndarray:
        N, F = x.shape
        out = np.empty((csr.n_dst, F), x.dtype)
        indptr, col, perm, tiles = csr.indptr, csr.col, csr.perm, ()
        passes = csr.passes(F * x.itemsize) if tiled else 1
        if passes > 1:  # the tiled perm maps positions to edge ids too: w stays as it is
            (indptr, col, perm), tiles = csr.tiled(passes), (passes,)
        if reduce in ("sum", "mean"):
            scale = csr.inv_degree(x.dtype) if reduce == "mean" else None
            w2 = None if w is None else w.reshape(-1, 1)
            P.segment_sum(indptr, col, perm, w2, x.reshape(N, 1, F), scale, out.reshape(-1, 1, F), *tiles)
        else:
            P.segment_maxmin(indptr, col, perm, w, x, reduce == "max", out, *tiles)
        return out

    # sum/mean: dx[u] = sum_{e: u -> v} w[e] / deg(v) * g[v] runs over the transpose, with the
    # per-edge factor w[e] / deg(v) laid out in the transpose's order (E values, cheap);
    # dw[e] = <x[u], g[v]> / deg(v) is a per-edge dot over the CSR.
    def aggregate_backward(csr: Csr, g: np.ndarray, x: np.ndarray, w: np.ndarray | None,
                           out: np.ndarray | None, reduce: str) -> tuple:
        N, F = x.shape
        dx = np.empty_like(x)
        dw = None if w is None else np.empty(csr.num_edges, x.dtype)
        t = csr.transpose
        if reduce in ("sum", "mean"):
            scale = csr.inv_degree(x.dtype) if reduce == "mean" else None
            wt = None
            if w is not None:
                wt = w if t.perm is None else w[t.perm]
            if scale is not None:
                wt = scale[t.col] if wt is None else wt * scale[t.col]
            P.segment_sum(t.indptr, t.col, None, None if wt is None else wt.reshape(-1, 1),
                          g.reshape(-1, 1, F), None, dx.reshape(N, 1, F))
            if dw is not None:
                P.edge_dot(csr.indptr, csr.col, csr.perm, x.reshape(N, 1, F), g.reshape(-1, 1, F), scale,
                           dw.reshape(-1, 1))
        else:
            P.maxmin_backward(csr.indptr, csr.col, csr.perm, t.indptr, t.col, t.perm, w, x, out, g, dx, dw)
        return dx, dw

    def sddmm_forward(csr: Csr, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty((csr.num_edges, a.shape[1]), a.dtype)
        P.edge_dot(csr.indptr, csr.col, csr.perm, a, b, None, out)
        return out

    # da[u] = sum_{e: u -> v} g[e] * b[v] over the transpose; db[v] = sum_{e: u -> v} g[e] * a[u] over the CSR.
    def sddmm_backward(csr: Csr, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple:
        da, db = np.empty_like(a), np.empty_like(b)
        t = csr.transpose
        P.segment_sum(t.indptr, t.col, t.perm, g, b, None, da)
        P.segment_sum(csr.indptr, csr.col, csr.perm, g, a, None, db)
        return da, db

    def edge_softmax_forward(csr: Csr, s: np.ndarray) -> np.ndarray:
        y = np.empty_like(s)
        P.softmax_forward(csr.indptr, csr.perm, s, y)
        return y

    def edge_softmax_backward(csr: Csr, g: np.ndarray, y: np.ndarray) -> np.ndarray:
        ds = np.empty_like(y)
        P.softmax_backward(csr.indptr, csr.perm, y, g, ds)
        return ds

    fns: dict[str, Callable] = {}
    for op, fwd, bwd in (("aggregate", aggregate_forward, aggregate_backward), ("sddmm", sddmm_forward, sddmm_backward),
                         ("edge_softmax", edge_softmax_forward, edge_softmax_backward)):
        for direction, fn in (("forward", fwd), ("backward", bwd)):
            fn.__name__ = fn.__qualname__ = f"{op}_{direction}_{backend}"
            fns[fn.__name__] = fn
    return SimpleNamespace(**fns)

