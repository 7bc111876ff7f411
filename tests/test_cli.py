"""The command line: `dlkernels info` and a small `dlkernels bench` with JSON and PNG output."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "dlkernels", *args], capture_output=True, text=True, timeout=600)


def test_info_lists_backends_isa_and_threads():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    for word in ("C++ ISA:", "threads:", "backends:", "reference (available)", "conv2d:"):
        assert word in out.stdout


def test_bench_validates_times_and_writes_json_and_png(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = _run("bench", "--op", "conv", "--backend", "cpp", "--quick", "--json", str(j), "--plot", str(p))
    assert out.returncode == 0, out.stderr
    assert "machine peak, measured now" in out.stdout and "x torch" in out.stdout
    results = json.loads(j.read_text())
    assert {"machine", "commit", "command", "peak", "rows"} <= results.keys()
    rows = {(r["case"], r["variant"]): r for r in results["rows"]}
    assert ("C4", "depthwise") in rows and ("C3", "im2col") in rows
    for r in results["rows"]:
        fwd = r["forward"]
        assert r["max_error"] < 1e-3 and fwd["ms"] > 0 and fwd["speedup_vs_torch"] > 0
        for spread in (fwd["spread"], fwd["torch_spread"]):
            assert spread["min_ms"] <= spread["max_ms"] and spread["involuntary_switches_per_call"] >= 0
            assert len(spread["round_ms"]) == results["rounds"]
        assert fwd["spread"]["min_ms"] <= fwd["ms"] <= fwd["spread"]["max_ms"]
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_bench_unknown_op_is_an_error():
    out = _run("bench", "--op", "nope")
    assert out.returncode == 2 and "no benchmark case matches 'nope'" in out.stderr


def test_bench_samples_fill_min_seconds_for_short_calls(monkeypatch):
    from dlkernels.benchmarks import runner
    monkeypatch.setattr(runner, "SETTLE_SECONDS", 0.0)
    calls = []
    # a call of ~0 s gets MAX_RUNS runs; one of >= 0.01 s enough to fill min_seconds, at least `runs`
    assert len(runner.samples(lambda: calls.append(1), runs=5)) == runner.MAX_RUNS
    assert len(calls) == runner.MAX_RUNS + 1  # and one warm-up call
    assert 5 <= len(runner.samples(lambda: time.sleep(0.01), runs=2, min_seconds=0.1)) <= 10
    assert len(runner.samples(lambda: time.sleep(0.03), runs=5, min_seconds=0.1)) == 5
    # the budget still bounds a slow call, to no fewer than 2 runs
    assert len(runner.samples(lambda: time.sleep(0.03), runs=5, budget=0.01)) == 2
    # a later round: counted by the earlier per-call time, so one slow first call (a pool waking
    # up) is a warm-up and cuts no runs; a long call's first run counts, with no warm-up
    delays = iter([0.05] + [0.001] * 100)
    got = runner.samples(lambda: time.sleep(next(delays)), runs=2, min_seconds=0.03, per_call=0.001)
    assert len(got) >= 20 and max(got) < 0.04
    calls.clear()
    assert len(runner.samples(lambda: calls.append(1), runs=3, per_call=runner.COUNT_FIRST)) == len(calls) == 3


def test_bench_samples_count_what_the_host_did(monkeypatch):
    import numpy as np

    from dlkernels.benchmarks import runner
    monkeypatch.setattr(runner, "SETTLE_SECONDS", 0.0)
    host: dict = {}
    # 64 MiB of fresh pages per call (past malloc's largest mmap threshold): 32 faults or more
    # each (32 when NumPy gets 2 MiB pages, 16384 with 4 KiB ones)
    runs = runner.samples(lambda: np.ones(16 << 20, np.float32), runs=3, host=host)
    assert host["minor_faults"] >= 32 * len(runs)
    idle: dict = {}
    runner.samples(lambda: None, runs=3, host=idle)
    assert idle["minor_faults"] < 100 and idle.keys() == host.keys()
    # a call that sleeps keeps no thread busy, unless another thread spins meanwhile
    import threading
    quiet: dict = {}
    runner.samples(lambda: time.sleep(0.01), runs=20, host=quiet)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        busy: dict = {}
        runner.samples(lambda: time.sleep(0.01), runs=20, host=busy)
    finally:
        stop.set()
        spinner.join()
    assert quiet["busy_threads"] == 0 and busy["busy_threads"] == 1


def test_bench_rounds_outvote_a_slow_spell(monkeypatch):
    """A spell of a slow machine that covers one whole round of a kernel, and another of its
    peer, moves neither figure: each is the median of three rounds."""
    import numpy as np

    from dlkernels.benchmarks import Case, runner
    monkeypatch.setattr(runner, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(runner, "measure_peak", lambda: {"gflops": 1.0, "copy_gbs": 1.0})
    from dlkernels import _registry
    spell = {"on": False}
    calls: dict = {}

    def call(state=None):  # 2 ms, or 20 ms during the spell
        choice = _registry._choice.get()  # the backend and variant it is timed as
        calls[choice] = calls.get(choice, 0) + 1
        time.sleep(0.02 if spell["on"] else 0.002)
        return np.zeros(3)

    case = Case("X1", "matmul", "sleep", setup=dict, forward=call, backward=None,
                peers={"sleeper": lambda state: (call, None)}, backends=("cpp",))
    monkeypatch.setattr(runner, "all_cases", lambda: [("x", case)])

    timed: list[str] = []

    def log(line):  # the spell: round 2 of our kernel, then round 3 of the peer (timed before it)
        if "round" in line:
            timed.append(line.split()[1])
        if "cpp" in line and "round 2/3" in line:
            spell["on"] = True
        if "cpp" in line and "round 3/3" in line:
            spell["on"] = False

    results = runner.run(log=log, backends=["cpp"], fresh_memory=True)  # leave this process's malloc as it is
    assert results["rows"]
    assert timed == timed[:len(timed) // 3] * 3 and timed[0] == "sleeper"  # peers first, same order each round
    for row in results["rows"]:
        fwd = row["forward"]
        assert fwd["ms"] < 10 and fwd["sleeper_ms"] < 10 and 0.5 < fwd["speedup_vs_sleeper"] < 2
        assert max(fwd["spread"]["round_ms"]) > 15 and max(fwd["sleeper_spread"]["round_ms"]) > 15
        # every round ran under the row's own backend and variant: validation makes 2 calls
        assert calls[row["backend"], row["variant"]] >= 2 + fwd["runs"]


def test_bench_without_a_peers_library(monkeypatch):
    """A peer whose library is missing (torch and SciPy are not dependencies) is left out, said
    so in the log, and a case it would have validated is validated by the reference instead."""
    import numpy as np

    from dlkernels.benchmarks import Case, runner
    monkeypatch.setattr(runner, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(runner, "measure_peak", lambda: {"gflops": 1.0, "copy_gbs": 1.0})
    from dlkernels import _registry
    ran: list = []

    def call(state=None):
        ran.append(_registry._choice.get())
        return np.zeros(3)

    def absent(state):
        raise ImportError("No module named 'somepeer'")

    case = Case("X1", "matmul", "zeros", setup=dict, forward=call, backward=None, peers={"somepeer": absent},
                backends=("cpp",), oracle="somepeer")
    monkeypatch.setattr(runner, "all_cases", lambda: [("x", case)])
    lines: list[str] = []
    results = runner.run(log=lines.append, backends=["cpp"], fresh_memory=True)
    assert any("no peer somepeer" in line for line in lines)
    assert ran[0][0] == "reference"  # the oracle
    assert results["rows"] and all("speedup_vs_somepeer" not in row["forward"] for row in results["rows"])


def test_bench_case_skips_named_variants():
    """Case.skip leaves a variant out of one case only: numba/direct (the naive rung) is timed
    on C1, C4 and C5 but not on C2 and C3, where one call takes seconds."""
    from dlkernels.benchmarks import all_cases, runner
    cases = {c.id: c for _, c in all_cases()}
    for id in ("C1", "C4", "C5"):
        assert "direct" in runner._variants(cases[id], "numba")
    for id in ("C2", "C3"):
        names = runner._variants(cases[id], "numba")
        assert "direct" not in names and "im2col" in names
