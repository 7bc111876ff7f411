"""Every environment switch dlkernels reads, read here and nowhere else.

DLKERNELS_BACKEND   reference | numba | cpp | cuda: the backend used when none is chosen in code
DLKERNELS_ISA       avx512 | avx2 | scalar: forces the C++ code path (default: the best the CPU has)
DLKERNELS_VERBOSE   1: log which kernel ran and why, on the 'dlkernels' logger (stderr)
DLKERNELS_NUM_THREADS  threads for OpenMP and numba (default: what OpenMP/numba choose)
DLKERNELS_CUDA_DEBUG   1: print the CUDA source and options when a kernel fails to compile
"""

from __future__ import annotations

import os


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


BACKEND: str | None = _get("DLKERNELS_BACKEND")
ISA: str | None = _get("DLKERNELS_ISA")
VERBOSE: bool = _get("DLKERNELS_VERBOSE") not in (None, "0", "false", "False")
NUM_THREADS: int | None = int(_get("DLKERNELS_NUM_THREADS") or 0) or None
CUDA_DEBUG: bool = _get("DLKERNELS_CUDA_DEBUG") not in (None, "0", "false", "False")
