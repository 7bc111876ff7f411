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


def direct(x: np.ndarray, w: np.ndarray, p: ConvParams, backward: bool = False) -> str | None:
    """Why the direct kernel beats implicit GEMM on this input, or None (see DIRECT_MAX_CRS)."""
    K, C, R, S = w.shape
    if p.groups != 1 or C * R * S > DIRECT_MAX_CRS or p.dilation != (1, 1):
        return None
    if backward and p.stride != (1, 1):
        return None
    # The backward splits the samples over the threads: fewer samples than threads idle some.
    if backward and x.shape[0] < _threads.get_num_threads():
        return None
    return f"shallow reduction C*R*S = {C * R * S} <= {DIRECT_MAX_CRS} (direct)"
