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
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dlkernels as dk  # noqa: E402
import dlkernels.torch as dlt  # noqa: E402

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


# ---- attention and LSTM (kernels/attention.cu, kernels/lstm.cu) ----------------------------------

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def _peak_bf16() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _attn_case(B, H, L, S, E, dtype, causal=False, mask=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, L, E, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, H, S, E, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, H, S, E, device="cuda", dtype=dtype, generator=g)
    m = (torch.rand(B, 1, 1, S, device="cuda", generator=g) > 0.1) if mask else None
    return q, k, v, m


def _attn_row(cid, B, H, L, S, E, dtype, causal, mask, peer, peer_name, backward=True):
    """Forward and backward (deterministic and atomic) of dlkernels vs a torch SDPA backend."""
    from torch.nn.attention import sdpa_kernel
    q, k, v, m = _attn_case(B, H, L, S, E, dtype, causal, mask)
    flops = 4.0 * B * H * L * S * E / (2 if causal else 1)
    with dk.backend("cuda"):
        out, saved = dk.scaled_dot_product_attention_forward(q, k, v, m, is_causal=causal)
    with sdpa_kernel(peer):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    err = float((out.float() - ref.float()).abs().max())
    assert err < (5e-2 if dtype != torch.float32 else 1e-3), f"{cid}: dlkernels differs from torch by {err}"

    def fwd():
        with dk.backend("cuda"):
            dk.scaled_dot_product_attention_forward(q, k, v, m, is_causal=causal)

    def tfwd():
        with sdpa_kernel(peer):
            F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)

    row = {"id": cid, "shape": f"B{B} H{H} L{L} S{S} E{E}{' causal' if causal else ''}{' mask' if mask else ''}",
           "dtype": str(dtype).split(".")[-1], "peer": peer_name, "ms": gpu_time(fwd), "peer_ms": gpu_time(tfwd)}
    row["speedup"] = row["peer_ms"] / row["ms"]
    row["tflops"] = flops / row["ms"] / 1e9
    if backward:
        gout = torch.randn_like(out)
        for variant in ("flash", "atomic"):
            def bwd(variant=variant):
                with dk.backend("cuda", variant):
                    dk.scaled_dot_product_attention_backward(gout, saved)
            row[f"bwd_{variant}_ms"] = gpu_time(bwd)
        qr, kr, vr = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel(peer):
            o = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=m, is_causal=causal)
        row["peer_bwd_ms"] = gpu_time(lambda: torch.autograd.grad(o, (qr, kr, vr), gout, retain_graph=True))
        row["bwd_speedup"] = row["peer_bwd_ms"] / row["bwd_flash_ms"]
        row["bwd_tflops"] = 2.5 * flops / row["bwd_flash_ms"] / 1e9
    peak = _peak_bf16()
    if peak and dtype != torch.float32:
        row["pct_bf16_peak"] = 100 * row["tflops"] / peak
    return row


def bench_attention(quick: bool) -> list[dict]:
    """FlashAttention's grid (bf16/fp16, E 64/128, L = S in 1024/4096/16384, B*L = 16384, H*E = 2048,
    causal and not) vs torch's flash backend; float32 vs torch's math backend; A3 and A5."""
    from torch.nn.attention import SDPBackend
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    grid = [(dt, E, L, c) for dt in (torch.bfloat16, torch.float16) for E in (64, 128)
            for L in (1024, 4096, 16384) for c in (False, True)]
    for dt, E, L, c in grid[:2] if quick else grid:
        rows.append(_attn_row(f"FA-{E}-{L}", 16384 // L, 2048 // E, L, L, E, dt, c, False,
                              SDPBackend.FLASH_ATTENTION, "torch flash"))
        print(rows[-1], flush=True)
    for L in (1024,) if quick else (1024, 4096):  # float32 is real float32 (no TF32) on both sides
        rows.append(_attn_row(f"F32-{L}", 16384 // L, 32, L, L, 64, torch.float32, False, False, SDPBackend.MATH,
                              "torch math"))
        print(rows[-1], flush=True)
    for dt in (torch.bfloat16, torch.float32):
        # torch's flash backend takes no mask: A3 is compared with its memory-efficient backend
        rows.append(_attn_row("A3", 4, 12, 512, 512, 64, dt, False, True, SDPBackend.EFFICIENT_ATTENTION,
                              "torch efficient"))
        print(rows[-1], flush=True)
        rows.append(_attn_row("A5", 16, 32, 1, 8192, 128, dt, False, False,
                              SDPBackend.FLASH_ATTENTION if dt != torch.float32 else SDPBackend.MATH,
                              "torch flash" if dt != torch.float32 else "torch math", backward=False))
        print(rows[-1], flush=True)
    return rows


LSTM_CASES = [  # id, T, B, I, H (the CPU LSTM issue's L1-L4; L3 is one cell step)
    ("L1", 100, 64, 64, 256), ("L2", 512, 8, 128, 512), ("L3", 1, 64, 64, 256), ("L4", 50, 1, 32, 128),
]


def bench_lstm(quick: bool) -> list[dict]:
    """L1-L4 forward and forward+backward vs torch.nn.LSTM (cuDNN) on the same GPU, float32 and bf16."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        for cid, T, B, I, H in LSTM_CASES[:1] if quick else LSTM_CASES:
            ref = torch.nn.LSTM(I, H).to("cuda", dt)
            x = torch.randn(T, B, I, device="cuda", dtype=dt)
            h0, c0 = torch.zeros(1, B, H, device="cuda", dtype=dt), torch.zeros(1, B, H, device="cuda", dtype=dt)
            w = [p.detach() for p in (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)]
            with dk.backend("cuda"):
                (y, _), saved = dk.lstm_forward(x, h0[0], c0[0], *w)
            yt, _ = ref(x, (h0, c0))
            err = float((y.float() - yt.float()).abs().max())
            assert err < (5e-2 if dt == torch.bfloat16 else 1e-3), f"{cid}: dlkernels differs from cuDNN by {err}"
            gy = torch.randn_like(yt)

            def fwd():
                with dk.backend("cuda"):
                    dk.lstm_forward(x, h0[0], c0[0], *w)

            def fwd_bwd():
                with dk.backend("cuda"):
                    _, s = dk.lstm_forward(x, h0[0], c0[0], *w)
                    dk.lstm_backward((gy, None, None), s)

            def tfwd():
                with torch.no_grad():
                    ref(x, (h0, c0))

            xr = x.detach().requires_grad_()

            def tfwd_bwd():
                out, _ = ref(xr, (h0, c0))
                torch.autograd.grad(out, [xr, *ref.parameters()], gy)

            from dlkernels._registry import select
            kern, why = select("lstm", "forward", "cuda", cp.from_dlpack(x), cp.from_dlpack(h0[0]),
                               cp.from_dlpack(c0[0]), *(cp.from_dlpack(t) for t in w[:2]), None, None, None)
            row = {"id": cid, "shape": f"T{T} B{B} I{I} H{H}", "dtype": str(dt).split(".")[-1],
                   "variant": kern.variant, "why": why, "ms": gpu_time(fwd), "peer_ms": gpu_time(tfwd),
                   "fwd_bwd_ms": gpu_time(fwd_bwd), "peer_fwd_bwd_ms": gpu_time(tfwd_bwd)}
            row["speedup"] = row["peer_ms"] / row["ms"]
            row["fwd_bwd_speedup"] = row["peer_fwd_bwd_ms"] / row["fwd_bwd_ms"]
            rows.append(row)
            print(row, flush=True)
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
    attention_rows = bench_attention(args.quick)
    lstm_rows = bench_lstm(args.quick)
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
            "attention": attention_rows,
            "lstm": lstm_rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
