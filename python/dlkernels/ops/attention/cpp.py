"""Glue to the C++ attention kernels (csrc/attention.cpp): allocate the outputs, call _C."""

from __future__ import annotations

import numpy as np

from ... import _cpp


def _mask_args(mask):
    if mask is None:
        return None, None, 0, 0
    return mask.data, mask.offset, mask.row_stride, mask.col_stride


def _drop_args(dropout):
    if dropout is None:
        return False, 0, 0, 1.0
    return True, dropout.seed, dropout.threshold, dropout.scale


def scaled_dot_product_attention_forward_cpp_flash(q, k, v, kv_index, mask, causal, scale, dropout):
    Z, L, _ = q.shape
    out = np.empty((Z, L, v.shape[2]), q.dtype)
    lse = np.empty((Z, L), q.dtype)
    _cpp._C.attention_forward(q, k, v, kv_index, *_mask_args(mask), causal, scale, *_drop_args(dropout), out, lse)
    return out, lse


def scaled_dot_product_attention_backward_cpp_flash(dout, q, k, v, out, lse, kv_index, mask, causal, scale,
                                                    dropout, want_dmask):
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dmask = np.empty((q.shape[0], q.shape[1], k.shape[1]), q.dtype) if want_dmask else None
    _cpp._C.attention_backward(dout, q, k, v, out, lse, kv_index, *_mask_args(mask), causal, scale,
                               *_drop_args(dropout), dq, dk, dv, dmask)
    return dq, dk, dv, dmask
