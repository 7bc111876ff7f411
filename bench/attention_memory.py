"""Benchmark A4: the attention forward's peak resident memory beyond its inputs and outputs.

    PYTHONPATH=python python bench/attention_memory.py                # A4: B1 H4 L=S=16384 E64
    PYTHONPATH=python python bench/attention_memory.py --L 4096 --json

The forward runs in a fresh subprocess: it warms up (loads the extension, starts the thread
team) on a small problem, allocates the inputs, resets the kernel's peak-RSS counter
(`echo 5 > /proc/self/clear_refs`, so VmHWM restarts from the current RSS), runs one forward
and reads VmHWM from /proc/self/status (resource.getrusage's ru_maxrss where clear_refs is not
available: then the baseline is the peak before the call). Growth = peak - baseline - the
output and log-sum-exp arrays. The (B, H, L, S) score matrix would take B*H*L*S*itemsize
bytes (4 GiB for A4 in float32); the target is under 64 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_bytes() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(B: int, H: int, L: int, S: int, E: int, dtype: str, causal: bool, backend: str) -> dict:
    import numpy as np

    import dlkernels as dk

    rng = np.random.default_rng(0)
    small = [rng.standard_normal((1, 2, 300, E)).astype(dtype) for _ in range(3)]
    with dk.backend(backend):
        dk.scaled_dot_product_attention(*small, is_causal=causal)  # warm-up: extension, threads
    q = rng.standard_normal((B, H, L, E), dtype=np.float32).astype(dtype, copy=False)
    k = rng.standard_normal((B, H, S, E), dtype=np.float32).astype(dtype, copy=False)
    v = rng.standard_normal((B, H, S, E), dtype=np.float32).astype(dtype, copy=False)
    _trim()  # hand freed heap memory back, so the outputs cannot reuse resident pages
    exact = _reset_peak()
    base = _status_kib("VmRSS") * 1024 if exact else _peak_bytes()
    with dk.backend(backend):
        out, saved = dk.scaled_dot_product_attention_forward(q, k, v, is_causal=causal)
    peak = _peak_bytes()
    item = np.dtype(dtype).itemsize
    outputs = out.nbytes + saved.lse.nbytes
    return {"shape": f"B{B} H{H} L={L} S={S} E{E}", "dtype": dtype, "backend": backend, "causal": causal,
            "inputs_mb": (q.nbytes + k.nbytes + v.nbytes) / 2**20, "outputs_mb": outputs / 2**20,
            "growth_mb": (peak - base - outputs) / 2**20, "scores_mb": B * H * L * S * item / 2**20,
            "exact_peak_reset": exact}


def measure(B: int = 1, H: int = 4, L: int = 16384, S: int | None = None, E: int = 64, dtype: str = "float32",
            causal: bool = False, backend: str = "cpp") -> dict:
    """Runs child() in a subprocess (a clean peak counter) and returns its figures."""
    args = [sys.executable, os.path.abspath(__file__), "--child", "--B", str(B), "--H", str(H), "--L", str(L),
            "--S", str(S or L), "--E", str(E), "--dtype", dtype, "--backend", backend]
    args += ["--causal"] if causal else []
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--L", type=int, default=16384)
    ap.add_argument("--S", type=int, default=None)
    ap.add_argument("--E", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.B, a.H, a.L, a.S or a.L, a.E, a.dtype, a.causal, a.backend)))
        return
    r = measure(a.B, a.H, a.L, a.S, a.E, a.dtype, a.causal, a.backend)
    if a.json:
        print(json.dumps(r))
        return
    print(f"A4 memory, {r['shape']} {r['dtype']} {r['backend']}: peak RSS growth beyond inputs "
          f"({r['inputs_mb']:.0f} MB) and outputs ({r['outputs_mb']:.0f} MB): {r['growth_mb']:.1f} MB "
          f"(target < 64 MB; the score matrix would take {r['scores_mb']:.0f} MB)"
          + ("" if r["exact_peak_reset"] else " [peak counter could not be reset: upper bound]"))


if __name__ == "__main__":
    main()
