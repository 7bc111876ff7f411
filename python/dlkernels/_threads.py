"""One knob for the CPU threads: OpenMP (the C++ kernels) and numba together."""

from __future__ import annotations

import os

from . import _cpp, _env
from ._arrays import as_int

_threads: int | None = None


def set_num_threads(n: int) -> None:
    """Use n threads in the C++ (OpenMP) and numba kernels."""
    global _threads
    n = as_int(n, "n", minimum=1)
    try:
        import numba
    except ImportError:
        pass
    else:  # numba cannot go past the pool it started with; first, as starting its pool resets OpenMP's count
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if _cpp._C is not None:
        _cpp._C.set_num_threads(n)  # applied on whichever thread calls a kernel
    _threads = n


def get_num_threads() -> int:
    if _threads is not None:
        return _threads
    if _cpp._C is not None:
        return int(_cpp._C.get_num_threads())
    return os.cpu_count() or 1


if _env.NUM_THREADS:
    set_num_threads(_env.NUM_THREADS)
