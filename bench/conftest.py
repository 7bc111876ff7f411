"""pytest-benchmark suites over dlkernels' benchmark cases (python/dlkernels/benchmarks/).

    pytest bench/ --benchmark-only                # every case, backend and variant
    pytest bench/bench_conv.py -k C3 --benchmark-only

`dlkernels bench` runs the same cases with validation, peers and % of peak in one table;
these suites give pytest-benchmark's statistics and comparisons between saved runs.
"""

from __future__ import annotations

import pytest

import dlkernels as dk
from dlkernels import _registry
from dlkernels.benchmarks import Case


def params(cases: list[Case]) -> list:
    """(case, backend, variant) for every timed kernel, plus each peer."""
    out = []
    for c in cases:
        for b in c.backends:
            if _registry.available(b):
                for k in _registry.kernels(c.op, "forward", b):
                    out.append(pytest.param(c, b, k.variant, id=f"{c.id}-{b}-{k.variant}"))
        for name in c.peers:
            out.append(pytest.param(c, "peer", name, id=f"{c.id}-peer-{name}"))
    return out


def run_case(benchmark, case: Case, backend: str, variant: str, direction: str) -> None:
    state = case.setup()
    if backend == "peer":
        pytest.importorskip("torch")
        fwd, fwdbwd = case.peers[variant](state)
        fn = fwd if direction == "forward" else fwdbwd
        if fn is None:
            pytest.skip(f"{variant} has no {direction}")
        benchmark(fn)
        return
    fn = case.forward if direction == "forward" else case.backward
    if fn is None:
        pytest.skip(f"{case.id} is forward only")
    try:
        with dk.backend(backend, variant):
            fn(state)
    except _registry.VariantRefused:
        pytest.skip(f"{backend}/{variant} does not take {case.id}")

    def call():
        with dk.backend(backend, variant):
            return fn(state)

    benchmark(call)
