"""scaled_dot_product_attention on the GPU (kernels/attention.cu); every test is marked gpu.

- the op database's samples (both entries: bool/no mask and float mask with its gradient) for
  every CUDA variant and dtype, forward and backward, against the float64 reference; float16
  and bfloat16 by test_cuda.py's 2x-naive rule;
- the dropout mask is the CPU's bit for bit (read off with V = identity);
- decode split-K over many splits, head dims that are not multiples of 8, up to 256;
- the deterministic backward is bitwise repeatable; dispatch picks mma for 16-bit, decode for L = 1;
- against torch's SDPA on the same GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from opdb import OPS_BY_ID
from test_cuda import _forced, _round, _rounded, check, to_gpu, to_host

import dlkernels as dk

pytestmark = pytest.mark.gpu

OP = "scaled_dot_product_attention"
IDS = [OP, f"{OP}_float_mask"]
DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _gpu(a, dtype):
    """Float arrays to the device in dtype; bool masks to the device as they are."""
    if isinstance(a, np.ndarray) and a.dtype == np.bool_:
        import cupy as cp
        return cp.asarray(a)
    return to_gpu(a, dtype)


def _cases(direction: str) -> list:
    return [pytest.param(op_id, k.variant, dtype, id=f"{op_id}-{k.variant}-{dtype}")
            for k in dk.kernels(OP, direction, "cuda") for dtype in DTYPES for op_id in IDS]


@pytest.mark.parametrize("op_id,variant,dtype", _cases("forward"))
def test_attention_forward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            expected = np.asarray(op.forward(*s.args, **s.kwargs)[0])
            r = _rounded(s, dtype)
            naive = _round(np.asarray(op.forward(*r.args, **r.kwargs)[0]), dtype)
        got = _forced(variant, op.forward, *(_gpu(a, dtype) for a in s.args), **s.kwargs)
        if got is None:
            continue
        assert str(got[0].dtype) == dtype
        check(got[0], expected, naive, dtype, f"{s.desc}: forward ({variant})")
        ran += 1
    assert ran > 0 or variant == "mma" and dtype in ("float32", "float64")


@pytest.mark.parametrize("op_id,variant,dtype", _cases("backward"))
def test_attention_backward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            y, saved = op.forward(*s.args, **s.kwargs)
            g = np.random.default_rng(1).standard_normal(np.shape(y))
            expected = op.backward(g, saved)
            r = _rounded(s, dtype)
            _, rsaved = op.forward(*r.args, **r.kwargs)
            naive = [None if d is None else _round(np.asarray(d), dtype) for d in op.backward(_round(g, dtype), rsaved)]
        with dk.backend("cuda"):
            _, gsaved = op.forward(*(_gpu(a, dtype) for a in s.args), **s.kwargs)
        got = _forced(variant, op.backward, to_gpu(g, dtype), gsaved)
        if got is None:
            continue
        for i, (a, e, n) in enumerate(zip(got, expected, naive, strict=True)):
            check(a, None if e is None else np.asarray(e), n, dtype, f"{s.desc}: grad {i} ({variant})")
        ran += 1
    assert ran > 0


def test_dropout_mask_matches_the_cpu():
    """V = identity makes out = P~ (dropped, rescaled probabilities): zeros exactly where the
    CPU's generator drops."""
    from dlkernels.ops.attention.common import dropout_keep, make_dropout
    rng = np.random.default_rng(5)
    Z, L, S = 3, 37, 70
    q, k = rng.standard_normal((Z, L, 8)), rng.standard_normal((Z, S, 8))
    v = np.broadcast_to(np.eye(S), (Z, S, S)).copy()
    d = make_dropout(0.4, 2024)
    keep = dropout_keep(d.seed, d.threshold, np.arange(Z)[:, None, None], np.arange(L)[None, :, None],
                        np.arange(S)[None, None, :], L, S)
    for variant in ("flash", "decode"):
        with dk.backend("cuda", variant):
            out = dk.scaled_dot_product_attention(*(to_gpu(a, "float64") for a in (q, k, v)), dropout_p=0.4, seed=2024)
        np.testing.assert_array_equal(to_host(out) != 0, keep, err_msg=variant)
    with dk.backend("cpp"):
        cpu = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.4, seed=2024)
    np.testing.assert_allclose(to_host(out), cpu, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["flash", "mma", "decode"])
@pytest.mark.parametrize("L,S,E,Ev,causal", [
    (1, 5000, 64, 64, False),  # decode: many splits
    (3, 777, 20, 36, True),  # head dims not multiples of 8
    (150, 300, 256, 256, True),  # the largest head dim, causal over several tiles
    (70, 65, 250, 17, False),  # E near the limit, tiny Ev, S just past one mma tile
])
def test_attention_shapes(variant, dtype, L, S, E, Ev, causal):
    rng = np.random.default_rng(L + S)
    q, k, v = rng.standard_normal((2, L, E)), rng.standard_normal((2, S, E)), rng.standard_normal((2, S, Ev))
    kp = rng.random((2, 1, S)) > 0.2  # key padding
    kp[1] = False  # a batch with every key masked: output 0
    kw = {"is_causal": True} if causal else {"attn_mask": kp}
    with dk.backend("reference"):
        expected = dk.scaled_dot_product_attention(q, k, v, **kw)
        naive = _round(dk.scaled_dot_product_attention(*(_round(a, dtype) for a in (q, k, v)), **kw), dtype)
    gkw = dict(kw)
    if not causal:
        gkw["attn_mask"] = _gpu(kp, dtype)
    got = _forced(variant, dk.scaled_dot_product_attention, *(to_gpu(a, dtype) for a in (q, k, v)), **gkw)
    if got is None:
        pytest.skip(f"{variant} refuses {dtype}")
    check(got, expected, naive, dtype, f"L {L} S {S} E {E} Ev {Ev}")
    if not causal:
        assert not np.any(to_host(got)[1]), "fully masked rows must give 0"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_backward_bitwise_repeatable(dtype):
    rng = np.random.default_rng(9)
    q, k = rng.standard_normal((2, 4, 100, 40)), rng.standard_normal((2, 2, 130, 40))
    v = rng.standard_normal((2, 2, 130, 24))
    g = rng.standard_normal((2, 4, 100, 24))
    runs = []
    for _ in range(2):
        with dk.backend("cuda"):
            _, saved = dk.scaled_dot_product_attention_forward(*(to_gpu(a, dtype) for a in (q, k, v)), enable_gqa=True,
                                                               dropout_p=0.1, seed=3)
            runs.append([to_host(a) for a in dk.scaled_dot_product_attention_backward(to_gpu(g, dtype), saved)[:3]])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dispatch_reasons():
    import cupy as cp

    from dlkernels._registry import select
    for dtype, L, want in (("float16", 200, "mma"), ("float32", 200, "flash"), ("float32", 1, "decode"),
                           ("float16", 1, "decode")):
        q = cp.zeros((2, L, 64), dtype)
        k = cp.zeros((2, 300, 64), dtype)
        kern, why = select(OP, "forward", "cuda", q, k, k, np.zeros(2, np.int64), None, False, 0.125, None)
        assert kern.variant == want, (dtype, L, kern.variant, why)
        assert why


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_attention_matches_torch_on_the_gpu(dtype, rng):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, dtype)
    op = OPS_BY_ID[OP]
    tol = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}[dtype]
    for s in op.samples(rng):
        if s.kwargs.get("dropout_p"):
            continue
        args = [torch.tensor(a, dtype=torch.bool if a.dtype == np.bool_ else tdt, device="cuda") for a in s.args]
        with dk.backend("cuda"):
            got = dk.scaled_dot_product_attention(*args, **s.kwargs)
        want = op.torch_forward(*args, **s.kwargs)
        assert isinstance(got, torch.Tensor) and got.device == args[0].device
        keep = ~torch.isnan(want)  # torch gives NaN for fully masked rows on some backends; we give 0
        scale = max(1.0, float(want[keep].abs().max())) if bool(keep.any()) else 1.0
        assert float((got[keep] - want[keep]).abs().max()) <= tol * scale, s.desc
