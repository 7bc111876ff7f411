"""Glue to the CUDA attention kernels (kernels/attention.cu): allocate on the input's device, launch.

Same signatures as the other backends (see __init__.py):
    forward  (q, k, v, kv_index, mask, causal, scale, dropout) -> (out (Z, L, Ev), lse (Z, L))
    backward (dout, q, k, v, out, lse, kv_index, mask, causal, scale, dropout, want_dmask)
             -> (dq, dk, dv, dmask or None)
q, k, v are contiguous CuPy arrays of one dtype (float32, float64, float16, bfloat16); kv_index
and the Mask's offsets arrive as NumPy on the host and are copied to the device per call. lse
is kept in the accumulator dtype (float32 for the 16-bit types, like FlashAttention), since the
backward recomputes every probability from it.

Variants (one line each in kernels/attention.cu's header):
    flash   CUDA cores, any dtype, E and Ev <= 256: forward, and the deterministic backward
            (dK/dV per key block over every head that reads it, then dQ in its own pass)
    mma     forward on tensor cores, float16/bfloat16 (chosen for them when L > 4)
    decode  forward for L <= 4: split-K over the keys, splits merged in a fixed order
    atomic  backward, opt-in only (`backend("cuda", variant="atomic")`): dQ by atomicAdd
Dropout uses the same (seed, position) generator as the CPU, so the masks agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import _cuda
from ..._arrays import cupy_module
from ..._registry import register

FILE = "attention.cu"
NULL = np.uint64(0)  # a null pointer argument
OP = "scaled_dot_product_attention"
MAX_DIM = 256  # E and Ev the kernels take
DECODE_MAX_L = 4  # query rows at or below which the decode (split-K) forward is preferred
DECODE_CHUNK = 64  # fewest keys per split
TARGET_BLOCKS = 1024  # decode splits aim for this many blocks; a constant, so results never depend on the GPU
MMA_DIMS = (32, 64, 96, 128, 160, 192, 224, 256)  # head-dim paddings of attn_fwd_mma
VARIANTS = ("flash", "mma", "decode", "atomic")  # what register_all registers


def _tile(x) -> int:
    """BM = BN of the CUDA-core kernels (attention.cu's Tiles<T>)."""
    return 16 if str(x.dtype) == "float64" else 32


def _dm(*dims: int) -> int:
    """The register-array bound (template DM/EV) covering every given head dim."""
    need = max(dims + (1,))
    return next(d for d in (64, 128, 256) if d >= need)


def _family(t: str, dm: int) -> list[str]:
    """The CUDA-core kernels of attention.cu for C type t and bound dm, compiled together."""
    return [f"attn_fwd_flash<{t}, {dm}>", f"attn_fwd_decode<{t}, {dm}>", f"attn_bwd_dkdv<{t}, {dm}, false>",
            f"attn_bwd_dkdv<{t}, {dm}, true>", f"attn_bwd_dq<{t}, {dm}>", f"attn_decode_combine<{t}>",
            f"attn_bwd_rowdot<{t}>", f"attn_cast<{t}>"]


def _kernel(expr: str, x, dm: int):
    return _cuda.kernel(FILE, expr, _family(_cuda.c_type(x), dm))


def _smem_limit() -> int:
    """The most dynamic shared memory one block may opt into on the current device."""
    attrs = cupy_module().cuda.Device().attributes
    return int(attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))


def _with_smem(kern, nbytes: int):
    """kern, allowed to use nbytes of dynamic shared memory (an opt-in above 48 KiB)."""
    if nbytes > 48 * 1024:
        cp = cupy_module()
        drv = cp.cuda.driver
        attr = getattr(drv, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8)
        drv.funcSetAttribute(kern.ptr, attr, int(nbytes))
    return kern


def _acc_size(x) -> int:
    return 8 if str(x.dtype) == "float64" else 4


def fwd_smem(x, E: int, Ev: int) -> int:
    """Bytes of attn_fwd_flash's shared memory: Q, one K/V tile, P."""
    b = _tile(x)
    return (b * (E + 1) + b * (max(E, Ev) + 1) + b * (b + 1)) * _acc_size(x)


def bwd_smem(x, E: int, Ev: int) -> int:
    """Bytes of attn_bwd_dkdv's shared memory (the larger of the two passes)."""
    b = _tile(x)
    return (2 * b * (E + 1) + 2 * b * (Ev + 1) + 2 * b * (b + 1) + 2 * b) * _acc_size(x)


def mma_dim(E: int, Ev: int) -> int:
    return next(d for d in MMA_DIMS if d >= max(E, Ev, 1))


def mma_smem(E: int, Ev: int) -> int:
    D = mma_dim(E, Ev)
    bn = 32 if D > 128 else 64
    return (64 * (D + 8) + bn * (D + 8) + D * (bn + 8)) * 2


def _mask_args(mask, cp) -> tuple:
    if mask is None:
        return NULL, NULL, np.int64(0), np.int64(0)
    return (mask.data, cp.asarray(mask.offset, dtype=np.int64), np.int64(mask.row_stride),
            np.int64(mask.col_stride))


def _attn_args(q, k, v, mask, causal: bool, scale: float, dropout) -> tuple:
    """ATTN_ARGS of attention.cu, after the pointers."""
    cp = cupy_module()
    Z, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    drop = (np.int32(0), np.uint64(0), np.uint64(0), np.float64(1.0)) if dropout is None else \
        (np.int32(1), np.uint64(dropout.seed), np.uint64(dropout.threshold), np.float64(dropout.scale))
    return (np.int32(Z), np.int32(L), np.int32(S), np.int32(E), np.int32(Ev), *_mask_args(mask, cp),
            np.int32(bool(causal)), np.float64(scale), *drop)


def _forward_flash(q, k, v, kvi, out, lse, args) -> None:
    Z, L, E = q.shape
    Ev = v.shape[2]
    dm, b = _dm(Ev), _tile(q)
    smem = fwd_smem(q, E, Ev)
    kern = _with_smem(_kernel(f"attn_fwd_flash<{_cuda.c_type(q)}, {dm}>", q, dm), smem)
    # one block of 128 threads per (tile of b query rows, head z): G = 128 / b lanes per row
    _cuda.launch(kern, (_cuda.cdiv(L, b), Z), (128,), (q, k, v, kvi, out, lse, *args), shared_mem=smem)


def _forward_mma(q, k, v, kvi, out, lse, args) -> None:
    Z, L, E = q.shape
    Ev = v.shape[2]
    t, D = _cuda.c_type(q), mma_dim(E, Ev)
    smem = mma_smem(E, Ev)
    kern = _with_smem(_cuda.kernel(FILE, f"attn_fwd_mma<{t}, {D}>"), smem)
    # one block of 4 warps per (64 query rows, head z); warp w: rows 16w..16w+15
    _cuda.launch(kern, (_cuda.cdiv(L, 64), Z), (128,), (q, k, v, kvi, out, lse, *args), shared_mem=smem)


def decode_splits(Z: int, L: int, S: int) -> tuple[int, int]:
    """(splits, keys per split) of the decode path: enough blocks to fill a GPU, >= 64 keys each."""
    want = max(1, min(_cuda.cdiv(max(S, 1), DECODE_CHUNK), _cuda.cdiv(TARGET_BLOCKS, max(Z * L, 1)), 65535))
    chunk = max(DECODE_CHUNK, _cuda.cdiv(max(S, 1), want))
    return _cuda.cdiv(max(S, 1), chunk), chunk


def _forward_decode(q, k, v, kvi, out, lse, args) -> None:
    Z, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    dm = _dm(E, Ev)
    splits, chunk = decode_splits(Z, L, S)
    part = _cuda.empty((Z * L, splits, Ev + 2), _cuda.acc_dtype(q))
    kern = _kernel(f"attn_fwd_decode<{_cuda.c_type(q)}, {dm}>", q, dm)
    # one block of 4 warps per (query row, split): warp w takes every 4th key of the split
    _cuda.launch(kern, (Z * L, splits), (128,), (q, k, v, kvi, part, np.int32(chunk), np.int32(splits), *args))
    comb = _kernel(f"attn_decode_combine<{_cuda.c_type(q)}>", q, dm)
    # one block per query row, a thread per output column: splits merged in order
    _cuda.launch(comb, (Z * L,), (128,), (part, np.int32(splits), np.int32(Ev), out, lse))


def forward(variant: str) -> Callable:
    run = {"flash": _forward_flash, "mma": _forward_mma, "decode": _forward_decode}[variant]

    def scaled_dot_product_attention_forward_cuda(q, k, v, kv_index, mask, causal, scale, dropout):
        cp = cupy_module()
        with _cuda.device_of(q):
            Z, L, _ = q.shape
            out = _cuda.empty((Z, L, v.shape[2]), q.dtype)
            lse = _cuda.empty((Z, L), _cuda.acc_dtype(q))
            kvi = cp.asarray(kv_index, dtype=np.int64)
            run(q, k, v, kvi, out, lse, _attn_args(q, k, v, mask, causal, scale, dropout))
            return out, lse

    scaled_dot_product_attention_forward_cuda.__name__ = f"scaled_dot_product_attention_forward_cuda_{variant}"
    return scaled_dot_product_attention_forward_cuda


def _heads_of_keys(kv_index: np.ndarray, Zk: int) -> tuple[np.ndarray, np.ndarray]:
    """(zptr (Zk+1,), zlist (Z,)): the output heads reading key head zk are zlist[zptr[zk]:zptr[zk+1]], ascending."""
    kv = np.asarray(kv_index, np.int64)
    zlist = np.argsort(kv, kind="stable").astype(np.int64)
    zptr = np.concatenate([[0], np.cumsum(np.bincount(kv, minlength=Zk))]).astype(np.int64)
    return zptr, zlist


def backward(variant: str) -> Callable:
    atomic = variant == "atomic"

    def scaled_dot_product_attention_backward_cuda(dout, q, k, v, out, lse, kv_index, mask, causal, scale,
                                                   dropout, want_dmask):
        cp = cupy_module()
        with _cuda.device_of(q):
            Z, L, E = q.shape
            Zk, S, Ev = v.shape
            t, dm, b = _cuda.c_type(q), _dm(E, Ev), _tile(q)
            args = _attn_args(q, k, v, mask, causal, scale, dropout)
            kvi = cp.asarray(kv_index, dtype=np.int64)
            zptr, zlist = (cp.asarray(a) for a in _heads_of_keys(kv_index, Zk))
            D = _cuda.empty((Z, L), _cuda.acc_dtype(q))
            rowdot = _kernel(f"attn_bwd_rowdot<{t}>", q, dm)
            # D = rowsum(dO * O): one warp per row, 4 rows per block
            _cuda.launch(rowdot, (_cuda.cdiv(Z * L, 4),), (128,), (dout, out, D, np.int64(Z * L), np.int32(Ev)))
            dq, dk, dv = _cuda.empty(q.shape, q.dtype), _cuda.empty(k.shape, k.dtype), _cuda.empty(v.shape, v.dtype)
            dmask = _cuda.zeros((Z, L, S), q.dtype) if want_dmask else None
            dq_acc = _cuda.zeros((Z, L, E), _cuda.acc_dtype(q)) if atomic else None
            smem = bwd_smem(q, E, Ev)
            kern = _with_smem(_kernel(f"attn_bwd_dkdv<{t}, {dm}, {'true' if atomic else 'false'}>", q, dm), smem)
            # one block per (tile of b keys, key head zk): dK, dV of those keys over every head
            # reading zk and every query tile, in order (atomic: also dQ's shares, by atomicAdd)
            _cuda.launch(kern, (_cuda.cdiv(S, b), Zk), (128,),
                         (dout, q, k, v, lse, D, zptr, zlist, dk, dv, NULL if dmask is None else dmask,
                          NULL if dq_acc is None else dq_acc, *args), shared_mem=smem)
            if atomic:
                cast = _kernel(f"attn_cast<{t}>", q, dm)
                _cuda.launch(cast, (_cuda.cdiv(dq.size, 256),), (256,), (dq_acc, dq, np.int64(dq.size)))
            else:
                kq = _with_smem(_kernel(f"attn_bwd_dq<{t}, {dm}>", q, dm), smem)
                # one block per (tile of b query rows, head z): dQ over the key tiles in order
                _cuda.launch(kq, (_cuda.cdiv(L, b), Z), (128,), (dout, q, k, v, lse, D, kvi, dq, *args),
                             shared_mem=smem)
            return dq, dk, dv, dmask

    scaled_dot_product_attention_backward_cuda.__name__ = f"scaled_dot_product_attention_backward_cuda_{variant}"
    return scaled_dot_product_attention_backward_cuda


# ---- which variant takes which input (the registry's supports / prefer) ----------------------

def fits(q, k, v) -> str | None:
    """None when the CUDA-core kernels take these head dims and their shared memory fits."""
    E, Ev = q.shape[2], v.shape[2]
    if max(E, Ev) > MAX_DIM:
        return f"head dims up to {MAX_DIM} on the GPU, got E {E}, Ev {Ev}"
    need, have = max(fwd_smem(q, E, Ev), bwd_smem(q, E, Ev)), _smem_limit()
    if need > have:
        return f"needs {need} bytes of shared memory per block, the device allows {have}"
    return None


def needs_half(q, k, v) -> str | None:
    """None when the tensor-core forward takes this input (16-bit floats, dims <= 256, smem fits)."""
    if str(q.dtype) not in _cuda.HALF_TYPES:
        return f"tensor cores take float16 or bfloat16, got {q.dtype}"
    E, Ev = q.shape[2], v.shape[2]
    if max(E, Ev) > MAX_DIM:
        return f"head dims up to {MAX_DIM}, got E {E}, Ev {Ev}"
    need, have = mma_smem(E, Ev), _smem_limit()
    return None if need <= have else f"needs {need} bytes of shared memory, the device allows {have}"


def tensor_cores(q, k, v) -> str | None:
    """Why the mma forward is the better choice: 16-bit floats and more than a few query rows."""
    if str(q.dtype) in _cuda.HALF_TYPES and q.shape[1] > DECODE_MAX_L:
        return f"tensor cores for {q.dtype}, head dims padded to {mma_dim(q.shape[2], v.shape[2])}"
    return None


def decoding(q, k, v) -> str | None:
    """Why the decode forward is the better choice: so few query rows that tiles would idle."""
    L, S = q.shape[1], k.shape[1]
    if L <= DECODE_MAX_L:
        splits, chunk = decode_splits(q.shape[0], L, S)
        return f"decoding: L = {L} <= {DECODE_MAX_L}, keys split {splits} ways ({chunk} per split)"
    return None


def register_all() -> None:
    """The CUDA kernels into the registry (called from the bottom of ops/attention/__init__.py)."""
    fwd = lambda f: lambda q, k, v, kv, m, c, s, d: f(q, k, v)  # noqa: E731
    bwd = lambda f: lambda g, q, k, v, o, lse, kv, m, c, s, d, w: f(q, k, v)  # noqa: E731
    register(OP, "forward", "cuda", "flash", forward("flash"), default=True, supports=fwd(fits))
    register(OP, "forward", "cuda", "decode", forward("decode"), supports=fwd(fits), prefer=fwd(decoding))
    register(OP, "forward", "cuda", "mma", forward("mma"), supports=fwd(needs_half), prefer=fwd(tensor_cores))
    register(OP, "backward", "cuda", "flash", backward("flash"), default=True, supports=bwd(fits))
    register(OP, "backward", "cuda", "atomic", backward("atomic"), supports=bwd(fits))
