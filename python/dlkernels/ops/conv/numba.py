"""conv2d in numba: two rungs of the ladder, forward and hand-written backward.

    direct   the seven loops of the definition, compiled. The loops run in the order
             (n, k) | c, r, s | p, q: one thread owns one output plane, and for each kernel
             tap the innermost loop walks an output row against an input row.
    im2col   unfold the input into a column matrix, then one matrix product per sample and
             group, written as numba loops: y_g = W_g @ col. The product runs as C += A Bᵀ
             with both operands read along contiguous rows (the forward unfolds into patch
             rows, colᵀ, for that), 4x4 outputs at a time with the 16 sums in registers;
             measured about 3x faster here than the i-k-j loop with a contiguous inner loop
             over columns, which has to load and store C once per multiply-add. The patch
             rows are unfolded a band of output rows at a time, so each band is still in
             cache when the product reads it, and with 8 or more channels per group from a
             channels-last copy of the input, in (r, s, c) order: runs of S*Cg values.
             Backward: dW_g = dy_g @ colᵀ; dx, at stride 1 with 16 or more channels per
             group, as the forward of dy with the flipped, transposed filters, else
             dcol = W_gᵀ @ dy_g folded back into dx (col2im).

Shapes (see __init__.py): x (N, C, H, W), w (K, Cg, R, S) with Cg = C/groups, b (K,) or None,
y and dy (N, K, P, Q); Kg = K/groups output channels per group. One dtype throughout
(float32 or float64); the results come back in it.

Determinism: every output element (y, dx, dw, db) is summed by one thread in a fixed order,
so the results are bitwise repeatable run to run.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .common import ConvParams

_COL_ELEMS = 1 << 22  # im2col dW: unfold at most this many elements of col at a time
_BAND_ELEMS = 1 << 15  # im2col forward: patch rows unfolded at a time (128 KiB in float32)


@numba.njit(cache=True, inline="always")
def _valid(off, stride, size, n_out):  # pragma: no cover - compiled
    """Outputs o in [lo, hi) whose input index o*stride + off lies in [0, size)."""
    lo = max(0, -(off // stride))
    hi = min(n_out, (size - 1 - off) // stride + 1)
    return lo, max(lo, hi)


# ---- direct ----------------------------------------------------------------------------------


# Threads: one (sample n, output channel k) plane of y per prange iteration.
@numba.njit(cache=True, parallel=True)
def _direct_forward(x, w, b, y, sh, sw, pt, pl, dh, dw, G):  # pragma: no cover - compiled
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    Kg = K // G
    for nk in prange(N * K):
        n = nk // K
        k = nk % K
        ci0 = (k // Kg) * Cg  # the group's first input channel
        out = y[n, k]
        out[:, :] = b[k]
        for c in range(Cg):
            xc = x[n, ci0 + c]
            for r in range(R):
                p_lo, p_hi = _valid(r * dh - pt, sh, H, P)
                for s in range(S):
                    q_lo, q_hi = _valid(s * dw - pl, sw, W, Q)
                    wv = w[k, c, r, s]
                    for p in range(p_lo, p_hi):
                        orow = out[p]
                        xrow = xc[p * sh + r * dh - pt]
                        for q in range(q_lo, q_hi):
                            orow[q] += wv * xrow[q * sw + s * dw - pl]


# Threads: one (sample n, input channel ci) plane of dx per prange iteration; it gathers the
# contributions of the Kg output channels of its group, so no two threads write one element.
@numba.njit(cache=True, parallel=True)
def _direct_grad_input(dy, w, dx, sh, sw, pt, pl, dh, dw, G):  # pragma: no cover - compiled
    N, C, H, W = dx.shape
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // G
    for nc in prange(N * C):
        n = nc // C
        ci = nc % C
        c = ci % Cg
        k0 = (ci // Cg) * Kg  # the group's first output channel
        plane = dx[n, ci]
        plane[:, :] = 0
        for kk in range(Kg):
            dyk = dy[n, k0 + kk]
            for r in range(R):
                p_lo, p_hi = _valid(r * dh - pt, sh, H, P)
                for s in range(S):
                    q_lo, q_hi = _valid(s * dw - pl, sw, W, Q)
                    wv = w[k0 + kk, c, r, s]
                    for p in range(p_lo, p_hi):
                        xrow = plane[p * sh + r * dh - pt]
                        grow = dyk[p]
                        for q in range(q_lo, q_hi):
                            xrow[q * sw + s * dw - pl] += wv * grow[q]


# Threads: one (output channel k, input channel c) pair per prange iteration: it owns the R*S
# weights dw[k, c] and sums each over (n, p, q) in a fixed order.
@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _direct_grad_weight(dy, x, dwt, sh, sw, pt, pl, dh, dw, G):  # pragma: no cover - compiled
    N, C, H, W = x.shape
    K, Cg, R, S = dwt.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // G
    for kc in prange(K * Cg):
        k = kc // Cg
        c = kc % Cg
        ci = (k // Kg) * Cg + c
        for r in range(R):
            p_lo, p_hi = _valid(r * dh - pt, sh, H, P)
            for s in range(S):
                q_lo, q_hi = _valid(s * dw - pl, sw, W, Q)
                acc = dwt.dtype.type(0)
                for n in range(N):
                    for p in range(p_lo, p_hi):
                        xrow = x[n, ci, p * sh + r * dh - pt]
                        grow = dy[n, k, p]
                        for q in range(q_lo, q_hi):
                            acc += grow[q] * xrow[q * sw + s * dw - pl]
                dwt[k, c, r, s] = acc


# Threads: one output channel k per prange iteration, summing dy[:, k] in a fixed order.
@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _grad_bias(dy, db):  # pragma: no cover - compiled
    N, K, P, Q = dy.shape
    for k in prange(K):
        acc = db.dtype.type(0)
        for n in range(N):
            plane = dy[n, k]
            for p in range(P):
                row = plane[p]
                for q in range(Q):
                    acc += row[q]
        db[k] = acc


def _unpack(p: ConvParams) -> tuple[int, ...]:
    (sh, sw), (pt, _, pl, _), (dh, dw) = p.stride, p.padding, p.dilation
    return sh, sw, pt, pl, dh, dw, p.groups


def _bias(b: np.ndarray | None, K: int, dtype: np.dtype) -> np.ndarray:
    return np.zeros(K, dtype) if b is None else b


def conv2d_forward_numba_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                                p: ConvParams) -> np.ndarray:
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K, *p.out_size), x.dtype)
    if y.size:
        _direct_forward(x, w, _bias(b, K, x.dtype), y, *_unpack(p))
    return y


def conv2d_backward_numba_direct(dy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                                 needs: tuple[bool, bool, bool]) -> tuple:
    dx = dw = db = None
    if needs[0]:
        dx = np.zeros_like(x)
        if x.size and dy.size:
            _direct_grad_input(dy, w, dx, *_unpack(p))
    if needs[1]:
        dw = np.zeros_like(w)
        if dy.size:
            _direct_grad_weight(dy, x, dw, *_unpack(p))
    if needs[2]:
        db = np.zeros(w.shape[0], dy.dtype)
        if dy.size:
            _grad_bias(dy, db)
    return dx, dw, db


# ---- im2col ----------------------------------------------------------------------------------


@numba.njit(cache=True)
def _pad(xn, ci0, xp, pt, pl):  # pragma: no cover - compiled
    """xp[c, pt + h, pl + w] = xn[ci0 + c, h, w]; the border of xp stays as it is (zero)."""
    Cg = xp.shape[0]
    H, W = xn.shape[1], xn.shape[2]
    for c in range(Cg):
        for h in range(H):
            src = xn[ci0 + c, h]
            dst = xp[c, pt + h]
            for w in range(W):
                dst[pl + w] = src[w]


@numba.njit(cache=True)
def _unfold_rows(xp, R, S, p0, p1, Q, rows, sh, sw, dh, dw):  # pragma: no cover - compiled
    """rows[(p-p0)*Q + q, (c*R + r)*S + s] = xp[c, p*sh + r*dh, q*sw + s*dw] for output rows
    p0 <= p < p1, xp the padded input.

    The transposed column matrix of a band of output rows: one row per output pixel, holding
    the patch it reads.
    """
    Cg = xp.shape[0]
    for p in range(p0, p1):
        block = rows[(p - p0) * Q:(p - p0 + 1) * Q]  # the patches of output row p
        for c in range(Cg):
            for r in range(R):
                xrow = xp[c, p * sh + r * dh]
                for s in range(S):
                    m = (c * R + r) * S + s
                    for q in range(Q):
                        block[q, m] = xrow[q * sw + s * dw]


@numba.njit(cache=True)
def _pad_hwc(xn, ci0, xp, pt, pl):  # pragma: no cover - compiled
    """xp[pt + h, pl + w, c] = xn[ci0 + c, h, w]: channels last; the border stays zero."""
    Cg = xp.shape[2]
    H, W = xn.shape[1], xn.shape[2]
    for h in range(H):
        dst = xp[pt + h]
        for c in range(Cg):
            src = xn[ci0 + c, h]
            for w in range(W):
                dst[pl + w, c] = src[w]


@numba.njit(cache=True)
def _unfold_rows_hwc(xp, R, S, p0, p1, Q, rows, sh, sw, dh, dw):  # pragma: no cover - compiled
    """rows[(p-p0)*Q + q, (r*S + s)*Cg + c] = xp[p*sh + r*dh, q*sw + s*dw, c] for output rows
    p0 <= p < p1, xp the padded input with channels last.

    Patches in (r, s, c) order: each patch row is R runs of S*Cg contiguous input values
    (Cg runs of Cg with dilation), copied in order, where the (c, r, s) order of _unfold_rows
    writes each value L apart (see _channels_last).
    """
    Hp, Wp, Cg = xp.shape
    xf = xp.reshape(Hp, Wp * Cg)
    run = S * Cg if dw == 1 else Cg
    for p in range(p0, p1):
        for q in range(Q):
            dst = rows[(p - p0) * Q + q]
            m = 0
            for r in range(R):
                xrow = xf[p * sh + r * dh]
                for s in range(S if dw > 1 else 1):
                    src = xrow[(q * sw + s * dw) * Cg:]
                    seg = dst[m:m + run]
                    for i in range(run):
                        seg[i] = src[i]
                    m += run


@numba.njit(cache=True)
def _unfold(xn, ci0, R, S, P, Q, col, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """col[(c*R + r)*S + s, p*Q + q] = xn[ci0 + c, p*sh - pt + r*dh, q*sw - pl + s*dw], 0 outside."""
    H, W = xn.shape[1], xn.shape[2]
    Cg = col.shape[0] // (R * S)
    for c in range(Cg):
        xc = xn[ci0 + c]
        for r in range(R):
            p_lo, p_hi = _valid(r * dh - pt, sh, H, P)
            for s in range(S):
                q_lo, q_hi = _valid(s * dw - pl, sw, W, Q)
                row = col[(c * R + r) * S + s]
                row[:p_lo * Q] = 0
                row[p_hi * Q:] = 0
                for p in range(p_lo, p_hi):
                    seg = row[p * Q:(p + 1) * Q]
                    seg[:q_lo] = 0
                    seg[q_hi:] = 0
                    # through slices, so that the loop index is the array index (see _axpy):
                    # the copy vectorizes (C2: the unfold 3x faster)
                    src = xc[p * sh + r * dh - pt, q_lo * sw + s * dw - pl:]
                    dst = seg[q_lo:q_hi]
                    if sw == 1:
                        for q in range(q_hi - q_lo):
                            dst[q] = src[q]
                    else:
                        for q in range(q_hi - q_lo):
                            dst[q] = src[q * sw]


@numba.njit(cache=True)
def _fold(dcol, dxn, ci0, R, S, P, Q, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """col2im, the adjoint of _unfold: dxn[ci0 + c, ih, iw] += dcol[(c*R + r)*S + s, p*Q + q]."""
    H, W = dxn.shape[1], dxn.shape[2]
    Cg = dcol.shape[0] // (R * S)
    for c in range(Cg):
        dxc = dxn[ci0 + c]
        for r in range(R):
            p_lo, p_hi = _valid(r * dh - pt, sh, H, P)
            for s in range(S):
                q_lo, q_hi = _valid(s * dw - pl, sw, W, Q)
                row = dcol[(c * R + r) * S + s]
                for p in range(p_lo, p_hi):
                    dxrow = dxc[p * sh + r * dh - pt]
                    seg = row[p * Q:(p + 1) * Q]
                    for q in range(q_lo, q_hi):
                        dxrow[q * sw + s * dw - pl] += seg[q]


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _gemm_nt(a, i0, i1, b, c, shift, jshift):  # pragma: no cover - compiled
    """c[i + shift, j + jshift] += sum_l a[i, l] * b[j, l] for rows i0 <= i < i1 of a: C += A Bᵀ.

    Both operands are read along contiguous rows, so every output is a dot product, and a
    4x4 block of them shares each load: 8 loads feed 16 multiply-adds, the 16 sums stay in
    registers, and the dot loop vectorizes (reassociation is fixed at compile time, so the
    result is still the same run to run).
    """
    L = a.shape[1]
    ncol = b.shape[0]
    i4 = i1 - (i1 - i0) % 4
    j4 = ncol - ncol % 4
    for j in range(0, j4, 4):
        b0 = b[j]
        b1 = b[j + 1]
        b2 = b[j + 2]
        b3 = b[j + 3]
        for i in range(i0, i4, 4):
            a0 = a[i]
            a1 = a[i + 1]
            a2 = a[i + 2]
            a3 = a[i + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = c.dtype.type(0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = c.dtype.type(0)
            for m in range(L):
                x0 = a0[m]
                x1 = a1[m]
                x2 = a2[m]
                x3 = a3[m]
                y0 = b0[m]
                y1 = b1[m]
                y2 = b2[m]
                y3 = b3[m]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            _add4(c[i + shift], j + jshift, s00, s01, s02, s03)
            _add4(c[i + 1 + shift], j + jshift, s10, s11, s12, s13)
            _add4(c[i + 2 + shift], j + jshift, s20, s21, s22, s23)
            _add4(c[i + 3 + shift], j + jshift, s30, s31, s32, s33)
        for i in range(i4, i1):  # leftover rows of a: 1x4 blocks
            ai = a[i]
            s0 = s1 = s2 = s3 = c.dtype.type(0)
            for m in range(L):
                x = ai[m]
                s0 += x * b0[m]
                s1 += x * b1[m]
                s2 += x * b2[m]
                s3 += x * b3[m]
            _add4(c[i + shift], j + jshift, s0, s1, s2, s3)
    for j in range(j4, ncol):  # leftover rows of b: single dot products
        bj = b[j]
        for i in range(i0, i1):
            ai = a[i]
            s = c.dtype.type(0)
            for m in range(L):
                s += ai[m] * bj[m]
            c[i + shift, j + jshift] += s


@numba.njit(cache=True, inline="always")
def _add4(crow, j, s0, s1, s2, s3):  # pragma: no cover - compiled
    crow[j] += s0
    crow[j + 1] += s1
    crow[j + 2] += s2
    crow[j + 3] += s3


# Threads: one contiguous chunk of samples per thread (prange over the threads), each with its
# own padded input (channels last where hwc) and patch-row buffer; per sample and group, pad,
# then per band of output rows unfold the band and add W_g @ bandᵀ into y_g. A band (at most
# _BAND_ELEMS elements) stays in L2 between its unfold and its product: unfolding the whole
# sample first wrote 7 MB per sample on C2 and read it back from memory (forward 70 -> 54 ms).
@numba.njit(cache=True, parallel=True)
def _im2col_forward(x, w3, b, y3, T, R, S, P, Q, sh, sw, pt, pl, dh, dw, hwc):  # pragma: no cover - compiled
    N, C = x.shape[0], x.shape[1]
    G, Kg, L = w3.shape
    Cg = C // G
    Hp = max(pt + x.shape[2], (P - 1) * sh + (R - 1) * dh + 1)  # the rows and columns read
    Wp = max(pl + x.shape[3], (Q - 1) * sw + (S - 1) * dw + 1)
    B = min(P, max(1, _BAND_ELEMS // (Q * L)))  # output rows per band
    for t in prange(T):
        xp = np.zeros((Cg, Hp, Wp), x.dtype)
        xpt = np.zeros((Hp, Wp, Cg) if hwc else (0, 0, 0), x.dtype)
        rows = np.empty((B * Q, L), x.dtype)
        for n in range(t * N // T, (t + 1) * N // T):
            yn = y3[n]
            for k in range(G * Kg):
                yn[k, :] = b[k]
            for g in range(G):
                if hwc:
                    _pad_hwc(x[n], g * Cg, xpt, pt, pl)
                else:
                    _pad(x[n], g * Cg, xp, pt, pl)
                for p0 in range(0, P, B):
                    p1 = min(P, p0 + B)
                    band = rows[:(p1 - p0) * Q]
                    if hwc:
                        _unfold_rows_hwc(xpt, R, S, p0, p1, Q, band, sh, sw, dh, dw)
                    else:
                        _unfold_rows(xp, R, S, p0, p1, Q, band, sh, sw, dh, dw)
                    _gemm_nt(w3[g], 0, Kg, band, yn, g * Kg, p0 * Q)


# Threads: one contiguous chunk of samples per thread, each with its own dcol; per sample and
# group, dcol = W_gᵀ @ dy_g (as W_gᵀ @ (dy_gᵀ)ᵀ, so that both operands are read along rows),
# then col2im adds dcol into the sample's dx, which only that thread writes.
@numba.njit(cache=True, parallel=True)
def _im2col_grad_input(dy3, wt, dx, T, R, S, P, Q, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    N, C = dx.shape[0], dx.shape[1]
    G, L, Kg = wt.shape
    Cg = C // G
    PQ = P * Q
    for t in prange(T):
        dcol = np.empty((L, PQ), dx.dtype)
        dyt = np.empty((PQ, Kg), dx.dtype)
        for n in range(t * N // T, (t + 1) * N // T):
            for g in range(G):
                for k in range(Kg):
                    dyk = dy3[n, g * Kg + k]
                    for j in range(PQ):
                        dyt[j, k] = dyk[j]
                dcol[:, :] = 0
                _gemm_nt(wt[g], 0, L, dyt, dcol, 0, 0)
                _fold(dcol, dx[n], g * Cg, R, S, P, Q, sh, sw, pt, pl, dh, dw)


# Threads: the samples go in chunks of nb; each chunk is unfolded in parallel over (sample,
# group), then each thread owns a contiguous range of dW rows (output channels) and adds
# dy_g @ colᵀ for them, sample after sample: every dW element is summed by one thread in a
# fixed order.
@numba.njit(cache=True, parallel=True)
def _im2col_grad_weight(dy3, x, dw2, nb, T, R, S, P, Q, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    N, C = x.shape[0], x.shape[1]
    K, L = dw2.shape
    G = C * R * S // L
    Cg = C // G
    Kg = K // G
    cols = np.empty((nb, G, L, P * Q), x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        for ig in prange(m * G):
            _unfold(x[n0 + ig // G], (ig % G) * Cg, R, S, P, Q, cols[ig // G, ig % G], sh, sw, pt, pl, dh, dw)
        for t in prange(T):
            k_lo = t * K // T
            k_hi = (t + 1) * K // T
            for i in range(m):
                for g in range(k_lo // Kg, (k_hi + Kg - 1) // Kg):
                    r0 = max(k_lo, g * Kg)
                    r1 = min(k_hi, (g + 1) * Kg)
                    _gemm_nt(dy3[n0 + i], r0, r1, cols[i, g], dw2, 0, 0)


def _geometry(w: np.ndarray, p: ConvParams) -> tuple[int, ...]:
    (sh, sw), (pt, _, pl, _), (dh, dw) = p.stride, p.padding, p.dilation
    return (w.shape[2], w.shape[3], *p.out_size, sh, sw, pt, pl, dh, dw)


def conv2d_forward_numba_im2col(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                                p: ConvParams) -> np.ndarray:
    N, K, G = x.shape[0], w.shape[0], p.groups
    P, Q = p.out_size
    y = np.empty((N, K, P, Q), x.dtype)
    if y.size:
        hwc = _channels_last(w.shape[1])
        w3 = _patch_order(w, hwc).reshape(G, K // G, -1)  # (G, Kg, Cg*R*S)
        _im2col_forward(x, w3, _bias(b, K, x.dtype), y.reshape(N, K, P * Q), min(N, numba.get_num_threads()),
                        *_geometry(w, p), hwc)
    return y


def _channels_last(Cg: int) -> bool:
    """Whether the forward unfolds patches in (r, s, c) order from a channels-last copy of the
    input: runs of S*Cg contiguous values instead of single values L apart. Measured: C2
    forward 54 -> 44 ms, C5 15 -> 11 ms; N32 C16 32x32 K64 3x3 5.7 -> 4.7 ms, C8 20.6 ->
    19.5 ms; about even below 8 channels (C1: 2.7 vs 2.9 ms)."""
    return Cg >= 8


def _patch_order(w: np.ndarray, hwc: bool) -> np.ndarray:
    """The filters with each one's values in the patch order of the unfold: (c, r, s), or
    (r, s, c) for channels last."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)) if hwc else w


def _flipped_fits(x: np.ndarray, w: np.ndarray, p: ConvParams) -> bool:
    """Whether dx runs as a forward conv of dy: stride 1, no padding side wider than the
    dilated kernel's reach (else the forward would need a negative border), and at least 16
    input channels per group: the forward of dy unfolds Kg*R*S values per pixel whatever
    Cg is, so with few outputs that unfold dominates (N32 C4 64x64 K64 3x3: 25 vs 12 ms
    through col2im; even at C16)."""
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = p.stride, p.padding, p.dilation
    R, S = w.shape[2], w.shape[3]
    return (sh == sw == 1 and max(pt, pb) <= dh * (R - 1) and max(pl, pr) <= dw * (S - 1)
            and w.shape[1] >= 16)


def _im2col_grad_input_flipped(dy: np.ndarray, w: np.ndarray, dx: np.ndarray, p: ConvParams) -> None:
    """Stride 1: dx = conv(dy, w'), w'[g*Cg + c, kk, r, s] = w[g*Kg + kk, c, R-1-r, S-1-s], with
    dy bordered by dh*(R-1) - pt rows on top (likewise left): the forward's unfold and GEMM,
    whose patch rows stay in cache, instead of a dcol of Cg*R*S x P*Q per sample and col2im
    (C2: 60 vs 100 ms)."""
    N, K = dy.shape[0], dy.shape[1]
    C, G = dx.shape[1], p.groups
    _, Cg, R, S = w.shape
    H, W = dx.shape[2], dx.shape[3]
    (pt, _, pl, _), (dh, dw) = p.padding, p.dilation
    wf = w.reshape(G, K // G, Cg, R, S)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)  # (G, Cg, Kg, R, S)
    hwc = _channels_last(K // G)
    w3 = _patch_order(wf.reshape(C, K // G, R, S), hwc).reshape(G, Cg, -1)  # (G, Cg, Kg*R*S)
    _im2col_forward(dy, w3, np.zeros(C, dx.dtype), dx.reshape(N, C, H * W), min(N, numba.get_num_threads()),
                    R, S, H, W, 1, 1, dh * (R - 1) - pt, dw * (S - 1) - pl, dh, dw, hwc)


def conv2d_backward_numba_im2col(dy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                                 needs: tuple[bool, bool, bool]) -> tuple:
    N, K, G = x.shape[0], w.shape[0], p.groups
    P, Q = p.out_size
    L = w[0].size  # Cg*R*S, the rows of col
    dy3 = dy.reshape(N, K, P * Q)
    dx = dw = db = None
    if needs[0]:
        dx = np.zeros_like(x)
        if dx.size and _flipped_fits(x, w, p):
            _im2col_grad_input_flipped(dy, w, dx, p)
        elif dx.size:
            wt = np.ascontiguousarray(w.reshape(G, K // G, L).transpose(0, 2, 1))  # (G, L, Kg)
            _im2col_grad_input(dy3, wt, dx, min(N, numba.get_num_threads()), *_geometry(w, p))
    if needs[1]:
        dw = np.zeros_like(w)
        if N:
            nb = max(1, min(N, _COL_ELEMS // (G * L * P * Q)))
            T = min(K, numba.get_num_threads())
            _im2col_grad_weight(dy3, x, dw.reshape(K, L), nb, T, *_geometry(w, p))
    if needs[2]:
        db = np.zeros(K, dy.dtype)
        if N:
            _grad_bias(dy, db)
    return dx, dw, db


# ---- depthwise -------------------------------------------------------------------------------
# One input channel per group (w.shape[1] == 1): output channel k reads only input channel
# ci = k // Kg (Kg = K/groups, the channel multiplier), so every plane is a 2-D correlation of
# one input plane with one R x S filter. The planes are copied into zero-bordered buffers, so
# no tap needs a bounds test. With stride 1 the buffer is "wide": an output plane of P rows
# is computed Wb = Q + (S-1)*dw columns wide, so that output pixel j = p*Wb + q reads buffer
# element j + r*dh*Wb + s*dw for tap (r, s): every tap is one contiguous loop over the whole
# plane (P*Wb elements), which LLVM vectorizes; the Wb - Q extra columns per row are computed
# and thrown away. Taps go four per pass over the plane, and output channels that read one
# input plane (the channel multiplier Kg, C1's 32) four at a time in the forward and dW, so
# each load feeds several multiply-adds. Other strides take row loops over the padded
# buffer. Registered for every conv with one input channel per group, groups == 1 (C == 1)
# included.
# Determinism: every output element is summed by one thread in a fixed order.


@numba.njit(cache=True)
def _place(src, buf, Hb, Wb, oh, ow):  # pragma: no cover - compiled
    """buf[(a + oh)*Wb + ow + c] = src[a, c] where that lies inside the Hb x Wb buffer.

    Called again with the same shapes and offsets it writes the same elements, so a border
    that was zero stays zero.
    """
    Hs, Ws = src.shape
    a0 = max(0, -oh)
    a1 = min(Hs, Hb - oh)
    c0 = max(0, -ow)
    c1 = min(Ws, Wb - ow)
    for a in range(a0, a1):
        row = src[a, c0:c1]  # slices, so that the loop index is the array index (see _axpy)
        dst = buf[(a + oh) * Wb + ow + c0:]
        for c in range(c1 - c0):
            dst[c] = row[c]


@numba.njit(cache=True, inline="always")
def _axpy(acc, wv, src, off, L):  # pragma: no cover - compiled
    """acc[j] += wv * src[j + off] for j < L: the contiguous loop every tap runs.

    Through a slice, so that the index is j alone: numba's check for negative indices on
    j + off would keep LLVM from vectorizing the loop (measured 8x slower).
    """
    seg = src[off:off + L]
    for j in range(L):
        acc[j] += wv * seg[j]


@numba.njit(cache=True, inline="always")
def _axpy4(acc, w0, w1, w2, w3, src, o0, o1, o2, o3, L):  # pragma: no cover - compiled
    """Four taps in one pass: acc[j] += w0*src[j + o0], then w1, w2, w3, in that order.

    The same chain of multiply-adds as four _axpy calls (bitwise the same result), with one
    load and store of acc instead of four (C1: forward 1.4 -> 1.0 ms, dx 1.7 -> 1.2 ms).
    """
    s0 = src[o0:o0 + L]
    s1 = src[o1:o1 + L]
    s2 = src[o2:o2 + L]
    s3 = src[o3:o3 + L]
    for j in range(L):
        acc[j] = (((acc[j] + w0 * s0[j]) + w1 * s1[j]) + w2 * s2[j]) + w3 * s3[j]


@numba.njit(cache=True, inline="always")
def _tap(wk, t, flip, Wb, dh, dw):  # pragma: no cover - compiled
    """Tap t = r*S + s of the R x S filter wk: its weight (flipped: wk[R-1-r, S-1-s]) and the
    offset r*dh*Wb + s*dw of its input in a wide buffer."""
    R, S = wk.shape
    r = t // S
    s = t % S
    wv = wk[R - 1 - r, S - 1 - s] if flip else wk[r, s]
    return wv, r * dh * Wb + s * dw


@numba.njit(cache=True, inline="always")
def _all_taps(acc, wk, flip, src, Wb, dh, dw, L):  # pragma: no cover - compiled
    """acc[j] += sum over taps t, in order, of wk's weight for t * src[j + offset of t]."""
    RS = wk.shape[0] * wk.shape[1]
    t = 0
    while t + 4 <= RS:
        w0, o0 = _tap(wk, t, flip, Wb, dh, dw)
        w1, o1 = _tap(wk, t + 1, flip, Wb, dh, dw)
        w2, o2 = _tap(wk, t + 2, flip, Wb, dh, dw)
        w3, o3 = _tap(wk, t + 3, flip, Wb, dh, dw)
        _axpy4(acc, w0, w1, w2, w3, src, o0, o1, o2, o3, L)
        t += 4
    while t < RS:
        wv, o = _tap(wk, t, flip, Wb, dh, dw)
        _axpy(acc, wv, src, o, L)
        t += 1


@numba.njit(cache=True, inline="always")
def _all_taps4(acc4, w4, src, Wb, dh, dw, L):  # pragma: no cover - compiled
    """_all_taps (not flipped) for four channels that read one input plane: acc4[i, j] +=
    sum over taps, in order, of w4[i]'s weight * src[j + offset], four channels by four taps
    per pass: each input load feeds four channels (bitwise the same chains as _all_taps)."""
    R, S = w4.shape[1], w4.shape[2]
    RS = R * S
    c0 = acc4[0, :L]
    c1 = acc4[1, :L]
    c2 = acc4[2, :L]
    c3 = acc4[3, :L]
    t = 0
    while t + 4 <= RS:
        v00, o0 = _tap(w4[0], t, False, Wb, dh, dw)
        v01, o1 = _tap(w4[0], t + 1, False, Wb, dh, dw)
        v02, o2 = _tap(w4[0], t + 2, False, Wb, dh, dw)
        v03, o3 = _tap(w4[0], t + 3, False, Wb, dh, dw)
        v10, v11, v12, v13 = _taps4(w4[1], t)
        v20, v21, v22, v23 = _taps4(w4[2], t)
        v30, v31, v32, v33 = _taps4(w4[3], t)
        s0 = src[o0:o0 + L]  # slices, as in _axpy
        s1 = src[o1:o1 + L]
        s2 = src[o2:o2 + L]
        s3 = src[o3:o3 + L]
        for j in range(L):
            x0 = s0[j]
            x1 = s1[j]
            x2 = s2[j]
            x3 = s3[j]
            c0[j] = (((c0[j] + v00 * x0) + v01 * x1) + v02 * x2) + v03 * x3
            c1[j] = (((c1[j] + v10 * x0) + v11 * x1) + v12 * x2) + v13 * x3
            c2[j] = (((c2[j] + v20 * x0) + v21 * x1) + v22 * x2) + v23 * x3
            c3[j] = (((c3[j] + v30 * x0) + v31 * x1) + v32 * x2) + v33 * x3
        t += 4
    while t < RS:
        v0, o = _tap(w4[0], t, False, Wb, dh, dw)
        v1 = w4[1, t // S, t % S]
        v2 = w4[2, t // S, t % S]
        v3 = w4[3, t // S, t % S]
        seg = src[o:o + L]
        for j in range(L):
            xj = seg[j]
            c0[j] += v0 * xj
            c1[j] += v1 * xj
            c2[j] += v2 * xj
            c3[j] += v3 * xj
        t += 1


@numba.njit(cache=True, inline="always")
def _taps4(wk, t):  # pragma: no cover - compiled
    """The weights of taps t..t+3 of the filter wk (tap t is wk[t // S, t % S])."""
    S = wk.shape[1]
    return (wk[t // S, t % S], wk[(t + 1) // S, (t + 1) % S], wk[(t + 2) // S, (t + 2) % S],
            wk[(t + 3) // S, (t + 3) % S])


# Threads: a contiguous chunk of the N*K output planes per thread (prange over the threads),
# each with its own input and output buffers.
@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def _dw_forward(x, w, b, y, T, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    Kg = K // C
    unit = sh == 1 and sw == 1
    Wb = Q + (S - 1) * dw if unit else max(pl + W, (Q - 1) * sw + (S - 1) * dw + 1)
    Hb = P + (R - 1) * dh if unit else max(pt + H, (P - 1) * sh + (R - 1) * dh + 1)
    L = P * Wb
    NK = N * K
    for t in prange(T):
        xb = np.zeros(Hb * Wb + (S - 1) * dw, x.dtype)
        ob = np.empty((4, L), x.dtype)
        placed = -1
        nk = t * NK // T
        nk_hi = (t + 1) * NK // T
        while nk < nk_hi:
            n = nk // K
            k = nk % K
            ci = k // Kg
            if n * C + ci != placed:
                _place(x[n, ci], xb, Hb, Wb, pt, pl)
                placed = n * C + ci
            # four output channels of one input plane at a time where they exist (C1: all
            # 32 read the one input), so that each input load feeds four channels
            nb = 4 if unit and nk + 4 <= nk_hi and k + 4 <= K and (k + 3) // Kg == ci else 1
            if unit:
                for i in range(nb):
                    ob[i, :] = b[k + i]
                if nb == 4:
                    _all_taps4(ob, w[k:k + 4, 0], xb, Wb, dh, dw, L)
                else:
                    _all_taps(ob[0], w[k, 0], False, xb, Wb, dh, dw, L)
                for i in range(nb):
                    out = y[n, k + i]
                    for p in range(P):
                        orow = out[p]
                        seg = ob[i, p * Wb:]
                        for q in range(Q):
                            orow[q] = seg[q]
            else:
                out = y[n, k]
                for p in range(P):
                    orow = out[p]
                    orow[:] = b[k]
                    for r in range(R):
                        base = (p * sh + r * dh) * Wb
                        for s in range(S):
                            wv = w[k, 0, r, s]
                            o = base + s * dw
                            for q in range(Q):
                                orow[q] += wv * xb[o + q * sw]
            nk += nb


# Threads: a contiguous chunk of the N*C input planes per thread; plane (n, ci) gathers the Kg
# output channels of its group in order, so no two threads write one element. Stride 1: dx is
# the correlation of dy, zero-bordered by (R-1)*dh - pt rows and (S-1)*dw - pl columns (a
# negative border crops), with the flipped filter, computed wide as in the forward. Other
# strides: scatter dy into a padded dx buffer row by row, then crop.
@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def _dw_grad_input(dy, w, dx, T, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    N, C, H, W = dx.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // C
    unit = sh == 1 and sw == 1
    Wb = W + (S - 1) * dw if unit else max(pl + W, (Q - 1) * sw + (S - 1) * dw + 1)
    Hb = H + (R - 1) * dh if unit else max(pt + H, (P - 1) * sh + (R - 1) * dh + 1)
    L = H * Wb
    NC = N * C
    for t in prange(T):
        gb = np.zeros(Hb * Wb + (S - 1) * dw, dx.dtype)  # stride 1: the bordered dy
        ob = np.empty(L if unit else Hb * Wb, dx.dtype)  # the wide (or padded) dx
        for nc in range(t * NC // T, (t + 1) * NC // T):
            n = nc // C
            ci = nc % C
            ob[:] = 0
            for kk in range(Kg):
                k = ci * Kg + kk
                if unit:
                    _place(dy[n, k], gb, Hb, Wb, (R - 1) * dh - pt, (S - 1) * dw - pl)
                    _all_taps(ob, w[k, 0], True, gb, Wb, dh, dw, L)
                else:
                    dyk = dy[n, k]
                    for p in range(P):
                        grow = dyk[p]
                        for r in range(R):
                            base = (p * sh + r * dh) * Wb
                            for s in range(S):
                                wv = w[k, 0, r, s]
                                o = base + s * dw
                                for q in range(Q):
                                    ob[o + q * sw] += wv * grow[q]
            plane = dx[n, ci]
            oh = 0 if unit else pt
            ow = 0 if unit else pl
            for h in range(H):
                xrow = plane[h]
                seg = ob[(h + oh) * Wb + ow:]
                for c in range(W):
                    xrow[c] = seg[c]


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _all_dots(dwk, g, src, Wb, dh, dw, L):  # pragma: no cover - compiled
    """dwk[r, s] += g . src[offset of tap (r, s):][:L] for every tap, four taps per pass over
    g so that each load of g feeds four dot products (C1's dW and db: 1.41 -> 1.14 ms; four
    channels at a time through _all_dots4: 0.66 ms)."""
    R, S = dwk.shape
    RS = R * S
    t = 0
    while t + 4 <= RS:
        _, o0 = _tap(dwk, t, False, Wb, dh, dw)
        _, o1 = _tap(dwk, t + 1, False, Wb, dh, dw)
        _, o2 = _tap(dwk, t + 2, False, Wb, dh, dw)
        _, o3 = _tap(dwk, t + 3, False, Wb, dh, dw)
        s0 = src[o0:o0 + L]  # slices, as in _axpy
        s1 = src[o1:o1 + L]
        s2 = src[o2:o2 + L]
        s3 = src[o3:o3 + L]
        a0 = a1 = a2 = a3 = dwk.dtype.type(0)
        for j in range(L):
            gj = g[j]
            a0 += gj * s0[j]
            a1 += gj * s1[j]
            a2 += gj * s2[j]
            a3 += gj * s3[j]
        for i, a in enumerate((a0, a1, a2, a3)):
            dwk[(t + i) // S, (t + i) % S] += a
        t += 4
    while t < RS:
        _, o = _tap(dwk, t, False, Wb, dh, dw)
        seg = src[o:o + L]
        a = dwk.dtype.type(0)
        for j in range(L):
            a += g[j] * seg[j]
        dwk[t // S, t % S] += a
        t += 1


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _all_dots4(dw4, g4, src, Wb, dh, dw, L):  # pragma: no cover - compiled
    """_all_dots for four channels that read one input plane: dw4[i, r, s] += g4[i] . src
    shifted by tap (r, s), four channels by four taps per pass, so that each load feeds four
    multiply-adds (the 4x4 block of _gemm_nt, with src's shifted slices as the rows of B)."""
    R, S = dw4.shape[1], dw4.shape[2]
    RS = R * S
    g0 = g4[0]
    g1 = g4[1]
    g2 = g4[2]
    g3 = g4[3]
    t = 0
    while t + 4 <= RS:
        _, o0 = _tap(dw4[0], t, False, Wb, dh, dw)
        _, o1 = _tap(dw4[0], t + 1, False, Wb, dh, dw)
        _, o2 = _tap(dw4[0], t + 2, False, Wb, dh, dw)
        _, o3 = _tap(dw4[0], t + 3, False, Wb, dh, dw)
        s0 = src[o0:o0 + L]  # slices, as in _axpy
        s1 = src[o1:o1 + L]
        s2 = src[o2:o2 + L]
        s3 = src[o3:o3 + L]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = dw4.dtype.type(0)
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = dw4.dtype.type(0)
        for j in range(L):
            x0 = s0[j]
            x1 = s1[j]
            x2 = s2[j]
            x3 = s3[j]
            y0 = g0[j]
            y1 = g1[j]
            y2 = g2[j]
            y3 = g3[j]
            a00 += y0 * x0
            a01 += y0 * x1
            a02 += y0 * x2
            a03 += y0 * x3
            a10 += y1 * x0
            a11 += y1 * x1
            a12 += y1 * x2
            a13 += y1 * x3
            a20 += y2 * x0
            a21 += y2 * x1
            a22 += y2 * x2
            a23 += y2 * x3
            a30 += y3 * x0
            a31 += y3 * x1
            a32 += y3 * x2
            a33 += y3 * x3
        _add_taps(dw4[0], t, a00, a01, a02, a03)
        _add_taps(dw4[1], t, a10, a11, a12, a13)
        _add_taps(dw4[2], t, a20, a21, a22, a23)
        _add_taps(dw4[3], t, a30, a31, a32, a33)
        t += 4
    while t < RS:
        _, o = _tap(dw4[0], t, False, Wb, dh, dw)
        seg = src[o:o + L]
        a0 = a1 = a2 = a3 = dw4.dtype.type(0)
        for j in range(L):
            xj = seg[j]
            a0 += g0[j] * xj
            a1 += g1[j] * xj
            a2 += g2[j] * xj
            a3 += g3[j] * xj
        r = t // S
        s = t % S
        dw4[0, r, s] += a0
        dw4[1, r, s] += a1
        dw4[2, r, s] += a2
        dw4[3, r, s] += a3
        t += 1


@numba.njit(cache=True, inline="always")
def _add_taps(dwk, t, a0, a1, a2, a3):  # pragma: no cover - compiled
    """dwk[tap t + i] += a_i for taps t..t+3 (tap t is dwk[t // S, t % S])."""
    S = dwk.shape[1]
    for i, a in enumerate((a0, a1, a2, a3)):
        dwk[(t + i) // S, (t + i) % S] += a


# Threads: a contiguous chunk of the K output channels per thread; channel k owns its R*S
# weights and sums them over (n, p, q) in a fixed order (per sample, then over samples).
# Stride 1: per sample and tap, one dot product over the wide plane, dy_wide . x_buf[offset:]
# (dy_wide is zero in the thrown-away columns). Other strides: row loops. db (K,), or (0,)
# when not wanted, is summed in the same pass over dy (a pass of its own cost ~1.4 ms on C4).
@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _dw_grad_weight(dy, x, dwt, db, T, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    N, C, H, W = x.shape
    K, _, R, S = dwt.shape
    P, Q = dy.shape[2], dy.shape[3]
    Kg = K // C
    unit = sh == 1 and sw == 1
    Wb = Q + (S - 1) * dw if unit else max(pl + W, (Q - 1) * sw + (S - 1) * dw + 1)
    Hb = P + (R - 1) * dh if unit else max(pt + H, (P - 1) * sh + (R - 1) * dh + 1)
    L = P * Wb
    for t in prange(T):
        xb = np.zeros(Hb * Wb + (S - 1) * dw, x.dtype)
        gw = np.zeros((4, L), x.dtype)  # dy of up to 4 channels, wide: zero in the thrown-away columns
        k_lo = t * K // T
        k_hi = (t + 1) * K // T
        for k in range(k_lo, k_hi):
            for r in range(R):
                for s in range(S):
                    dwt[k, 0, r, s] = 0
        if unit:
            # samples outermost, so that the thread reads its channels of x and dy in memory
            # order (channel-major, each plane is a new page 800 KB on: C4's dW and db 4.8 -> 2.8 ms);
            # each channel still sums its samples in order
            for n in range(N):
                placed = -1
                k0 = k_lo
                while k0 < k_hi:
                    ci = k0 // Kg
                    # four channels of one input plane at a time where they exist (C1: all
                    # 32 read the one input), so that each input load feeds four dot products
                    nb = 4 if k0 + 4 <= k_hi and (k0 + 3) // Kg == ci else 1
                    if ci != placed:
                        _place(x[n, ci], xb, Hb, Wb, pt, pl)
                        placed = ci
                    for i in range(nb):
                        _place(dy[n, k0 + i], gw[i], P, Wb, 0, 0)
                        if db.size:
                            tot = db.dtype.type(0)
                            gi = gw[i]
                            for j in range(L):
                                tot += gi[j]
                            db[k0 + i] += tot
                    if nb == 4:
                        _all_dots4(dwt[k0:k0 + 4, 0], gw, xb, Wb, dh, dw, L)
                    else:
                        _all_dots(dwt[k0, 0], gw[0], xb, Wb, dh, dw, L)
                    k0 += nb
        for k in range(k_lo, k_hi):
            ci = k // Kg
            # A thrown-away column multiplies a zero of gw by an input element, which
            # gives NaN if that element is infinite: redo such a channel exactly.
            exact = not unit
            for r in range(R):
                for s in range(S):
                    if not np.isfinite(dwt[k, 0, r, s]):
                        exact = True
            if exact:  # row loops over the kept outputs only
                for r in range(R):
                    for s in range(S):
                        dwt[k, 0, r, s] = 0
                for n in range(N):
                    _place(x[n, ci], xb, Hb, Wb, pt, pl)
                    dyk = dy[n, k]
                    if db.size and not unit:  # unit: summed in the wide pass
                        tot = db.dtype.type(0)
                        for p in range(P):
                            for q in range(Q):
                                tot += dyk[p, q]
                        db[k] += tot
                    for r in range(R):
                        for s in range(S):
                            tot = dwt.dtype.type(0)
                            for p in range(P):
                                grow = dyk[p]
                                seg = xb[(p * sh + r * dh) * Wb + s * dw:]
                                for q in range(Q):
                                    tot += grow[q] * seg[q * sw]
                            dwt[k, 0, r, s] += tot


def one_channel(w: np.ndarray, p: ConvParams) -> str | None:
    """Why the depthwise kernel also fits a groups == 1 conv with one input channel, or None.

    C/groups == 1 is all the depthwise kernel needs (output channel k reads input channel
    k // Kg); with C == 1 it runs as one group with K outputs (the foundation's C1 shape,
    N64 C1 32x32 K32 5x5, 2 threads: forward 0.7 ms vs im2col's 2.7 ms, backward 1.9 vs 4.5 ms).
    """
    return "one input channel per group" if w.shape[1] == 1 else None


def conv2d_forward_numba_depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                                   p: ConvParams) -> np.ndarray:
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K, *p.out_size), x.dtype)
    if y.size:
        T = min(N * K, numba.get_num_threads())
        _dw_forward(x, w, _bias(b, K, x.dtype), y, T, *_unpack(p)[:6])
    return y


def conv2d_backward_numba_depthwise(dy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                                    needs: tuple[bool, bool, bool]) -> tuple:
    N, C, K = x.shape[0], x.shape[1], w.shape[0]
    dx = dw = db = None
    if needs[0]:
        dx = np.empty_like(x)  # _dw_grad_input writes every element
        if dx.size:
            _dw_grad_input(dy, w, dx, min(N * C, numba.get_num_threads()), *_unpack(p)[:6])
    if needs[2]:
        db = np.zeros(K, dy.dtype)
    if needs[1]:
        dw = np.zeros_like(w)
        if N:
            db_in_pass = db if db is not None else np.zeros(0, dy.dtype)
            _dw_grad_weight(dy, x, dw, db_in_pass, min(K, numba.get_num_threads()), *_unpack(p)[:6])
    elif needs[2] and N:
        _grad_bias(dy, db)
    return dx, dw, db
