"""conv1d, conv2d, Conv1d, Conv2d for PyTorch, over dlkernels' hand-written kernels.

Registered as torch.library custom ops dlkernels::conv2d and dlkernels::conv2d_backward
(conv1d runs through them with H = 1), with register_fake and register_autograd, so they
pass opcheck and gradcheck and run under torch.compile(fullgraph=True).
"""


from typing import Any

import torch
import torch.nn.functional as F

from .._registry import dispatch
from ..ops.conv.common import ConvParams, conv_params
from . import _bridge as B


def _params(x: torch.Tensor, w: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int],
            groups: int) -> ConvParams:
    (H, W), (R, S) = x.shape[2:], w.shape[2:]
    P = (H + padding[0] + padding[1] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + padding[2] + padding[3] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    return ConvParams(tuple(stride), tuple(padding), tuple(dilation), groups, (P, Q))


@torch.library.custom_op("dlkernels::conv2d", mutates_args=())
def _conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int],
            dilation: list[int], groups: int) -> torch.Tensor:
    """x (N, C, H, W), w (K, C/groups, R, S); padding (top, bottom, left, right)."""
    p = _params(x, w, stride, padding, dilation, groups)
    xa, wa = B.to_array(x.contiguous(), "input"), B.to_array(w.contiguous(), "weight")
    ba = B.to_array(b.contiguous(), "bias") if b is not None else None
    with B.cuda_stream(x):
        y = dispatch("conv2d", "forward", "cuda" if x.is_cuda else "cpu", xa, wa, ba, p)
    return B.to_tensor(y)


@_conv2d.register_fake
def _(x, w, b, stride, padding, dilation, groups):
    p = _params(x, w, stride, padding, dilation, groups)
    return x.new_empty((x.shape[0], w.shape[0], *p.out_size))


@torch.library.custom_op("dlkernels::conv2d_backward", mutates_args=())
def _conv2d_backward(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: list[int], padding: list[int],
                     dilation: list[int], groups: int,
                     needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db); an entry not in needs comes back with 0 elements."""
    p = _params(x, w, stride, padding, dilation, groups)
    arrays = [B.to_array(t.contiguous(), n) for t, n in ((grad, "grad_output"), (x, "input"), (w, "weight"))]
    with B.cuda_stream(x):
        dx, dw, db = dispatch("conv2d", "backward", "cuda" if x.is_cuda else "cpu", *arrays, p, tuple(needs))
    empty = x.new_empty(0)
    return tuple(B.to_tensor(a) if a is not None else empty.clone() for a in (dx, dw, db))


@_conv2d_backward.register_fake
def _(grad, x, w, stride, padding, dilation, groups, needs):
    return (B.empty_unless(needs[0], x), B.empty_unless(needs[1], w),
            x.new_empty((w.shape[0],)) if needs[2] else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, w)
    ctx.args = (stride, padding, dilation, groups)


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    wanted = B.needs(ctx, 3)
    dx, dw, db = torch.ops.dlkernels.conv2d_backward(grad, x, w, *ctx.args, wanted)
    return (B.none_if_empty(dx, wanted[0]), B.none_if_empty(dw, wanted[1]), B.none_if_empty(db, wanted[2]),
            None, None, None, None)


_conv2d.register_autograd(_backward, setup_context=_setup_context)


def _conv(nd: int, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
          padding: Any, dilation: Any, groups: int) -> torch.Tensor:
    B.check_tensor(input, "input")
    B.check_tensor(weight, "weight", like=input)
    if bias is not None:
        B.check_tensor(bias, "bias", like=input)
    if input.dim() not in (nd + 1, nd + 2) or weight.dim() != nd + 2:
        raise ValueError(f"input, weight: expected {nd + 2}-D input (or unbatched {nd + 1}-D) and {nd + 2}-D weight, "
                         f"got {tuple(input.shape)} and {tuple(weight.shape)}")
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    w = weight
    if nd == 1:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
    p = conv_params(tuple(x.shape), tuple(w.shape), stride, padding, dilation, groups, nd)
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"bias: expected shape ({w.shape[0]},), got {tuple(bias.shape)}")
    y = torch.ops.dlkernels.conv2d(x, w, bias, list(p.stride), list(p.padding), list(p.dilation), p.groups)
    y = y.squeeze(2) if nd == 1 else y
    return y.squeeze(0) if unbatched else y


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """torch.nn.functional.conv2d, run by dlkernels (same arguments, same result)."""
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """torch.nn.functional.conv1d, run by dlkernels (same arguments, same result)."""
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d whose forward runs dlkernels; same parameters, same state_dict."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":  # torch pads by mode first, then convolves unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(torch.nn.Conv1d):
    """torch.nn.Conv1d whose forward runs dlkernels; same parameters, same state_dict."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv1d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
