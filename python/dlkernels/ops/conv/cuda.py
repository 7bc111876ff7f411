"""Glue to the CUDA conv kernels (kernels/conv.cu): allocate on the input's device, launch.

Every function here has the signature of its direction (forward: x, w, b, p -> y;
backward: dy, x, w, p, needs -> (dx, dw, db)) and takes contiguous CuPy arrays of one dtype
(float32, float64, float16 or bfloat16; sums in float32, float64 for float64).

Variants (one line each in kernels/conv.cu's header):
    igemm      implicit GEMM on CUDA cores, any dtype; dw by split-K with a fixed-order sum
    mma        the same GEMMs on tensor cores (mma.sync), float16/bfloat16 only
    depthwise  groups == C: direct kernels (GEMM is the wrong shape there)
    atomic     backward only, opt-in: igemm with dw's split-K partials added by atomicAdd
               (not bitwise repeatable; chosen only by `backend("cuda", variant="atomic")`)
Float32 is real float32 here (no TF32).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import _cuda
from .common import ConvParams

FILE = "conv.cu"
FWD, DGRAD, WGRAD, WGRAD_ATOMIC = 0, 1, 2, 3
TARGET_BLOCKS = 1024  # dw split-K aims for this many blocks; a constant, so results never depend on the GPU


def _family(t: str) -> list[str]:
    """Every kernel of conv.cu for C type t, compiled together in one NVRTC run."""
    names = [f"conv2d_cuda_igemm<{t}, {m}>" for m in (FWD, DGRAD, WGRAD, WGRAD_ATOMIC)]
    if t in ("dk_half", "dk_bf16"):
        names += [f"conv2d_cuda_mma<{t}, {m}>" for m in (FWD, DGRAD, WGRAD, WGRAD_ATOMIC)]
    names += [f"{k}<{t}>" for k in ("conv2d_wgrad_reduce_cuda", "conv2d_bias_grad_cuda",
                                    "conv2d_forward_cuda_depthwise", "conv2d_dgrad_cuda_depthwise",
                                    "conv2d_wgrad_cuda_depthwise")]
    return names


def _kernel(name: str, x, mode: int | None = None):
    """The compiled kernel `name` for x's dtype (and GEMM mode, for the two GEMM engines)."""
    t = _cuda.c_type(x)
    expr = f"{name}<{t}>" if mode is None else f"{name}<{t}, {mode}>"
    return _cuda.kernel(FILE, expr, _family(t))


def _shape_args(x, w, p: ConvParams) -> tuple:
    """The 16 ints every conv kernel takes after its pointers (CONV_ARGS in conv.cu)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (pt, _, pl, _), (dh, dw), (P, Q) = p.stride, p.padding, p.dilation, p.out_size
    return tuple(np.int32(v) for v in (N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, p.groups))


def _gemm(engine: str, mode: int, asrc, bsrc, bias, out, ws, splits: int, x, w, p: ConvParams) -> None:
    """One implicit GEMM (conv.cu's igemm or mma kernel) over all groups and splits."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    G, (P, Q) = p.groups, p.out_size
    M, Ng = {FWD: (N * P * Q, K // G), DGRAD: (N * H * W, Cg)}.get(mode, (K // G, Cg * R * S))
    kern = _kernel(f"conv2d_cuda_{engine}", x, mode)
    grid = (_cuda.cdiv(M, 64), _cuda.cdiv(Ng, 64), G * splits)
    block = (256,) if engine == "igemm" else (128,)  # 4x4 per thread / 4 warps of mma tiles
    has_bias = np.int32(bias is not None)
    _cuda.launch(kern, grid, block, (asrc, bsrc, x if bias is None else bias, has_bias, out, ws,
                                     np.int32(splits), *_shape_args(x, w, p)))


def _splits(x, w, p: ConvParams) -> int:
    """How many slices dw's reduction over N*P*Q is cut into (each at least 256 long)."""
    N, (K, Cg, R, S), G, (P, Q) = x.shape[0], w.shape, p.groups, p.out_size
    tiles = _cuda.cdiv(K // G, 64) * _cuda.cdiv(Cg * R * S, 64) * G
    by_work = max(1, N * P * Q // 256)
    return int(max(1, min(_cuda.cdiv(TARGET_BLOCKS, tiles), by_work, 65535 // G)))


def _dw_gemm(engine: str, atomic: bool, dy, x, w, p: ConvParams):
    """dw by split-K: partials per split in a workspace, then summed in split order; or, with
    atomic, all splits added into one zeroed accumulator (order left to the hardware)."""
    K, Cg, R, S = w.shape
    splits = _splits(x, w, p)
    dw = _cuda.empty(w.shape, w.dtype)
    size = K * Cg * R * S
    if atomic:
        ws = _cuda.zeros((1, K, Cg * R * S), _cuda.acc_dtype(x))
        _gemm(engine, WGRAD_ATOMIC, dy, x, None, dw, ws, splits, x, w, p)
        splits = 1
    else:
        ws = _cuda.empty((splits, K, Cg * R * S), _cuda.acc_dtype(x))
        _gemm(engine, WGRAD, dy, x, None, dw, ws, splits, x, w, p)
    reduce = _kernel("conv2d_wgrad_reduce_cuda", x)
    _cuda.launch(reduce, (_cuda.cdiv(size, 256),), (256,), (ws, dw, np.int64(size), np.int32(splits)))
    return dw


def _db(dy, w):
    """db[k] = sum of dy[:, k]: one block per output channel, fixed-order sums."""
    N, K, P, Q = dy.shape
    if N * P * Q == 0:
        return _cuda.zeros((K,), w.dtype)
    db = _cuda.empty((K,), w.dtype)
    kern = _kernel("conv2d_bias_grad_cuda", dy)
    _cuda.launch(kern, (K,), (256,), (dy, db, np.int32(N), np.int32(K), np.int64(P * Q)))
    return db


def forward(variant: str) -> Callable:
    engine = "mma" if variant == "mma" else "igemm"

    def conv2d_forward_cuda(x, w, b, p: ConvParams):
        with _cuda.device_of(x):
            N, K, (P, Q) = x.shape[0], w.shape[0], p.out_size
            y = _cuda.empty((N, K, P, Q), x.dtype)
            if variant == "depthwise":
                kern = _kernel("conv2d_forward_cuda_depthwise", x)
                # one thread per output element, q fastest: neighbours read neighbouring x
                _cuda.launch(kern, (_cuda.cdiv(y.size, 256),), (256,),
                             (x, w, x if b is None else b, np.int32(b is not None), y, *_shape_args(x, w, p)))
            else:
                _gemm(engine, FWD, x, w, b, y, y, 1, x, w, p)
            return y

    conv2d_forward_cuda.__name__ = f"conv2d_forward_cuda_{variant}"
    return conv2d_forward_cuda


def backward(variant: str) -> Callable:
    engine = "mma" if variant == "mma" else "igemm"

    def conv2d_backward_cuda(dy, x, w, p: ConvParams, needs: tuple[bool, bool, bool]):
        with _cuda.device_of(x):
            dx = dw = db = None
            if variant == "depthwise":
                if needs[0]:
                    dx = _cuda.empty(x.shape, x.dtype)
                    kern = _kernel("conv2d_dgrad_cuda_depthwise", x)
                    _cuda.launch(kern, (_cuda.cdiv(dx.size, 256),), (256,),
                                 (dy, w, dx, *_shape_args(x, w, p)))
                if needs[1]:
                    dw = _cuda.empty(w.shape, w.dtype)
                    kern = _kernel("conv2d_wgrad_cuda_depthwise", x)
                    # one block per weight tap (k, r, s): its whole sum, in a fixed order
                    _cuda.launch(kern, (w.size,), (256,), (dy, x, dw, *_shape_args(x, w, p)))
            else:
                if needs[0]:
                    dx = _cuda.empty(x.shape, x.dtype)
                    _gemm(engine, DGRAD, dy, w, None, dx, dx, 1, x, w, p)
                if needs[1]:
                    dw = _dw_gemm(engine, variant == "atomic", dy, x, w, p)
            if needs[2]:
                db = _db(dy, w)
            return dx, dw, db

    conv2d_backward_cuda.__name__ = f"conv2d_backward_cuda_{variant}"
    return conv2d_backward_cuda


def depthwise(w, p: ConvParams) -> str | None:
    """Why the depthwise kernels fit (one input channel per group, several groups), or None."""
    return "groups == input channels (depthwise)" if w.shape[1] == 1 and p.groups > 1 else None


def tensor_cores(x, w, p: ConvParams) -> str | None:
    """Why the mma variant fits: 16-bit floats (and not a depthwise conv), or None."""
    if str(x.dtype) in _cuda.HALF_TYPES and not depthwise(w, p):
        return f"tensor cores for {x.dtype}"
    return None


def needs_half(x) -> str | None:
    """None when x is float16/bfloat16 (what mma takes), else why not."""
    if str(x.dtype) in _cuda.HALF_TYPES:
        return None
    return f"tensor cores take float16 or bfloat16, got {x.dtype}"


def needs_depthwise(w, p: ConvParams) -> str | None:
    """None when the depthwise kernels fit, else why not."""
    return None if depthwise(w, p) else "needs groups == input channels"
