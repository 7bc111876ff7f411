"""Convolution parameters, normalized once and shared by every conv variant.

conv1d runs as conv2d with H = 1, so every kernel sees the 2-D form:
  x (N, C, H, W), w (K, C/groups, R, S), b (K,) or None, y (N, K, P, Q)
  P = (H + pad_top + pad_bottom - dil_h*(R-1) - 1) // stride_h + 1, and likewise Q.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..._arrays import as_int, as_int_tuple


class ConvParams(NamedTuple):
    stride: tuple[int, int]  # (sh, sw)
    padding: tuple[int, int, int, int]  # (top, bottom, left, right): 'same' may be asymmetric
    dilation: tuple[int, int]  # (dh, dw)
    groups: int
    out_size: tuple[int, int]  # (P, Q)

    def cpp_params(self) -> list[int]:
        """The 8 integers the C++ binding takes: stride, top/left padding, dilation, P, Q."""
        (sh, sw), (pt, _, pl, _), (dh, dw), (P, Q) = self.stride, self.padding, self.dilation, self.out_size
        return [sh, sw, pt, pl, dh, dw, P, Q]


def conv_params(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any,
                dilation: Any, groups: Any, nd: int) -> ConvParams:
    """Checks torch's conv arguments against the 4-D shapes and normalizes them.

    nd is 1 for conv1d (H = R = 1 then, and the int tuples have one entry) or 2.
    """
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    groups = as_int(groups, "groups", minimum=1)
    sh, sw = _pair(as_int_tuple(stride, "stride", nd, minimum=1), nd, 1)
    dh, dw = _pair(as_int_tuple(dilation, "dilation", nd, minimum=1), nd, 1)
    if C % groups:
        raise ValueError(f"groups: {groups} does not divide the input's {C} channels")
    if K % groups:
        raise ValueError(f"groups: {groups} does not divide the weight's {K} output channels")
    if Cg * groups != C:
        raise ValueError(f"weight: expected {C // groups} input channels per group (input has {C} channels, "
                         f"groups={groups}), got weight of shape {_shape(w_shape, nd)}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError("padding: 'same' is not supported with stride > 1 (as in torch)")
            # torch puts the odd pixel of an even kernel's padding at the end
            th, tw = dh * (R - 1), dw * (S - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"padding: expected an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = _pair(as_int_tuple(padding, "padding", nd, minimum=0), nd, 0)
        pads = (ph, ph, pw, pw)
    P = (H + pads[0] + pads[1] - dh * (R - 1) - 1) // sh + 1
    Q = (W + pads[2] + pads[3] - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(f"input: padded size {_shape((H + pads[0] + pads[1], W + pads[2] + pads[3]), nd)} "
                         f"is smaller than the dilated kernel {_shape((dh * (R - 1) + 1, dw * (S - 1) + 1), nd)}")
    return ConvParams((sh, sw), pads, (dh, dw), groups, (P, Q))


def _pair(t: tuple[int, ...], nd: int, h_value: int) -> tuple[int, int]:
    """(h, w) values: conv1d's single value applies to W, and its H axis (size 1) gets h_value."""
    return (t[0], t[1]) if nd == 2 else (h_value, t[0])


def _shape(shape: tuple[int, ...], nd: int) -> tuple[int, ...]:
    """A 4-D (or 2-D spatial) shape as the user sees it: conv1d's drops the H axis."""
    return tuple(shape) if nd == 2 else tuple(s for i, s in enumerate(shape) if i != len(shape) - 2)
