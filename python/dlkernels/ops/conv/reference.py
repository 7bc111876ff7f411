"""conv2d in NumPy: the readable oracle. Any float dtype; the tests run it in float64.

y[n, k, p, q] = b[k] + sum_{c, r, s} w[k, c, r, s] * xpad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw]
for k in group g (Kg = K/groups output channels and Cg = C/groups input channels per group).

The loops run over the R*S kernel taps: for one tap (r, s), every output pixel reads one
input pixel, so the tap is a strided slice of the padded input and a matrix product over
the group's input channels.
"""

from __future__ import annotations

import numpy as np

from .common import ConvParams


def _tap(r: int, s: int, p: ConvParams) -> tuple[slice, slice]:
    """The rows and columns of the padded input that kernel tap (r, s) reads, for all outputs."""
    (sh, sw), (dh, dw), (P, Q) = p.stride, p.dilation, p.out_size
    return slice(r * dh, r * dh + sh * (P - 1) + 1, sh), slice(s * dw, s * dw + sw * (Q - 1) + 1, sw)


def conv2d_forward_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: ConvParams) -> np.ndarray:
    N, C, H, W = x.shape                                          # input
    K, Cg, R, S = w.shape                                         # weight
    G = p.groups
    pt, pb, pl, pr = p.padding
    P, Q = p.out_size
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))        # (N, C, H+pt+pb, W+pl+pr)
    xg = xpad.reshape(N, G, Cg, *xpad.shape[2:])                  # (N, G, Cg, Hp, Wp)
    wg = w.reshape(G, K // G, Cg, R, S)                           # (G, Kg, Cg, R, S)
    y = np.zeros((N, G, K // G, P, Q), x.dtype)                   # (N, G, Kg, P, Q)
    for r in range(R):
        for s in range(S):
            rows, cols = _tap(r, s, p)
            patch = xg[:, :, :, rows, cols]                       # (N, G, Cg, P, Q)
            y += np.einsum("ngcpq,gkc->ngkpq", patch, wg[:, :, :, r, s])
    y = y.reshape(N, K, P, Q)
    if b is not None:
        y += b[None, :, None, None]
    return y


# Backward. Each tap (r, s) made y += W_rs · patch_rs, a product, so by the product rule:
#   dW[g, k, c, r, s] = sum_{n, p, q} dy[n, g, k, p, q] * patch_rs[n, g, c, p, q]
#   dpatch_rs = W_rsᵀ · dy, added back where the patch was read (a strided slice of dxpad);
#   dx = dxpad without its padding;  db[k] = sum_{n, p, q} dy[n, k, p, q].
def conv2d_backward_reference(dy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                              needs: tuple[bool, bool, bool]) -> tuple:
    N, C, H, W = x.shape                                          # input
    K, Cg, R, S = w.shape                                         # weight
    G = p.groups
    pt, pb, pl, pr = p.padding
    P, Q = p.out_size
    xpad = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))        # (N, C, Hp, Wp)
    xg = xpad.reshape(N, G, Cg, *xpad.shape[2:])                  # (N, G, Cg, Hp, Wp)
    wg = w.reshape(G, K // G, Cg, R, S)                           # (G, Kg, Cg, R, S)
    dyg = dy.reshape(N, G, K // G, P, Q)                          # (N, G, Kg, P, Q)
    dxg = np.zeros_like(xg)                                       # (N, G, Cg, Hp, Wp)
    dwg = np.zeros_like(wg)                                       # (G, Kg, Cg, R, S)
    for r in range(R):
        for s in range(S):
            rows, cols = _tap(r, s, p)
            dwg[:, :, :, r, s] = np.einsum("ngkpq,ngcpq->gkc", dyg, xg[:, :, :, rows, cols])
            dxg[:, :, :, rows, cols] += np.einsum("ngkpq,gkc->ngcpq", dyg, wg[:, :, :, r, s])
    dx = dxg.reshape(N, C, *xpad.shape[2:])[:, :, pt:pt + H, pl:pl + W]   # (N, C, H, W)
    dw = dwg.reshape(K, Cg, R, S)                                 # (K, Cg, R, S)
    db = dy.sum(axis=(0, 2, 3))                                   # (K,)
    return (np.ascontiguousarray(dx) if needs[0] else None, dw if needs[1] else None, db if needs[2] else None)
