"""dlkernels.torch's LSTM: custom ops under opcheck, gradcheck and torch.compile; modules that
load torch.nn.LSTM / LSTMCell state_dicts and give torch's outputs and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import dlkernels.torch as dlt  # noqa: E402


def _layer_args(T=4, B=3, I=5, H=6, P=None, bias=True, dtype=torch.float64, lengths=None):
    g = torch.Generator().manual_seed(0)
    Pn = P or H
    r = lambda *s: (torch.randn(*s, generator=g, dtype=dtype) * 0.5).requires_grad_()  # noqa: E731
    return (r(T, B, I), r(B, Pn), r(B, H), r(4 * H, I), r(4 * H, Pn), r(4 * H) if bias else None,
            r(4 * H) if bias else None, r(Pn, H) if P else None, lengths)


@pytest.mark.parametrize("kw", [{}, {"P": 3, "lengths": torch.tensor([2, 0, 4])}, {"bias": False, "T": 1, "H": 1}])
def test_opcheck(kw):
    torch.library.opcheck(torch.ops.dlkernels.lstm.default, _layer_args(**kw))


@pytest.mark.parametrize("kw", [{}, {"P": 2, "lengths": torch.tensor([3, 1, 4])}, {"bias": False}])
def test_gradcheck(kw):
    args = _layer_args(T=4, B=3, I=3, H=4, **kw)

    def f(*a):
        y, (h, c) = dlt.lstm_layer(*a)
        return y, h, c

    assert torch.autograd.gradcheck(f, args)


def test_lstm_cell_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    args = (r(3, 4), r(3, 5), r(3, 5), r(20, 4), r(20, 5), r(20), r(20))
    assert torch.autograd.gradcheck(dlt.lstm_cell, args)


@pytest.mark.parametrize("kw", [
    {},
    {"num_layers": 2, "bidirectional": True, "batch_first": True},
    {"num_layers": 2, "proj_size": 3},
])
def test_module_matches_torch(kw):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 6, **kw)
    ours = dlt.LSTM(5, 6, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((3, 7, 5) if kw.get("batch_first") else (7, 3, 5), requires_grad=True)
    y1, (h1, c1) = ref(x)
    y2, (h2, c2) = ours(x)
    torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h2, h1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c2, c1, atol=1e-5, rtol=1e-4)
    gy = torch.randn_like(y1)
    g1 = torch.autograd.grad((y1 * gy).sum() + h1.sum() + c1.sum(), [x, *ref.parameters()])
    g2 = torch.autograd.grad((y2 * gy).sum() + h2.sum() + c2.sum(), [x, *ours.parameters()])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_packed_sequence_like_torch():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = dlt.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 5, 1, 4]), enforce_sorted=False)
    p1, (h1, c1) = ref(packed)
    p2, (h2, c2) = ours(packed)
    assert isinstance(p2, torch.nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(p2.data, p1.data)
    assert torch.equal(p2.batch_sizes, p1.batch_sizes)
    torch.testing.assert_close(h2, h1)
    torch.testing.assert_close(c2, c1)
    g1 = torch.autograd.grad(p1.data.sum() + h1.sum(), x, retain_graph=True)  # the packing is shared
    g2 = torch.autograd.grad(p2.data.sum() + h2.sum(), x)
    torch.testing.assert_close(g2, g1)


def test_lstm_cell_module_matches_torch():
    torch.manual_seed(0)
    ref, ours = torch.nn.LSTMCell(4, 6), dlt.LSTMCell(4, 6)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4)
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    xu = torch.randn(4)
    for a, b in zip(ours(xu), ref(xu)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_torch_compile_fullgraph_functions():
    args = _layer_args(dtype=torch.float32, lengths=torch.tensor([4, 0, 2]))

    def f(*a):
        y, (h, c) = dlt.lstm_layer(*a)
        h2, c2 = dlt.lstm_cell(y[-1], None, None, a[4], a[4], a[5], a[6])
        return y.sum() + h.sum() + c.sum() + h2.sum() + c2.sum()

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(*args), f(*args))
    g1 = torch.autograd.grad(compiled(*args), args[:5])
    g2 = torch.autograd.grad(f(*args), args[:5])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_module():
    """Dynamo refuses torch.nn.RNNBase subclasses unless allow_rnn is set; with it, no graph break."""
    torch.manual_seed(0)
    m = dlt.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(m, fullgraph=True)
        y1, (h1, _) = compiled(x)
    y2, (h2, _) = m(x)
    torch.testing.assert_close(y1, y2)
    g1 = torch.autograd.grad(y1.sum() + h1.sum(), x)
    g2 = torch.autograd.grad(y2.sum() + h2.sum(), x)
    torch.testing.assert_close(g1, g2)


def test_errors():
    args = list(_layer_args())
    args[3] = args[3][:-1].detach()
    with pytest.raises(ValueError, match="w_ih: expected shape"):
        dlt.lstm_layer(*args)
    args = list(_layer_args())
    args[1] = args[1][:2].detach()
    with pytest.raises(ValueError, match="hx, cx: expected shapes"):
        dlt.lstm_layer(*args)
    with pytest.raises(TypeError, match="input: expected dtype"):
        dlt.LSTM(3, 4)(torch.zeros(2, 1, 3, dtype=torch.int64))
