"""A case's forward+backward and its torch peer, timed in alternating short windows, window by window.

    python bench/trace_pair.py --case L4 [--seconds 25] [--threads 2]

Each line: our median over ~0.3 s of calls, ours again on one thread over ~0.15 s, torch's over the next
~0.15 s, the ratios, the steal the host reported meanwhile (per CPU, in ticks), and the CPUs this
process's running threads were on. It shows whether a slow spell of the host slows both sides together
(the ratio holds) or one of them, and whether it is a spell of one CPU: our threads meet at every step, so
a slow CPU holds back both, while a one-thread run, like torch's mostly serial small-batch LSTM, is held
back only when it runs on that CPU. `dlkernels bench` times a round's peers and kernels in windows
seconds apart, so a spell can fall on one side only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dlkernels as dk
from dlkernels.benchmarks import find_case
from dlkernels.benchmarks.runner import keep_freed_memory


def running_cpus() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "R":
            out.append(int(fields[36]))  # the CPU it last ran on
    return sorted(out)


def steal() -> list[int]:
    return [int(line.split()[8]) for line in open("/proc/stat") if line.startswith("cpu") and line[3] != " "]


def window(fn, seconds: float) -> float:
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", required=True)
    ap.add_argument("--seconds", type=float, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    case = find_case(args.case)
    if case is None or case.backward is None or "torch" not in case.peers:
        raise SystemExit(f"--case: {args.case!r} is not a case with a backward and a torch peer")
    import torch
    keep_freed_memory()  # as `dlkernels bench` does: no page faults per call on large buffers
    dk.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    state = case.setup()
    _, torch_fb = case.peers["torch"](state)
    ratios, ratios_one = [], []
    with dk.backend("cpp"):
        for _ in range(3):  # warm-up: first calls allocate, torch's builds its graph machinery
            case.backward(state)
            torch_fb()
        end = time.time() + args.seconds
        while time.time() < end:
            s0 = steal()
            ours = window(lambda: case.backward(state), 0.3)
            cpus = running_cpus()
            dk.set_num_threads(1)
            one = window(lambda: case.backward(state), 0.15)
            dk.set_num_threads(args.threads)
            theirs = window(torch_fb, 0.15)
            ratios.append(theirs / ours)
            ratios_one.append(theirs / one)
            stolen = [b - a for a, b in zip(s0, steal())]
            print(f"ours {ours * 1e3:.3f} ms  ours on 1 thread {one * 1e3:.3f} ms  torch {theirs * 1e3:.3f} ms  "
                  f"ratio {theirs / ours:.2f} (1 thread {theirs / one:.2f})  steal {stolen}  running on CPUs {cpus}")
    for name, r in (("", ratios), (" on 1 thread", ratios_one)):
        print(f"{case.id} forward+backward{name}: median ratio {statistics.median(r):.2f} over {len(r)} windows "
              f"(lowest {min(r):.2f}, highest {max(r):.2f})")


if __name__ == "__main__":
    main()
