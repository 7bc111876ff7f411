"""The layer API: a CNN trains with dlkernels alone, and one step matches PyTorch in float64."""

from __future__ import annotations

import numpy as np
import pytest

from dlkernels import nn, optim


def _cnn(dtype="float32"):
    return nn.Sequential(nn.Conv2d(1, 4, 5, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3, dtype=dtype))


def _data(rng, n=48):
    """Three classes of 16x16 images: a bright blob in one of three places, plus noise."""
    y = rng.integers(0, 3, n)
    x = 0.3 * rng.standard_normal((n, 1, 16, 16)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 2 + 4 * c:6 + 4 * c, 4:12] += 2.0
    return x, y


def test_small_cnn_training_loss_falls(rng):
    nn.manual_seed(0)
    model, loss_fn = _cnn(), nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data(rng)
    losses = []
    for _ in range(25):
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()
        losses.append(loss)
    assert isinstance(losses[0], float)
    assert losses[-1] < 0.5 * losses[0], losses
    assert (model(x).argmax(1) == y).mean() > 0.9


def _torch_cnn():
    torch = pytest.importorskip("torch")
    tn = torch.nn
    return tn.Sequential(tn.Conv2d(1, 4, 5), tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(4 * 6 * 6, 3)).double()


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_training_steps_match_torch_in_float64(rng, opt_name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_cnn()
    model = _cnn(np.float64)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    model.load_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items()})
    x, y = _data(rng, 8)
    x = x.astype(np.float64)
    if opt_name == "SGD":
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2, weight_decay=1e-3)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for _ in range(3):
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        tloss = tloss_fn(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        assert abs(loss - tloss.item()) < 1e-12
        for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
        opt.step()
        topt.step()
        model.zero_grad()
        topt.zero_grad()
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_mse_and_conv1d_linear_gradients_match_torch(rng):
    torch = pytest.importorskip("torch")
    tn = torch.nn
    tmodel = tn.Sequential(tn.Conv1d(2, 3, 3, padding="same"), tn.Flatten(), tn.Linear(3 * 9, 2)).double()
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding="same", dtype="float64"), nn.Flatten(),
                          nn.Linear(27, 2, dtype="float64"))
    model.load_state_dict(tmodel.state_dict())  # torch tensors directly
    x, t = rng.standard_normal((5, 2, 9)), rng.standard_normal((5, 2))
    loss_fn = nn.MSELoss()
    loss = loss_fn(model(x), t)
    dx = model.backward(loss_fn.backward())
    tx = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.functional.mse_loss(tmodel(tx), torch.tensor(t))
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-12
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-13)
    for p, tp in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_maxpool_matches_torch_with_padding_and_stride(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 9, 8))
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    y = pool(x)
    g = rng.standard_normal(y.shape)
    dx = pool.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, stride=2, padding=1)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-14)


def test_state_dict_errors_and_casting():
    model = _cnn("float32")
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="missing keys"):
        model.load_state_dict({})
    sd["0.weight"] = np.zeros((1, 1))
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\]: expected shape"):
        model.load_state_dict(sd)


def test_layer_errors():
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(2, 2, dtype="int32")
    with pytest.raises(IndexError, match="target: class indices"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="params: the optimizer got an empty"):
        optim.SGD([], lr=0.1)
