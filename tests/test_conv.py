"""Conv-specific tests: hypothesis fuzzing of the parameters, dispatch, ISA paths, determinism."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlkernels as dk
from dlkernels import _cpp
from dlkernels._registry import VariantRefused
from dlkernels.ops.conv import reference
from dlkernels.ops.conv.common import conv_params


@settings(deadline=None, max_examples=40)
@given(N=st.integers(0, 3), G=st.integers(1, 3), Cg=st.integers(1, 4), Kg=st.integers(1, 4),
       H=st.integers(1, 12), W=st.integers(1, 12), R=st.integers(1, 4), S=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4)), pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       dil=st.tuples(st.integers(1, 3), st.integers(1, 3)), backend=st.sampled_from(["cpp", "numba"]),
       bias=st.booleans())
def test_fuzz_conv2d_against_reference(N, G, Cg, Kg, H, W, R, S, stride, pad, dil, backend, bias):
    rng = np.random.default_rng(0)
    C, K = G * Cg, G * Kg
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, Cg, R, S))
    b = rng.standard_normal(K) if bias else None
    kw = dict(stride=stride, padding=pad, dilation=dil, groups=G)
    try:
        conv_params(x.shape, w.shape, stride, pad, dil, G, 2)
    except ValueError:
        with pytest.raises(ValueError, match="input: padded size"):
            dk.conv2d(x, w, b, **kw)
        return
    with dk.backend("reference"):
        y_ref, saved_ref = dk.conv2d_forward(x, w, b, **kw)
        g = rng.standard_normal(y_ref.shape)
        grads_ref = dk.conv2d_backward(g, saved_ref)
    with dk.backend(backend):
        y, saved = dk.conv2d_forward(x, w, b, **kw)
        grads = dk.conv2d_backward(g, saved)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, e in zip(grads, grads_ref):
        if e is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9)


def test_depthwise_is_chosen_and_logged(caplog):
    x = np.ones((1, 4, 5, 5), np.float32)
    w = np.ones((4, 1, 3, 3), np.float32)
    caplog.set_level(logging.INFO, logger="dlkernels")
    with dk.backend("cpp"):
        dk.conv2d(x, w, groups=4)
    assert "conv2d forward -> cpp/depthwise (groups == input channels (depthwise))" in caplog.text


def test_direct_is_chosen_for_c1_and_logged(caplog):
    """The benchmark's C1 (one input channel, 5x5) and C5 (conv1d, C*S = 448) run cpp/direct both
    ways; a stride-2 backward (dx from a dilated dy) and a deep reduction stay on implicit GEMM."""
    x = np.ones((4, 1, 32, 32), np.float32)
    w = np.ones((32, 1, 5, 5), np.float32)
    caplog.set_level(logging.INFO, logger="dlkernels")
    with dk.backend("cpp"):
        y, saved = dk.conv2d_forward(x, w)
        dk.conv2d_backward(y, saved)
        assert "conv2d forward -> cpp/direct (shallow reduction C*R*S = 25" in caplog.text
        assert "conv2d backward -> cpp/direct (shallow reduction C*R*S = 25" in caplog.text
        caplog.clear()
        y, saved = dk.conv2d_forward(x, w, stride=2)
        dk.conv2d_backward(y, saved)
        assert "conv2d forward -> cpp/direct" in caplog.text
        assert "conv2d backward -> cpp/implicit (default)" in caplog.text
        caplog.clear()
        dk.conv2d(np.ones((2, 32, 8, 8), np.float32), np.ones((4, 32, 3, 3), np.float32))
        assert "conv2d forward -> cpp/implicit (default)" in caplog.text
        # one output row (conv1d) keeps direct to a deeper reduction: C5's C*S = 448, not 768
        caplog.clear()
        y, saved = dk.conv1d_forward(np.ones((2, 64, 32), np.float32), np.ones((4, 64, 7), np.float32), padding=3)
        dk.conv1d_backward(y, saved)
        assert "conv2d forward -> cpp/direct (shallow reduction C*R*S = 448 <= 512" in caplog.text
        assert "conv2d backward -> cpp/direct" in caplog.text
        caplog.clear()
        dk.conv1d(np.ones((2, 256, 32), np.float32), np.ones((4, 256, 3), np.float32))
        assert "conv2d forward -> cpp/implicit (default)" in caplog.text


@pytest.mark.parametrize("variant", ["direct", "implicit"])
def test_inf_outside_a_taps_window_stays_out_of_its_grad_weight(variant):
    """x's last column is inf: only the rightmost filter column reads it, so dw's other columns,
    dx and db stay finite (lanes past a row's end must not multiply it by a zero)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 6, 21)).astype(np.float32)
    x[..., -1] = np.inf
    w = rng.standard_normal((9, 2, 3, 3)).astype(np.float32)
    b = np.zeros(9, np.float32)
    with dk.backend("cpp", variant):
        y, saved = dk.conv2d_forward(x, w, b)
        dx, dw, db = dk.conv2d_backward(np.ones_like(y), saved)
    assert np.isfinite(dw[..., :2]).all() and np.isfinite(dx).all() and np.isfinite(db).all()
    assert not np.isfinite(dw[..., 2]).any()


def test_forced_variant_that_cannot_take_the_input_raises():
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 4, 3, 3))
    with pytest.raises(ValueError, match="cannot take this input"), dk.backend("cpp", "depthwise"):
        dk.conv2d(x, w)
    with pytest.raises(VariantRefused, match="needs groups == 1"), dk.backend("cpp", "direct"):
        dk.conv2d(x, np.ones((4, 2, 3, 3)), groups=2)
    _, saved = dk.conv2d_forward(x, np.ones((4, 2, 3, 3)), groups=2)
    with pytest.raises(VariantRefused, match="needs groups == 1"), dk.backend("cpp", "direct"):
        dk.conv2d_backward(np.ones((1, 4, 3, 3)), saved)


def test_backend_and_variant_names_are_checked():
    with pytest.raises(ValueError, match="backend: expected one of"):
        with dk.backend("fortran"):
            pass
    with pytest.raises(ValueError, match="variant: backend 'cpp' has no variant 'nope'"):
        with dk.backend("cpp", "nope"):
            pass


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_every_isa_this_cpu_has_gives_the_same_answer(isa):
    if isa not in _cpp.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 13, 11), dtype=np.float32)
    w = rng.standard_normal((7, 5, 3, 3), dtype=np.float32)
    with dk.backend("reference"):
        expected = dk.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    with _cpp.use_isa(isa), dk.backend("cpp"):
        assert _cpp.get_isa() == isa
        np.testing.assert_allclose(dk.conv2d(x, w, padding=1), expected, rtol=1e-4, atol=1e-4)


def test_env_isa_forces_the_code_path():
    env = dict(os.environ, DLKERNELS_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", "import dlkernels._cpp as c; print(c.get_isa())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"
    env["DLKERNELS_ISA"] = "sse9"
    bad = subprocess.run([sys.executable, "-c", "import dlkernels"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "DLKERNELS_ISA: expected avx512, avx2 or scalar" in bad.stderr


@pytest.mark.parametrize("variant", ["implicit", "direct"])
@pytest.mark.parametrize("N,C,K,size,k,pad", [(16, 8, 8, 20, 3, 1), (64, 1, 32, 32, 5, 0)])  # C1
def test_grad_weight_is_bitwise_repeatable_on_a_big_batch(variant, N, C, K, size, k, pad, num_threads):
    """Enough samples that both threads contribute partial sums to dW and db."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, size, size), dtype=np.float32)
    w = rng.standard_normal((K, C, k, k), dtype=np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    with num_threads(2), dk.backend("cpp", variant):
        y, saved = dk.conv2d_forward(x, w, b, padding=pad)
        g = rng.standard_normal(y.shape, dtype=np.float32)
        runs = [dk.conv2d_backward(g, saved)[1:] for _ in range(5)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r[0], runs[0][0])
        np.testing.assert_array_equal(r[1], runs[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Cg, kw", [
    (16, {"padding": 1}),  # dx as the forward of dy with flipped filters
    (17, {"padding": (2, 0), "dilation": (1, 2), "groups": 2}),  # flipped, asymmetric reach
    (16, {"padding": 3}),  # padding wider than the kernel's reach: col2im
    (9, {"stride": (2, 3), "padding": 1}),  # channels-last unfold with strides; col2im
    (3, {"padding": 1}),  # few input channels: col2im
])
def test_numba_im2col_paths_against_reference(dtype, Cg, kw):
    """numba/im2col's dx paths and its banded forward (P*Q*Cg*R*S spans several bands of
    _BAND_ELEMS; channels last from 8 channels), against the float64 reference; bitwise
    repeatable."""
    rng = np.random.default_rng(5)
    G = kw.get("groups", 1)
    x = rng.standard_normal((3, G * Cg, 19, 23)).astype(dtype)
    w = (rng.standard_normal((6, Cg, 3, 3)) / np.sqrt(9 * Cg)).astype(dtype)
    with dk.backend("numba", "im2col"):
        y, saved = dk.conv2d_forward(x, w, **kw)
        g = rng.standard_normal(y.shape).astype(dtype)
        runs = [(dk.conv2d_forward(x, w, **kw)[0], *dk.conv2d_backward(g, saved)[:2]) for _ in range(3)]
    with dk.backend("reference"):
        ref_y, ref_saved = dk.conv2d_forward(x.astype(np.float64), w.astype(np.float64), **kw)
        ref_dx, ref_dw, _ = dk.conv2d_backward(g.astype(np.float64), ref_saved)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, want in zip(runs[0], (ref_y, ref_dx, ref_dw)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_depthwise_grad_weight_with_an_infinite_input(dtype):
    """An infinite input read only by the wide kernels' thrown-away columns (the last column,
    for taps s > 0, no padding): the finite weight gradients stay finite, in the blocks of
    four channels (C == 1, K 8) and the single channels (K 8 + 1) alike."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 8, 9)).astype(dtype)
    x[1, 0, 3, 8] = np.inf
    w = rng.standard_normal((9, 1, 3, 3)).astype(dtype)
    g = rng.standard_normal((2, 9, 6, 7)).astype(dtype)
    with dk.backend("numba", "depthwise"):
        got = dk.conv2d_backward(g, dk.conv2d_forward(x, w)[1])[1]
    with dk.backend("reference"):
        x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
        want = dk.conv2d_backward(g64, dk.conv2d_forward(x64, w64)[1])[1]
    assert np.isfinite(want[:, :, :, 0]).all() and not np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_reference_is_the_definition():
    """The reference against the literal seven loops, on a tiny case."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 5, 6)), rng.standard_normal((2, 1, 2, 3))
    p = conv_params(x.shape, w.shape, (2, 1), (1, 0), (1, 2), 2, 2)
    y = reference.conv2d_forward_reference(x, w, None, p)
    P, Q = p.out_size
    for k in range(2):
        for i in range(P):
            for j in range(Q):
                acc = 0.0
                for r in range(2):
                    for s in range(3):
                        h, v = i * 2 - 1 + r, j - 0 + s * 2
                        if 0 <= h < 5 and 0 <= v < 6:
                            acc += w[k, 0, r, s] * x[0, k, h, v]
                assert abs(y[0, k, i, j] - acc) < 1e-12


def test_the_cpp_backend_is_built():
    """A package whose C++ module failed to load would silently test only NumPy and numba."""
    assert _cpp.available(), f"dlkernels._C did not import: {_cpp.IMPORT_ERROR}"
    assert dk._registry.available("cpp")


def test_one_knob_sets_openmp_and_numba_threads():
    import numba

    before = dk.get_num_threads()
    try:
        dk.set_num_threads(1)
        assert _cpp._C.get_num_threads() == 1 and numba.get_num_threads() == 1
        with dk.backend("numba"):  # starting numba's pool must not reset OpenMP's count
            dk.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
        assert _cpp._C.get_num_threads() == 1
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            dk.set_num_threads(0)
    finally:
        dk.set_num_threads(before)


def test_numba_pool_leaves_openmp_nesting_off():
    """numba's OpenMP layer turns nesting on process-wide; torch sharing that libgomp then
    oversubscribes the cores (LSTMCell 70x slower). dlkernels turns it back off."""
    import ctypes

    import numba

    with dk.backend("numba"):
        dk.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    if numba.threading_layer() != "omp":
        pytest.skip(f"numba runs the {numba.threading_layer()!r} layer here, which leaves libgomp alone")
    from numba.np.ufunc import omppool
    assert ctypes.CDLL(omppool.__file__).omp_get_max_active_levels() == 1


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,K,H,W,R,S,kw", [
    (9, 3, 5, 37, 37, 3, 3, dict(padding=1)),  # several small samples per block
    (2, 40, 12, 20, 21, 3, 3, dict(padding=1)),  # chunks of one sample, rows ending inside vectors
    (3, 24, 8, 19, 6, 4, 2, dict(padding="same")),  # asymmetric padding, rows shorter than a vector
    (2, 30, 10, 17, 23, 3, 3, dict(padding=(3, 0), dilation=(2, 3), groups=2)),  # dilation, padding > kernel, groups
    (4, 32, 16, 1, 300, 1, 7, dict(padding=(0, 3))),  # conv1d-like
    (9, 16, 20, 13, 13, 3, 3, dict(padding=1)),  # micro-kernel-packed panels into a batch's buffer
    (10, 24, 16, 30, 30, 3, 3, dict(padding=1)),  # by samples, the last ones block by block
])
def test_implicit_gemm_paths_against_reference(isa, threads, dtype, N, C, K, H, W, R, S, kw):
    """The implicit-GEMM variant on shapes that give it (not its im2col fallback) the work:
    enough blocks for both threads, every lane pattern of the packed panels."""
    _check_variant_against_reference("implicit", isa, threads, dtype, N, C, K, H, W, R, S, kw)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,K,H,W,R,S,kw", [
    (5, 1, 32, 32, 32, 5, 5, {}),  # C1's geometry: 28 = one vector + a masked one (AVX-512)
    (3, 1, 17, 9, 40, 3, 5, dict(padding=(4, 0))),  # K past blocks of 8, padding past the kernel
    (3, 2, 5, 12, 19, 7, 3, dict(padding=2)),  # few outputs: the row-sharing kernel, R = 7, row tails
    (2, 3, 9, 11, 17, 3, 2, dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1))),  # strides, dilation
    (2, 1, 6, 13, 9, 4, 4, dict(padding="same")),  # even kernel: asymmetric padding, R = 4
    (3, 2, 12, 1, 70, 1, 7, dict(padding=(0, 3))),  # conv1d-like, one row
    (1, 3, 10, 5, 1, 3, 1, dict(padding=(1, 0))),  # width 1: every row a masked vector
])
def test_direct_paths_against_reference(isa, threads, dtype, N, C, K, H, W, R, S, kw):
    """The direct variant's register blocks and their tails: channel blocks of 8 and the one-channel
    row-sharing kernel, masked row ends, strides (dx from a dilated dy), both thread counts."""
    _check_variant_against_reference("direct", isa, threads, dtype, N, C, K, H, W, R, S, kw)


def _check_variant_against_reference(variant, isa, threads, dtype, N, C, K, H, W, R, S, kw):
    if isa not in _cpp.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(4)
    g = kw.get("groups", 1)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C // g, R, S)) / np.sqrt(C // g * R * S)
    b = rng.standard_normal(K)
    with dk.backend("reference"):
        y_ref, saved = dk.conv2d_forward(x, w, b, **kw)
        dy = rng.standard_normal(y_ref.shape)
        grads_ref = dk.conv2d_backward(dy, saved)
    before = dk.get_num_threads()
    try:
        dk.set_num_threads(threads)
        with _cpp.use_isa(isa), dk.backend("cpp", variant):
            y, saved = dk.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), **kw)
            grads = dk.conv2d_backward(dy.astype(dtype), saved)
    finally:
        dk.set_num_threads(before)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    for a, e in zip(grads, grads_ref):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.abs(e).max())


def test_implicit_scratch_past_its_keep_limit():
    """A padded sample past the per-thread keep limit (16 MiB) is freed after the call: the
    same big call, a small one and the big one again all match the reference."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 64, 260, 260)).astype(np.float32)
    w = (rng.standard_normal((8, 64, 3, 3)) / 24).astype(np.float32)
    xs, ws = x[:, :16, :20, :20].copy(), w[:, :16].copy()
    with dk.backend("reference"):
        y_ref = dk.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, padding=1)[0]
        ys_ref = dk.conv2d_forward(xs.astype(np.float64), ws.astype(np.float64), None, padding=1)[0]
    with dk.backend("cpp", "implicit"):
        for xi, wi, ref in ((x, w, y_ref), (xs, ws, ys_ref), (x, w, y_ref)):
            y = dk.conv2d_forward(xi, wi, None, padding=1)[0]
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)



def test_winograd_scratch_past_its_keep_limit():
    """winograd's per-call buffers grow with K*C (16 K C for the filters, again per thread for dw):
    at C = K = 320 they pass the 16 MiB keep limit and are freed when the call ends. The same big
    call, a small one and the big one again, forward and backward, all match the reference."""
    rng = np.random.default_rng(7)
    big = [rng.standard_normal((1, 320, 6, 6)), rng.standard_normal((320, 320, 3, 3)) / 54]
    small = [big[0][:, :16], big[1][:16, :16]]
    cases = []
    for x, w in (big, small):
        dy = np.ones((1, w.shape[0], 6, 6))
        with dk.backend("reference"):
            y, saved = dk.conv2d_forward(x, w, None, padding=1)
            cases.append((x, w, dy, [y, *dk.conv2d_backward(dy, saved)[:2]]))
    with dk.backend("cpp", "winograd"):
        for x, w, dy, refs in (cases[0], cases[1], cases[0]):
            y, saved = dk.conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, padding=1)
            dx, dw, _ = dk.conv2d_backward(dy.astype(np.float32), saved)
            for a, e in zip((y, dx, dw), refs):
                np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())

# ---- winograd ---------------------------------------------------------------------------------

def _winograd_numpy(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """F(2x2, 3x3) written out: y tile = At [sum_c (G g Gt) * (Bt d B)] A, per 2x2 output tile."""
    Bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    At = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    N, C, H, W = x.shape
    P, Q = H + 2 * pad - 2, W + 2 * pad - 2
    TH, TW = (P + 1) // 2, (Q + 1) // 2
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2))  # padded, and zero past the last tile
    xp[:, :, pad:pad + H, pad:pad + W] = x[:, :, :2 * TH + 2 - pad, :2 * TW + 2 - pad]
    U = np.einsum("ir,kcrs,js->kcij", G, w, G)  # (K, C, 4, 4)
    y = np.zeros((N, w.shape[0], 2 * TH, 2 * TW))
    for th in range(TH):
        for tw in range(TW):
            d = xp[:, :, 2 * th:2 * th + 4, 2 * tw:2 * tw + 4]  # (N, C, 4, 4)
            V = np.einsum("ir,ncrs,js->ncij", Bt, d, Bt)
            M = np.einsum("kcij,ncij->nkij", U, V)
            y[:, :, 2 * th:2 * th + 2, 2 * tw:2 * tw + 2] = np.einsum("ai,nkij,bj->nkab", At, M, At)
    return y[:, :, :P, :Q]


@pytest.mark.parametrize("shape,pad", [((2, 3, 7, 9), 1), ((1, 2, 6, 6), 0), ((1, 1, 5, 4), 2)])
def test_winograd_transforms_are_the_convolution(shape, pad):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((4, shape[1], 3, 3))
    with dk.backend("reference"):
        expected = dk.conv2d(x, w, padding=pad)
    np.testing.assert_allclose(_winograd_numpy(x, w, pad), expected, rtol=1e-12, atol=1e-12)


def test_winograd_is_preferred_for_c3_and_logged(caplog):
    x = np.zeros((16, 128, 28, 28), np.float32)  # C3
    w = np.zeros((128, 128, 3, 3), np.float32)
    caplog.set_level(logging.INFO, logger="dlkernels")
    with dk.backend("cpp"):
        _, saved = dk.conv2d_forward(x, w, None, padding=1)
        dk.conv2d_backward(x, saved)
    assert "conv2d forward -> cpp/winograd" in caplog.text
    assert "conv2d backward -> cpp/winograd" in caplog.text


@pytest.mark.parametrize("kw,w_shape", [
    (dict(stride=2, padding=1), (4, 4, 3, 3)),
    (dict(dilation=2, padding=2), (4, 4, 3, 3)),
    (dict(groups=2, padding=1), (4, 2, 3, 3)),
    (dict(padding=2), (4, 4, 5, 5)),
])
def test_winograd_forced_on_what_it_cannot_take_raises(kw, w_shape):
    x, w = np.ones((1, 4, 9, 9)), np.ones(w_shape)
    with pytest.raises(VariantRefused, match="cannot take this input"), dk.backend("cpp", "winograd"):
        dk.conv2d(x, w, **kw)


def test_winograd_refuses_conv1d():
    """conv1d runs as conv2d with a 1x3 filter, which is not 3x3."""
    with pytest.raises(VariantRefused), dk.backend("cpp", "winograd"):
        dk.conv1d(np.ones((1, 4, 9)), np.ones((4, 4, 3)), padding=1)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,K,H,W,pad", [
    (3, 20, 24, 31, 29, 1),  # odd sizes: ragged last tile row and column, runs across tile rows
    (2, 9, 70, 12, 100, 0),  # several output-channel chunks, wide rows (whole-vector runs)
    (1, 130, 5, 7, 5, 2),  # many channels, blocks of tiles from several tile rows
    (2, 16, 16, 4, 3, 3),  # padding past the kernel: dx's padding is negative
])
def test_winograd_paths_against_reference(isa, threads, dtype, N, C, K, H, W, pad):
    if isa not in _cpp.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)
    b = rng.standard_normal(K)
    with dk.backend("reference"):
        y_ref, saved = dk.conv2d_forward(x, w, b, padding=pad)
        dy = rng.standard_normal(y_ref.shape)
        grads_ref = dk.conv2d_backward(dy, saved)
    before = dk.get_num_threads()
    try:
        dk.set_num_threads(threads)
        with _cpp.use_isa(isa), dk.backend("cpp", "winograd"):
            y, saved = dk.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), padding=pad)
            grads = dk.conv2d_backward(dy.astype(dtype), saved)
    finally:
        dk.set_num_threads(before)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * np.abs(y_ref).max())
    for a, e in zip(grads, grads_ref):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.abs(e).max())


def test_winograd_is_bitwise_repeatable():
    """Forward, dx, dw and db at a fixed thread count: the same bits run to run."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 24, 18, 18), dtype=np.float32)
    w = rng.standard_normal((32, 24, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    dy = rng.standard_normal((8, 32, 18, 18), dtype=np.float32)
    runs = []
    with dk.backend("cpp", "winograd"):
        for _ in range(4):
            y, saved = dk.conv2d_forward(x, w, b, padding=1)
            runs.append((y, *dk.conv2d_backward(dy, saved)))
    for r in runs[1:]:
        for a, e in zip(r, runs[0]):
            np.testing.assert_array_equal(a, e)
