"""LSTM in numba: the reference's loop compiled, with the time-step products through BLAS
(np.dot) and the gates' elementwise work in one explicit loop per step. Same signatures and
layouts as reference.py. Lengths are passed as a (B,) int64 array (T for every sequence
when the caller gave None).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def _forward(x, h0, c0, w_ihT, w_hhT, b, w_hrT, lengths, y, h, c, gates, cs):  # pragma: no cover - compiled
    T, B, _ = x.shape
    H = c.shape[1]
    P = h.shape[1]
    proj = w_hrT.shape[0] > 0
    h[:] = h0
    c[:] = c0
    m = np.empty((B, H), x.dtype)
    for t in range(T):
        z = np.dot(x[t], w_ihT) + np.dot(h, w_hhT)  # (B, 4H)
        for bi in range(B):
            run = t < lengths[bi]
            for j in range(H):
                zi, zf, zg, zo = z[bi, j] + b[j], z[bi, H + j] + b[H + j], z[bi, 2 * H + j] + b[2 * H + j], \
                    z[bi, 3 * H + j] + b[3 * H + j]
                i = 1 / (1 + math.exp(-zi))
                f = 1 / (1 + math.exp(-zf))
                g = math.tanh(zg)
                o = 1 / (1 + math.exp(-zo))
                cn = f * c[bi, j] + i * g
                gates[t, bi, j], gates[t, bi, H + j], gates[t, bi, 2 * H + j], gates[t, bi, 3 * H + j] = i, f, g, o
                m[bi, j] = o * math.tanh(cn)
                if run:
                    c[bi, j] = cn
                cs[t, bi, j] = c[bi, j]
        hn = np.dot(m, w_hrT) if proj else m
        for bi in range(B):
            if t < lengths[bi]:
                for k in range(P):
                    h[bi, k] = hn[bi, k]
                    y[t, bi, k] = hn[bi, k]
            else:
                for k in range(P):
                    y[t, bi, k] = 0


@numba.njit(cache=True)
def _backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y,
              dx, dh, dc, dw_ih, dw_hh, db, dw_hr):  # pragma: no cover - compiled
    T, B, _ = x.shape
    H = c0.shape[1]
    P = h0.shape[1]
    proj = w_hr.shape[0] > 0
    dh[:] = dh_n
    dc[:] = dc_n
    dw_ih[:] = 0
    dw_hh[:] = 0
    db[:] = 0
    dw_hr[:] = 0
    dh_t = np.empty((B, P), x.dtype)
    dz = np.empty((B, 4 * H), x.dtype)
    m = np.empty((B, H), x.dtype)
    for t in range(T - 1, -1, -1):
        for bi in range(B):
            run = t < lengths[bi]
            for k in range(P):
                dh_t[bi, k] = dy[t, bi, k] + dh[bi, k] if run else 0.0
        dm = np.dot(dh_t, w_hr) if proj else dh_t.copy()  # (B, H)
        for bi in range(B):
            run = t < lengths[bi]
            for j in range(H):
                i, f, g, o = gates[t, bi, j], gates[t, bi, H + j], gates[t, bi, 2 * H + j], gates[t, bi, 3 * H + j]
                tc = math.tanh(cs[t, bi, j])
                m[bi, j] = o * tc
                cp = cs[t - 1, bi, j] if t > 0 else c0[bi, j]
                dct = dc[bi, j] + dm[bi, j] * o * (1 - tc * tc) if run else 0.0
                dz[bi, j] = dct * g * i * (1 - i)
                dz[bi, H + j] = dct * cp * f * (1 - f)
                dz[bi, 2 * H + j] = dct * i * (1 - g * g)
                dz[bi, 3 * H + j] = dm[bi, j] * tc * o * (1 - o)
                if run:
                    dc[bi, j] = dct * f
        if proj:
            dw_hr += np.dot(dh_t.T, m)
        dx[t] = np.dot(dz, w_ih)
        dw_ih += np.dot(dz.T, x[t])
        dw_hh += np.dot(dz.T, y[t - 1] if t > 0 else h0)
        for bi in range(B):
            for j in range(4 * H):
                db[j] += dz[bi, j]
        dhp = np.dot(dz, w_hh)
        for bi in range(B):
            if t < lengths[bi]:
                dh[bi] = dhp[bi]


def _lengths(lengths, T, B):
    return np.full(B, T, np.int64) if lengths is None else lengths


def lstm_forward_numba(x, h0, c0, w_ih, w_hh, b, w_hr, lengths):
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    dt = x.dtype
    y, h, c = np.empty((T, B, P), dt), np.empty((B, P), dt), np.empty((B, H), dt)
    gates, cs = np.empty((T, B, 4 * H), dt), np.empty((T, B, H), dt)
    bb = b if b is not None else np.zeros(4 * H, dt)
    w_hrT = np.ascontiguousarray(w_hr.T) if w_hr is not None else np.empty((0, P), dt)
    _forward(x, h0, c0, np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bb, w_hrT,
             _lengths(lengths, T, B), y, h, c, gates, cs)
    return y, h, c, gates, cs


def lstm_backward_numba(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y):
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    dt = x.dtype
    dx, dh, dc = np.empty_like(x), np.empty((B, P), dt), np.empty((B, H), dt)
    dw_ih, dw_hh, db = np.empty_like(w_ih), np.empty_like(w_hh), np.empty(4 * H, dt)
    wr = w_hr if w_hr is not None else np.empty((0, H), dt)
    dw_hr = np.empty_like(wr)
    _backward(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, wr, _lengths(lengths, T, B), gates, cs, y,
              dx, dh, dc, dw_ih, dw_hh, db, dw_hr)
    return dx, dh, dc, dw_ih, dw_hh, db, (dw_hr if w_hr is not None else None)
