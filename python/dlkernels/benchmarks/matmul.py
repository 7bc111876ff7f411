"""Benchmark case M1: float32 matmul 2048³ against NumPy's (OpenBLAS) in the same process."""

from __future__ import annotations

import numpy as np

import dlkernels as dk

from .case import Case, State


def _setup() -> State:
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal((2048, 2048), dtype=np.float32),
            "b": rng.standard_normal((2048, 2048), dtype=np.float32)}


CASES = [
    Case("M1", "matmul", "2048x2048x2048 float32", _setup, lambda s: dk.matmul(s["a"], s["b"]), None,
         flops=lambda s: 2 * 2048**3, peers={"numpy": lambda s: (lambda: s["a"] @ s["b"], None)},
         backends=("cpp",), quick=True, oracle="numpy"),
]
