"""LSTM: lstm_cell and lstm (one layer, one direction), forward and hand-written backward
through time, with torch.nn.LSTMCell / torch.nn.LSTM semantics.

Math, one step (gate order i, f, g, o as in torch):
    z   = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh        (B, 4H)
    i, f, o = σ(z_i), σ(z_f), σ(z_o);  g = tanh(z_g)      (B, H) each
    c_t = f ⊙ c_{t-1} + i ⊙ g                             (B, H)
    h_t = (o ⊙ tanh(c_t)) W_hrᵀ                            (B, P); without proj_size W_hr = 1, P = H
Shapes (letters: T steps, B batch, I input features, H hidden, P projection size or H):
    input (T, B, I), or (B, T, I) with batch_first     lstm_cell: (B, I) or unbatched (I,)
    hx (B, P), cx (B, H) (None: zeros)                  w_ih (4H, I), w_hh (4H, P), b_* (4H,)
    w_hr (P, H) or None                                 lengths (B,) ints in [0, T], any order
    output (T, B, P) or (B, T, P); h_n (B, P), c_n (B, H)
With lengths, sequence b runs steps 0..L_b-1: its outputs after that are 0 and (h_n, c_n)
are its state after its own last step (the initial state when L_b = 0). No sorting or
packing is asked of the caller.

Forward saves LSTMSaved (what backward needs; per-step arrays are time-major, contiguous):
    input  (T, B, I)   the input, time-major      hx (B, P), cx (B, H)   initial state
    w_ih, w_hh, w_hr   the weights as given (w_hr None without projection)
    lengths (B,) int64 or None
    gates  (T, B, 4H)  activated gates i, f, g, o of every step (σ, σ, tanh, σ)
    c      (T, B, H)   the cell state after every step (held past a sequence's end)
    output (T, B, P)   the output, time-major: row t-1 is h_{t-1} wherever it matters
and flags (which biases and initial states were given, batch_first, unbatched) to shape
the gradients. Backward takes (grad_output, grad_h_n, grad_c_n) (any may be None: zeros)
and returns (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
grad_w_hr) for lstm and the first seven for lstm_cell; a gradient is None where its input
was None. The C++ backward is deterministic (bitwise repeatable).

Cost, for the benchmark: forward FLOPs ≈ 8·T·B·H·(I + P) (+ 2·T·B·H·P for the projection);
backward ≈ twice that.

Variants:
    reference/loop   NumPy, one step per iteration: the oracle (reference.py)
    numba/loop       the same loop compiled, BLAS for the products (numba.py)
    cpp/fused        Appleyard et al. 2016 on the CPU: one parallel region per sequence, each
                     thread owning a slice of the hidden units with its slice of W_hh packed
                     once and kept in cache, one barrier per step; one fused pass per step for
                     the gates' elementwise work; in backward the weight gradients as single
                     GEMMs over all T·B rows (csrc/lstm.cpp)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..._arrays import (
    Array,
    as_array,
    as_optional,
    check_float,
    check_like,
    check_ndim,
    check_shape,
    contiguous,
    device,
    wrap,
)
from ..._registry import dispatch, register
from . import cpp, numba, reference


class LSTMSaved(NamedTuple):
    input: Array  # (T, B, I) time-major, contiguous
    hx: Array  # (B, P) initial hidden state (zeros when None was given)
    cx: Array  # (B, H) initial cell state
    w_ih: Array  # (4H, I)
    w_hh: Array  # (4H, P)
    w_hr: Array | None  # (P, H) or None
    lengths: Array | None  # (B,) int64 or None
    gates: Array  # (T, B, 4H) activated i, f, g, o per step
    c: Array  # (T, B, H) cell state after each step
    output: Array  # (T, B, P) time-major output
    given: tuple[bool, bool, bool, bool]  # hx, cx, b_ih, b_hh were given (not None)
    batch_first: bool
    unbatched: bool  # lstm_cell's input had no batch dim


def _check_lengths(lengths: Any, T: int, B: int) -> Array | None:
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        lengths = np.asarray(lengths)
    L = as_array(lengths, "lengths")
    if device(L) != "cpu":
        L = L.get()
    L = np.asarray(L)
    if L.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {L.dtype}")
    check_shape(L, "lengths", (B,))
    if L.size and (L.min() < 0 or L.max() > T):
        raise ValueError(f"lengths: expected every length in [0, {T}] (T), got min {L.min()} and max {L.max()}")
    return np.ascontiguousarray(L, dtype=np.int64)


def _prepare(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first, lengths, cell):
    x = as_array(input, "input")
    check_float(x, "input")
    names = ("hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
    h0, c0, wi, wh, bi, bh, wr = (as_optional(a, n) for a, n in zip((hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr), names))
    for a, n in zip((h0, c0, wi, wh, bi, bh, wr), names):
        if a is not None:
            check_like(a, n, x, "input")
    if wi is None or wh is None:
        raise TypeError("w_ih, w_hh: expected arrays, got None")
    check_ndim(wh, "w_hh", (2,), "(4H, P)")
    check_ndim(wi, "w_ih", (2,), "(4H, I)")
    if wr is not None:
        check_ndim(wr, "w_hr", (2,), "(P, H)")
        P, H = wr.shape
    else:
        P = H = wh.shape[1]
    if H < 1:
        raise ValueError(f"w_hh: expected a hidden size of at least 1, got shape {tuple(wh.shape)}")
    check_shape(wh, "w_hh", (4 * H, P))
    unbatched = False
    if cell:
        check_ndim(x, "input", (1, 2), "(B, I) or (I,)")
        unbatched = x.ndim == 1
        x3 = x[None, None] if unbatched else x[None]  # (1, B, I)
    else:
        check_ndim(x, "input", (3,), "(B, T, I)" if batch_first else "(T, B, I)")
        x3 = x.swapaxes(0, 1) if batch_first else x  # (T, B, I)
    T, B, I = x3.shape
    check_shape(wi, "w_ih", (4 * H, I))
    for a, n in ((bi, "b_ih"), (bh, "b_hh")):
        if a is not None:
            check_shape(a, n, (4 * H,))
    state_shape = lambda n: (n,) if unbatched else (B, n)  # noqa: E731
    if h0 is not None:
        check_shape(h0, "hx", state_shape(P))
        h0 = h0.reshape(B, P)
    if c0 is not None:
        check_shape(c0, "cx", state_shape(H))
        c0 = c0.reshape(B, H)
    L = None if cell else _check_lengths(lengths, T, B)
    zeros = np.zeros if device(x) == "cpu" else __import__("cupy").zeros
    b = None
    if bi is not None or bh is not None:
        b = (bi if bi is not None else 0) + (bh if bh is not None else 0)
        b = contiguous(b.astype(x.dtype, copy=False))
    h0c = contiguous(h0) if h0 is not None else zeros((B, P), x.dtype)
    c0c = contiguous(c0) if c0 is not None else zeros((B, H), x.dtype)
    args = (contiguous(x3), h0c, c0c, contiguous(wi), contiguous(wh), b,
            None if wr is None else contiguous(wr), L)
    given = (h0 is not None, c0 is not None, bi is not None, bh is not None)
    return args, given, unbatched


_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _prepare_fast(input, hx, cx, w_ih, w_hh, b_ih, b_hh, cell):
    """_prepare's result for the common case, in a few attribute reads (its checks cost as much
    as a small step's kernel): C-contiguous NumPy arrays of one CPU float dtype, hx, cx and both
    biases given, batched, time-major, no projection, no lengths, every shape right. None for
    anything else, which _prepare then checks and reports."""
    arrays = (input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    dt = getattr(input, "dtype", None)
    if dt not in _FAST_DTYPES:
        return None
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dt or not a.flags.c_contiguous:
            return None
    if input.ndim != (2 if cell else 3) or w_hh.ndim != 2:
        return None
    G, H = w_hh.shape
    B, I = input.shape[-2:]
    if (H < 1 or G != 4 * H or w_ih.shape != (G, I) or b_ih.shape != (G,) or b_hh.shape != (G,)
            or hx.shape != (B, H) or cx.shape != (B, H)):
        return None
    x3 = input[None] if cell else input
    return (x3, hx, cx, w_ih, w_hh, b_ih + b_hh, None, None), (True, True, True, True), False


def _forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first, lengths, cell):
    fast = None
    if w_hr is None and lengths is None and not batch_first:
        fast = _prepare_fast(input, hx, cx, w_ih, w_hh, b_ih, b_hh, cell)
    args, given, unbatched = fast or _prepare(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first,
                                              lengths, cell)
    x3, h0, c0, wi, wh, _, wr, L = args
    y, h_n, c_n, gates, cs = dispatch("lstm_cell" if cell else "lstm", "forward", device(x3), *args)
    saved = LSTMSaved(x3, h0, c0, wi, wh, wr, L, gates, cs, y, given, bool(batch_first), unbatched)
    return y, h_n, c_n, saved


def lstm_forward(input: Any, hx: Any, cx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None,
                 w_hr: Any = None, batch_first: bool = False, lengths: Any = None) -> tuple[Any, LSTMSaved]:
    """((output, (h_n, c_n)), saved): one layer, one direction of torch.nn.LSTM. See the module doc."""
    y, h_n, c_n, saved = _forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first, lengths, False)
    out = y.swapaxes(0, 1) if batch_first else y
    return (wrap(out, input), (wrap(h_n, input), wrap(c_n, input))), saved


def lstm(input: Any, hx: Any, cx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None,
         w_hr: Any = None, batch_first: bool = False, lengths: Any = None) -> tuple[Any, tuple[Any, Any]]:
    """(output, (h_n, c_n)): one layer, one direction of torch.nn.LSTM, lengths in any order."""
    return lstm_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first, lengths)[0]


def lstm_cell_forward(input: Any, hx: Any, cx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None,
                      b_hh: Any = None) -> tuple[Any, LSTMSaved]:
    """((h, c), saved): torch.nn.LSTMCell's step, plus what lstm_cell_backward needs."""
    y, _, c_n, saved = _forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, None, False, None, True)
    h, c = y[0], c_n
    if saved.unbatched:
        h, c = h[0], c[0]
    return (wrap(h, input), wrap(c, input)), saved


def lstm_cell(input: Any, hx: Any, cx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> tuple:
    """(h, c): one step of torch.nn.LSTMCell (hx, cx None: zeros)."""
    return lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh)[0]


def _grad(g: Any, name: str, shape: tuple[int, ...], ref: Array) -> Array:
    if (type(g) is np.ndarray and type(ref) is np.ndarray and g.dtype == ref.dtype and g.shape == shape
            and g.flags.c_contiguous):
        return g  # what the checks below would pass through unchanged
    if g is None:
        return np.zeros(shape, ref.dtype) if device(ref) == "cpu" else __import__("cupy").zeros(shape, ref.dtype)
    a = as_array(g, name)
    check_like(a, name, ref, "input")
    check_shape(a, name, shape)
    return contiguous(a)


def _backward(dy: Array, dh_n: Array, dc_n: Array, saved: LSTMSaved, op: str) -> tuple:
    s = saved
    dx, dh0, dc0, dwi, dwh, db, dwr = dispatch(op, "backward", device(s.input), dy, dh_n, dc_n, s.input, s.hx,
                                               s.cx, s.w_ih, s.w_hh, s.w_hr, s.lengths, s.gates, s.c, s.output)
    has_hx, has_cx, has_bi, has_bh = s.given
    dbi = db if has_bi else None
    dbh = (db.copy() if has_bi else db) if has_bh else None
    return dx, (dh0 if has_hx else None), (dc0 if has_cx else None), dwi, dwh, dbi, dbh, dwr


def lstm_backward(grads: Any, saved: LSTMSaved) -> tuple:
    """(grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr).

    grads: (grad_output, grad_h_n, grad_c_n) or (grad_output, (grad_h_n, grad_c_n)); any may
    be None (zeros). A gradient comes back None where the forward's input was None.
    """
    if len(grads) == 2:
        grads = (grads[0], *grads[1])
    g_out, g_h, g_c = grads
    T, B, _ = saved.input.shape
    P, H = saved.hx.shape[1], saved.cx.shape[1]
    ref = saved.input
    if g_out is not None and saved.batch_first:
        g_out = as_array(g_out, "grad_output").swapaxes(0, 1)
    if g_out is not None and type(g_out) is not np.ndarray:
        g_out = as_array(g_out, "grad_output")
    if g_out is not None and g_out.shape != (T, B, P):
        want = (B, T, P) if saved.batch_first else (T, B, P)
        raise ValueError(f"grad_output: expected shape {want}, got {tuple(g_out.shape)}")
    dy = _grad(g_out, "grad_output", (T, B, P), ref)
    dh = _grad(g_h, "grad_h_n", (B, P), ref)
    dc = _grad(g_c, "grad_c_n", (B, H), ref)
    like = next((g for g in grads if g is not None), None)
    dx, *rest = _backward(dy, dh, dc, saved, "lstm")
    dx = dx.swapaxes(0, 1) if saved.batch_first else dx
    return tuple(wrap(a, like) for a in (dx, *rest))


def lstm_cell_backward(grads: Any, saved: LSTMSaved) -> tuple:
    """(grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh) from (grad_h, grad_c)."""
    g_h, g_c = grads
    B, H = saved.cx.shape
    shape = (H,) if saved.unbatched else (B, H)
    ref = saved.input
    dh = _grad(g_h, "grad_h", shape, ref).reshape(1, B, H)
    dc = _grad(g_c, "grad_c", shape, ref).reshape(B, H)
    like = next((g for g in grads if g is not None), None)
    zero = np.zeros((B, H), ref.dtype)
    dx, dh0, dc0, dwi, dwh, dbi, dbh, _ = _backward(dh, zero, dc, saved, "lstm_cell")
    if saved.unbatched:
        dx, dh0, dc0 = dx[0, 0], None if dh0 is None else dh0[0], None if dc0 is None else dc0[0]
    else:
        dx = dx[0]
    return tuple(wrap(a, like) for a in (dx, dh0, dc0, dwi, dwh, dbi, dbh))


def flops(T: int, B: int, I: int, H: int, P: int | None = None) -> int:
    """Forward FLOPs: 8·T·B·H·(I + P) for the gate products (+ 2·T·B·H·P with a projection)."""
    P_ = H if P is None else P
    return 8 * T * B * H * (I + P_) + (2 * T * B * H * P_ if P is not None and P != H else 0)


# ---- registration: (op, direction, backend, variant) -> kernel ------------------------------
# lstm_cell runs the sequence kernels with T = 1.

for _op in ("lstm", "lstm_cell"):
    register(_op, "forward", "reference", "loop", reference.lstm_forward_reference, default=True)
    register(_op, "backward", "reference", "loop", reference.lstm_backward_reference, default=True)
    register(_op, "forward", "numba", "loop", numba.lstm_forward_numba, default=True)
    register(_op, "backward", "numba", "loop", numba.lstm_backward_numba, default=True)
    register(_op, "forward", "cpp", "fused", cpp.lstm_forward_cpp, default=True)
    register(_op, "backward", "cpp", "fused", cpp.lstm_backward_cpp, default=True)
from . import cuda as _cuda_glue  # noqa: E402  (CUDA: kernels/lstm.cu, registered by its glue)

_cuda_glue.register_all()
