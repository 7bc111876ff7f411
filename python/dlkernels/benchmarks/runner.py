"""The runner behind `dlkernels bench`: validate, then time, every case × backend × variant.

Per row: median ms, GFLOP/s (or GB/s for memory-bound ops), % of this machine's peak
measured in the same run (NumPy float32 matmul at 2048³ for FLOPs, a large copy for
bandwidth), and the speedup against each peer timed in the same process on the same
threads. Absolute times drift on shared machines; the ratios are what to quote.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _cpp, _registry
from .._registry import VariantRefused
from ..benchmarks import Case, all_cases

Row = dict[str, Any]


# Seconds to wait before timing after another pool's threads ran: they spin for up to ~0.1 s
# before they sleep (NumPy's OpenBLAS after the reference or a NumPy peer; numba's workers, seen
# burning 0.1 s of a core after a numba kernel), and a short kernel timed meanwhile shares the 2
# cores with them (L3's cell step read 12 ms, not 0.4). Not needed between two kernels of one pool.
SETTLE_SECONDS = 0.15

# A short kernel gets as many runs as fill this many seconds (up to MAX_RUNS), not just `runs`:
# five runs of a 0.1 ms kernel are half a millisecond of a noisy machine, and the median of
# them swung 1.9-3.8x against its peer from one sample set to the next (L4 forward); with
# 0.1 s of runs, 1.9-2.3x. Peers and dlkernels get the same rule.
MIN_SECONDS = 0.1
MAX_RUNS = 200

# One timing: at least RUNS runs, fewer when they would take over BUDGET seconds; split over
# ROUNDS interleaved rounds (see run()).
RUNS, BUDGET, ROUNDS = 5, 1.0, 3
COUNT_FIRST = 0.1


def host_counters() -> dict[str, float]:
    """What the host did, cumulatively, as far as this process can see it: the CPU time the
    hypervisor stole from this VM and the time the other processes ran (both in ms, all CPUs
    together, from /proc/stat in 10 ms ticks; absent off Linux), and this process's page faults
    and context switches. Their difference over a timing says why a timing was slow."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"minor_faults": float(ru.ru_minflt), "major_faults": float(ru.ru_majflt),
           "involuntary_switches": float(ru.ru_nivcsw)}
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return out
    ms = 1e3 / os.sysconf("SC_CLK_TCK")
    ours = os.times()
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]  # all but idle, iowait, steal
    out["steal_ms"] = ticks[7] * ms
    out["others_ms"] = busy * ms - (ours.user + ours.system) * 1e3
    return out


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of each thread of this process (Linux; {} elsewhere)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def samples(fn: Callable[[], Any], runs: int = RUNS, budget: float = BUDGET, min_seconds: float = MIN_SECONDS,
            min_runs: int = 2, per_call: float | None = None, host: dict[str, float] | None = None,
            settle: bool = True) -> list[float]:
    """Seconds per call of fn, after the other pools settle (unless told they have, settle=False:
    the last thing timed used the same threads) and one warm-up call: at least `runs`
    runs, more while they fill less than min_seconds, fewer (down to min_runs) when one call is
    slow (budget). The counts go by the warm-up's time, or by per_call when an earlier timing of
    fn gave it; then a call of COUNT_FIRST seconds or more gets no warm-up (warm caches change it
    little, and it would cost a run). `host`, when given, gets the change of host_counters()
    over the timed calls added to it, and in busy_threads the most threads of this process that
    each kept a core a quarter busy or more during one timing: more than the kernel's own
    threads means another pool (numba's, torch's, a BLAS) was running against it."""
    if settle:
        time.sleep(SETTLE_SECONDS)
    if per_call is None or per_call < COUNT_FIRST:
        t0 = time.perf_counter()
        fn()
        per_call = per_call or max(time.perf_counter() - t0, 1e-9)
    n = max(min_runs, min(max(runs, int(min_seconds / per_call)), int(budget / per_call), MAX_RUNS))
    times: list[float] = []
    before, threads = (host_counters(), thread_cpu_seconds()) if host is not None else ({}, {})
    start = time.perf_counter()
    while len(times) < n:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if host is not None:
        wall = time.perf_counter() - start
        for k, v in host_counters().items():
            host[k] = host.get(k, 0.0) + v - before[k]
        busy = sum(t - threads.get(tid, 0.0) >= wall / 4 for tid, t in thread_cpu_seconds().items())
        host["busy_threads"] = max(host.get("busy_threads", 0), busy)
    return times


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the OS.

    By default a buffer over 32 MB (and, depending on what was freed before, a smaller one)
    is a fresh mmap on every call, so each call pays a page fault per 4 KiB touched. Whether
    it does varies from process to process: torch's depthwise conv (C4) took 6 ms in one
    process and 35 ms in the next. With reuse, peers and dlkernels alike time their kernels,
    not the page-fault luck. Returns whether it took effect (glibc only).
    """
    import ctypes
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def measure_peak() -> dict[str, float]:
    """This machine's float32 GEMM GFLOP/s (NumPy 2048³) and copy bandwidth in GB/s, now."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    t = statistics.median(samples(lambda: a @ b, budget=3.0))
    src = np.ones(64 * 2**20, np.float32)  # 256 MiB: far past the caches
    dst = np.empty_like(src)
    tc = statistics.median(samples(lambda: np.copyto(dst, src), budget=2.0))
    return {"gflops": 2 * 2048**3 / t / 1e9, "copy_gbs": 2 * src.nbytes / tc / 1e9}


def _leaves(out: Any) -> list[np.ndarray]:
    """The arrays of a (possibly nested) output, as NumPy."""
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _leaves(o)]
    if out is None:
        return []
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    return [np.asarray(out)]


def _error(out: Any, oracle: Any) -> float:
    errs = []
    for a, e in zip(_leaves(out), _leaves(oracle)):
        if a.shape != e.shape:
            return float("inf")
        if e.size:
            scale = max(1.0, float(np.max(np.abs(e))))
            errs.append(float(np.max(np.abs(a.astype(np.float64) - e))) / scale)
    return max(errs, default=0.0)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    from .. import get_num_threads
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": get_num_threads(), "isa": _cpp.get_isa(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": _torch_version()}


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here, timeout=5).stdout.strip() or None
    except Exception:
        return None


def _variants(case: Case, backend: str) -> list[str]:
    names = [k.variant for k in _registry.kernels(case.op, "forward", backend)]
    return [v for v in names if v not in case.skip.get(backend, ())]


def _targets(cases: list[tuple[str, Case]], backends: list[str] | None) -> list[tuple[Case, str, str]]:
    out = []
    for _, case in cases:
        for b in case.backends:
            if (backends and b not in backends) or not _registry.available(b):
                continue
            out += [(case, b, v) for v in _variants(case, b)]
    return out


DIRECTIONS = ("forward", "forward+backward")


@dataclass
class _Timing:
    """One thing timed in a case's rounds: a row's kernel in one direction, or a peer's."""
    direction: str
    pool: str  # whose threads it runs on: the row's backend, or the peer's name
    fn: Callable[[], Any]
    row: Row | None = None  # the row the figures go to; None for a peer
    once: float | None = None  # the seconds of one call, when timed before
    rounds: list[list[float]] = field(default_factory=list)  # seconds per call, per round
    host: dict[str, float] = field(default_factory=dict)  # host_counters() over the timed calls


def run(op: str | None = None, backends: list[str] | None = None, quick: bool = False,
        max_seconds: float = 1.5, log: Callable[[str], None] = print, fresh_memory: bool = False) -> dict[str, Any]:
    """Run the benchmark and return its results (what --json writes)."""
    import dlkernels as dk

    cases = [(m, c) for m, c in all_cases() if (op is None or op in (m, c.op, c.id)) and (c.quick or not quick)]
    if not cases:
        raise ValueError(f"op: no benchmark case matches {op!r}")
    try:
        import torch
        torch.set_num_threads(dk.get_num_threads())
    except ImportError:
        log("torch not installed: no peer timings (pip install dlkernels[bench])")
    reuse = not fresh_memory and keep_freed_memory()
    log(f"dlkernels bench: {len(cases)} cases, {dk.get_num_threads()} threads, ISA {_cpp.get_isa()}, "
        + ("freed memory reused (no page faults per call)" if reuse else "fresh pages from the OS per large buffer"))
    peak = measure_peak()
    log(f"machine peak, measured now: {peak['gflops']:.1f} GFLOP/s (NumPy float32 matmul 2048³), "
        f"{peak['copy_gbs']:.1f} GB/s (copy)")
    rows: list[Row] = []
    targets = _targets(cases, backends)
    done = 0
    for _, case in cases:
        state = case.setup()
        peers = _peers(case, state, log)
        if case.oracle in peers:
            oracle = peers[case.oracle][0]()
        else:
            with dk.backend("reference"):
                oracle = case.forward(state)
        case_rows: list[Row] = []
        ours: list[_Timing] = []
        for c, b, v in targets:
            if c is not case:
                continue
            done += 1
            row: Row = {"case": case.id, "op": case.op, "shape": case.shape, "backend": b, "variant": v}
            log(f"[{done}/{len(targets)}] {case.id} {b}/{v}: validate")
            try:
                with dk.backend(b, v):
                    err = _error(case.forward(state), oracle)
                    row["max_error"] = err
                    if not err <= case.tol:
                        row["status"] = f"INVALID (error {err:.2g} > {case.tol:.0e})"
                    for direction, fn in zip(DIRECTIONS, (case.forward, case.backward)):
                        if fn is None or "status" in row:
                            continue
                        # this call decides whether the variant is too slow to time, and counts the
                        # first round's runs; a slow first call gets a second chance, as it may have
                        # compiled (numba after an install)
                        once = _call_seconds(fn, state)
                        if once > max_seconds:
                            once = _call_seconds(fn, state)
                        if once > max_seconds:
                            row[direction] = {"skipped": f"one call took over {max_seconds:g} s"}
                            continue
                        ours.append(_Timing(direction, b, lambda fn=fn, s=state: fn(s), row, once))
            except VariantRefused:  # a specialised variant that does not fit this shape
                continue
            case_rows.append(row)
        # The peers and the variants are timed in ROUNDS interleaved rounds, and each figure is
        # the median of its rounds' medians: a slow spell of the shared host, which lasts seconds,
        # falls in one round of one kernel and moves no figure, for peers and dlkernels alike.
        theirs = {(name, direction): _Timing(direction, name, fn)
                  for name, pair in peers.items() for direction, fn in zip(DIRECTIONS, pair) if fn is not None}
        timings = [*theirs.values(), *ours]
        pool = None  # whose threads ran last: the runner waits for another pool's to settle
        for r in range(ROUNDS):
            # (Rounds that alternated forwards and backwards, ABC CBA ABC, made PyG's index_add_ on
            # G1 fault in 0.3-0.5 GB of fresh pages a call: 13x became 47-50x. Same order every round.)
            for t in timings:
                kernel = () if t.row is None else (t.row["backend"], t.row["variant"])
                log(f"  {case.id} {'/'.join(kernel) or t.pool} {t.direction}, round {r + 1}/{ROUNDS}")
                with dk.backend(*kernel) if kernel else contextlib.nullcontext():
                    t.rounds.append(samples(t.fn, **_round(t.rounds, t.once), host=t.host, settle=pool != t.pool))
                pool = t.pool
        peer_times: dict[str, dict[str, tuple[float, dict]]] = {}
        for (name, direction), t in theirs.items():
            peer_times.setdefault(name, {})[direction] = (_median_of_rounds(t.rounds), _spread(t.rounds, t.host))
        for t in ours:
            t.row[t.direction] = _figures(case, state, t.direction, t.rounds, t.host, peak, peer_times)
        for row in case_rows:
            rows.append(row)
            log(format_row(row))
    return {"machine": machine(), "commit": commit(), "command": " ".join(["dlkernels"] + sys.argv[1:]),
            "freed_memory_reused": reuse, "rounds": ROUNDS, "peak": peak, "rows": rows}


def _peers(case: Case, state: Any, log: Callable[[str], None]) -> dict[str, tuple[Callable[[], Any], Any]]:
    """The case's peers whose library is installed (torch, SciPy are not dependencies)."""
    out = {}
    for name, make in case.peers.items():
        try:
            out[name] = make(state)
        except ImportError as e:
            log(f"{case.id}: no peer {name} ({e})")
    return out


def _round(rounds: list[list[float]], once: float | None = None) -> dict[str, Any]:
    """samples()' arguments for the next of these rounds: each round gets a third of one timing's
    runs and time, counted by the first round's median time per call, or for the first round by
    `once`, a call timed before (a long one then needs no warm-up call of its own). (Counted by a
    later round's warm-up instead, one slow first call, a pool waking up, had cut a round to two
    runs whose median was half that call.)"""
    return {"runs": -(-RUNS // ROUNDS), "budget": BUDGET / ROUNDS, "min_seconds": MIN_SECONDS / ROUNDS,
            "min_runs": 1, "per_call": statistics.median(rounds[0]) if rounds else once}


def _median_of_rounds(rounds: list[list[float]]) -> float:
    return statistics.median(statistics.median(ts) for ts in rounds)


def _call_seconds(fn: Callable[[Any], Any], state: Any) -> float:
    t0 = time.perf_counter()
    fn(state)
    return time.perf_counter() - t0


def _spread(rounds: list[list[float]], host: dict[str, float]) -> dict[str, Any]:
    """Each round's median, the fastest and slowest run, and what the host did meanwhile, per
    call: one round far above the others, with steal or other processes' time, was the
    machine's doing, not the kernel's."""
    times = [t for ts in rounds for t in ts]
    out: dict[str, Any] = {"round_ms": [statistics.median(ts) * 1e3 for ts in rounds],
                           "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3}
    for k, v in host.items():
        if k == "busy_threads":  # a most, not a sum
            out[k] = v
        else:
            out[k + "_per_call"] = v / len(times)
    return out


def _figures(case: Case, state: Any, direction: str, rounds: list[list[float]], host: dict[str, float],
             peak: dict, peer_times: dict) -> dict:
    t = _median_of_rounds(rounds)
    fig: dict[str, Any] = {"ms": t * 1e3, "runs": sum(map(len, rounds)), "spread": _spread(rounds, host)}
    if case.flops:
        f = case.flops(state)
        if direction != "forward":
            f += case.backward_flops(state) if case.backward_flops else 2 * f
        fig["gflops"] = f / t / 1e9
        fig["pct_peak"] = 100 * fig["gflops"] / peak["gflops"]
    if case.bytes and direction == "forward":
        fig["gbs"] = case.bytes(state) / t / 1e9
        fig["pct_bandwidth"] = 100 * fig["gbs"] / peak["copy_gbs"]
    for name, by_dir in peer_times.items():
        if direction in by_dir:
            pt, spread = by_dir[direction]
            fig[f"speedup_vs_{name}"] = pt / t
            fig[f"{name}_ms"] = pt * 1e3
            fig[f"{name}_spread"] = spread
    return fig


def format_row(row: Row) -> str:
    head = f"  {row['case']:<5} {row['backend'] + '/' + row['variant']:<24}"
    if "status" in row:
        return head + row["status"]
    parts = []
    for direction in DIRECTIONS:
        fig = row.get(direction)
        if not fig:
            continue
        if "skipped" in fig:
            parts.append(f"{direction}: skipped, {fig['skipped']}")
            continue
        s = f"{direction}: {fig['ms']:8.2f} ms"
        if "gflops" in fig:
            s += f" {fig['gflops']:7.1f} GFLOP/s ({fig['pct_peak']:3.0f}% peak)"
        if "gbs" in fig:
            s += f" {fig['gbs']:6.1f} GB/s ({fig['pct_bandwidth']:3.0f}% bw)"
        for k, v in fig.items():
            if k.startswith("speedup_vs_"):
                s += f" {v:5.2f}x {k[len('speedup_vs_'):]}"
        parts.append(s)
    return head + f"valid (err {row['max_error']:.1e})  " + " | ".join(parts)


def save_json(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def plot(results: dict, path: str) -> None:
    """A PNG of forward and forward+backward speedups against the first peer, per case and kernel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, fwd, both = [], [], []
    for r in results["rows"]:
        f, fb = r.get("forward") or {}, r.get("forward+backward") or {}
        s1 = next((v for k, v in f.items() if k.startswith("speedup_vs_")), None)
        if s1 is None:
            continue
        s2 = next((v for k, v in fb.items() if k.startswith("speedup_vs_")), 0.0)
        labels.append(f"{r['case']} {r['backend']}/{r['variant']}")
        fwd.append(s1)
        both.append(s2)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(labels)), 4.5))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, fwd, 0.4, label="forward")
    ax.bar(x + 0.2, both, 0.4, label="forward+backward")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("speedup vs peer (same process)")
    ax.set_title(f"dlkernels bench — {results['machine']['cpu']}, {results['machine']['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
