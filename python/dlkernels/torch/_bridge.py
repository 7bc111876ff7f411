"""Crossing between torch tensors and dlkernels arrays, without copies.

CPU tensors become NumPy views; CUDA tensors become CuPy views through DLPack (the CUDA
backend launches on the current CuPy stream, which `cuda_stream()` sets to torch's).
Results go back with torch.from_dlpack, again without a copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .._arrays import as_array, cupy_module

Array = Any

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def to_array(t: torch.Tensor | None, name: str) -> Array | None:
    """A NumPy (CPU) or CuPy (CUDA) view of t, sharing its memory."""
    return None if t is None else as_array(t.detach(), name)


def to_tensor(a: Array | None) -> torch.Tensor | None:
    return None if a is None else torch.from_dlpack(a)


def check_tensor(t: torch.Tensor, name: str, like: torch.Tensor | None = None) -> None:
    """Dtype and device checks done on the tensor itself (they also run on fake tensors)."""
    allowed = CUDA_DTYPES if t.device.type == "cuda" else CPU_DTYPES
    if t.dtype not in allowed:
        raise TypeError(f"{name}: expected dtype {', '.join(map(str, allowed))} on {t.device.type}, got {t.dtype}")
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        raise TypeError(f"{name}: expected {like.dtype} on {like.device} (like the input), got {t.dtype} on {t.device}")


@contextlib.contextmanager
def cuda_stream(t: torch.Tensor) -> Iterator[None]:
    """On CUDA, run the block's CuPy work on torch's current stream; on the CPU, nothing."""
    if t.device.type != "cuda":
        yield
        return
    cp = cupy_module()
    stream = torch.cuda.current_stream(t.device)
    with cp.cuda.Device(t.device.index or 0), cp.cuda.ExternalStream(stream.cuda_stream):
        yield


def needs(ctx: Any, n: int) -> list[bool]:
    return [bool(v) for v in ctx.needs_input_grad[:n]]


def empty_unless(wanted: bool, shape_of: torch.Tensor) -> torch.Tensor:
    """Custom ops return tensors, never None: an unwanted gradient is a 0-element tensor."""
    return torch.empty_like(shape_of) if wanted else shape_of.new_empty(0)


def none_if_empty(t: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    return t if wanted else None
