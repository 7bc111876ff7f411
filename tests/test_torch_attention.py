"""dlkernels.torch.scaled_dot_product_attention: opcheck, gradcheck (float64), torch.compile, vs torch.

Small shapes and torch.compile(backend="aot_eager") (Dynamo + AOTAutograd, as inductor sees the
graph, without inductor's C++ code generation), so the file runs in seconds.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import dlkernels.torch as dlt  # noqa: E402

SMALL = ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 3))  # gradcheck perturbs every element: keep it tiny


def _qkv(dtype=torch.float64, shape=((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6))):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, dtype=dtype, generator=g, requires_grad=True) for s in shape]


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"scale": 0.5}])
def test_matches_torch_and_gradcheck(kw):
    q, k, v = _qkv()
    out = dlt.scaled_dot_product_attention(q, k, v, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g))
    q, k, v = _qkv(shape=SMALL)
    assert torch.autograd.gradcheck(lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, **kw), (q, k, v))


def test_float_mask_gradcheck_and_gqa():
    q, k, v = _qkv(shape=((1, 4, 3, 4), (1, 2, 5, 4), (1, 2, 5, 3)))
    m = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    f = lambda a, b, c, mm: dlt.scaled_dot_product_attention(a, b, c, attn_mask=mm, enable_gqa=True)  # noqa: E731
    torch.testing.assert_close(f(q, k, v, m), F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True))
    assert torch.autograd.gradcheck(f, (q, k, v, m))


def test_dropout_gradcheck_with_seed():
    q, k, v = _qkv(shape=SMALL)
    f = lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, dropout_p=0.3, seed=11)  # noqa: E731
    torch.testing.assert_close(f(q, k, v), f(q, k, v), rtol=0, atol=0)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_dropout_seed_none_follows_torch_manual_seed():
    q, k, v = _qkv(torch.float32)
    torch.manual_seed(5)
    a = dlt.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    b = dlt.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(5)
    c = dlt.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    big = dlt.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=2 ** 64 - 1)  # the top of the seed range
    assert torch.isfinite(big).all()


def test_opcheck():
    q, k, v = _qkv(torch.float32)
    bm = torch.rand(5, 7) > 0.3
    s0, s5 = torch.tensor(0), torch.tensor(5)
    for args in [(q, k, v, None, 0.0, False, None, False, s0), (q, k, v, bm, 0.0, False, 0.3, False, s0),
                 (q, k, v, None, 0.2, True, None, False, s5)]:
        torch.library.opcheck(torch.ops.dlkernels.scaled_dot_product_attention.default, args)


def test_compile_fullgraph():
    q, k, v = _qkv(torch.float32)
    f = torch.compile(lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, is_causal=True).sum(),
                      fullgraph=True, backend="aot_eager")
    loss = f(q, k, v)
    loss.backward()
    ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True).sum()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_compile_fullgraph_dropout_seed_none():
    """seed=None under fullgraph: the seed is drawn as a tensor op; the backward regenerates
    the forward's mask (checked against the eager op at the same torch seed)."""
    q, k, v = _qkv(torch.float64)
    f = torch.compile(lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, dropout_p=0.4),
                      fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    out = f(q, k, v)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    torch.manual_seed(7)
    eager = dlt.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(grads, torch.autograd.grad(eager, (q, k, v), g), rtol=0, atol=0)
    assert not torch.equal(f(q, k, v), out)  # a fresh seed per call
