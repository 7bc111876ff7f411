"""Arrays in, arrays out: conversion (NumPy, CuPy, anything with __dlpack__) and input checks.

NumPy arrays run on the CPU backends, CuPy arrays on the CUDA backend. Anything else with
`__dlpack__` (a torch tensor, a JAX array) is viewed without a copy: CPU memory as NumPy,
CUDA memory as CuPy. Results go back into the caller's library with `wrap`.

The checks raise TypeError (wrong kind or dtype) or ValueError (wrong shape or value) and
always name the argument and what was expected.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray

_DLPACK_CPU, _DLPACK_CUDA = 1, 2
CPU_FLOATS = ("float32", "float64")
GPU_FLOATS = ("float16", "bfloat16", "float32", "float64")
INDEX_DTYPES = ("int32", "int64")


def cupy_module():
    """CuPy if it is already imported or importable, else None (never raises)."""
    if "cupy" in sys.modules:
        return sys.modules["cupy"]
    try:
        return importlib.import_module("cupy")
    except Exception:
        return None


def _is_cupy(x: Any) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def as_array(x: Any, name: str) -> Array:
    """A NumPy or CuPy view of x, without copying."""
    if isinstance(x, np.ndarray) or _is_cupy(x):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        if type(x).__module__.startswith("torch") and getattr(x, "requires_grad", False):
            x = x.detach()  # a view: DLPack refuses tensors that require grad
        device_type = int(x.__dlpack_device__()[0])
        if device_type == _DLPACK_CPU:
            return np.from_dlpack(x)
        if device_type == _DLPACK_CUDA:
            cp = cupy_module()
            if cp is None:
                raise TypeError(f"{name}: a CUDA array needs CuPy (pip install dlkernels[cuda])")
            return cp.from_dlpack(x)
        raise TypeError(f"{name}: arrays on DLPack device type {device_type} are not supported")
    raise TypeError(f"{name}: expected an array (NumPy, CuPy or any object with __dlpack__), "
                    f"got {type(x).__name__}")


def as_optional(x: Any, name: str) -> Array | None:
    return None if x is None else as_array(x, name)


def wrap(result: Array, like: Any) -> Any:
    """result, returned in the library of `like` (the caller's input)."""
    if result is None or isinstance(like, np.ndarray) or _is_cupy(like) or not hasattr(like, "__dlpack__"):
        return result
    module = sys.modules[type(like).__module__.split(".")[0]]
    return module.from_dlpack(result)


def device(x: Array) -> str:
    return "cuda" if _is_cupy(x) else "cpu"


def dtype_name(x: Array) -> str:
    return str(x.dtype)


def check_float(x: Array, name: str) -> None:
    """x is a floating array of a dtype its device's backends support."""
    allowed = GPU_FLOATS if device(x) == "cuda" else CPU_FLOATS
    if dtype_name(x) not in allowed:
        raise TypeError(f"{name}: expected dtype {' or '.join(allowed)} on the {device(x)}, got {x.dtype}")


def check_index(x: Array, name: str) -> None:
    if dtype_name(x) not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected an integer index array (int32 or int64), got {x.dtype}")


def check_like(x: Array, name: str, ref: Array, ref_name: str) -> None:
    """x has ref's dtype and device."""
    if device(x) != device(ref):
        raise ValueError(f"{name}: expected an array on the {device(ref)} like {ref_name}, got one on the {device(x)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {x.dtype}")


def check_ndim(x: Array, name: str, ndims: Sequence[int], what: str = "") -> None:
    if x.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a {want} array{' ' + what if what else ''}, got shape {tuple(x.shape)}")


def check_shape(x: Array, name: str, shape: Sequence[int | None]) -> None:
    """x.shape equals shape (None matches any size)."""
    if len(x.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def as_int(v: Any, name: str, minimum: int | None = None) -> int:
    """A plain int (bools and floats refused), at least `minimum`."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def as_int_tuple(v: Any, name: str, n: int, minimum: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of n ints, as a tuple of n ints."""
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"{name}: expected an int or {n} ints, got {len(v)} values")
        return tuple(as_int(e, name, minimum) for e in v)
    return (as_int(v, name, minimum),) * n


def contiguous(x: Array) -> Array:
    """x as a C-contiguous array: a copy only when x is strided (the documented cost)."""
    if x.flags.c_contiguous:
        return x
    if _is_cupy(x):
        return sys.modules["cupy"].ascontiguousarray(x)
    return np.ascontiguousarray(x)


def xp(x: Array):
    """The array module of x: numpy or cupy."""
    return sys.modules["cupy"] if _is_cupy(x) else np
