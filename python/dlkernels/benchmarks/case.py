"""What one benchmark case is. Each op's cases live in benchmarks/<op>.py as CASES = [...];
the runner (benchmarks/runner.py, behind `dlkernels bench`) and the pytest-benchmark suites
in bench/ read them from there.

A case builds its float32 inputs once (setup), then the runner, for every backend and
variant of the op: validates the forward against the reference backend, times forward and
forward+backward (the median of three interleaved rounds of runs), and times each peer on the same
inputs in the same process and threads, for the speedup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

State = dict[str, Any]  # whatever setup returns: inputs, saved forward state, peers' tensors


@dataclass
class Case:
    id: str  # "C1": the id the issues and RESULTS.md use
    op: str  # the registry's op name whose kernels are timed ("conv2d")
    shape: str  # for people: "N64 C1 32x32, K32 5x5"
    setup: Callable[[], State]  # build inputs (fixed seed); called once
    forward: Callable[[State], Any]  # dlkernels' public forward; returns its output(s)
    backward: Callable[[State], Any] | None  # forward then backward (public API); None: forward only
    flops: Callable[[State], float] | None = None  # forward FLOPs
    backward_flops: Callable[[State], float] | None = None  # backward alone (default 2x forward)
    bytes: Callable[[State], float] | None = None  # minimum bytes moved by the forward (memory-bound ops)
    # name -> (forward, forward+backward or None) of a peer on the same inputs, e.g. torch
    peers: dict[str, Callable[[State], tuple[Callable[[], Any], Callable[[], Any] | None]]] = field(
        default_factory=dict)
    quick: bool = False  # part of `dlkernels bench --quick`
    backends: tuple[str, ...] = ("cpp", "numba")  # backends timed (the reference is only the validator)
    # backend -> variants not run on this case (the default: every variant that accepts its shape)
    skip: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tol: float = 1e-3  # validation: max |out - oracle| / max(1, max |oracle|)
    # what validates the outputs: the reference backend, or a peer's name (the reference when that
    # peer's library is not installed)
    oracle: str = "reference"
