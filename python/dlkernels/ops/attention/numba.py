"""numba kernels: one query row at a time, O(S) scratch per row, never the (L, S) matrix.

Forward: parallel over the Z*L query rows; each row computes its S scores, their max, the
exponentials and the weighted sum of value rows (a two-pass softmax on one row).
Backward: parallel over the key heads Zk; a task walks every output head z that reads its
keys (GQA, broadcasting) row by row and accumulates dk, dv of its own keys and dq of its own
rows, in a fixed order: no races, bitwise repeatable.
"""

from __future__ import annotations

import numba
import numpy as np

from .common import BITS, GOLDEN, MIX1, MIX2

_U = np.uint64
_GOLDEN, _MIX1, _MIX2 = _U(GOLDEN), _U(MIX1), _U(MIX2)
_S30, _S27, _S31, _SB, _ONE = _U(30), _U(27), _U(31), _U(64 - BITS), _U(1)


@numba.njit(cache=True, inline="always")
def _keep(seed, threshold, ctr):  # pragma: no cover - compiled; the generator of common.py
    x = seed + (ctr + _ONE) * _GOLDEN
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    x = x ^ (x >> _S31)
    return (x >> _SB) >= threshold


@numba.njit(cache=True, inline="always")
def _row_scores(q, k, kv_index, mdata, moff, mrs, mcs, has_mask, causal, scale, z, i, s):  # pragma: no cover
    """s[j] = scale * q[z, i] . k[kz, j] + mask, -inf past the causal diagonal; returns the max."""
    kz = kv_index[z]
    S, E = k.shape[1], k.shape[2]
    m = -np.inf
    for j in range(S):
        if causal and j > i:
            s[j] = -np.inf
            continue
        acc = 0.0
        for e in range(E):
            acc += q[z, i, e] * k[kz, j, e]
        acc *= scale
        if has_mask:
            acc += mdata[moff[z] + i * mrs + j * mcs]
        s[j] = acc
        if acc > m:
            m = acc
    return m


@numba.njit(cache=True, parallel=True)
def _forward(q, k, v, kv_index, mdata, moff, mrs, mcs, has_mask, causal, scale, has_drop, seed, threshold,
             dscale, out, lse):  # pragma: no cover - compiled
    Z, L, _ = q.shape
    S, Ev = k.shape[1], v.shape[2]
    for zi in numba.prange(Z * L):
        z, i = zi // L, zi % L
        kz = kv_index[z]
        s = np.empty(S, q.dtype)
        m = _row_scores(q, k, kv_index, mdata, moff, mrs, mcs, has_mask, causal, scale, z, i, s)
        out[z, i, :] = 0.0
        if m == -np.inf:  # every key masked: output 0
            lse[z, i] = np.inf
            continue
        total = 0.0
        for j in range(S):
            s[j] = np.exp(s[j] - m)
            total += s[j]
        inv = 1.0 / total
        for j in range(S):
            w = s[j] * inv
            if has_drop:
                ctr = (_U(z) * _U(L) + _U(i)) * _U(S) + _U(j)
                w = w * dscale if _keep(seed, threshold, ctr) else 0.0
            for f in range(Ev):
                out[z, i, f] += w * v[kz, j, f]
        lse[z, i] = m + np.log(total)


@numba.njit(cache=True, parallel=True)
def _backward(dout, q, k, v, out, lse, kv_index, mdata, moff, mrs, mcs, has_mask, causal, scale, has_drop, seed,
              threshold, dscale, want_dmask, dq, dk, dv, dmask):  # pragma: no cover - compiled
    Z, L, E = q.shape
    Zk, S, Ev = v.shape
    for kz in numba.prange(Zk):
        dk[kz] = 0.0
        dv[kz] = 0.0
        s = np.empty(S, q.dtype)
        for z in range(Z):
            if kv_index[z] != kz:
                continue
            for i in range(L):
                _row_scores(q, k, kv_index, mdata, moff, mrs, mcs, has_mask, causal, scale, z, i, s)
                D = 0.0
                for f in range(Ev):
                    D += dout[z, i, f] * out[z, i, f]
                dq[z, i, :] = 0.0
                for j in range(S):
                    p = np.exp(s[j] - lse[z, i])  # 0 for masked keys and fully masked rows
                    keepf = 1.0
                    if has_drop:
                        ctr = (_U(z) * _U(L) + _U(i)) * _U(S) + _U(j)
                        keepf = dscale if _keep(seed, threshold, ctr) else 0.0
                    pd = p * keepf
                    dp = 0.0
                    for f in range(Ev):
                        dv[kz, j, f] += pd * dout[z, i, f]
                        dp += dout[z, i, f] * v[kz, j, f]
                    ds = p * (dp * keepf - D)
                    if want_dmask:
                        dmask[z, i, j] = ds
                    ds *= scale
                    for e in range(E):
                        dq[z, i, e] += ds * k[kz, j, e]
                        dk[kz, j, e] += ds * q[z, i, e]


def _mask_args(mask, dtype):
    if mask is None:
        return np.zeros(1, dtype), np.zeros(1, np.int64), 0, 0, False
    return mask.data.reshape(-1), mask.offset, mask.row_stride, mask.col_stride, True


def _drop_args(dropout):
    if dropout is None:
        return False, _U(0), _U(0), 1.0
    return True, _U(dropout.seed), _U(dropout.threshold), dropout.scale


def scaled_dot_product_attention_forward_numba_rows(q, k, v, kv_index, mask, causal, scale, dropout):
    Z, L, _ = q.shape
    out = np.empty((Z, L, v.shape[2]), q.dtype)
    lse = np.empty((Z, L), q.dtype)
    _forward(q, k, v, kv_index, *_mask_args(mask, q.dtype), causal, q.dtype.type(scale), *_drop_args(dropout),
             out, lse)
    return out, lse


def scaled_dot_product_attention_backward_numba_rows(dout, q, k, v, out, lse, kv_index, mask, causal, scale,
                                                     dropout, want_dmask):
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dmask = np.empty((q.shape[0], q.shape[1], k.shape[1]), q.dtype) if want_dmask else np.empty((1, 1, 1), q.dtype)
    _backward(dout, q, k, v, out, lse, kv_index, *_mask_args(mask, q.dtype), causal, q.dtype.type(scale),
              *_drop_args(dropout), want_dmask, dq, dk, dv, dmask)
    return dq, dk, dv, (dmask if want_dmask else None)
