"""Glue to the C++ conv kernels (csrc/conv.cpp): allocate the outputs, call _C."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import _cpp, _threads
from .common import ConvParams


def forward(variant: str) -> Callable:
    def conv2d_forward_cpp(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams) -> np.ndarray:
        y = np.empty((x.shape[0], w.shape[0], *p.out_size), x.dtype)
        _cpp._C.conv2d_forward(variant, x, w, b, y, p.cpp_params(), p.groups)
        return y

    conv2d_forward_cpp.__name__ = f"conv2d_forward_cpp_{variant}"
    return conv2d_forward_cpp


def backward(variant: str) -> Callable:
    def conv2d_backward_cpp(dy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                            needs: tuple[bool, bool, bool]) -> tuple:
        dx = np.empty_like(x) if needs[0] else None
        dw = np.empty_like(w) if needs[1] else None
        db = np.empty(w.shape[0], w.dtype) if needs[2] else None
        _cpp._C.conv2d_backward(variant, dy, x, w, dx, dw, db, p.cpp_params(), p.groups)
        return dx, dw, db

    conv2d_backward_cpp.__name__ = f"conv2d_backward_cpp_{variant}"
    return conv2d_backward_cpp


def depthwise(w: np.ndarray, p: ConvParams) -> str | None:
    """Why the depthwise kernel fits (one input channel per group, several groups), or None."""
    return "groups == input channels (depthwise)" if w.shape[1] == 1 and p.groups > 1 else None


def needs_dense(p: ConvParams) -> str | None:
    """Why the direct kernel cannot take this input (it runs groups == 1 only), or None."""
    return None if p.groups == 1 else "needs groups == 1"


# The direct kernel beats implicit GEMM while the reduction C*R*S is shallow. Measured A/B on this
# 2-core Zen 4, 2 threads, float32 (forward; backward): C*R*S = 25 (C1) 1.3x; 1.2x, 27 (C3 3x3)
# 1.5x; 1.2x, 36 1.2x; 1.1x, 72 1.1x; 1.7x, 144 1.06x; 1.1x, 147 (C3 7x7 stride 2) 1.2x forward,
# 288 1.1x; 1.0x (a tie). Its backward gathers dx from dy dilated by the stride, sh*sw times the
# work: at stride 2 it lost (1.3-1.5x slower than implicit), so the backward asks for stride 1.
# Dilation and padding it takes, correctly, but was not timed with: it asks for dilation 1.
DIRECT_MAX_CRS = 160
# One output row (conv1d): direct stays ahead further, fwd; bwd vs implicit: C*S = 144 1.11x;
# 1.11x, 160 1.14x; 1.03x, 192 1.03x; 1.05x, 448 (C5) 1.04x; 1.03x, and behind past 512:
# 768 0.93x; 0.72x, 896 1.02x; 0.92x.
DIRECT_MAX_CRS_1ROW = 512


def direct(x: np.ndarray, w: np.ndarray, p: ConvParams, backward: bool = False) -> str | None:
    """Why the direct kernel beats implicit GEMM on this input, or None (see DIRECT_MAX_CRS*)."""
    K, C, R, S = w.shape
    limit = DIRECT_MAX_CRS_1ROW if R == 1 and p.out_size[0] == 1 else DIRECT_MAX_CRS
    if p.groups != 1 or C * R * S > limit or p.dilation != (1, 1):
        return None
    if backward and p.stride != (1, 1):
        return None
    # The backward splits the samples over the threads: fewer samples than threads idle some.
    if backward and x.shape[0] < _threads.get_num_threads():
        return None
    return f"shallow reduction C*R*S = {C * R * S} <= {limit} (direct)"


def winograd_fits(w: np.ndarray, p: ConvParams) -> str | None:
    """Why Winograd F(2x2, 3x3) applies (3x3 filter, stride 1, dilation 1, groups 1), or None.

    conv1d's 1x3 filters (conv2d with H = 1) are not 3x3 and are refused.
    """
    ok = w.shape[2:] == (3, 3) and p.stride == (1, 1) and p.dilation == (1, 1) and p.groups == 1
    return "3x3 filter, stride 1, dilation 1, groups 1 (Winograd F(2x2, 3x3))" if ok else None


def winograd(x: np.ndarray, w: np.ndarray, p: ConvParams) -> str | None:
    """Why winograd should beat implicit here, or None: it fits, 16+ input and output channels
    (its 16 GEMMs reduce over C only, not 9C) and 256+ output tiles of 2x2 (the filter
    transform and dw's per-thread sums cost 16 K C each, paid once per call). Measured
    (2 threads, fwd+bwd, winograd vs implicit): C2 1.46x, C3 1.50x, N16 C64 16x16 1.28x,
    N8 C16 32x32 K32 1.10x; against: N4 C64 14x14 (196 tiles) 0.77x, N2 C256 7x7 0.65x,
    N32 C8 28x28 0.81x."""
    fits = winograd_fits(w, p)
    P, Q = p.out_size
    tiles = x.shape[0] * ((P + 1) // 2) * ((Q + 1) // 2)
    if fits and min(w.shape[0], w.shape[1]) >= 16 and tiles >= 256:
        return f"{fits}, 16+ channels, {tiles} tiles"
    return None
