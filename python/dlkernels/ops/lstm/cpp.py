"""Glue to the C++ LSTM kernels (csrc/lstm.cpp): allocate the outputs, call _C.

The outputs start on a cache line (_C.empty_aligned): each thread writes its hidden units' columns
of h, the gates, c and their gradients at every step, and with NumPy's allocations (16 bytes past a
line) the line at each boundary between two threads' columns went back and forth between the cores.
Measured on 2 threads, the allocation swapped round by round in one process: forward 1-3% and
forward+backward 1-2% faster at L1, L3 and L4 (6% at L4's forward where NumPy's offset is 16 bytes).
"""

from __future__ import annotations

from ... import _cpp


def lstm_forward_cpp(x, h0, c0, w_ih, w_hh, b, w_hr, lengths):
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    dt, empty = x.dtype, _cpp._C.empty_aligned
    y, h_n, c_n = empty((T, B, P), dt), empty((B, P), dt), empty((B, H), dt)
    gates, cs = empty((T, B, 4 * H), dt), empty((T, B, H), dt)
    _cpp._C.lstm_forward(x, h0, c0, w_ih, w_hh, b, w_hr, lengths, y, h_n, c_n, gates, cs)
    return y, h_n, c_n, gates, cs


def lstm_backward_cpp(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y):
    B, H = c0.shape
    dt, empty = x.dtype, _cpp._C.empty_aligned
    dx, dh0, dc0 = empty(x.shape, dt), empty(h0.shape, dt), empty(c0.shape, dt)
    dw_ih, dw_hh, db = empty(w_ih.shape, dt), empty(w_hh.shape, dt), empty((4 * H,), dt)
    dw_hr = empty(w_hr.shape, dt) if w_hr is not None else None
    _cpp._C.lstm_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y,
                          dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)
    return dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr
