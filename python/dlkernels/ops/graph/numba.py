"""The graph primitives in numba (see common.py for what each computes).

Threads: one CSR row (a target, or a source in the transpose) per prange iteration; the row's
edges are summed in CSR order by that one thread, so results are bitwise repeatable.
Optional arguments cross as 0-length arrays with a flag (numba compiles one signature).
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np
from numba import prange

from .common import make_kernels

_NO_INDEX = np.empty(0, np.int64)


@numba.njit(cache=True, parallel=True)
def _segment_sum(indptr, col, perm, use_perm, w, use_w, x, scale, use_scale, out):  # pragma: no cover
    R, H, F = out.shape
    for r in prange(R):
        acc = out[r]
        acc[:, :] = 0
        for k in range(indptr[r], indptr[r + 1]):
            u = col[k]
            e = perm[k] if use_perm else k
            for h in range(H):
                if use_w:
                    wk = w[e, h]
                    for f in range(F):
                        acc[h, f] += wk * x[u, h, f]
                else:
                    for f in range(F):
                        acc[h, f] += x[u, h, f]
        if use_scale:
            acc[:, :] *= scale[r]


@numba.njit(cache=True, parallel=True)
def _segment_maxmin(indptr, col, perm, use_perm, w, use_w, x, is_max, out):  # pragma: no cover
    R, F = out.shape
    for r in prange(R):
        k0, k1 = indptr[r], indptr[r + 1]
        if k0 == k1:
            out[r, :] = 0
            continue
        for k in range(k0, k1):
            u = col[k]
            e = perm[k] if use_perm else k
            for f in range(F):
                v = w[e] * x[u, f] if use_w else x[u, f]
                if k == k0 or np.isnan(v) or (v > out[r, f] if is_max else v < out[r, f]):
                    out[r, f] = v


@numba.njit(cache=True, parallel=True)
def _edge_dot(indptr, col, perm, use_perm, a, b, scale, use_scale, out):  # pragma: no cover
    R = b.shape[0]
    H, F = a.shape[1], a.shape[2]
    for r in prange(R):
        for k in range(indptr[r], indptr[r + 1]):
            u = col[k]
            e = perm[k] if use_perm else k
            for h in range(H):
                s = a[u, h, 0] * 0
                for f in range(F):
                    s += a[u, h, f] * b[r, h, f]
                out[e, h] = s * scale[r] if use_scale else s


@numba.njit(cache=True, parallel=True)
def _maxmin_backward(indptr, col, perm, use_perm, t_indptr, t_col, t_perm, use_t_perm, w, use_w, x, out, g,
                     dx, dw, use_dw):  # pragma: no cover
    R, F = out.shape
    N = x.shape[0]
    share = np.empty((R, F), x.dtype)  # g / number of tied messages, per target and feature
    for r in prange(R):
        share[r, :] = 0
        for k in range(indptr[r], indptr[r + 1]):
            u = col[k]
            e = perm[k] if use_perm else k
            for f in range(F):
                v = w[e] * x[u, f] if use_w else x[u, f]
                if v == out[r, f]:
                    share[r, f] += 1
        for f in range(F):
            share[r, f] = g[r, f] / share[r, f] if share[r, f] > 0 else 0
    for u in prange(N):
        dx[u, :] = 0
        for k in range(t_indptr[u], t_indptr[u + 1]):
            v = t_col[k]
            e = t_perm[k] if use_t_perm else k
            s = 0.0
            for f in range(F):
                if use_w:  # the message recomputed exactly as the forward did, in x's dtype
                    wk = w[e]
                    m = share[v, f] if wk * x[u, f] == out[v, f] else 0.0
                    dx[u, f] += m * wk
                else:
                    m = share[v, f] if x[u, f] == out[v, f] else 0.0
                    dx[u, f] += m
                s += m * x[u, f]
            if use_dw:
                dw[e] = s


@numba.njit(cache=True, parallel=True)
def _softmax_forward(indptr, perm, use_perm, s, y):  # pragma: no cover
    R = indptr.shape[0] - 1
    H = s.shape[1]
    for r in prange(R):
        for h in range(H):
            m = -np.inf
            for k in range(indptr[r], indptr[r + 1]):
                e = perm[k] if use_perm else k
                m = max(m, s[e, h])
            den = s[0, 0] * 0 if indptr[r + 1] > indptr[r] else 1
            for k in range(indptr[r], indptr[r + 1]):
                e = perm[k] if use_perm else k
                y[e, h] = np.exp(s[e, h] - m)
                den += y[e, h]
            for k in range(indptr[r], indptr[r + 1]):
                e = perm[k] if use_perm else k
                y[e, h] /= den


@numba.njit(cache=True, parallel=True)
def _softmax_backward(indptr, perm, use_perm, y, g, ds):  # pragma: no cover
    R = indptr.shape[0] - 1
    H = y.shape[1]
    for r in prange(R):
        for h in range(H):
            dot = y[0, 0] * 0 if indptr[r + 1] > indptr[r] else 0
            for k in range(indptr[r], indptr[r + 1]):
                e = perm[k] if use_perm else k
                dot += y[e, h] * g[e, h]
            for k in range(indptr[r], indptr[r + 1]):
                e = perm[k] if use_perm else k
                ds[e, h] = y[e, h] * (g[e, h] - dot)


# ---- the primitives' common signatures (None -> empty array + flag) -------------------------

def _opt(a, like_dtype=None, ndim=1):
    if a is not None:
        return a, True
    return (np.empty((0,) * ndim, like_dtype) if like_dtype is not None else _NO_INDEX), False


def segment_sum(indptr, col, perm, w, x, scale, out):
    p, up = _opt(perm)
    ww, uw = _opt(w, x.dtype, 2)
    sc, us = _opt(scale, x.dtype)
    _segment_sum(indptr, col, p, up, ww, uw, x, sc, us, out)


def segment_maxmin(indptr, col, perm, w, x, is_max, out):
    p, up = _opt(perm)
    ww, uw = _opt(w, x.dtype)
    _segment_maxmin(indptr, col, p, up, ww, uw, x, bool(is_max), out)


def edge_dot(indptr, col, perm, a, b, scale, out):
    p, up = _opt(perm)
    sc, us = _opt(scale, a.dtype)
    _edge_dot(indptr, col, p, up, a, b, sc, us, out)


def maxmin_backward(indptr, col, perm, t_indptr, t_col, t_perm, w, x, out, g, dx, dw):
    p, up = _opt(perm)
    tp, utp = _opt(t_perm)
    ww, uw = _opt(w, x.dtype)
    d, ud = _opt(dw, x.dtype)
    if x.shape[1] == 0:
        dx[...] = 0
        if dw is not None:
            dw[...] = 0
        return
    _maxmin_backward(indptr, col, p, up, t_indptr, t_col, tp, utp, ww, uw, x, out, g, dx, d, ud)


def softmax_forward(indptr, perm, s, y):
    p, up = _opt(perm)
    _softmax_forward(indptr, p, up, s, y)


def softmax_backward(indptr, perm, y, g, ds):
    p, up = _opt(perm)
    _softmax_backward(indptr, p, up, y, g, ds)


_K = make_kernels("numba", SimpleNamespace(
    segment_sum=segment_sum, segment_maxmin=segment_maxmin, edge_dot=edge_dot, maxmin_backward=maxmin_backward,
    softmax_forward=softmax_forward, softmax_backward=softmax_backward))
aggregate_forward_numba = _K.aggregate_forward_numba
aggregate_backward_numba = _K.aggregate_backward_numba
sddmm_forward_numba = _K.sddmm_forward_numba
sddmm_backward_numba = _K.sddmm_backward_numba
edge_softmax_forward_numba = _K.edge_softmax_forward_numba
edge_softmax_backward_numba = _K.edge_softmax_backward_numba
