"""matmul: C = A @ B, as numpy.matmul (2-D and batched with broadcasting; 1-D operands too).

Shapes: a (..., M, K), b (..., K, N) -> c (..., M, N); batch dims broadcast.
Forward saves a and b. Backward (the product rule):
    dA = dC @ Bᵀ   (summed over the batch dims that broadcasting added to a)
    dB = Aᵀ @ dC   (likewise for b)
so the backward runs the forward kernels twice; matmul registers forward kernels only.
FLOPs: 2·batch·M·N·K. Bytes: 4·(MK + KN + MN) per matrix in float32.

Kernels take a (B, M, K) and b (B, K, N), any strides (broadcast batch dims have stride 0),
and return c (B, M, N) C-contiguous. The C++ kernel is the packed GEMM in csrc/gemm.cpp that
conv, LSTM and attention call too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numba
import numpy as np

from .. import _cpp
from .._arrays import Array, as_array, check_float, check_like, device, wrap, xp
from .._registry import dispatch, register

# ---- reference -----------------------------------------------------------------------------


def matmul_forward_reference(a: Array, b: Array) -> Array:
    # c[z, i, j] = sum_k a[z, i, k] * b[z, k, j]
    return np.einsum("zik,zkj->zij", a, b)


# ---- numba ---------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True, fastmath=True)
def _matmul_numba(a, b, c):  # pragma: no cover - compiled
    Z, M, K = a.shape
    N = b.shape[2]
    for zi in numba.prange(Z * M):  # one output row per iteration
        z, i = zi // M, zi % M
        row = c[z, i]
        row[:] = 0
        for k in range(K):  # i-k-j order: the inner loop streams rows of b and c
            aik = a[z, i, k]
            brow = b[z, k]
            for j in range(N):
                row[j] += aik * brow[j]


def matmul_forward_numba(a: Array, b: Array) -> Array:
    c = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    _matmul_numba(a, b, c)
    return c


# ---- C++ -----------------------------------------------------------------------------------


def matmul_forward_cpp(a: Array, b: Array) -> Array:
    c = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    for z in range(a.shape[0]):
        _cpp._C.matmul(a[z], b[z], c[z])
    return c


# ---- the op --------------------------------------------------------------------------------


class MatmulSaved(NamedTuple):
    a: Array  # as given, (..., M, K) or (K,)
    b: Array  # as given, (..., K, N) or (K,)


def _as_3d(a: Array, b: Array) -> tuple[Array, Array, tuple[int, ...]]:
    """Broadcast the batch dims; return a (B, M, K), b (B, K, N) views and the batch shape."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, nb = xp(a), int(np.prod(batch))
    a3 = m.broadcast_to(a, batch + a.shape[-2:]).reshape((nb,) + a.shape[-2:])
    b3 = m.broadcast_to(b, batch + b.shape[-2:]).reshape((nb,) + b.shape[-2:])
    return a3, b3, batch


def _matmul(a: Array, b: Array) -> Array:
    """numpy.matmul on backend arrays, through the registry."""
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    a = a[None, :] if a_vec else a  # a vector is a 1-row (or 1-column) matrix, as in numpy
    b = b[:, None] if b_vec else b
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"b: expected {a.shape[-1]} rows (the columns of a), got shape {tuple(b.shape)}")
    try:
        a3, b3, batch = _as_3d(a, b)
    except ValueError:
        raise ValueError(f"b: batch dims {b.shape[:-2]} do not broadcast with a's {a.shape[:-2]}") from None
    c = dispatch("matmul", "forward", device(a), a3, b3).reshape(batch + (a.shape[-2], b.shape[-1]))
    c = c[..., 0] if b_vec else c
    return (c[..., 0] if b_vec else c[..., 0, :]) if a_vec else c


def _check(a: Any, b: Any) -> tuple[Array, Array]:
    a_, b_ = as_array(a, "a"), as_array(b, "b")
    check_float(a_, "a")
    check_like(b_, "b", a_, "a")
    if a_.ndim == 0 or b_.ndim == 0:
        raise ValueError("a, b: matmul needs arrays of at least 1 dimension")
    return a_, b_


def matmul_forward(a: Any, b: Any) -> tuple[Any, MatmulSaved]:
    """(a @ b, saved). Saved: a and b as given."""
    a_, b_ = _check(a, b)
    return wrap(_matmul(a_, b_), a), MatmulSaved(a_, b_)


def matmul(a: Any, b: Any) -> Any:
    """a @ b with numpy.matmul's semantics, on the fastest backend for the arrays' device."""
    return matmul_forward(a, b)[0]


def _unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum g over the leading dims broadcasting added, down to shape."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def matmul_backward(grad_output: Any, saved: MatmulSaved) -> tuple[Any, Any]:
    """(grad_a, grad_b) from grad_output (the shape of a @ b) and the forward's saved arrays."""
    a, b = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", a, "a")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g.reshape(g.shape[:-1] + (1,) + g.shape[-1:]) if a.ndim == 1 else g  # restore the M axis
    g2 = g2[..., None] if b.ndim == 1 else g2  # restore the N axis
    da = _unbroadcast(_matmul(g2, b2.swapaxes(-1, -2)), a2.shape).reshape(a.shape)
    db = _unbroadcast(_matmul(a2.swapaxes(-1, -2), g2), b2.shape).reshape(b.shape)
    return wrap(da, grad_output), wrap(db, grad_output)


# ---- registration --------------------------------------------------------------------------

register("matmul", "forward", "reference", "einsum", matmul_forward_reference, default=True)
register("matmul", "forward", "numba", "rows", matmul_forward_numba, default=True)
register("matmul", "forward", "cpp", "packed", matmul_forward_cpp, default=True)
