"""Linear, Conv1d, Conv2d, MaxPool2d, ReLU, Flatten: torch.nn's names, shapes and init."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from .._arrays import Array, as_array, as_int_tuple, xp
from .module import Module, Parameter, as_dtype, uniform


class Linear(Module):
    """y = x @ weightᵀ + bias; weight (out_features, in_features), x (..., in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = None):
        super().__init__()
        d, bound = as_dtype(dtype), 1 / math.sqrt(in_features) if in_features else 0.0
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(uniform((out_features, in_features), bound, d))
        self.bias = Parameter(uniform((out_features,), bound, d)) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Any) -> Array:
        self._x = as_array(x, "input")
        y = ops.matmul.matmul(self._x, self.weight.data.T)
        return y + self.bias.data if self.bias is not None else y

    def backward(self, grad_output: Any) -> Array:
        g = as_array(grad_output, "grad_output")
        g2, x2 = g.reshape(-1, g.shape[-1]), self._x.reshape(-1, self._x.shape[-1])
        self.weight.accumulate(ops.matmul.matmul(g2.T, x2))  # dW = gᵀ x
        if self.bias is not None:
            self.bias.accumulate(g2.sum(axis=0))
        return ops.matmul.matmul(g, self.weight.data)  # dx = g W


class _ConvNd(Module):
    nd = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", dtype: Any = None):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is supported, got {padding_mode!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: {groups} must divide in_channels ({in_channels}) "
                             f"and out_channels ({out_channels})")
        d = as_dtype(dtype)
        ks = as_int_tuple(kernel_size, "kernel_size", self.nd, minimum=1)
        fan_in = in_channels // groups * math.prod(ks)
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0  # torch: kaiming_uniform(a=sqrt(5))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = Parameter(uniform((out_channels, in_channels // groups, *ks), bound, d))
        self.bias = Parameter(uniform((out_channels,), bound, d)) if bias else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")

    def forward(self, x: Any) -> Array:
        fwd = ops.conv.conv2d_forward if self.nd == 2 else ops.conv.conv1d_forward
        b = self.bias.data if self.bias is not None else None
        y, self._saved = fwd(x, self.weight.data, b, self.stride, self.padding, self.dilation, self.groups)
        return y

    def backward(self, grad_output: Any) -> Array:
        dx, dw, db = ops.conv.conv_backward(grad_output, self._saved)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class Conv2d(_ConvNd):
    """torch.nn.Conv2d: weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,)."""

    nd = 2


class Conv1d(_ConvNd):
    """torch.nn.Conv1d: weight (out_channels, in_channels/groups, k), bias (out_channels,)."""

    nd = 1


class ReLU(Module):
    def forward(self, x: Any) -> Array:
        x = as_array(x, "input")
        self._mask = x > 0
        return x * self._mask

    def backward(self, grad_output: Any) -> Array:
        return as_array(grad_output, "grad_output") * self._mask


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one (torch.nn.Flatten's defaults: 1..-1)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Any) -> Array:
        x = as_array(x, "input")
        self._shape = x.shape
        s, e = self.start_dim % x.ndim, self.end_dim % x.ndim
        return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])

    def backward(self, grad_output: Any) -> Array:
        return as_array(grad_output, "grad_output").reshape(self._shape)


class MaxPool2d(Module):
    """torch.nn.MaxPool2d (kernel_size, stride=kernel_size, padding, dilation; ceil_mode=False).

    Backward sends each output's gradient to the first maximum of its window, as torch does.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        if return_indices or ceil_mode:
            raise ValueError("return_indices, ceil_mode: only the defaults (False) are supported")
        self.kernel_size = as_int_tuple(kernel_size, "kernel_size", 2, minimum=1)
        self.stride = as_int_tuple(stride if stride is not None else kernel_size, "stride", 2, minimum=1)
        self.padding = as_int_tuple(padding, "padding", 2, minimum=0)
        self.dilation = as_int_tuple(dilation, "dilation", 2, minimum=1)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding: must be at most half the kernel size, got {padding}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def _windows(self, x: Array) -> Array:
        """(N, C, P, Q, kh*kw): every pooling window's elements, -inf where padded."""
        m = xp(x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        xpad = m.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
        win = m.lib.stride_tricks.sliding_window_view(xpad, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, P, Q, kh, kw)
        return win.reshape(win.shape[:4] + (kh * kw,))

    def forward(self, x: Any) -> Array:
        x = as_array(x, "input")
        if x.ndim != 4:
            raise ValueError(f"input: expected a 4-D array (N, C, H, W), got shape {tuple(x.shape)}")
        win = self._windows(x)
        self._arg, self._xshape = win.argmax(axis=-1), x.shape
        return xp(x).take_along_axis(win, self._arg[..., None], axis=-1)[..., 0]

    def backward(self, grad_output: Any) -> Array:
        g = as_array(grad_output, "grad_output")
        m = xp(g)
        kw, (sh, sw), (ph, pw), (dh, dw) = self.kernel_size[1], self.stride, self.padding, self.dilation
        N, C, H, W = self._xshape
        P, Q = g.shape[2:]
        # the padded-input position of each output's maximum
        rows = m.arange(P)[:, None] * sh + (self._arg // kw) * dh
        cols = m.arange(Q)[None, :] * sw + (self._arg % kw) * dw
        dxpad = m.zeros((N, C, H + 2 * ph, W + 2 * pw), g.dtype)
        n, c = m.meshgrid(m.arange(N), m.arange(C), indexing="ij")
        m.add.at(dxpad, (n[:, :, None, None], c[:, :, None, None], rows, cols), g)
        return dxpad[:, :, ph:ph + H, pw:pw + W]
