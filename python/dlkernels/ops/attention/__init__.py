"""Scaled dot-product attention, forward and hand-written backward, as
torch.nn.functional.scaled_dot_product_attention.

Math: for each batch-head z, query row i and key j,
    s[z, i, j] = scale * q[z, i] . k[z', j] + mask[z, i, j]     (z' = the key head z reads)
    p[z, i, :] = softmax(s[z, i, :])            (-inf where is_causal and j > i: top-left aligned)
    o[z, i]    = sum_j p[z, i, j] * drop[z, i, j] / (1 - dropout_p) * v[z', j]
Shapes (letters as in the README): query (..., L, E), key (..., S, E), value (..., S, Ev),
output (..., L, Ev); the leading dims broadcast, as in torch. With enable_gqa, dim -3 holds
the heads and query's Hq heads share key's Hk heads in groups of Hq / Hk (head h reads
key head h // (Hq / Hk)). attn_mask broadcasts to (..., L, S): a bool mask keeps True
entries, a float mask is added to the scores. scale defaults to 1 / sqrt(E).

A row whose keys are all masked out (by the mask, or -inf float entries) gives output 0 and
zero gradients, never NaN; torch 2.13 on the CPU does the same, several libraries do not.

Dropout: a counter-based generator keyed by (seed, z, i, j) (see common.py for the exact
integer function, shared by every backend), regenerated in the backward, never stored.
seed=None draws a fresh seed per call; the forward saves it. dropout_p=0 is exact.

Kernels see q (Z, L, E), k (Zk, S, E), v (Zk, S, Ev) C-contiguous, kv_index (Z,) int64
(output z reads keys kv_index[z]), a Mask or None, causal, scale, a Dropout or None, and
return out (Z, L, Ev) and the row log-sum-exp lse (Z, L) (+inf for a fully masked row).

Forward saves (AttentionSaved): q, k, v as the kernels saw them, the output, lse, the mask,
the seed; no L x S array. Backward recomputes the probabilities tile by tile from lse and
uses D = rowsum(dO * O); it returns (dq, dk, dv, dmask), dmask only for a float mask whose
gradient is asked for (it is the gradient of the scores, summed to the mask's shape).

Cost, for the benchmark: forward FLOPs = 4*Z*L*S*E (two products, E = Ev), halved with
is_causal and L = S; backward = 2.5x forward (five products).

Variants (the ladder):
    reference/dense  NumPy, builds the (Z, L, S) scores: the oracle (reference.py)
    numba/rows       one query row at a time, O(S) scratch per row; backward per key head (numba.py)
    cpp/flash        tiles of queries x keys through register tiles of its own (no packing of the
                     score tile), online softmax, causal tiles skipped; backward two-pass when key
                     heads are few; L <= 4 takes a streaming decode path that splits the keys
                     into fixed chunks when rows are few (csrc/attention.cpp)
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple

import numpy as np

from ..._arrays import Array, as_array, as_optional, check_float, check_like, contiguous, device, wrap
from ..._registry import dispatch, register
from . import cpp, numba, reference
from .common import Dropout, Mask, dropout_keep, make_dropout

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_forward",
           "scaled_dot_product_attention_backward", "AttentionSaved", "Mask", "Dropout", "dropout_keep"]


class AttentionSaved(NamedTuple):
    q: Array  # (Z, L, E) contiguous
    k: Array  # (Zk, S, E) contiguous
    v: Array  # (Zk, S, Ev) contiguous
    out: Array  # (Z, L, Ev)
    lse: Array  # (Z, L) row log-sum-exp, +inf for fully masked rows
    kv_index: Array  # (Z,) int64
    mask: Mask | None
    mask_shape: tuple[int, ...] | None  # a float mask's own shape (its gradient's); None: no float mask
    causal: bool
    scale: float
    dropout: Dropout | None
    seed: int
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    batch: tuple[int, ...]  # the output's leading dims


def _kv_index(q_batch: tuple, k_batch: tuple, gqa: bool) -> tuple[np.ndarray, tuple]:
    """(kv_index over the output's batch, the output's batch shape)."""
    idx = np.arange(int(np.prod(k_batch)), dtype=np.int64).reshape(k_batch)
    if gqa:
        hq, hk = q_batch[-1], k_batch[-1]
        idx = np.repeat(idx, hq // hk, axis=-1)
    try:
        batch = np.broadcast_shapes(q_batch, idx.shape)
    except ValueError:
        raise ValueError(f"key: batch dims {k_batch} do not broadcast with query's {q_batch}") from None
    return np.array(np.broadcast_to(idx, batch), np.int64).reshape(-1), tuple(batch)


def _mask(m: Array, q: Array, batch: tuple, L: int, S: int) -> tuple[Mask, tuple | None]:
    if m.dtype == np.bool_:
        data = np.where(m, 0.0, -np.inf).astype(q.dtype)
        float_shape = None
    elif m.dtype.kind == "f":
        check_like(m, "attn_mask", q, "query")
        data = contiguous(m)
        float_shape = tuple(m.shape)
    else:
        raise TypeError(f"attn_mask: expected a bool mask or dtype {q.dtype} (the dtype of query), got {m.dtype}")
    try:
        b = np.broadcast_to(data, batch + (L, S))
    except ValueError:
        raise ValueError(f"attn_mask: shape {tuple(m.shape)} is not broadcastable to {batch + (L, S)}") from None
    st = [s // data.itemsize for s in b.strides]
    offset = np.zeros(batch, np.int64)
    for d, n in enumerate(batch):
        shape = [1] * len(batch)
        shape[d] = n
        offset = offset + (np.arange(n, dtype=np.int64) * st[d]).reshape(shape)
    return Mask(data, np.ascontiguousarray(offset).reshape(-1), int(st[-2]), int(st[-1])), float_shape


def _check_p(dropout_p: Any) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float, np.floating, np.integer)):
        raise TypeError(f"dropout_p: expected a float, got {type(dropout_p).__name__}")
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p: expected a value in [0, 1), got {dropout_p}")
    return float(dropout_p)


def _prepare(query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: Any, is_causal: Any, scale: Any,
             enable_gqa: Any, seed: Any) -> AttentionSaved:
    """Checks the arguments; the kernels' view of them, as an AttentionSaved without out and lse."""
    q, k, v = as_array(query, "query"), as_array(key, "key"), as_array(value, "value")
    m = as_optional(attn_mask, "attn_mask")
    check_float(q, "query")
    check_like(k, "key", q, "query")
    check_like(v, "value", q, "query")
    for a, name, want in ((q, "query", "(..., L, E)"), (k, "key", "(..., S, E)"), (v, "value", "(..., S, Ev)")):
        if a.ndim < 2:
            raise ValueError(f"{name}: expected an array of shape {want}, got shape {tuple(a.shape)}")
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if k.shape[-1] != E:
        raise ValueError(f"key: expected last dim {E} (query's E), got shape {tuple(k.shape)}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"value: expected shape {tuple(k.shape[:-1]) + ('Ev',)} (key's leading dims), "
                         f"got {tuple(v.shape)}")
    dropout_p = _check_p(dropout_p)
    is_causal, enable_gqa = bool(is_causal), bool(enable_gqa)
    if is_causal and m is not None:
        raise ValueError("attn_mask: must be None when is_causal=True (as in torch)")
    if scale is None:
        scale = 1.0 / np.sqrt(E) if E > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if seed is None:
        seed = secrets.randbits(64)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed: expected None or an int in [0, 2**64), got {seed!r}")
    if enable_gqa:
        if q.ndim < 3 or k.ndim < 3:
            raise ValueError("enable_gqa: query and key need a heads dim (..., H, L, E)")
        if q.shape[-3] % k.shape[-3]:
            raise ValueError(f"enable_gqa: query's {q.shape[-3]} heads are not a multiple of key's {k.shape[-3]}")
    kv_index, batch = _kv_index(tuple(q.shape[:-2]), tuple(k.shape[:-2]), enable_gqa)
    mask, mask_shape = (None, None) if m is None else _mask(m, q, batch, L, S)
    Z = int(np.prod(batch))
    q3 = contiguous(np.broadcast_to(q, batch + (L, E))).reshape(Z, L, E)
    k3 = contiguous(k).reshape(-1, S, E)
    v3 = contiguous(v).reshape(-1, S, Ev)
    dropout = make_dropout(dropout_p, seed) if dropout_p > 0 else None
    return AttentionSaved(q3, k3, v3, None, None, kv_index, mask, mask_shape, is_causal, float(scale), dropout,
                          int(seed), tuple(q.shape), tuple(k.shape), tuple(v.shape), batch)


def scaled_dot_product_attention_forward(query: Any, key: Any, value: Any, attn_mask: Any = None,
                                         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                         enable_gqa: bool = False, seed: int | None = None
                                         ) -> tuple[Any, AttentionSaved]:
    """(output, saved): torch.nn.functional.scaled_dot_product_attention plus what backward needs."""
    p = _prepare(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed)
    out, lse = dispatch("scaled_dot_product_attention", "forward", device(p.q),
                        p.q, p.k, p.v, p.kv_index, p.mask, p.causal, p.scale, p.dropout)
    L, Ev = p.q.shape[1], p.v.shape[2]
    return wrap(out.reshape(p.batch + (L, Ev)), query), p._replace(out=out, lse=lse)


def _unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum g over the dims broadcasting added, down to shape."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def scaled_dot_product_attention_backward(grad_output: Any, saved: AttentionSaved,
                                          needs_input_grad: tuple[bool, ...] = (True, True, True, True)
                                          ) -> tuple[Any, Any, Any, Any]:
    """(grad_query, grad_key, grad_value, grad_attn_mask) from the forward's AttentionSaved.

    grad_attn_mask is None unless the mask was a float mask and needs_input_grad[3] asks for
    it. The result is bitwise repeatable (no atomics; the cpp backend sums every block in one
    fixed order, at any thread count).
    """
    s = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", s.q, "query")
    Z, L, Ev = s.out.shape
    if tuple(g.shape) != s.batch + (L, Ev):
        raise ValueError(f"grad_output: expected shape {s.batch + (L, Ev)}, got {tuple(g.shape)}")
    want_dmask = s.mask_shape is not None and len(needs_input_grad) > 3 and bool(needs_input_grad[3])
    dq, dk, dv, ds = dispatch("scaled_dot_product_attention", "backward", device(s.q),
                              contiguous(g).reshape(Z, L, Ev), s.q, s.k, s.v, s.out, s.lse, s.kv_index, s.mask,
                              s.causal, s.scale, s.dropout, want_dmask)
    S = s.k.shape[1]
    dq = _unbroadcast(dq.reshape(s.batch + (L, s.q.shape[2])), s.q_shape)
    dmask = None if ds is None else _unbroadcast(ds.reshape(s.batch + (L, S)), s.mask_shape)
    return (wrap(dq, grad_output), wrap(dk.reshape(s.k_shape), grad_output), wrap(dv.reshape(s.v_shape), grad_output),
            wrap(dmask, grad_output))


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                                 seed: int | None = None) -> Any:
    """torch.nn.functional.scaled_dot_product_attention: (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev)."""
    return scaled_dot_product_attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                enable_gqa, seed)[0]


def flops(Z: int, L: int, S: int, E: int, Ev: int, causal: bool) -> float:
    """Forward FLOPs: 2*Z*L*S*(E + Ev), halved for causal with L = S (the benchmark's formula)."""
    f = 2.0 * Z * L * S * (E + Ev)
    return f / 2 if causal else f


# ---- registration: (op, direction, backend, variant) -> kernel ------------------------------

_OP = "scaled_dot_product_attention"
register(_OP, "forward", "reference", "dense", reference.scaled_dot_product_attention_forward_reference, default=True)
register(_OP, "backward", "reference", "dense", reference.scaled_dot_product_attention_backward_reference,
         default=True)
register(_OP, "forward", "numba", "rows", numba.scaled_dot_product_attention_forward_numba_rows, default=True)
register(_OP, "backward", "numba", "rows", numba.scaled_dot_product_attention_backward_numba_rows, default=True)
register(_OP, "forward", "cpp", "flash", cpp.scaled_dot_product_attention_forward_cpp_flash, default=True)
register(_OP, "backward", "cpp", "flash", cpp.scaled_dot_product_attention_backward_cpp_flash, default=True)
from . import cuda as _cuda_glue  # noqa: E402  (CUDA: kernels/attention.cu, registered by its glue)

_cuda_glue.register_all()
