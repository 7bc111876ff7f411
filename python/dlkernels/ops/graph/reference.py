"""The graph ops in NumPy: the readable oracle. Any float dtype; the tests run it in float64.

Everything is written over the edge list in the user's order (src[e] -> dst[e]) with
np.add.at / np.maximum.at, the definitions read off directly; the CSR is not used.
Shapes: x (n_src, F), output (n_dst, F); w (E,) or None; a (n_src, H, F), b (n_dst, H, F);
scores (E, H).
"""

from __future__ import annotations

import numpy as np

from .structure import Csr

# ---- aggregate (and scatter): out[v] = reduce_{e: u -> v} w[e] * x[u] ---------------------------


def _messages(csr: Csr, x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    msg = x[csr.src]                                              # (E, F)
    return msg if w is None else msg * w[:, None]                 # (E, F)


def aggregate_forward_reference(csr: Csr, x: np.ndarray, w: np.ndarray | None, reduce: str) -> np.ndarray:
    msg = _messages(csr, x, w)                                    # (E, F)
    if reduce in ("sum", "mean"):
        out = np.zeros((csr.n_dst, x.shape[1]), x.dtype)          # (V, F)
        np.add.at(out, csr.dst, msg)
        if reduce == "mean":
            out /= np.maximum(csr.in_degree, 1)[:, None]          # (V, F)
        return out
    fill = -np.inf if reduce == "max" else np.inf
    out = np.full((csr.n_dst, x.shape[1]), fill, x.dtype)         # (V, F)
    (np.maximum if reduce == "max" else np.minimum).at(out, csr.dst, msg)
    out[csr.in_degree == 0] = 0                                   # an empty target gives 0
    return out


# Backward. sum: out[v] = sum_e w[e] x[u], so  dx[u] += w[e] * g[v]  and  dw[e] = <x[u], g[v]>;
# mean divides g[v] by deg(v) first. max/min: out[v, f] = msg[e*, f] for the edges e* that
# attain it; the gradient g[v, f] is shared equally among them (torch.scatter_reduce's rule):
#   dmsg[e, f] = [msg[e, f] == out[v, f]] * g[v, f] / #ties[v, f],
# then, as for sum:  dx[u] += w[e] * dmsg[e]  and  dw[e] = <x[u], dmsg[e]>.
def aggregate_backward_reference(csr: Csr, g: np.ndarray, x: np.ndarray, w: np.ndarray | None,
                                 out: np.ndarray | None, reduce: str) -> tuple:
    if reduce in ("sum", "mean"):
        dmsg = g[csr.dst]                                         # (E, F)
        if reduce == "mean":
            dmsg = dmsg / np.maximum(csr.in_degree, 1)[csr.dst, None]  # (E, F)
    else:
        msg = _messages(csr, x, w)                                # (E, F)
        is_arg = msg == out[csr.dst]                              # (E, F) edges attaining the max/min
        ties = np.zeros(out.shape, x.dtype)                       # (V, F)
        np.add.at(ties, csr.dst, is_arg.astype(x.dtype))
        dmsg = np.where(is_arg, g[csr.dst] / np.maximum(ties, 1)[csr.dst], 0)   # (E, F)
    dx = np.zeros_like(x)                                         # (N, F)
    np.add.at(dx, csr.src, dmsg if w is None else dmsg * w[:, None])
    dw = None if w is None else np.sum(dmsg * x[csr.src], axis=1)  # (E,)
    return dx, dw


# ---- sddmm: out[e, h] = <a[u, h], b[v, h]> for each edge e: u -> v -------------------------------


def sddmm_forward_reference(csr: Csr, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a[csr.src] * b[csr.dst], axis=-1)               # (E, H)


# Backward: out[e, h] is bilinear in a[u, h] and b[v, h], so
#   da[u, h] += g[e, h] * b[v, h]   and   db[v, h] += g[e, h] * a[u, h].
def sddmm_backward_reference(csr: Csr, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple:
    da = np.zeros_like(a)                                         # (N, H, F)
    np.add.at(da, csr.src, g[:, :, None] * b[csr.dst])
    db = np.zeros_like(b)                                         # (V, H, F)
    np.add.at(db, csr.dst, g[:, :, None] * a[csr.src])
    return da, db


# ---- edge_softmax: y[e, h] = exp(s[e, h]) / sum_{e' -> v} exp(s[e', h]) ---------------------------


def edge_softmax_forward_reference(csr: Csr, s: np.ndarray) -> np.ndarray:
    H = s.shape[1]
    m = np.full((csr.n_dst, H), -np.inf, s.dtype)                 # (V, H) max per target, for stability
    np.maximum.at(m, csr.dst, s)
    ex = np.exp(s - m[csr.dst])                                   # (E, H)
    den = np.zeros((csr.n_dst, H), s.dtype)                       # (V, H)
    np.add.at(den, csr.dst, ex)
    return ex / den[csr.dst]                                      # (E, H)


# Backward: the softmax Jacobian within each target's group,
#   ds[e] = y[e] * (g[e] - sum_{e' -> v} y[e'] * g[e']).
def edge_softmax_backward_reference(csr: Csr, g: np.ndarray, y: np.ndarray) -> np.ndarray:
    dot = np.zeros((csr.n_dst, y.shape[1]), y.dtype)              # (V, H)
    np.add.at(dot, csr.dst, y * g)
    return y * (g - dot[csr.dst])                                 # (E, H)
