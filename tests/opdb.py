"""The op database: one OpInfo per op, read by the generic tests in test_ops.py.

Each entry gives sample inputs in awkward sizes, error inputs with the exception and message
they must raise, tolerances per dtype, and how to call the op's public forward/backward and
its PyTorch counterpart. Op-specific tests live in tests/test_<op>.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dlkernels as dk


@dataclass
class Sample:
    args: tuple  # positional arguments of the public forward; float arrays are float64
    kwargs: dict = field(default_factory=dict)
    desc: str = ""


@dataclass
class ErrorInput:
    args: tuple
    kwargs: dict
    exc: type
    match: str  # a regex the message must match; it names the argument


@dataclass
class OpInfo:
    name: str  # the registry's op name
    forward: Callable  # public forward returning (output(s), saved)
    backward: Callable  # public backward(grad(s), saved) -> grads of the differentiable args
    samples: Callable[[np.random.Generator], list[Sample]]
    error_inputs: Callable[[np.random.Generator], list[ErrorInput]]
    diff_args: tuple[int, ...]  # positions of the differentiable arrays in args
    torch_forward: Callable | None = None  # (*torch args, **kwargs) -> output tensor(s)
    tol: dict = field(default_factory=lambda: {"float64": 1e-10, "float32": 2e-5})
    outputs: Callable = lambda out: [out]  # forward's output(s) -> list of arrays
    grads_to_backward: Callable = lambda gs: gs[0]  # list of output grads -> backward's first argument

    def diff_arrays(self, s: Sample) -> list:
        return [s.args[i] for i in self.diff_args]


def cast(sample: Sample, dtype: str) -> Sample:
    """The sample with every float array in dtype."""
    def c(a: Any) -> Any:
        return a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
    return Sample(tuple(c(a) for a in sample.args), {k: c(v) for k, v in sample.kwargs.items()}, sample.desc)


# ---- conv -----------------------------------------------------------------------------------

def _conv_samples(nd: int) -> Callable[[np.random.Generator], list[Sample]]:
    def make(rng: np.random.Generator) -> list[Sample]:
        def case(N, C, K, size, k, desc, bias=True, **kw):
            g = kw.get("groups", 1)
            sp = (size,) * nd if isinstance(size, int) else size
            kk = (k,) * nd if isinstance(k, int) else k
            x = rng.standard_normal((N, C, *sp))
            w = rng.standard_normal((K, C // g, *kk)) / np.sqrt(C // g * np.prod(kk))
            b = rng.standard_normal(K) if bias else None
            return Sample((x, w, b), kw, desc)
        two = nd == 2
        return [
            case(2, 3, 4, 7, 3, "basic, padding 1", padding=1),
            case(1, 1, 1, 1, 1, "all ones"),
            case(3, 7, 5, 9 if two else 97, 3, "stride larger than kernel", stride=4, bias=False),
            case(2, 4, 6, (7, 9) if two else 13, 3, "dilation with padding", dilation=2, padding=2),
            case(2, 4, 6, 8, 4, "'same' with an even kernel (asymmetric padding)", padding="same", dilation=1),
            case(2, 4, 6, 11, 3, "'same' dilated", padding="same", dilation=3),
            case(1, 6, 4, 6, 3, "'valid', groups 2", padding="valid", groups=2),
            case(2, 8, 8, 10, 3, "depthwise", padding=1, groups=8),
            case(2, 4, 8, 9, 3, "depthwise, multiplier 2, stride 2", padding=1, groups=4, stride=2),
            case(0, 3, 4, 6, 3, "zero-size batch", padding=1),
            case(2, 17, 19, 97 if not two else 23, 5 if two else 7, "odd channels, wide", padding=2),
            case(1, 3, 2, 8, 2, "stride 2 even kernel", stride=2, padding=1),
            Sample((rng.standard_normal((3, 8) if not two else (3, 6, 6)),
                    rng.standard_normal((4, 3, 3) if not two else (4, 3, 3, 3)), None), {}, "unbatched input"),
        ]
    return make


def _conv_errors(nd: int) -> Callable[[np.random.Generator], list[ErrorInput]]:
    def make(rng: np.random.Generator) -> list[ErrorInput]:
        sp = (8,) * nd
        x = rng.standard_normal((2, 4, *sp)).astype(np.float32)
        w = rng.standard_normal((6, 4, *(3,) * nd)).astype(np.float32)
        E = ErrorInput
        return [
            E((x[0, 0], w), {}, ValueError, "input: expected a"),  # wrong rank
            E((x, w[:, :3]), {}, ValueError, "weight: expected 4 input channels per group"),  # channel mismatch
            E((x, w), {"groups": 3}, ValueError, "groups: 3 does not divide"),
            E((x, w), {"stride": 0}, ValueError, "stride: expected an int >= 1"),
            E((x, w), {"padding": -1}, ValueError, "padding: expected an int >= 0"),
            E((x, w), {"padding": "same", "stride": 2}, ValueError, "padding: 'same' is not supported with stride"),
            E((x, w), {"padding": "full"}, ValueError, "padding: expected an int, a tuple"),
            E((x, w), {"dilation": 0}, ValueError, "dilation: expected an int >= 1"),
            E((x.astype(np.int32), w), {}, TypeError, "input: expected dtype float32 or float64"),
            E((x, w.astype(np.float64)), {}, TypeError, "weight: expected dtype float32"),
            E((x, w, np.zeros(5, np.float32)), {}, ValueError, r"bias: expected shape \(6,\)"),
            E((x, w), {"groups": 1.5}, TypeError, "groups: expected an int"),
            E((x, w), {"stride": (1, 1, 1)}, ValueError, "stride: expected an int or"),
            E((x[..., :2], w), {}, ValueError, "input: padded size"),
            E(([[1.0]], w), {}, TypeError, "input: expected an array"),
        ]
    return make


def _torch_conv(nd: int) -> Callable:
    def f(x, w, b, **kw):
        import torch.nn.functional as F
        return (F.conv2d if nd == 2 else F.conv1d)(x, w, b, **kw)
    return f


# ---- matmul ---------------------------------------------------------------------------------

def _matmul_samples(rng: np.random.Generator) -> list[Sample]:
    r = rng.standard_normal
    return [
        Sample((r((7, 5)), r((5, 9))), {}, "2-D odd sizes"),
        Sample((r((1, 1)), r((1, 1))), {}, "1x1"),
        Sample((r((3, 33, 17)), r((3, 17, 65))), {}, "batched"),
        Sample((r((2, 1, 4, 6)), r((3, 6, 5))), {}, "broadcast batch dims"),
        Sample((r(6), r((6, 4))), {}, "vector @ matrix"),
        Sample((r((4, 6)), r(6)), {}, "matrix @ vector"),
        Sample((r((0, 6)), r((6, 3))), {}, "zero rows"),
        Sample((r((97, 130)), r((130, 70))), {}, "larger than one tile"),
    ]


def _matmul_errors(rng: np.random.Generator) -> list[ErrorInput]:
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 2))
    return [
        ErrorInput((a, b), {}, ValueError, "b: expected 4 rows"),
        ErrorInput((a.astype(np.int64), b), {}, TypeError, "a: expected dtype"),
        ErrorInput((a, b.astype(np.float32)), {}, TypeError, "b: expected dtype float64"),
        ErrorInput((np.array(1.0), b), {}, ValueError, "a, b: matmul needs arrays"),
        ErrorInput((1.0, b), {}, TypeError, "a: expected an array"),
        ErrorInput((rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4, 5))), {}, ValueError, "b: batch dims"),
    ]


def _torch_matmul(a, b):
    import torch
    return torch.matmul(a, b)


OPS = [
    OpInfo("matmul", dk.matmul_forward, dk.matmul_backward, _matmul_samples, _matmul_errors, (0, 1),
           torch_forward=_torch_matmul),
    OpInfo("conv2d", dk.conv2d_forward, dk.conv2d_backward, _conv_samples(2), _conv_errors(2), (0, 1, 2),
           torch_forward=_torch_conv(2)),
    OpInfo("conv2d", dk.conv1d_forward, dk.conv1d_backward, _conv_samples(1), _conv_errors(1), (0, 1, 2),
           torch_forward=_torch_conv(1)),
]
OPS_BY_ID = {f"{op.forward.__name__.removesuffix('_forward')}": op for op in OPS}
