"""dlkernels.torch conv: custom ops that pass opcheck, gradcheck and torch.compile, and modules."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import dlkernels.torch as dlt  # noqa: E402
from dlkernels.torch import _bridge  # noqa: E402

CASES = [
    dict(stride=1, padding=1),
    dict(stride=2, padding=0, dilation=2),
    dict(padding="same"),
    dict(padding=1, groups=2),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("nd", [1, 2])
def test_matches_torch_forward_and_backward(nd, kw):
    torch.manual_seed(0)
    shape = (2, 4, 9, 8) if nd == 2 else (2, 4, 11)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // kw.get("groups", 1), *(3,) * nd, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ours, theirs = (dlt.conv2d, F.conv2d) if nd == 2 else (dlt.conv1d, F.conv1d)
    y, ty = ours(x, w, b, **kw), theirs(x, w, b, **kw)
    torch.testing.assert_close(y, ty, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ty, (x, w, b), g),
                               rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kw", CASES)
def test_gradcheck_float64(kw):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // kw.get("groups", 1), 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: dlt.conv2d(x, w, b, **kw), (x, w, b))


def test_opcheck():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.dlkernels.conv2d.default, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1))
    torch.library.opcheck(torch.ops.dlkernels.conv2d.default, (x, w, None, [2, 1], [0, 1, 2, 0], [1, 2], 1))
    g = torch.randn(2, 4, 6, 6)
    torch.library.opcheck(torch.ops.dlkernels.conv2d_backward.default,
                          (g, x.detach(), w.detach(), [1, 1], [1, 1, 1, 1], [1, 1], 1, [True, True, False]))


def test_torch_compile_fullgraph_model():
    torch.manual_seed(3)
    tn = torch.nn
    model = tn.Sequential(dlt.Conv2d(1, 4, 3, padding=1), tn.ReLU(), dlt.Conv2d(4, 2, 3), tn.Flatten())
    ref = tn.Sequential(tn.Conv2d(1, 4, 3, padding=1), tn.ReLU(), tn.Conv2d(4, 2, 3), tn.Flatten())
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 1, 8, 8)
    y = compiled(x)
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    ref(x).sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


def test_modules_are_torch_modules_with_the_same_state_dict():
    m = dlt.Conv1d(3, 5, 3, padding_mode="circular", padding=1)
    assert isinstance(m, torch.nn.Conv1d)
    ref = torch.nn.Conv1d(3, 5, 3, padding_mode="circular", padding=1)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_cpu_tensors_cross_without_copies():
    t = torch.randn(4, 5)
    a = _bridge.to_array(t, "t")
    assert isinstance(a, np.ndarray) and a.ctypes.data == t.data_ptr()
    back = _bridge.to_tensor(a)
    assert back.data_ptr() == t.data_ptr()


def test_bad_inputs_raise_clear_errors():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(TypeError, match="input: expected dtype"):
        dlt.conv2d(x.int(), w)
    with pytest.raises(TypeError, match="weight: expected torch.float32"):
        dlt.conv2d(x, w.double())
    with pytest.raises(ValueError, match="stride: expected an int >= 1"):
        dlt.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="groups: 2 does not divide the weight's 3"):
        dlt.conv2d(x, w[:, :1], groups=2)
