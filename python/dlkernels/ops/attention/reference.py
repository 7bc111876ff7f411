"""scaled_dot_product_attention in NumPy: the plain formula, for study and as the oracle.

It builds the whole (Z, L, S) score matrix, which the tiled kernels never do. Any float
dtype; the tests run it in float64. Arrays as the kernels get them (see __init__.py):
q (Z, L, E), k (Zk, S, E), v (Zk, S, Ev), kv_index (Z,): output z reads keys kv_index[z].
"""

from __future__ import annotations

import numpy as np

from .common import Dropout, Mask, dropout_keep


def _scores(q, k, kv_index, mask: Mask | None, causal: bool, scale: float) -> np.ndarray:
    Z, L, _ = q.shape
    S = k.shape[1]
    s = scale * (q @ k[kv_index].swapaxes(1, 2))                  # (Z, L, S)
    if mask is not None:
        s = s + mask.dense(L, S)                                  # (Z, L, S)
    if causal:  # top-left aligned: row i sees keys j <= i
        allowed = np.tril(np.ones((L, S), bool))                  # (L, S)
        s = np.where(allowed, s, -np.inf)                         # (Z, L, S)
    return s


def _softmax(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, lse): softmax over the last axis; a row that is all -inf gives p = 0, lse = +inf."""
    m = np.max(s, axis=-1, keepdims=True)                         # (Z, L, 1)
    m = np.where(np.isfinite(m), m, 0.0)                          # (Z, L, 1) fully masked rows
    e = np.exp(s - m)                                             # (Z, L, S)
    l = np.sum(e, axis=-1, keepdims=True)                         # (Z, L, 1)
    empty = l == 0
    p = e / np.where(empty, 1.0, l)                               # (Z, L, S)
    with np.errstate(divide="ignore"):
        lse = np.where(empty, np.inf, m + np.log(l))[..., 0]      # (Z, L)
    return p, lse


def _keep(dropout: Dropout | None, Z: int, L: int, S: int, dtype) -> np.ndarray | float:
    """The dropout factor: keep / (1 - p), shape (Z, L, S); 1.0 without dropout."""
    if dropout is None:
        return 1.0
    z, i, j = np.arange(Z)[:, None, None], np.arange(L)[None, :, None], np.arange(S)[None, None, :]
    keep = dropout_keep(dropout.seed, dropout.threshold, z, i, j, L, S)  # (Z, L, S)
    return keep.astype(dtype) * dtype.type(dropout.scale)


def scaled_dot_product_attention_forward_reference(q, k, v, kv_index, mask, causal, scale, dropout):
    Z, L, _ = q.shape
    S = k.shape[1]
    s = _scores(q, k, kv_index, mask, causal, scale)              # (Z, L, S)
    p, lse = _softmax(s)                                          # (Z, L, S), (Z, L)
    pd = p * _keep(dropout, Z, L, S, q.dtype)                     # (Z, L, S) dropped and rescaled
    out = pd @ v[kv_index]                                        # (Z, L, Ev)
    return out.astype(q.dtype), lse.astype(q.dtype)


# Backward. With s = scale * q kᵀ + mask, p = softmax(s), p~ = p * keep / (1-drop), o = p~ v:
#   dv = p~ᵀ do;   dp~ = do vᵀ;   dp = dp~ * keep / (1-drop)
#   ds = p * (dp - D),  D_i = sum_j p_ij dp_ij = sum_j p~_ij dp~_ij = rowsum(do * o)_i
#   dq = scale * ds k;   dk = scale * dsᵀ q;   dmask = ds
# dk and dv sum over every output z that reads the same keys (GQA, broadcasting).
def scaled_dot_product_attention_backward_reference(dout, q, k, v, out, lse, kv_index, mask, causal, scale,
                                                    dropout, want_dmask):
    Z, L, _ = q.shape
    S = k.shape[1]
    s = _scores(q, k, kv_index, mask, causal, scale)              # (Z, L, S)
    p, _ = _softmax(s)                                            # (Z, L, S)
    keep = _keep(dropout, Z, L, S, q.dtype)                       # (Z, L, S) or 1.0
    dv_z = (p * keep).swapaxes(1, 2) @ dout                       # (Z, S, Ev)
    dp = (dout @ v[kv_index].swapaxes(1, 2)) * keep               # (Z, L, S)
    D = np.sum(dout * out, axis=-1, keepdims=True)                # (Z, L, 1)
    ds = p * (dp - D)                                             # (Z, L, S)
    dq = scale * (ds @ k[kv_index])                               # (Z, L, E)
    dk_z = scale * (ds.swapaxes(1, 2) @ q)                        # (Z, S, E)
    dk = np.zeros_like(k)                                         # (Zk, S, E)
    dv = np.zeros_like(v)                                         # (Zk, S, Ev)
    np.add.at(dk, kv_index, dk_z)
    np.add.at(dv, kv_index, dv_z)
    dmask = ds.astype(q.dtype) if want_dmask else None           # (Z, L, S)
    return dq.astype(q.dtype), dk, dv, dmask
