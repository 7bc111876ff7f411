"""Convolution: conv1d and conv2d, forward and hand-written backward, as torch.nn.functional.

Math (cross-correlation, as every DL framework): for output channel k in group g,
    y[n, k, p, q] = b[k] + sum_{c<Cg, r<R, s<S} w[k, c, r, s] * x[n, g*Cg + c, p*sh - pt + r*dh, q*sw - pl + s*dw]
reading 0 outside the input. Shapes (letters as in the README):
    input  x (N, C, H, W)        conv1d: (N, C, L); an unbatched input drops N
    weight w (K, C/groups, R, S) conv1d: (K, C/groups, R)
    bias   b (K,) or None
    output y (N, K, P, Q)        P = (H + pt + pb - dh*(R-1) - 1) // sh + 1, and likewise Q
conv1d is conv2d on (N, C, 1, L): every kernel is written once, in 2-D.

Forward saves (ConvSaved): the input and weight as the kernels saw them (4-D, contiguous),
whether there was a bias, the normalized parameters, and the user's ranks.
Backward returns (grad_input, grad_weight, grad_bias); grad_bias is None without a bias.

Cost, for the benchmark: forward FLOPs = 2*N*K*P*Q*Cg*R*S; backward (dx and dw) twice that.
Bytes (minimum traffic) = itemsize * (x + w + y sizes).

Variants (the ladder, each tested and benchmarked):
    reference/taps    NumPy, one einsum per kernel tap: the oracle (reference.py)
    numba/direct      the seven loops of the definition, compiled (numba.py)
    numba/im2col      unfold the input, then a matrix product (numba.py)
    cpp/im2col        unfold + the packed AVX-512/AVX2 GEMM of csrc/gemm.cpp (csrc/conv.cpp)
    cpp/implicit      stride 1: the GEMM's panels packed straight from the padded input, the
                      filters packed once; dx as a forward convolution of dy (csrc/conv.cpp)
    cpp/depthwise     direct, vectorized along the output row: for groups == C, where GEMM
                      is the wrong shape (csrc/conv.cpp)
    cpp/winograd      3x3, stride 1: Winograd F(2x2, 3x3), 16 GEMMs over channels on 4x4-transformed
                      tiles, 2.25x fewer multiplies; dx and dw likewise (csrc/winograd.cpp)
    cpp/direct        groups == 1 with a shallow reduction C*R*S (few input channels, e.g. C1; conv1d
                      to C*S = 512, e.g. C5):
                      output-stationary along the output row, a block of output channels per
                      broadcast tap; dx gathered from padded dy, dw summed per thread (csrc/conv.cpp)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..._arrays import (
    Array,
    as_array,
    as_optional,
    check_float,
    check_like,
    check_ndim,
    check_shape,
    contiguous,
    device,
    wrap,
)
from ..._registry import dispatch, register
from . import cpp, numba, reference
from .common import ConvParams, conv_params


class ConvSaved(NamedTuple):
    input: Array  # (N, C, H, W) contiguous; conv1d's has H = 1
    weight: Array  # (K, C/groups, R, S) contiguous; conv1d's has R = 1
    has_bias: bool
    params: ConvParams
    nd: int  # 1 (conv1d) or 2 (conv2d)
    unbatched: bool  # the user's input had no batch dim


def _forward(nd: int, input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
             groups: Any) -> tuple[Any, ConvSaved]:
    x, w, b = as_array(input, "input"), as_array(weight, "weight"), as_optional(bias, "bias")
    check_float(x, "input")
    check_like(w, "weight", x, "input")
    check_ndim(x, "input", (nd + 1, nd + 2), "(N, C, H, W) or (C, H, W)" if nd == 2 else "(N, C, L) or (C, L)")
    check_ndim(w, "weight", (nd + 2,), "(K, C/groups, R, S)" if nd == 2 else "(K, C/groups, R)")
    if b is not None:
        check_like(b, "bias", x, "input")
        check_shape(b, "bias", (w.shape[0],))
    unbatched = x.ndim == nd + 1
    x4 = x[None] if unbatched else x
    if nd == 1:  # (N, C, L) -> (N, C, 1, L)
        x4, w4 = x4[:, :, None, :], w[:, :, None, :]
    else:
        w4 = w
    p = conv_params(x4.shape, w4.shape, stride, padding, dilation, groups, nd)
    x4, w4 = contiguous(x4), contiguous(w4)
    b = None if b is None else contiguous(b)
    y = dispatch("conv2d", "forward", device(x), x4, w4, b, p)
    y = y[:, :, 0, :] if nd == 1 else y
    y = y[0] if unbatched else y
    return wrap(y, input), ConvSaved(x4, w4, b is not None, p, nd, unbatched)


def conv_backward(grad_output: Any, saved: ConvSaved,
                  needs_input_grad: tuple[bool, bool, bool] = (True, True, True)) -> tuple[Any, Any, Any]:
    """(grad_input, grad_weight, grad_bias) of conv1d or conv2d, from the forward's ConvSaved.

    needs_input_grad skips what is not wanted (its entry comes back None); grad_bias is None
    when the forward had no bias. grad_weight and grad_bias are bitwise repeatable at a
    fixed thread count.
    """
    x4, w4, has_bias, p, nd, unbatched = saved
    g = as_array(grad_output, "grad_output")
    check_like(g, "grad_output", x4, "input")
    N, K, (P, Q) = x4.shape[0], w4.shape[0], p.out_size
    g4 = g[None] if unbatched else g
    g4 = g4[:, :, None, :] if nd == 1 and g4.ndim == 3 else g4
    check_shape(g4, "grad_output", (N, K, P, Q))
    needs = (bool(needs_input_grad[0]), bool(needs_input_grad[1]), bool(needs_input_grad[2]) and has_bias)
    dx, dw, db = dispatch("conv2d", "backward", device(x4), contiguous(g4), x4, w4, p, needs)
    if dx is not None:
        dx = dx[:, :, 0, :] if nd == 1 else dx
        dx = dx[0] if unbatched else dx
    if dw is not None and nd == 1:
        dw = dw[:, :, 0, :]
    return wrap(dx, grad_output), wrap(dw, grad_output), wrap(db, grad_output)


def conv2d_forward(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1, groups: int = 1) -> tuple[Any, ConvSaved]:
    """(output, saved): torch.nn.functional.conv2d, plus what conv2d_backward needs."""
    return _forward(2, input, weight, bias, stride, padding, dilation, groups)


def conv1d_forward(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1, groups: int = 1) -> tuple[Any, ConvSaved]:
    """(output, saved): torch.nn.functional.conv1d, plus what conv1d_backward needs."""
    return _forward(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """torch.nn.functional.conv2d: input (N, C, H, W) or (C, H, W), weight (K, C/groups, R, S).

    padding: int, (ph, pw), 'valid' or 'same' (stride 1 only; an even kernel's extra pixel
    goes at the end, as in torch). Returns (N, K, P, Q) in the input's library.
    """
    return _forward(2, input, weight, bias, stride, padding, dilation, groups)[0]


def conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """torch.nn.functional.conv1d: input (N, C, L) or (C, L), weight (K, C/groups, R)."""
    return _forward(1, input, weight, bias, stride, padding, dilation, groups)[0]


conv2d_backward = conv_backward
conv1d_backward = conv_backward


def flops(x_shape: tuple[int, ...], w_shape: tuple[int, ...], p: ConvParams) -> int:
    """Forward FLOPs (multiply and add counted apart); backward (dx and dw) is twice this."""
    N, (K, Cg, R, S), (P, Q) = x_shape[0], w_shape, p.out_size
    return 2 * N * K * P * Q * Cg * R * S


# ---- registration: (op, direction, backend, variant) -> kernel ------------------------------

register("conv2d", "forward", "reference", "taps", reference.conv2d_forward_reference, default=True)
register("conv2d", "backward", "reference", "taps", reference.conv2d_backward_reference, default=True)
register("conv2d", "forward", "numba", "direct", numba.conv2d_forward_numba_direct)
register("conv2d", "backward", "numba", "direct", numba.conv2d_backward_numba_direct)
register("conv2d", "forward", "numba", "im2col", numba.conv2d_forward_numba_im2col, default=True)
register("conv2d", "backward", "numba", "im2col", numba.conv2d_backward_numba_im2col, default=True)
register("conv2d", "forward", "numba", "depthwise", numba.conv2d_forward_numba_depthwise,
         supports=lambda x, w, b, p: None if numba.one_channel(w, p) else "needs one input channel per group",
         prefer=lambda x, w, b, p: cpp.depthwise(w, p) or numba.one_channel(w, p))
register("conv2d", "backward", "numba", "depthwise", numba.conv2d_backward_numba_depthwise,
         supports=lambda dy, x, w, p, needs: None if numba.one_channel(w, p) else "needs one input channel per group",
         prefer=lambda dy, x, w, p, needs: cpp.depthwise(w, p) or numba.one_channel(w, p))
register("conv2d", "forward", "cpp", "im2col", cpp.forward("im2col"))
register("conv2d", "backward", "cpp", "im2col", cpp.backward("im2col"))
register("conv2d", "forward", "cpp", "implicit", cpp.forward("implicit"), default=True)
register("conv2d", "backward", "cpp", "implicit", cpp.backward("implicit"), default=True)
register("conv2d", "forward", "cpp", "depthwise", cpp.forward("depthwise"),
         supports=lambda x, w, b, p: None if cpp.depthwise(w, p) else "needs groups == input channels",
         prefer=lambda x, w, b, p: cpp.depthwise(w, p))
register("conv2d", "backward", "cpp", "depthwise", cpp.backward("depthwise"),
         supports=lambda dy, x, w, p, needs: None if cpp.depthwise(w, p) else "needs groups == input channels",
         prefer=lambda dy, x, w, p, needs: cpp.depthwise(w, p))
# winograd before direct: where both ask (3x3 with 16-17 input channels), winograd's lead measured larger.
_NOT_3X3 = "needs a 3x3 filter, stride 1, dilation 1, groups 1"
register("conv2d", "forward", "cpp", "winograd", cpp.forward("winograd"),
         supports=lambda x, w, b, p: None if cpp.winograd_fits(w, p) else _NOT_3X3,
         prefer=lambda x, w, b, p: cpp.winograd(x, w, p))
register("conv2d", "backward", "cpp", "winograd", cpp.backward("winograd"),
         supports=lambda dy, x, w, p, needs: None if cpp.winograd_fits(w, p) else _NOT_3X3,
         prefer=lambda dy, x, w, p, needs: cpp.winograd(x, w, p))
register("conv2d", "forward", "cpp", "direct", cpp.forward("direct"),
         supports=lambda x, w, b, p: cpp.needs_dense(p),
         prefer=lambda x, w, b, p: cpp.direct(x, w, p))
register("conv2d", "backward", "cpp", "direct", cpp.backward("direct"),
         supports=lambda dy, x, w, p, needs: cpp.needs_dense(p),
         prefer=lambda dy, x, w, p, needs: cpp.direct(x, w, p, backward=True))

# CUDA (kernels/conv.cu through ops/conv/cuda.py): igemm default; mma and depthwise ask for
# their inputs; atomic (dw by atomicAdd, not repeatable) runs only when forced.
from . import cuda as _cuda_glue  # noqa: E402

register("conv2d", "forward", "cuda", "igemm", _cuda_glue.forward("igemm"), default=True)
register("conv2d", "backward", "cuda", "igemm", _cuda_glue.backward("igemm"), default=True)
register("conv2d", "forward", "cuda", "mma", _cuda_glue.forward("mma"),
         supports=lambda x, w, b, p: _cuda_glue.needs_half(x),
         prefer=lambda x, w, b, p: _cuda_glue.tensor_cores(x, w, p))
register("conv2d", "backward", "cuda", "mma", _cuda_glue.backward("mma"),
         supports=lambda dy, x, w, p, needs: _cuda_glue.needs_half(x),
         prefer=lambda dy, x, w, p, needs: _cuda_glue.tensor_cores(x, w, p))
register("conv2d", "forward", "cuda", "depthwise", _cuda_glue.forward("depthwise"),
         supports=lambda x, w, b, p: _cuda_glue.needs_depthwise(w, p),
         prefer=lambda x, w, b, p: _cuda_glue.depthwise(w, p))
register("conv2d", "backward", "cuda", "depthwise", _cuda_glue.backward("depthwise"),
         supports=lambda dy, x, w, p, needs: _cuda_glue.needs_depthwise(w, p),
         prefer=lambda dy, x, w, p, needs: _cuda_glue.depthwise(w, p))
register("conv2d", "backward", "cuda", "atomic", _cuda_glue.backward("atomic"))
