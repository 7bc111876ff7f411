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
        assert r["max_error"] < 1e-3 and r["forward"]["ms"] > 0 and r["forward"]["speedup_vs_torch"] > 0
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
