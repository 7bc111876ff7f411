# ruff: noqa: B023  (the timed lambdas run inside their own loop iteration: gpu_time calls them at once)
"""GPU benchmarks of the CUDA backend against torch (cuDNN, cuSPARSE) on the same GPU, same process.

    python bench/bench_cuda.py [--quick] [--json bench/results/cuda-<gpu>.json]

Conv C1–C5 (the foundation issue's shapes) in float32 (TF32 off in both dlkernels and torch)
and bfloat16, forward and forward+backward; graph G1–G4 (the graph issue's shapes) sum and
max forward against cupyx.scipy.sparse CSR @ dense (cuSPARSE), torch index_add_ and
torch scatter_reduce. Every dlkernels result is validated against torch before timing.
Timing: CUDA events on the current stream, warm-up first (compiles and caches the kernels),
the L2 cache flushed before each run (a 256 MiB write), median of the runs. Bandwidth peak:
a device-to-device copy of 1 GiB measured in the same run; graph rows report % of it.
The JSON holds the GPU, CuPy/torch/CUDA versions, the commit and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import cupy as cp  # noqa: E402
import dlkernels as dk  # noqa: E402
import dlkernels.torch as dlt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_flush = None


def gpu_time(fn, runs: int = 20) -> float:
    """Median ms of fn on torch's current stream (= CuPy's inside dlt), L2 flushed before each run."""
    global _flush
    if _flush is None:
        _flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device="cuda")
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        _flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write counted), now."""
    src = torch.empty(2**30 // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = gpu_time(lambda: dst.copy_(src), runs=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


CONV = [  # id, shape, N, C, K, spatial, kernel, kwargs
    ("C1", "N64 C1 32x32, K32 5x5", 64, 1, 32, (32, 32), 5, {}),
    ("C2", "N32 C64 56x56, K64 3x3, pad 1", 32, 64, 64, (56, 56), 3, {"padding": 1}),
    ("C3", "N16 C128 28x28, K128 3x3, pad 1", 16, 128, 128, (28, 28), 3, {"padding": 1}),
    ("C4", "depthwise N32 C256 28x28, 3x3, pad 1", 32, 256, 256, (28, 28), 3, {"padding": 1, "groups": 256}),
    ("C5", "conv1d N32 C64 L1024, K64 k7, pad 3", 32, 64, 64, (1024,), 7, {"padding": 3}),
]


def bench_conv(quick: bool) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for cid, shape, N, C, K, size, k, kw in CONV[:2] if quick else CONV:
        nd = len(size)
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(N, C, *size, device="cuda", generator=g).to(dtype).requires_grad_()
            w = (
                (
                    torch.randn(K, C // kw.get("groups", 1), *(k,) * nd, device="cuda", generator=g)
                    / np.sqrt(C * k**nd)
                )
                .to(dtype)
                .requires_grad_()
            )
            b = torch.randn(K, device="cuda", generator=g).to(dtype).requires_grad_()
            ours = dlt.conv2d if nd == 2 else dlt.conv1d
            theirs = F.conv2d if nd == 2 else F.conv1d
            y, yt = ours(x, w, b, **kw), theirs(x, w, b, **kw)
            err = float((y.float() - yt.float()).abs().max()) / max(1.0, float(yt.float().abs().max()))
            dy = torch.randn_like(yt)
            flops = 2 * N * K * yt[0, 0].numel() * (C // kw.get("groups", 1)) * k**nd
            with torch.no_grad():
                t_f, p_f = gpu_time(lambda: ours(x, w, b, **kw)), gpu_time(lambda: theirs(x, w, b, **kw))
            t_b = gpu_time(lambda: torch.autograd.grad(ours(x, w, b, **kw), (x, w, b), dy))
            p_b = gpu_time(lambda: torch.autograd.grad(theirs(x, w, b, **kw), (x, w, b), dy))
            rows.append(
                {
                    "case": cid,
                    "shape": shape,
                    "dtype": str(dtype).removeprefix("torch."),
                    "tf32": False,
                    "validated_rel_err": err,
                    "fwd_ms": t_f,
                    "torch_fwd_ms": p_f,
                    "fwd_speedup": p_f / t_f,
                    "fwd_tflops": flops / (t_f * 1e-3) / 1e12,
                    "fwdbwd_ms": t_b,
                    "torch_fwdbwd_ms": p_b,
                    "fwdbwd_speedup": p_b / t_b,
                }
            )
            print(
                f"{cid} {rows[-1]['dtype']:8s} fwd {t_f:8.3f} ms ({p_f / t_f:5.2f}x cuDNN)  "
                f"fwd+bwd {t_b:8.3f} ms ({p_b / t_b:5.2f}x)  err {err:.1e}",
                flush=True,
            )
    return rows


def _power_law_graph(V: int, E: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, V + 1) ** 1.1  # zipf-like in-degrees
    dst = rng.choice(V, size=E, p=weights / weights.sum())
    return np.stack([rng.integers(0, V, E), rng.permutation(V)[dst]]).astype(np.int64)


GRAPHS = [  # id, description, V, E, F, power law
    ("G1", "power-law, 200k nodes, 2M edges", 200_000, 2_000_000, 64, True),
    ("G2", "uniform random, 100k nodes, 1M edges", 100_000, 1_000_000, 128, False),
    ("G3", "ogbn-arxiv-sized, power-law", 169_343, 1_166_243, 128, True),
    ("G4", "Cora-sized", 2_708, 10_556, 1433, False),
]


def bench_graph(quick: bool, peak_gbs: float) -> list[dict]:
    import cupyx.scipy.sparse as cps
    from dlkernels.ops.graph import aggregate_bytes
    from dlkernels.ops.graph import cuda as gcuda
    from dlkernels.ops.graph.structure import Graph

    rows = []
    rng = np.random.default_rng(0)
    for gid, desc, V, E, Fd, power in GRAPHS[:1] if quick else GRAPHS:
        ei = _power_law_graph(V, E, rng) if power else rng.integers(0, V, (2, E))
        g = Graph(ei.astype(np.int32), V)
        csr = g._csr
        x = cp.asarray(rng.standard_normal((V, Fd), dtype=np.float32))
        xt = torch.from_dlpack(x)
        src, dst = (torch.from_numpy(ei[i]).cuda() for i in (0, 1))
        adj = cps.csr_matrix(
            (cp.ones(E, cp.float32), cp.asarray(csr.col), cp.asarray(csr.indptr)), shape=(V, V)
        )
        ref = adj @ x
        for reduce in ("sum", "max"):
            ours = gcuda.aggregate_forward_cuda(csr, x, None, reduce)
            if reduce == "sum":
                err = float(cp.abs(ours - ref).max()) / max(1.0, float(cp.abs(ref).max()))
                peers = {
                    "cusparse": lambda: adj @ x,
                    "torch_index_add": lambda: torch.zeros_like(xt).index_add_(0, dst, xt[src]),
                }
            else:
                tref = torch.zeros_like(xt).scatter_reduce_(
                    0, dst[:, None].expand(-1, Fd), xt[src], "amax", include_self=False
                )
                err = float((torch.from_dlpack(ours) - tref).abs().max())
                peers = {
                    "torch_scatter_reduce": lambda: torch.zeros_like(xt).scatter_reduce_(
                        0, dst[:, None].expand(-1, Fd), xt[src], "amax", include_self=False
                    )
                }
            t = gpu_time(lambda: gcuda.aggregate_forward_cuda(csr, x, None, reduce))
            gbs = aggregate_bytes(V, E, Fd) / (t * 1e-3) / 1e9
            row = {
                "case": gid,
                "shape": desc,
                "F": Fd,
                "reduce": reduce,
                "dtype": "float32",
                "validated_rel_err": err,
                "ms": t,
                "GB/s": gbs,
                "pct_copy_bw": 100 * gbs / peak_gbs,
            }
            for name, fn in peers.items():
                pt = gpu_time(fn)
                row[f"{name}_ms"], row[f"vs_{name}"] = pt, pt / t
            rows.append(row)
            print(
                f"{gid} {reduce}: {t:.3f} ms, {gbs:.0f} GB/s ({row['pct_copy_bw']:.0f}% of copy), "
                + ", ".join(
                    f"{k.removeprefix('vs_')} {v:.2f}x" for k, v in row.items() if k.startswith("vs_")
                ),
                flush=True,
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    from dlkernels._cuda import cuda_info

    print(cuda_info(), flush=True)
    peak = copy_bandwidth()
    print(f"device copy bandwidth: {peak:.0f} GB/s", flush=True)
    t0 = time.time()
    conv_rows = bench_conv(args.quick)
    try:
        graph_rows = bench_graph(args.quick, peak)
    except (ImportError, AttributeError) as exc:  # the graph front-end or its CUDA glue is missing
        print(f"graph benchmarks skipped: {exc}", flush=True)
        graph_rows = []
    if args.json:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
        prop = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        result = {
            "gpu": prop["name"].decode() if isinstance(prop["name"], bytes) else prop["name"],
            "cupy": cp.__version__,
            "torch": torch.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "commit": commit,
            "command": " ".join([sys.executable] + sys.argv),
            "dlkernels": dk.__version__,
            "copy_bandwidth_gbs": peak,
            "seconds": time.time() - t0,
            "conv": conv_rows,
            "graph": graph_rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
