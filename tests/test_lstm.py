"""LSTM-specific tests: the layers (dlkernels.nn.LSTMCell, LSTM) against torch.nn, lengths
semantics, and the C++ kernel on a shape big enough to use several threads and tiles."""

from __future__ import annotations

import numpy as np
import pytest

import dlkernels as dk
from dlkernels import nn

torch = pytest.importorskip("torch")


def _sd(m):
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kw", [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 2, "proj_size": 3, "batch_first": True},
    {"bidirectional": True, "proj_size": 2, "bias": False},
])
def test_nn_lstm_matches_torch(kw):
    torch.manual_seed(0)
    tm = torch.nn.LSTM(4, 6, dtype=torch.float64, **kw)
    m = nn.LSTM(4, 6, dtype="float64", **kw)
    assert list(m.state_dict()) == list(tm.state_dict())
    m.load_state_dict(_sd(tm))
    T, B = 5, 3
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    P = kw.get("proj_size") or 6
    x = torch.randn((B, T, 4) if kw.get("batch_first") else (T, B, 4), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * D, B, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(L * D, B, 6, dtype=torch.float64, requires_grad=True)
    ty, (th, tc) = tm(x, (h0, c0))
    y, (h, c) = m(x.detach().numpy(), (h0.detach().numpy(), c0.detach().numpy()))
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(h, th.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(c, tc.detach().numpy(), atol=1e-12)
    gy, gh, gc = torch.randn_like(ty), torch.randn_like(th), torch.randn_like(tc)
    tgrads = torch.autograd.grad((ty, th, tc), [x, h0, c0, *tm.parameters()], (gy, gh, gc))
    dx = m.backward((gy.numpy(), (gh.numpy(), gc.numpy())))
    np.testing.assert_allclose(dx, tgrads[0].numpy(), atol=1e-10)
    np.testing.assert_allclose(m.grad_hx[0], tgrads[1].numpy(), atol=1e-10)
    np.testing.assert_allclose(m.grad_hx[1], tgrads[2].numpy(), atol=1e-10)
    for (name, p), tg in zip(m.named_parameters(), tgrads[3:]):
        np.testing.assert_allclose(p.grad, tg.numpy(), atol=1e-10, err_msg=name)


def test_nn_lstm_lengths_match_packed_torch():
    """Bidirectional, two layers, unsorted lengths: as torch with a PackedSequence (no length 0 there)."""
    torch.manual_seed(1)
    tm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    m = nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype="float64")
    m.load_state_dict(_sd(tm))
    T, lengths = 6, torch.tensor([2, 6, 1, 4])
    x = torch.randn(T, 4, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    tp, (th, tc) = tm(packed)
    ty, _ = torch.nn.utils.rnn.pad_packed_sequence(tp, total_length=T)
    y, (h, c) = m(x.numpy(), lengths=lengths.numpy())
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(h, th.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(c, tc.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "numba", "cpp"])
def test_length_zero_and_full(backend):
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 2, 5
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    wi, wh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    with dk.backend(backend):
        y, (h, c) = dk.lstm(x, h0, c0, wi, wh, lengths=[0, T, 2])
        y_full, (h_full, c_full) = dk.lstm(x, h0, c0, wi, wh)
        y2, (h2, c2) = dk.lstm(x[:2], h0, c0, wi, wh)
    np.testing.assert_array_equal(y[:, 0], 0)
    np.testing.assert_array_equal(h[0], h0[0])
    np.testing.assert_array_equal(c[0], c0[0])
    np.testing.assert_allclose(y[:, 1], y_full[:, 1], atol=1e-14)
    np.testing.assert_allclose(h[1], h_full[1], atol=1e-14)
    np.testing.assert_allclose(y[:2, 2], y2[:, 2], atol=1e-14)
    np.testing.assert_array_equal(y[2:, 2], 0)
    np.testing.assert_allclose(c[2], c2[2], atol=1e-14)


def test_nn_lstm_cell_matches_torch():
    torch.manual_seed(0)
    tm = torch.nn.LSTMCell(4, 7, dtype=torch.float64)
    m = nn.LSTMCell(4, 7, dtype="float64")
    m.load_state_dict(_sd(tm))
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    th, tc = tm(x)
    h, c = m(x.detach().numpy())
    np.testing.assert_allclose(h, th.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(c, tc.detach().numpy(), atol=1e-12)
    gh, gc = torch.randn_like(th), torch.randn_like(tc)
    tg = torch.autograd.grad((th, tc), [x, *tm.parameters()], (gh, gc))
    dx = m.backward((gh.numpy(), gc.numpy()))
    np.testing.assert_allclose(dx, tg[0].numpy(), atol=1e-12)
    for p, g in zip(m.parameters(), tg[1:]):
        np.testing.assert_allclose(p.grad, g.numpy(), atol=1e-12)


def test_nn_lstm_dropout_masks_reused_in_backward():
    nn.manual_seed(0)
    m = nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _ = m(x)
    dx = m.backward(np.ones_like(y))
    assert m._masks[1] is not None and (m._masks[1] == 0).any()
    m.eval()
    y_eval, _ = m(x)
    assert not np.allclose(y, y_eval)
    assert dx.shape == x.shape


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpp_larger_shape_matches_reference(dtype):
    """T 7, B 33, H 70 (not a multiple of the vector width), projection, lengths: several gemm tiles."""
    rng = np.random.default_rng(3)
    T, B, I, H, P = 7, 33, 19, 70, 21
    args = [rng.standard_normal(s).astype(dtype) * sc for s, sc in
            (((T, B, I), 1), ((B, P), 1), ((B, H), 1), ((4 * H, I), 0.2), ((4 * H, P), 0.2), ((4 * H,), 0.2),
             ((4 * H,), 0.2), ((P, H), 0.2))]
    lengths = rng.integers(0, T + 1, B)
    grads = (rng.standard_normal((T, B, P)).astype(dtype), rng.standard_normal((B, P)).astype(dtype),
             rng.standard_normal((B, H)).astype(dtype))
    res = {}
    for b in ("reference", "cpp"):
        with dk.backend(b):
            (y, (h, c)), saved = dk.lstm_forward(*args, lengths=lengths)
            res[b] = [y, h, c, *dk.lstm_backward(grads, saved)]
    tol = 1e-10 if dtype == "float64" else 2e-4
    for a, e in zip(res["cpp"], res["reference"]):
        np.testing.assert_allclose(a, e, atol=tol * max(1, np.abs(e).max()), rtol=0)


@pytest.mark.parametrize("B, H, lengths", [(40, 33, True), (40, 15, False), (1, 70, True), (1, 70, False),
                                           (3, 128, False)])
def test_cpp_same_bits_at_any_thread_count(B, H, lengths):
    """The hidden units split across threads change nothing: 1 and 2 threads give the same bits,
    with the packed gemm (B 40; at H 15, T*B >= 8 (I + H), dW_ih and dW_hh as one gemm) and the
    row-packed dot and axpy products (B <= 4; without lengths the steps in halves with step counters
    instead of barriers)."""
    from dlkernels import _cpp
    from dlkernels.ops.lstm.cpp import lstm_backward_cpp, lstm_forward_cpp
    rng = np.random.default_rng(0)
    T, I = 5, 9
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    h = rng.standard_normal((B, H), dtype=np.float32)
    wi = (rng.standard_normal((4 * H, I)) * 0.2).astype(np.float32)
    wh = (rng.standard_normal((4 * H, H)) * 0.2).astype(np.float32)
    b = rng.standard_normal(4 * H).astype(np.float32)
    L = rng.integers(0, T + 1, B) if lengths else None
    before = _cpp._C.get_num_threads()
    res = []
    try:
        for nt in (1, 2):
            _cpp._C.set_num_threads(nt)
            y, hn, cn, g, cs = lstm_forward_cpp(x, h, h, wi, wh, b, None, L)
            res.append([y, hn, cn, *lstm_backward_cpp(y, h, h, x, h, h, wi, wh, None, L, g, cs, y)[:6]])
    finally:
        _cpp._C.set_num_threads(before)
    for a, e in zip(*res):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("cell", [False, True])
def test_fast_front_same_bits_as_checked_front(cell):
    """The front's fast path (contiguous NumPy arrays, every state and bias given) gives the same
    bits as the general path (here taken by a Fortran-ordered w_hh), forward and backward, and a
    wrong shape on the fast path's inputs is still reported by name."""
    rng = np.random.default_rng(5)
    T, B, I, H = 3, 6, 5, 7
    x = rng.standard_normal((B, I) if cell else (T, B, I), dtype=np.float32)
    h, c = rng.standard_normal((B, H), dtype=np.float32), rng.standard_normal((B, H), dtype=np.float32)
    wi = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.3
    wh = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.3
    bi, bh = rng.standard_normal(4 * H, dtype=np.float32), rng.standard_normal(4 * H, dtype=np.float32)
    grads = (h, c) if cell else (rng.standard_normal((T, B, H), dtype=np.float32), h, c)
    fwd, bwd = (dk.lstm_cell_forward, dk.lstm_cell_backward) if cell else (dk.lstm_forward, dk.lstm_backward)
    res = []
    with dk.backend("cpp"):
        for w in (wh, np.asfortranarray(wh)):
            out, saved = fwd(x, h, c, wi, w, bi, bh)
            res.append([*out[:1], *(out[1] if not cell else out[1:]), *bwd(grads, saved)])
        for a, e in zip(*res):
            np.testing.assert_array_equal(a, e)
        with pytest.raises(ValueError, match="hx"):
            fwd(x, h[:, :-1].copy(), c, wi, wh, bi, bh)
        with pytest.raises(ValueError, match="b_hh"):
            fwd(x, h, c, wi, wh, bi, bh[:-1].copy())


def test_cpp_outputs_start_on_a_cache_line():
    """The cpp glue's outputs start on 64-byte lines (threads write neighbouring columns of them at
    every step; NumPy's own allocations start 16 bytes past a line), and are ordinary writeable
    NumPy arrays. empty_aligned names a bad size."""
    from dlkernels import _cpp
    rng = np.random.default_rng(1)
    T, B, I, H = 3, 2, 5, 7
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    h = rng.standard_normal((B, H), dtype=np.float32)
    wi, wh = rng.standard_normal((4 * H, I), dtype=np.float32), rng.standard_normal((4 * H, H), dtype=np.float32)
    with dk.backend("cpp"):
        (y, (hn, cn)), saved = dk.lstm_forward(x, h, h, wi, wh)
        grads = dk.lstm_backward((np.ones_like(y), None, None), saved)
    outs = [y, hn, cn, saved.gates, saved.c, *(g for g in grads if g is not None)]
    assert len(outs) == 10
    for a in outs:
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    a = _cpp._C.empty_aligned((0, 3), np.dtype(np.float64))
    assert a.shape == (0, 3) and a.dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        _cpp._C.empty_aligned((2, -1), np.dtype(np.float32))
