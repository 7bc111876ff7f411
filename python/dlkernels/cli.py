"""The command line: `dlkernels info` and `dlkernels bench`."""

from __future__ import annotations

import argparse
import sys


def info() -> str:
    import dlkernels as dk

    from . import _cpp, _registry
    from .benchmarks.runner import machine

    m = machine()
    lines = [f"dlkernels {dk.__version__}", f"cpu: {m['cpu']}, {m['cores']} cores"]
    if _cpp.available():
        lines.append(f"C++ ISA: {_cpp.get_isa()} (this CPU and build support: {', '.join(_cpp.supported_isas())}; "
                     "DLKERNELS_ISA forces one)")
    else:
        lines.append(f"C++ backend: not built ({_cpp.IMPORT_ERROR})")
    lines.append(f"threads: {dk.get_num_threads()} (dlkernels.set_num_threads / DLKERNELS_NUM_THREADS)")
    lines.append("backends: " + ", ".join(f"{b} ({'available' if _registry.available(b) else 'unavailable'})"
                                          for b in _registry.BACKENDS))
    lines.append(f"forced backend: {_registry.current_backend() or 'none (fastest available)'}")
    try:
        from ._cuda import cuda_info
        lines.append(cuda_info())
    except ImportError:
        lines.append("gpu: no CUDA backend in this build")
    for op in _registry.ops():
        ks = _registry.kernels(op)
        lines.append(f"  {op}: " + ", ".join(sorted({f"{k.backend}/{k.variant}" for k in ks})))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlkernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="backends, CPU features and ISA, threads, GPU")
    b = sub.add_parser("bench", help="validate, then time every op x backend x variant on the canonical shapes")
    b.add_argument("--op", help="only this op (conv, matmul, lstm, attention, graph, a registry op name) "
                                "or case (C1, L4, ...)")
    b.add_argument("--backend", action="append", help="only this backend (repeatable)")
    b.add_argument("--quick", action="store_true", help="a subset of the cases (under a minute)")
    b.add_argument("--json", metavar="FILE", help="write the results, machine and commit as JSON")
    b.add_argument("--plot", metavar="FILE", help="write a PNG of the speedups (needs matplotlib)")
    b.add_argument("--threads", type=int, help="CPU threads for dlkernels and the peers (default: all)")
    b.add_argument("--max-seconds", type=float, default=1.5, help="skip timing a kernel whose one call takes longer")
    b.add_argument("--fresh-memory", action="store_true",
                   help="leave malloc as it is: large buffers come fresh from the OS, page faults and all, per call "
                        "(default: freed memory is kept and reused, for dlkernels and peers alike)")
    args = parser.parse_args(argv)

    if args.command == "info":
        print(info())
        return 0
    import dlkernels as dk

    from .benchmarks import runner

    if args.threads:
        dk.set_num_threads(args.threads)
    try:
        results = runner.run(args.op, args.backend, args.quick, args.max_seconds,
                             log=lambda s: print(s, file=sys.stderr if s.startswith("[") else sys.stdout, flush=True),
                             fresh_memory=args.fresh_memory)
    except ValueError as e:
        print(f"dlkernels bench: {e}", file=sys.stderr)
        return 2
    if args.json:
        runner.save_json(results, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        runner.plot(results, args.plot)
        print(f"wrote {args.plot}")
    bad = [r for r in results["rows"] if r.get("status", "").startswith("INVALID")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
