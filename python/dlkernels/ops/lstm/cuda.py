"""Glue to the CUDA LSTM kernels (kernels/lstm.cu): allocate on the input's device, launch.

Same signatures as the other backends (see reference.py):
    forward  (x, h0, c0, w_ih, w_hh, b, w_hr, lengths) -> (y, h_n, c_n, gates, c)
    backward (dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, c, y)
             -> (dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr)
Arrays are contiguous CuPy arrays of one dtype (float32, float64, float16, bfloat16; sums in
float32, float64 for float64); lengths arrive as NumPy int64 on the host. The saved gates and
c are kept in the accumulator dtype (float32 for the 16-bit types): the backward reads them
back, and rounding them would cost the gradients their accuracy. h and c run in the
accumulator dtype between steps.

Variants (one line each in kernels/lstm.cu's header):
    steps       x W_ihᵀ for all steps as one GEMM; per step h W_hhᵀ (GEMM) and one fused gate
                kernel (forward and backward); weight gradients as single GEMMs over T*B rows
    persistent  forward only, no projection: one kernel for all T steps, each block keeping its
                hidden units' rows of W_hh in shared memory (Diamos et al. 2016), a software
                grid barrier between steps. Chosen when W_hh fits the GPU's shared memory with
                at most one block per SM (the barrier's co-residency assumption); the reason
                for either choice shows under DLKERNELS_VERBOSE=1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import _cuda
from ..._arrays import cupy_module
from ..._registry import register

FILE = "lstm.cu"
NULL = np.uint64(0)  # a null pointer argument
VARIANTS = ("steps", "persistent")  # what register_all registers


def _family(t: str) -> list[str]:
    """Every kernel of lstm.cu for C type t, compiled together in one NVRTC run."""
    a = "double" if t == "double" else "float"
    combos = {(t, t, a), (a, t, a), (a, t, t), (a, a, t)}
    names = [f"lstm_gemm<{ta}, {tb}, {tc}>" for ta, tb, tc in sorted(combos)]
    names += [f"{k}<{t}>" for k in ("lstm_init_state", "lstm_store", "lstm_fwd_gates", "lstm_fwd_proj",
                                    "lstm_persistent", "lstm_bwd_dh", "lstm_bwd_gates", "lstm_bwd_carry",
                                    "lstm_colsum")]
    return names


def _kernel(name: str, x):
    t = _cuda.c_type(x)
    return _cuda.kernel(FILE, f"{name}<{t}>", _family(t))


def _elementwise(name: str, x, n: int, args: tuple) -> None:
    """A one-thread-per-element kernel of lstm.cu over n elements (256 threads per block)."""
    _cuda.launch(_kernel(name, x), (_cuda.cdiv(n, 256),), (256,), args)


def _gemm(x, M: int, N: int, K: int, A, sam: int, sak: int, B, sbk: int, sbn: int, C, ldc: int, bias=None) -> None:
    """C[m, n] = sum_k A[m*sam + k*sak] B[k*sbk + n*sbn] (+ bias[n]); x gives the op's dtype."""
    t = _cuda.c_type(x)
    ct = {str(a.dtype): _cuda.C_TYPES[str(a.dtype)] for a in (A, B, C)}
    expr = f"lstm_gemm<{ct[str(A.dtype)]}, {ct[str(B.dtype)]}, {ct[str(C.dtype)]}>"
    kern = _cuda.kernel(FILE, expr, _family(t))
    i64 = np.int64
    # a 64x64 tile of C per block of 256 threads, 4x4 outputs each
    _cuda.launch(kern, (_cuda.cdiv(M, 64), _cuda.cdiv(N, 64)), (256,),
                 (i64(M), i64(N), i64(K), A, i64(sam), i64(sak), B, i64(sbk), i64(sbn), C, i64(ldc),
                  NULL if bias is None else bias))


def _to_acc(a, acc: str):
    out = _cuda.empty(a.shape, acc)
    _elementwise("lstm_init_state", a, a.size, (a, out, np.int64(a.size)))
    return out


def _to_t(a, like):
    out = _cuda.empty(a.shape, like.dtype)
    _elementwise("lstm_store", like, a.size, (a, out, np.int64(a.size)))
    return out


def _lengths(lengths):
    return NULL if lengths is None else cupy_module().asarray(lengths, dtype=np.int64)


# ---- the persistent kernel's plan --------------------------------------------------------------

def _device_limits() -> tuple[int, int]:
    """(SMs, opt-in shared memory per block) of the current device."""
    attrs = cupy_module().cuda.Device().attributes
    return int(attrs["MultiProcessorCount"]), int(attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))


def persistent_plan(x, c0, w_hr) -> tuple[int, int, int, str | None]:
    """(units per block U, blocks, shared bytes, None) when the persistent forward fits, else
    (0, 0, 0, why not). U is the fewest units per block that keeps blocks <= SMs."""
    T, B, _ = x.shape
    H = c0.shape[1]
    if w_hr is not None:
        return 0, 0, 0, "proj_size: the projection needs every unit's h before the next step's W_hh product"
    sms, limit = _device_limits()
    U = _cuda.cdiv(H, sms)
    item, acc = np.dtype(x.dtype).itemsize, 8 if str(x.dtype) == "float64" else 4
    pad = 2 if item == 2 else 1
    w_bytes = _cuda.cdiv(4 * U * (H + pad) * item, 16) * 16
    smem = w_bytes + 5 * B * U * acc  # W_hh rows, z (B, 4U), c (B, U)
    if smem > limit:
        return 0, 0, 0, (f"W_hh needs {4 * H * H * item / 2**20:.1f} MiB on-chip: {smem} bytes per block "
                         f"on {sms} SMs > {limit} allowed")
    return U, _cuda.cdiv(H, U), smem, None


def _forward_persistent(x, h0, c0, w_hh, xw, gates, cs, y, lens) -> tuple:
    T, B, _ = x.shape
    H = c0.shape[1]
    acc = _cuda.acc_dtype(x)
    U, blocks, smem, _ = persistent_plan(x, c0, None)
    hbuf = _cuda.empty((2, B, H), acc)
    _elementwise("lstm_init_state", x, h0.size, (h0, hbuf, np.int64(h0.size)))  # hbuf[0] = h0
    cst = _to_acc(c0, acc)
    counter = _cuda.zeros((1,), np.uint32)
    kern = _kernel("lstm_persistent", x)
    if smem > 48 * 1024:
        drv = cupy_module().cuda.driver
        drv.funcSetAttribute(kern.ptr, getattr(drv, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8), smem)
    # one block per U hidden units (blocks <= SMs: all resident, as the grid barrier needs), 256 threads
    _cuda.launch(kern, (blocks,), (256,), (np.int32(T), np.int32(B), np.int32(H), np.int32(U), xw, w_hh, hbuf, cst,
                                           gates, cs, y, lens, counter), shared_mem=smem)
    return _to_t(hbuf[T % 2], x), _to_t(cst, x)


def _forward_steps(x, h0, c0, w_hh, w_hr, xw, gates, cs, y, lens) -> tuple:
    T, B, _ = x.shape
    H, P = c0.shape[1], h0.shape[1]
    acc = _cuda.acc_dtype(x)
    h, c = _to_acc(h0, acc), _to_acc(c0, acc)
    zr = _cuda.empty((B, 4 * H), acc)
    mbuf = _cuda.empty((B, H), acc) if w_hr is not None else None
    hp = _cuda.empty((B, P), acc) if w_hr is not None else None
    gk = _kernel("lstm_fwd_gates", x)
    for t in range(T):
        _gemm(x, B, 4 * H, P, h, P, 1, w_hh, 1, P, zr, 4 * H)  # zr = h W_hhᵀ
        # one thread per (b, unit j): the four gates, c, and h / y (or m for the projection)
        _cuda.launch(gk, (_cuda.cdiv(B * H, 256),), (256,),
                     (np.int32(t), np.int32(B), np.int32(H), xw, zr, c, h, NULL if mbuf is None else mbuf, gates, cs,
                      y, lens))
        if w_hr is not None:
            _gemm(x, B, P, H, mbuf, H, 1, w_hr, 1, H, hp, P)  # hp = m W_hrᵀ
            _elementwise("lstm_fwd_proj", x, B * P, (np.int32(t), np.int32(B), np.int32(P), hp, h, y, lens))
    return _to_t(h, x), _to_t(c, x)


def forward(variant: str) -> Callable:
    def lstm_forward_cuda(x, h0, c0, w_ih, w_hh, b, w_hr, lengths):
        with _cuda.device_of(x):
            T, B, I = x.shape
            H, P = c0.shape[1], h0.shape[1]
            acc = _cuda.acc_dtype(x)
            lens = _lengths(lengths)
            xw = _cuda.empty((T, B, 4 * H), acc)
            _gemm(x, T * B, 4 * H, I, x, I, 1, w_ih, 1, I, xw, 4 * H, b)  # x W_ihᵀ + b, every step at once
            gates, cs = _cuda.empty((T, B, 4 * H), acc), _cuda.empty((T, B, H), acc)
            y = _cuda.empty((T, B, P), x.dtype)
            if variant == "persistent":
                h_n, c_n = _forward_persistent(x, h0, c0, w_hh, xw, gates, cs, y, lens)
            else:
                h_n, c_n = _forward_steps(x, h0, c0, w_hh, w_hr, xw, gates, cs, y, lens)
            return y, h_n, c_n, gates, cs

    lstm_forward_cuda.__name__ = f"lstm_forward_cuda_{variant}"
    return lstm_forward_cuda


def _on_device(a, like):
    """a as a CuPy array like `like` (lstm_cell_backward hands over a NumPy zero for dh_n)."""
    if isinstance(a, np.ndarray):
        return _cuda.zeros(a.shape, like.dtype) if not a.any() else cupy_module().asarray(a)
    return a


def lstm_backward_cuda_steps(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y):
    cp = cupy_module()
    with _cuda.device_of(x):
        T, B, I = x.shape
        H, P = c0.shape[1], h0.shape[1]
        acc = _cuda.acc_dtype(x)
        lens = _lengths(lengths)
        dh, dc = _to_acc(_on_device(dh_n, x), acc), _to_acc(_on_device(dc_n, x), acc)
        DH, DZ = _cuda.empty((T, B, P), acc), _cuda.empty((T, B, 4 * H), acc)
        M = _cuda.empty((T, B, H), acc) if w_hr is not None else None
        dm = _cuda.empty((B, H), acc) if w_hr is not None else None
        tmp = _cuda.empty((B, P), acc)
        gk = _kernel("lstm_bwd_gates", x)
        for t in range(T - 1, -1, -1):
            _elementwise("lstm_bwd_dh", x, B * P, (np.int32(t), np.int32(B), np.int32(P), dy, dh, DH, lens))
            if w_hr is not None:
                _gemm(x, B, H, P, DH[t], P, 1, w_hr, H, 1, dm, H)  # dm = dh_t W_hr
            # one thread per (b, unit j): dc, the four gate gradients, M = o tanh(c) for dW_hr
            _cuda.launch(gk, (_cuda.cdiv(B * H, 256),), (256,),
                         (np.int32(t), np.int32(B), np.int32(H), DH[t] if dm is None else dm, gates, cs, c0, dc, DZ,
                          NULL if M is None else M, lens))
            _gemm(x, B, P, 4 * H, DZ[t], 4 * H, 1, w_hh, P, 1, tmp, P)  # dz_t W_hh
            _elementwise("lstm_bwd_carry", x, B * P, (np.int32(t), np.int32(B), np.int32(P), tmp, dh, lens))
        dx, dw_ih = _cuda.empty(x.shape, x.dtype), _cuda.empty(w_ih.shape, x.dtype)
        dw_hh = _cuda.empty(w_hh.shape, x.dtype)
        _gemm(x, T * B, I, 4 * H, DZ, 4 * H, 1, w_ih, I, 1, dx, I)  # dx = dz W_ih
        _gemm(x, 4 * H, I, T * B, DZ, 1, 4 * H, x, I, 1, dw_ih, I)  # dW_ih = dzᵀ x
        hprev = _cuda.empty((T, B, P), x.dtype)  # h_{t-1} of every step: h0, then y[0 .. T-2]
        if T:
            stream = cp.cuda.get_current_stream().ptr
            kind = cp.cuda.runtime.memcpyDeviceToDevice
            cp.cuda.runtime.memcpyAsync(hprev.data.ptr, h0.data.ptr, h0.nbytes, kind, stream)
            if T > 1:
                cp.cuda.runtime.memcpyAsync(hprev.data.ptr + h0.nbytes, y.data.ptr, (T - 1) * h0.nbytes, kind, stream)
        _gemm(x, 4 * H, P, T * B, DZ, 1, 4 * H, hprev, P, 1, dw_hh, P)  # dW_hh = dzᵀ h_prev
        db = _cuda.empty((4 * H,), x.dtype)
        # one thread per gate column: the sum over T*B rows in row order
        _cuda.launch(_kernel("lstm_colsum", x), (_cuda.cdiv(4 * H, 256),), (256,),
                     (DZ, np.int64(T * B), np.int32(4 * H), db))
        dw_hr = None
        if w_hr is not None:
            dw_hr = _cuda.empty(w_hr.shape, x.dtype)
            _gemm(x, P, H, T * B, DH, 1, P, M, H, 1, dw_hr, H)  # dW_hr = DHᵀ M
        return dx, _to_t(dh, x), _to_t(dc, x), dw_ih, dw_hh, db, dw_hr


# ---- which variant takes which input (the registry's supports / prefer) ----------------------

def persistent_refuses(x, h0, c0, w_ih, w_hh, b, w_hr, lengths) -> str | None:
    return persistent_plan(x, c0, w_hr)[3]


def persistent_fits(x, h0, c0, w_ih, w_hh, b, w_hr, lengths) -> str | None:
    """Why the persistent forward is the better choice (W_hh fits on-chip, several steps), or None."""
    U, blocks, smem, why = persistent_plan(x, c0, w_hr)
    if why or x.shape[0] < 2:
        return None
    return f"persistent: W_hh kept on-chip, {U} hidden units per block on {blocks} blocks ({smem} bytes shared each)"


def steps_chosen(x, h0, c0, w_ih, w_hh, b, w_hr, lengths) -> str | None:
    """Why the per-step path is the better choice here: the persistent kernel does not fit (the reason)."""
    if x.shape[0] < 2:
        return f"per-step GEMM + fused gates: T = {x.shape[0]}, nothing to keep on-chip across steps"
    why = persistent_plan(x, c0, w_hr)[3]
    return f"per-step GEMM + fused gates: persistent kernel does not fit ({why})" if why else None


def register_all() -> None:
    """The CUDA kernels into the registry (called from the bottom of ops/lstm/__init__.py)."""
    for op in ("lstm", "lstm_cell"):
        register(op, "forward", "cuda", "steps", forward("steps"), default=True, prefer=steps_chosen)
        register(op, "backward", "cuda", "steps", lstm_backward_cuda_steps, default=True)
    register("lstm", "forward", "cuda", "persistent", forward("persistent"), supports=persistent_refuses,
             prefer=persistent_fits)
