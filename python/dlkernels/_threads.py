"""One knob for the CPU threads: OpenMP (the C++ kernels) and numba together."""

from __future__ import annotations

import os

from . import _cpp, _env
from ._arrays import as_int

_threads: int | None = None
_numba_pool_ready = False


def numba_pool_ready() -> None:
    """Start numba's thread pool once, then undo the one process-wide setting it changes.

    numba's 'omp' threading layer turns on nested parallelism (max-active-levels 255) in the
    libgomp it loads. When torch is imported after dlkernels it shares that libgomp, and every
    torch op that calls MKL inside its own parallel region then runs 4 threads on 2 cores:
    torch.nn.LSTMCell (B64 I64 H256) went from 0.4 ms to 30 ms. No dlkernels kernel nests
    parallel regions, so the level goes back to 1.
    """
    global _numba_pool_ready
    if _numba_pool_ready:
        return
    _numba_pool_ready = True
    try:
        import numba
    except ImportError:
        return
    numba.get_num_threads()  # launches the pool
    if numba.threading_layer() == "omp":
        import ctypes

        from numba.np.ufunc import omppool
        # dlsym through omppool's handle finds the libgomp it is bound to, whichever that is
        ctypes.CDLL(omppool.__file__).omp_set_max_active_levels(1)


def set_num_threads(n: int) -> None:
    """Use n threads in the C++ (OpenMP) and numba kernels."""
    global _threads
    n = as_int(n, "n", minimum=1)
    try:
        import numba
    except ImportError:
        pass
    else:  # numba cannot go past the pool it started with; first, as starting its pool resets OpenMP's count
        numba_pool_ready()
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
