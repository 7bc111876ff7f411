"""Glue to the C++ LSTM kernels (csrc/lstm.cpp): allocate the outputs, call _C."""

from __future__ import annotations

import numpy as np

from ... import _cpp


def lstm_forward_cpp(x, h0, c0, w_ih, w_hh, b, w_hr, lengths):
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    dt = x.dtype
    y, h_n, c_n = np.empty((T, B, P), dt), np.empty((B, P), dt), np.empty((B, H), dt)
    gates, cs = np.empty((T, B, 4 * H), dt), np.empty((T, B, H), dt)
    _cpp._C.lstm_forward(x, h0, c0, w_ih, w_hh, b, w_hr, lengths, y, h_n, c_n, gates, cs)
    return y, h_n, c_n, gates, cs


def lstm_backward_cpp(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y):
    B, H = c0.shape
    dx, dh0, dc0 = np.empty_like(x), np.empty_like(h0), np.empty_like(c0)
    dw_ih, dw_hh, db = np.empty_like(w_ih), np.empty_like(w_hh), np.empty(4 * H, x.dtype)
    dw_hr = np.empty_like(w_hr) if w_hr is not None else None
    _cpp._C.lstm_backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y,
                          dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)
    return dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr
