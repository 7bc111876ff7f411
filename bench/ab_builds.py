"""Two builds of the C++ module, A and B, timed against each other in one process.

    python bench/ab_builds.py A/_C.cpython-*.so B/_C.cpython-*.so --case L4 [--variant fused]
                              [--rounds 15] [--threads 2]

A change worth a few percent is lost in this host's drift between two runs (10% and more). Here both
builds are loaded side by side, and each round times the case's forward and forward+backward (the public
API, backend cpp) on A, then on B, with the `dlkernels bench` runner's sampling. Reported: each build's
median of round medians, and the median over rounds of B/A, which a slow spell of the host moves far less
than it moves either time. The outputs of A and B are compared too (max |B - A|): a change that was
meant to keep the bits shows it did, or by how much it moved them.

Freed memory is kept for reuse, as `dlkernels bench` keeps it (--fresh-memory: not), so that a build
that allocates differently is not timed on page faults the other escapes.

The module must be the one of this source tree's Python layer (the same bindings). An older commit's
build, for A:

    git worktree add /tmp/old REV && (cd /tmp/old && python setup.py build_ext --inplace)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from typing import Any

import numpy as np

import dlkernels as dk
from dlkernels import _cpp
from dlkernels.benchmarks import find_case
from dlkernels.benchmarks.runner import keep_freed_memory, samples


def load(path: str, tag: str) -> Any:
    """The extension at path as a module of its own (a name of its own, so Python does not hand back
    the copy it has already imported), on this process's instruction set."""
    spec = importlib.util.spec_from_file_location(f"{tag}._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.set_isa(_cpp.get_isa())
    return module


def leaves(out: Any) -> list[np.ndarray]:
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in leaves(o)]
    return [] if out is None else [np.asarray(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--case", required=True, help="a case id of `dlkernels bench`, e.g. L4")
    ap.add_argument("--variant", help="a cpp variant (default: the one the op chooses)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh-memory", action="store_true",
                    help="let large buffers go back to the OS (by default freed memory is reused, "
                         "as in `dlkernels bench`)")
    args = ap.parse_args()
    if not args.fresh_memory and not keep_freed_memory():
        print("note: could not keep freed memory (not glibc): large buffers may page-fault on every call")
    case = find_case(args.case)
    if case is None:
        raise SystemExit(f"--case: no case {args.case!r}")
    dk.set_num_threads(args.threads)
    builds = {"A": load(args.a, "build_a"), "B": load(args.b, "build_b")}
    for m in builds.values():
        m.set_num_threads(args.threads)
    state = case.setup()
    calls = {"forward": case.forward}
    if case.backward is not None:
        calls["fwd+bwd"] = case.backward

    def on(name: str, fn):  # fn(state) with build `name` behind every cpp kernel
        def run():
            _cpp._C = builds[name]
            return fn(state)
        return run

    with dk.backend("cpp", args.variant):
        for what, fn in calls.items():
            a, b = leaves(on("A", fn)()), leaves(on("B", fn)())
            diff = max((float(np.max(np.abs(x - y))) for x, y in zip(a, b) if x.size), default=0.0)
            print(f"{case.id} {what}: outputs max |B - A| = {diff:.3g}")
        medians = {(w, n): [] for w in calls for n in builds}
        for i in range(args.rounds):
            for what, fn in calls.items():
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):  # neither always goes first
                    medians[what, name].append(statistics.median(samples(on(name, fn), settle=False)))
    for what in calls:
        a, b = medians[what, "A"], medians[what, "B"]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"{case.id} {what}: A {statistics.median(a) * 1e6:.1f} us, B {statistics.median(b) * 1e6:.1f} us, "
              f"B/A {ratio:.3f} (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
