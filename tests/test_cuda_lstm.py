"""lstm and lstm_cell on the GPU (kernels/lstm.cu); every test is marked gpu.

- the op database's samples (lengths in any order with 0 and T, proj_size, no bias, no state,
  batch_first, unbatched cells) for every CUDA variant and dtype, forward and backward, against
  the float64 reference; float16/bfloat16 by test_cuda.py's 2x-naive rule;
- the persistent kernel on a size that spreads the units over many blocks, against the reference;
- the backward is bitwise repeatable; the dispatch and its reason (persistent vs per-step);
- against torch's cuDNN LSTM on the same GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from opdb import OPS_BY_ID
from test_cuda import _forced, _round, _rounded, check, to_gpu, to_host

import dlkernels as dk

pytestmark = pytest.mark.gpu

DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _cases(direction: str) -> list:
    return [pytest.param(op_id, k.variant, dtype, id=f"{op_id}-{k.variant}-{dtype}")
            for op_id in ("lstm", "lstm_cell") for k in dk.kernels(op_id, direction, "cuda") for dtype in DTYPES]


@pytest.mark.parametrize("op_id,variant,dtype", _cases("forward"))
def test_lstm_forward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            expected = [np.asarray(a) for a in op.outputs(op.forward(*s.args, **s.kwargs)[0])]
            r = _rounded(s, dtype)
            naive = [_round(np.asarray(a), dtype) for a in op.outputs(op.forward(*r.args, **r.kwargs)[0])]
        got = _forced(variant, op.forward, *(to_gpu(a, dtype) for a in s.args), **s.kwargs)
        if got is None:
            continue
        for i, (a, e, n) in enumerate(zip(op.outputs(got[0]), expected, naive, strict=True)):
            assert str(a.dtype) == dtype
            check(a, e, n, dtype, f"{s.desc}: output {i} ({variant})")
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("op_id,variant,dtype", _cases("backward"))
def test_lstm_backward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            out, saved = op.forward(*s.args, **s.kwargs)
            outs = [np.asarray(a) for a in op.outputs(out)]
            gs = [np.random.default_rng(i).standard_normal(a.shape) for i, a in enumerate(outs)]
            expected = op.backward(op.grads_to_backward(gs), saved)
            r = _rounded(s, dtype)
            _, rsaved = op.forward(*r.args, **r.kwargs)
            naive = [None if d is None else _round(np.asarray(d), dtype)
                     for d in op.backward(op.grads_to_backward([_round(g, dtype) for g in gs]), rsaved)]
        with dk.backend("cuda"):
            _, gsaved = op.forward(*(to_gpu(a, dtype) for a in s.args), **s.kwargs)
        got = _forced(variant, op.backward, op.grads_to_backward([to_gpu(g, dtype) for g in gs]), gsaved)
        if got is None:
            continue
        for i, (a, e, n) in enumerate(zip(got, expected, naive, strict=True)):
            check(a, None if e is None else np.asarray(e), n, dtype, f"{s.desc}: grad {i} ({variant})")
        ran += 1
    assert ran > 0


def _big_case(rng, T=20, B=5, I=12, H=300):
    k = 1 / np.sqrt(H)
    return (rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H)),
            rng.uniform(-k, k, (4 * H, I)), rng.uniform(-k, k, (4 * H, H)), rng.uniform(-k, k, 4 * H),
            rng.uniform(-k, k, 4 * H))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", ["steps", "persistent"])
def test_lstm_many_blocks(variant, dtype):
    """H = 300 over the GPU's SMs (persistent: ~3 units per block, a grid barrier per step), lengths."""
    rng = np.random.default_rng(4)
    args = _big_case(rng)
    lengths = np.array([20, 3, 0, 17, 20])
    with dk.backend("reference"):
        (y, (h, c)), _ = dk.lstm_forward(*args, lengths=lengths)
        (ny, (nh, nc)), _ = dk.lstm_forward(*(_round(a, dtype) for a in args), lengths=lengths)
    got = _forced(variant, dk.lstm_forward, *(to_gpu(a, dtype) for a in args), lengths=lengths)
    assert got is not None, f"{variant} refused H = 300"
    (gy, (gh, gc)), _ = got
    for a, e, n, what in ((gy, y, ny, "output"), (gh, h, nh, "h_n"), (gc, c, nc, "c_n")):
        check(a, e, _round(n, dtype), dtype, f"{variant} {what}")


def test_lstm_backward_bitwise_repeatable():
    rng = np.random.default_rng(6)
    args = _big_case(rng, T=7, B=3, H=70)
    g = rng.standard_normal((7, 3, 70))
    runs = []
    for _ in range(2):
        with dk.backend("cuda"):
            _, saved = dk.lstm_forward(*(to_gpu(a, "float32") for a in args), lengths=np.array([7, 2, 5]))
            runs.append([to_host(a) for a in dk.lstm_backward((to_gpu(g, "float32"), None, None), saved)])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dispatch_reasons():
    import cupy as cp

    from dlkernels._registry import select
    x, h0, c0 = cp.zeros((10, 8, 32), cp.float32), cp.zeros((8, 256), cp.float32), cp.zeros((8, 256), cp.float32)
    wi, wh = cp.zeros((1024, 32), cp.float32), cp.zeros((1024, 256), cp.float32)
    k, why = select("lstm", "forward", "cuda", x, h0, c0, wi, wh, None, None, None)
    assert k.variant == "persistent" and "on-chip" in why, why
    wr, h0p = cp.zeros((64, 256), cp.float32), cp.zeros((8, 64), cp.float32)
    k, why = select("lstm", "forward", "cuda", x, h0p, c0, wi, cp.zeros((1024, 64), cp.float32), None, wr, None)
    assert k.variant == "steps" and "proj_size" in why, why
    big = cp.zeros((1, 1, 1), cp.float32)
    c_big = cp.zeros((1, 8192), cp.float32)
    x4 = cp.zeros((4, 1, 1), cp.float32)
    k, why = select("lstm", "forward", "cuda", x4, c_big, c_big, big, big, None, None, None)
    assert k.variant == "steps" and "does not fit" in why, why


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lstm_matches_cudnn(dtype, rng):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    op = OPS_BY_ID["lstm"]
    tol = {"float32": 1e-4, "bfloat16": 5e-2}[dtype]
    for s in op.samples(rng):
        args = [None if a is None else torch.tensor(a, dtype=tdt, device="cuda") for a in s.args]
        with dk.backend("cuda"):
            got = dk.lstm(*args, **s.kwargs)
        want = op.torch_forward(*args, **s.kwargs)
        for a, e in zip((got[0], *got[1]), want, strict=True):
            if e.numel() == 0:
                continue
            scale = max(1.0, float(e.abs().max()))
            assert float((a.float() - e.float()).abs().max()) <= tol * scale, s.desc
