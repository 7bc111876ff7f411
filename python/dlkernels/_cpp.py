"""The C++ backend: loads dlkernels._C and chooses its instruction set once, at import.

DLKERNELS_ISA=avx512|avx2|scalar forces a code path; by default the best the CPU has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import _env

try:
    from . import _C
except ImportError as e:  # a source tree that was never built
    _C = None
    IMPORT_ERROR: ImportError | None = e
else:
    IMPORT_ERROR = None


def supported_isas() -> list[str]:
    return list(_C.supported_isas()) if _C else []


def available() -> bool:
    return _C is not None


def get_isa() -> str | None:
    return _C.get_isa() if _C else None


def set_isa(name: str) -> None:
    if _C is None:
        raise ValueError("isa: the C++ backend is not built")
    if name not in ("avx512", "avx2", "scalar"):
        raise ValueError(f"DLKERNELS_ISA: expected avx512, avx2 or scalar, got {name!r}")
    if name not in supported_isas():
        raise ValueError(f"DLKERNELS_ISA: {name!r} is not supported by this CPU (it has {', '.join(supported_isas())})")
    _C.set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the block on one C++ code path (for tests and benchmarks; not thread-safe)."""
    before = get_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(before)


if _C is not None:
    set_isa(_env.ISA or supported_isas()[0])
