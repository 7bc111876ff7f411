"""scaled_dot_product_attention beyond the op database: the accuracy rule against torch, dropout
(reproducible, fresh per seed=None, backward consistent with the forward's mask, keep rate),
fully masked rows, causal with L != S, GQA, the two-pass backward's thread-count repeatability,
and nn.MultiheadAttention against torch.nn.MultiheadAttention."""

import numpy as np
import pytest

import dlkernels as dk
import dlkernels.nn as dnn
from dlkernels.ops.attention import reference

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

BACKENDS = ["reference", "numba", "cpp"]


def _rand(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def _ref64(q, k, v, **kw):
    with dk.backend("reference"):
        out, saved = dk.scaled_dot_product_attention_forward(q.astype(np.float64), k.astype(np.float64),
                                                             v.astype(np.float64), **kw)
    return out, saved


# ---- accuracy rule: float32 error vs the float64 reference <= 2x torch's own + a tiny floor ----
SHAPES = [  # (B, H, L, S, E, Ev, kw)
    (1, 2, 33, 47, 24, 24, {}),
    (2, 1, 20, 65, 72, 72, {"is_causal": True}),
    (1, 2, 40, 40, 80, 80, {}),
    (1, 1, 129, 300, 96, 96, {}),
    (1, 1, 17, 9, 160, 160, {}),
    (1, 1, 3, 700, 64, 40, {}),   # decoding-like: few query rows, E != Ev
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s[2]}S{s[3]}E{s[4]}")
def test_float32_accuracy_rule(backend, shape):
    B, H, L, S, E, Ev, kw = shape
    rng = np.random.default_rng(E)
    q, k, v = _rand(rng, B, H, L, E), _rand(rng, B, H, S, E), _rand(rng, B, H, S, Ev)
    g = _rand(rng, B, H, L, Ev)
    ref, saved64 = _ref64(q, k, v, **kw)
    with dk.backend("reference"):
        ref_grads = dk.scaled_dot_product_attention_backward(g, saved64)[:3]
    q32, k32, v32, g32 = (a.astype(np.float32) for a in (q, k, v, g))
    with dk.backend(backend):
        out, saved = dk.scaled_dot_product_attention_forward(q32, k32, v32, **kw)
        grads = dk.scaled_dot_product_attention_backward(g32, saved)[:3]
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q32, k32, v32))
    tout = F.scaled_dot_product_attention(tq, tk, tv, **kw)
    tgrads = torch.autograd.grad(tout, (tq, tk, tv), torch.from_numpy(g32))

    def err(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - b)))

    floor = 1e-6
    assert err(out, ref) <= 2 * err(tout.detach().numpy(), ref) + floor
    for name, ours, theirs, r in zip("qkv", grads, tgrads, ref_grads):
        assert err(ours, r) <= 2 * err(theirs.numpy(), r) + floor * max(1.0, float(np.max(np.abs(r)))), name


# ---- dropout -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_same_seed_same_result_and_fresh_seed_differs(backend):
    rng = np.random.default_rng(1)
    q, k, v = _rand(rng, 2, 2, 9, 8), _rand(rng, 2, 2, 11, 8), _rand(rng, 2, 2, 11, 8)
    with dk.backend(backend):
        a = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=123)
        b = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=123)
        c = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
        d = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, d)
    with dk.backend("reference"):
        r = dk.scaled_dot_product_attention(q, k, v, dropout_p=0.3, seed=123)
    np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)  # every backend draws the same mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_backward_matches_finite_differences_at_fixed_seed(backend):
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 1, 2, 5, 4), _rand(rng, 1, 2, 6, 4), _rand(rng, 1, 2, 6, 3)
    g = _rand(rng, 1, 2, 5, 3)
    kw = dict(dropout_p=0.4, seed=99)
    with dk.backend(backend):
        _, saved = dk.scaled_dot_product_attention_forward(q, k, v, **kw)
        grads = dk.scaled_dot_product_attention_backward(g, saved)[:3]

        def loss(qq, kk, vv):
            return float(np.sum(dk.scaled_dot_product_attention(qq, kk, vv, **kw) * g))

        args, h = [q, k, v], 1e-6
        for n in range(3):
            num = np.zeros_like(args[n])
            for idx in np.ndindex(args[n].shape):
                plus = [a.copy() for a in args]
                minus = [a.copy() for a in args]
                plus[n][idx] += h
                minus[n][idx] -= h
                num[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
            np.testing.assert_allclose(grads[n], num, rtol=1e-6, atol=1e-7)


def test_dropout_keep_rate():
    """With v = identity rows summed: mean of the kept, rescaled probabilities is 1 per row."""
    p, Z, L, S = 0.3, 4, 64, 256
    keep = reference._keep(dk.ops.attention.common.make_dropout(p, 2024), Z, L, S, np.dtype(np.float64))
    rate = float(np.mean(keep > 0))
    n = Z * L * S
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma
    # through the op: softmax rows sum to 1, so out = sum_j p~_ij over v = 1 has mean 1
    rng = np.random.default_rng(3)
    q, k = _rand(rng, Z, L, 8) * 0.1, _rand(rng, Z, S, 8) * 0.1
    v = np.ones((Z, S, 1))
    out = dk.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=5)
    assert abs(float(out.mean()) - 1.0) < 0.01


# ---- masks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_output_and_zero_grads(backend, kind):
    rng = np.random.default_rng(4)
    L, S = 6, 300
    q, k, v = _rand(rng, 2, L, 16), _rand(rng, 2, S, 16), _rand(rng, 2, S, 8)
    allowed = rng.random((2, L, S)) > 0.5
    allowed[:, 2] = False
    allowed[1, 4] = False
    m = allowed if kind == "bool" else np.where(allowed, rng.standard_normal((2, L, S)), -np.inf)
    with dk.backend(backend):
        out, saved = dk.scaled_dot_product_attention_forward(q, k, v, m)
        dq, dk_, dv, dm = dk.scaled_dot_product_attention_backward(np.ones_like(out), saved)
    for a in (out, dq, dk_, dv) + (() if dm is None else (dm,)):
        assert np.all(np.isfinite(a))
    assert np.all(out[:, 2] == 0) and np.all(out[1, 4] == 0)
    assert np.all(dq[:, 2] == 0) and np.all(dq[1, 4] == 0)
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), attn_mask=torch.from_numpy(m))
    np.testing.assert_allclose(out, np.nan_to_num(ref.numpy()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("LS", [(5, 130), (300, 7), (257, 257)])
def test_causal_l_ne_s_and_gqa(backend, LS):
    L, S = LS
    rng = np.random.default_rng(5)
    q, k, v = _rand(rng, 1, 4, L, 8), _rand(rng, 1, 2, S, 8), _rand(rng, 1, 2, S, 8)
    g = _rand(rng, 1, 4, L, 8)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tout = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    tg = torch.autograd.grad(tout, (tq, tk, tv), torch.from_numpy(g))
    with dk.backend(backend):
        out, saved = dk.scaled_dot_product_attention_forward(q, k, v, is_causal=True, enable_gqa=True)
        grads = dk.scaled_dot_product_attention_backward(g, saved)[:3]
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, tg):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"mask": True}, {"dropout_p": 0.25, "seed": 3}])
def test_decode_path_splits_long_key_sequences(kw):
    """Few query rows (L <= 4, fewer than 16 rows): the keys go in chunks of 2048, combined in order."""
    rng = np.random.default_rng(10)
    L, S = 3, 5000
    q, k, v = _rand(rng, 1, 2, L, 40), _rand(rng, 1, 2, S, 40), _rand(rng, 1, 2, S, 24)
    kw = dict(kw)
    m = None
    if kw.pop("mask", False):
        m = rng.random((1, 1, L, S)) > 0.3
        m[..., 1, :] = False  # one fully masked row
        m[..., 2, :2100] = False  # the first chunk of row 2 fully masked
    with dk.backend("reference"):
        ref = dk.scaled_dot_product_attention(q, k, v, m, **kw)
    with dk.backend("cpp"):
        out = dk.scaled_dot_product_attention(q, k, v, m, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpp_backward_bitwise_repeatable_across_thread_counts(dtype, num_threads):
    """3 key heads: one thread runs the fused schedule (one task per key head), two and three
    threads the two-pass one; every block sums in the same order, so all agree bit for bit."""
    rng = np.random.default_rng(6)
    q, k, v = (_rand(rng, 1, 3, n, 40, dtype=dtype) for n in (300, 290, 290))
    g = _rand(rng, 1, 3, 300, 40, dtype=dtype)
    outs = []
    for threads in (1, 2, 3):
        with num_threads(threads), dk.backend("cpp"):
            _, saved = dk.scaled_dot_product_attention_forward(q, k, v, is_causal=True)
            outs.append(dk.scaled_dot_product_attention_backward(g, saved)[:3])
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a, b)


# ---- nn.MultiheadAttention -----------------------------------------------------------------
def _mha_pair(E, H, batch_first, bias=True):
    tm = torch.nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, dtype=torch.float64)
    m = dnn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, dtype="float64")
    assert set(m.state_dict()) == set(tm.state_dict())
    m.load_state_dict(tm.state_dict())
    return m, tm


def _masks(kind, B, H, L, S, rng):
    kpm = am = None
    if kind in ("kpm", "both"):
        kpm = np.zeros((B, S), bool)
        kpm[0, -2:] = True
        kpm[-1, :1] = True
    if kind in ("attn", "both"):
        am = rng.random((L, S)) < 0.2
        am[:, 0] = False  # no row fully masked
    if kind == "float3d":
        am = rng.standard_normal((B * H, L, S))
    if kind == "kpm_float":
        kpm = np.where(rng.random((B, S)) < 0.3, -1.5, 0.0)
    return kpm, am


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["none", "kpm", "attn", "both", "float3d", "kpm_float"])
@pytest.mark.parametrize("self_attn", [True, False])
def test_multihead_attention_matches_torch(batch_first, kind, self_attn):
    rng = np.random.default_rng(7)
    torch.manual_seed(0)
    E, H, B, L, S = 12, 3, 2, 5, 5 if self_attn else 7
    m, tm = _mha_pair(E, H, batch_first)
    shp = (lambda T: (B, T, E)) if batch_first else (lambda T: (T, B, E))
    xq = _rand(rng, *shp(L))
    xk = xq if self_attn else _rand(rng, *shp(S))
    xv = xq if self_attn else _rand(rng, *shp(S))
    kpm, am = _masks(kind, B, H, L, S, rng)
    y, w = m(xq, xk, xv, key_padding_mask=kpm, attn_mask=am)
    assert w is None
    tq = torch.from_numpy(xq).requires_grad_()
    tk, tv = (tq, tq) if self_attn else (torch.from_numpy(xk).requires_grad_(), torch.from_numpy(xv).requires_grad_())
    tkpm = None if kpm is None else torch.from_numpy(kpm)
    tam = None if am is None else torch.from_numpy(am)
    ty, _ = tm(tq, tk, tv, key_padding_mask=tkpm, attn_mask=tam, need_weights=False)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = _rand(rng, *y.shape)
    dq, dk_, dv = m.backward(g)
    inputs = (tq,) if self_attn else (tq, tk, tv)
    tgrads = torch.autograd.grad(ty, inputs + tuple(tm.parameters()), torch.from_numpy(g))
    np.testing.assert_allclose(dq, tgrads[0].numpy(), rtol=1e-9, atol=1e-11)
    if not self_attn:
        np.testing.assert_allclose(dk_, tgrads[1].numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(dv, tgrads[2].numpy(), rtol=1e-9, atol=1e-11)
    else:
        assert dk_ is dq and dv is dq
    ours = dict(m.named_parameters())
    for (name, _), tgr in zip(tm.named_parameters(), tgrads[len(inputs):]):
        np.testing.assert_allclose(ours[name].grad, tgr.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_multihead_attention_causal_unbatched_no_bias_and_errors():
    rng = np.random.default_rng(8)
    m, tm = _mha_pair(8, 2, False, bias=False)
    x = _rand(rng, 6, 8)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    y, _ = m(x, x, x, is_causal=True)
    ty, _ = tm(*(torch.from_numpy(x),) * 3, attn_mask=causal, is_causal=True, need_weights=False)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="num_heads"):
        dnn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="need_weights"):
        m(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(x[:, None], x[:, None], x[:, None], key_padding_mask=np.zeros((2, 6), bool))
    with pytest.raises(TypeError, match="query"):
        m(x.astype(np.float32), x, x)


def test_multihead_attention_dropout_training_is_seeded_and_eval_is_exact():
    rng = np.random.default_rng(9)
    m = dnn.MultiheadAttention(8, 2, dropout=0.5, dtype="float64")
    x = _rand(rng, 5, 2, 8)
    dnn.manual_seed(1)
    a, _ = m(x, x, x)
    dnn.manual_seed(1)
    b, _ = m(x, x, x)
    np.testing.assert_array_equal(a, b)
    m.eval()
    c, _ = m(x, x, x)
    m.train()
    assert not np.allclose(a, c)


# ---- A4's memory figure, on a smaller shape --------------------------------------------------
@pytest.mark.slow
def test_forward_peak_memory_stays_far_below_the_score_matrix():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "attention_memory.py")
    spec = importlib.util.spec_from_file_location("attention_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure(B=1, H=2, L=4096, E=64)  # scores would take 128 MB
    assert r["growth_mb"] < 16, r
    assert r["growth_mb"] < r["scores_mb"] / 8, r
