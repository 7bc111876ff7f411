"""dlkernels.torch.scaled_dot_product_attention: opcheck, gradcheck (float64), torch.compile, vs torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import dlkernels.torch as dlt  # noqa: E402


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
    assert torch.autograd.gradcheck(lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, **kw), (q, k, v))


def test_float_mask_gradcheck_and_gqa():
    q, k, v = _qkv(shape=((1, 4, 5, 8), (1, 2, 7, 8), (1, 2, 7, 8)))
    m = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    f = lambda a, b, c, mm: dlt.scaled_dot_product_attention(a, b, c, attn_mask=mm, enable_gqa=True)  # noqa: E731
    torch.testing.assert_close(f(q, k, v, m), F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True))
    assert torch.autograd.gradcheck(f, (q, k, v, m))


def test_dropout_gradcheck_with_seed():
    q, k, v = _qkv()
    f = lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, dropout_p=0.3, seed=11)  # noqa: E731
    torch.testing.assert_close(f(q, k, v), f(q, k, v), rtol=0, atol=0)
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_opcheck():
    q, k, v = _qkv(torch.float32)
    bm = torch.rand(5, 7) > 0.3
    for args in [(q, k, v, None, 0.0, False, None, False, 0), (q, k, v, bm, 0.0, False, 0.3, False, 0),
                 (q, k, v, None, 0.2, True, None, False, 5)]:
        torch.library.opcheck(torch.ops.dlkernels.scaled_dot_product_attention.default, args)


def test_compile_fullgraph():
    q, k, v = _qkv(torch.float32)
    f = torch.compile(lambda a, b, c: dlt.scaled_dot_product_attention(a, b, c, is_causal=True).sum(), fullgraph=True)
    loss = f(q, k, v)
    loss.backward()
    ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True).sum()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()
