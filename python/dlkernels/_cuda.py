"""The CUDA backend's loader: kernels/<op>.cu, compiled at run time by CuPy, cached, launched.

No build step against any framework: the .cu sources ship inside the package
(dlkernels/kernels/, copied by setup.py's BuildPy) or are read from the repository's
kernels/ in a source tree. `kernel(file, name, family)` compiles the file once per
(device, file, family of name expressions, options) through cupy.RawModule (NVRTC),
keeps the module in memory and lets CuPy's on-disk cache (`cuda_info()` shows where) skip
NVRTC in later processes. `#include "common.cuh"` is pasted in here, so NVRTC needs no
include path and the source text CuPy hashes for its cache is the whole program.

Launches go on CuPy's current stream (the torch adapter sets it to torch's current stream).
DLKERNELS_CUDA_DEBUG=1 prints the source (with line numbers) and the options when a kernel
fails to compile.

Dtypes and their C types: float32 float, float64 double, float16 dk_half, bfloat16 dk_bf16
(kernels/common.cuh: 2-byte structs converted with PTX cvt, no cuda_fp16.h/cuda_bf16.h).
bfloat16 arrays: CuPy has no bfloat16 of its own; CuPy >= 14 with `ml_dtypes` installed
takes torch's bfloat16 tensors through DLPack as arrays of dtype ml_dtypes.bfloat16, and
that is how they arrive here (dtype name "bfloat16"). The kernels only read the dtype's name
and the pointer; outputs are allocated with `empty`, which falls back to raw memory when
CuPy cannot allocate the dtype itself.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import _env
from ._arrays import Array, cupy_module

C_TYPES = {"float32": "float", "float64": "double", "float16": "dk_half", "bfloat16": "dk_bf16"}
HALF_TYPES = ("float16", "bfloat16")
OPTIONS: tuple[str, ...] = ("--std=c++17",)  # CuPy adds -arch for the device; no fast-math

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_modules: dict[tuple, Any] = {}
_sources: dict[str, str] = {}


def kernel_dir() -> str:
    """Where the .cu files are: inside the installed package, else the source tree's kernels/."""
    installed = os.path.join(_HERE, "kernels")
    if os.path.isdir(installed):
        return installed
    return os.path.normpath(os.path.join(_HERE, "..", "..", "kernels"))


def source(file: str) -> str:
    """The text of kernels/<file> with `#include "common.cuh"` pasted in (what NVRTC compiles)."""
    with _lock:
        if file not in _sources:
            _sources[file] = _expand(file, set())
        return _sources[file]


def _expand(file: str, seen: set[str]) -> str:
    path = os.path.join(kernel_dir(), file)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#include"):
            name = stripped.split(None, 1)[1].strip().strip('"<>')
            if not os.path.exists(os.path.join(kernel_dir(), name)):
                raise RuntimeError(f"kernels/{file}: includes {name}, which NVRTC cannot find "
                                   "(kernels may include only files of kernels/)")
            if name not in seen:
                seen.add(name)
                out.append(f"// ---- {name} ----")
                out.append(_expand(name, seen))
                out.append(f"// ---- end of {name} ----")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def c_type(x: Array) -> str:
    """The kernels' C type for x's dtype."""
    name = str(x.dtype)
    if name not in C_TYPES:
        raise TypeError(f"CUDA kernels take {', '.join(C_TYPES)}, got {name}")
    return C_TYPES[name]


def device_id() -> int:
    return int(cupy_module().cuda.Device().id)


def kernel(file: str, name: str, family: Sequence[str] | None = None, options: Sequence[str] = ()) -> Any:
    """The compiled kernel `name` (a name expression, e.g. "conv2d_cuda_igemm<float, 0>") of
    kernels/<file> on the current device. `family` lists the name expressions compiled
    together with it (one NVRTC run for all of them); it must contain `name`.
    """
    cp = cupy_module()
    names = tuple(family) if family else (name,)
    assert name in names, f"{name} is not in its family"
    opts = OPTIONS + tuple(options)
    key = (device_id(), file, names, opts)
    with _lock:
        module = _modules.get(key)
    if module is None:
        src = source(file)
        module = cp.RawModule(code=src, options=opts, name_expressions=names)
        try:
            for n in names:  # compiles now (RawModule is lazy), so errors surface here
                module.get_function(n)
        except Exception as exc:
            _report_compile_error(file, src, opts, names, exc)
            raise RuntimeError(f"kernels/{file} failed to compile with options {opts} "
                               f"(set DLKERNELS_CUDA_DEBUG=1 to print the source): {exc}") from exc
        with _lock:
            module = _modules.setdefault(key, module)
    return module.get_function(name)


def _report_compile_error(file: str, src: str, opts: tuple, names: tuple, exc: Exception) -> None:
    if not _env.CUDA_DEBUG:
        return
    numbered = "\n".join(f"{i + 1:5d}  {line}" for i, line in enumerate(src.splitlines()))
    print(f"dlkernels: kernels/{file} failed to compile\noptions: {' '.join(opts)}\n"
          f"name expressions: {', '.join(names)}\n{numbered}\n{exc}", file=sys.stderr)


def launch(kern: Any, grid: tuple[int, ...], block: tuple[int, ...], args: tuple,
           shared_mem: int = 0) -> None:
    """Launch on CuPy's current stream; a grid with a zero dimension launches nothing."""
    if min(grid) <= 0:
        return
    if grid[0] >= 2**31 or any(g > 65535 for g in grid[1:]):
        raise ValueError(f"input: too large for one launch (grid {grid})")
    kern(tuple(grid), tuple(block), args, shared_mem=shared_mem)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def empty(shape: Sequence[int], dtype: Any) -> Array:
    """An uninitialized CuPy array on the current device; raw memory for dtypes CuPy cannot
    allocate itself (bfloat16 through ml_dtypes)."""
    cp = cupy_module()
    try:
        return cp.empty(tuple(shape), dtype)
    except Exception:
        import numpy as np
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        return cp.ndarray(tuple(shape), dt, memptr=cp.cuda.alloc(max(n, 1)))


def zeros(shape: Sequence[int], dtype: Any) -> Array:
    out = empty(shape, dtype)
    if out.size:
        cupy_module().cuda.runtime.memsetAsync(out.data.ptr, 0, out.nbytes,
                                               cupy_module().cuda.get_current_stream().ptr)
    return out


def acc_dtype(x: Array) -> str:
    """The accumulator dtype of x's kernels: float64 for float64, float32 for the rest."""
    return "float64" if str(x.dtype) == "float64" else "float32"


def device_of(x: Array) -> Any:
    """A context manager making x's device current (outputs are allocated there)."""
    return x.device


def cache_dir() -> str:
    cp = cupy_module()
    try:
        return str(cp.cuda.compiler.get_cache_dir())
    except Exception:
        return os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))


def cuda_info() -> str:
    """One line for `dlkernels info`: the GPU(s), CuPy, and the kernel cache."""
    cp = cupy_module()
    if cp is None:
        return "gpu: CuPy not installed (pip install dlkernels[cuda]); CUDA backend unavailable"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"gpu: CuPy {cp.__version__}, no usable CUDA device ({exc})"
    gpus = []
    for i in range(count):
        prop = cp.cuda.runtime.getDeviceProperties(i)
        name = prop["name"].decode() if isinstance(prop["name"], bytes) else str(prop["name"])
        gib = prop["totalGlobalMem"] / 2**30
        gpus.append(f"{i}: {name} (sm_{prop['major']}{prop['minor']}, {gib:.0f} GiB, "
                    f"{prop['multiProcessorCount']} SMs)")
    runtime = cp.cuda.runtime.runtimeGetVersion()
    return (f"gpu: {'; '.join(gpus) or 'none'}\n"
            f"CuPy {cp.__version__}, CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}, "
            f"kernels from {kernel_dir()}, compiled by NVRTC with {' '.join(OPTIONS)}; "
            f"kernel cache {cache_dir()}")
