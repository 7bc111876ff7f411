"""Benchmark cases (one module per op: conv.py, lstm.py, ...) and the runner behind
`dlkernels bench`. `all_cases()` imports every op's module and returns their CASES."""

from __future__ import annotations

import importlib
import pkgutil

from .case import Case


def all_cases() -> list[tuple[str, Case]]:
    """(module name, case) for every case of every op, in module order."""
    out = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in ("case", "runner"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        out += [(info.name, c) for c in getattr(module, "CASES", [])]
    return out


def find_case(id: str) -> Case | None:
    """The case with this id ("L4"), or None."""
    return next((c for _, c in all_cases() if c.id == id), None)


__all__ = ["Case", "all_cases", "find_case"]
