"""LSTM in NumPy: the readable oracle, one time step per loop iteration. Any float dtype.

Kernel layout (every backend): time-major and contiguous.
    x (T, B, I), h0 (B, P), c0 (B, H), w_ih (4H, I), w_hh (4H, P), b (4H,) = b_ih + b_hh or None,
    w_hr (P, H) or None (then P = H), lengths (B,) int64 or None (then every sequence has T steps).
Forward returns (y, h_n, c_n, gates, c): y (T, B, P), gates (T, B, 4H) activated, c (T, B, H).
"""

from __future__ import annotations

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _active(lengths: np.ndarray | None, t: int, B: int) -> np.ndarray:
    """(B, 1) bool: which sequences are still running at step t."""
    if lengths is None:
        return np.ones((B, 1), bool)
    return (t < lengths)[:, None]


def lstm_forward_reference(x, h0, c0, w_ih, w_hh, b, w_hr, lengths):
    T, B, _ = x.shape
    H = c0.shape[1]
    P = h0.shape[1]
    y = np.zeros((T, B, P), x.dtype)                              # (T, B, P)
    gates = np.zeros((T, B, 4 * H), x.dtype)                      # (T, B, 4H)
    cs = np.zeros((T, B, H), x.dtype)                             # (T, B, H)
    h = h0.copy()                                                 # (B, P)
    c = c0.copy()                                                 # (B, H)
    for t in range(T):
        z = x[t] @ w_ih.T + h @ w_hh.T                            # (B, 4H)
        if b is not None:
            z = z + b
        i = _sigmoid(z[:, 0 * H:1 * H])                           # (B, H) input gate
        f = _sigmoid(z[:, 1 * H:2 * H])                           # (B, H) forget gate
        g = np.tanh(z[:, 2 * H:3 * H])                            # (B, H) cell candidate
        o = _sigmoid(z[:, 3 * H:4 * H])                           # (B, H) output gate
        c_new = f * c + i * g                                     # (B, H)
        m = o * np.tanh(c_new)                                    # (B, H)
        h_new = m @ w_hr.T if w_hr is not None else m             # (B, P)
        run = _active(lengths, t, B)                              # (B, 1)
        c = np.where(run, c_new, c)                               # past its end a sequence keeps its state
        h = np.where(run, h_new, h)
        y[t] = np.where(run, h_new, 0)                            # and outputs 0
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        cs[t] = c
    return y, h, c, gates, cs


# Backward through time, from the last step to the first. At a running step t, with
# dh = dy_t + (the gradient flowing back from step t+1) and dc likewise:
#   m = o*tanh(c_t), h = m w_hrᵀ     =>  dm = dh w_hr,   dW_hr += dhᵀ m
#   dc += dm * o * (1 - tanh²(c_t)),  do = dm * tanh(c_t)
#   c_t = f c_{t-1} + i g            =>  di = dc g, dg = dc i, df = dc c_{t-1}, dc_{t-1} = dc f
#   through the activations          =>  dz = [di i(1-i), df f(1-f), dg (1-g²), do o(1-o)]
#   z = x_t W_ihᵀ + h_{t-1} W_hhᵀ + b =>  dx_t = dz W_ih, dh_{t-1} = dz W_hh,
#                                         dW_ih += dzᵀ x_t, dW_hh += dzᵀ h_{t-1}, db += Σ_b dz
# A step past a sequence's end copied its state: the gradients pass through unchanged.
def lstm_backward_reference(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y):
    T, B, _ = x.shape
    H = c0.shape[1]
    dx = np.zeros_like(x)                                         # (T, B, I)
    dw_ih = np.zeros_like(w_ih)                                   # (4H, I)
    dw_hh = np.zeros_like(w_hh)                                   # (4H, P)
    db = np.zeros(4 * H, x.dtype)                                 # (4H,)
    dw_hr = np.zeros_like(w_hr) if w_hr is not None else None     # (P, H)
    dh = dh_n.copy()                                              # (B, P) gradient of h after step t
    dc = dc_n.copy()                                              # (B, H)
    for t in range(T - 1, -1, -1):
        run = _active(lengths, t, B)                              # (B, 1)
        i = gates[t, :, 0 * H:1 * H]                              # (B, H)
        f = gates[t, :, 1 * H:2 * H]
        g = gates[t, :, 2 * H:3 * H]
        o = gates[t, :, 3 * H:4 * H]
        c_prev = cs[t - 1] if t > 0 else c0                       # (B, H)
        h_prev = y[t - 1] if t > 0 else h0                        # (B, P) (y = h wherever z's gradient is nonzero)
        tc = np.tanh(cs[t])                                       # (B, H)
        dh_t = np.where(run, dy[t] + dh, 0)                       # (B, P)
        if w_hr is not None:
            dm = dh_t @ w_hr                                      # (B, H)
            dw_hr += dh_t.T @ (o * tc)                            # (P, H)
        else:
            dm = dh_t
        dc_t = np.where(run, dc + dm * o * (1 - tc * tc), 0)      # (B, H)
        di = dc_t * g
        dg = dc_t * i
        df = dc_t * c_prev
        do = dm * tc
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)],
                            axis=1)                               # (B, 4H), 0 where not running
        dx[t] = dz @ w_ih                                         # (B, I)
        dw_ih += dz.T @ x[t]                                      # (4H, I)
        dw_hh += dz.T @ h_prev                                    # (4H, P)
        db += dz.sum(axis=0)                                      # (4H,)
        dh = np.where(run, dz @ w_hh, dh)                         # (B, P)
        dc = np.where(run, dc_t * f, dc)                          # (B, H)
    return dx, dh, dc, dw_ih, dw_hh, db, dw_hr
