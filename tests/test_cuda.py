"""The CUDA backend on a device (every test is marked gpu: skipped without CuPy and a GPU).

- conv: the op database's conv1d/conv2d samples for every CUDA variant and dtype, forward and
  backward, against the float64 reference; float16/bfloat16 by the error-ratio rule below;
  against torch on the same GPU; bitwise repeatable; dlkernels.torch on CUDA tensors
  (opcheck, gradcheck in float64, torch.compile fullgraph, no copies).
- graph: the CUDA graph kernels (ops/graph/cuda.py) called with the registry's signature on
  a Csr, against the reference kernels in float64, int32 and int64 indices, a hub row.

float16/bfloat16 rule: the kernel's max error against the float64 reference on the same
inputs is at most 2x the error of the naive low-precision computation, taken here as the
reference run on the inputs rounded to that dtype with its result rounded to that dtype.
That baseline rounds only the inputs and the output, so it is a lower bound on the error of
any computation carried out in that dtype: the check is stricter than the rule asks.
bfloat16 arrays come from torch through DLPack (CuPy >= 14 with ml_dtypes); where this
CuPy cannot take them, the bfloat16 cases skip and say so.
"""

from __future__ import annotations

import numpy as np
import pytest
from opdb import OPS_BY_ID, Sample

import dlkernels as dk

pytestmark = pytest.mark.gpu

DTYPES = ["float64", "float32", "float16", "bfloat16"]
TOL = {"float64": 1e-10, "float32": 2e-5}
CONV_IDS = ["conv2d", "conv1d"]


def _cp():
    return pytest.importorskip("cupy")


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    """a rounded to dtype, as float64 (bfloat16 through torch's conversion, round to nearest even)."""
    if dtype in ("float64", "float32", "float16"):
        return a.astype(dtype).astype(np.float64)
    import torch
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16).to(torch.float64).numpy()


def _forced(variant, fn, *args, **kwargs):
    """fn on the forced CUDA variant; None where the variant refuses the input."""
    from dlkernels._registry import VariantRefused
    try:
        with dk.backend("cuda", variant):
            return fn(*args, **kwargs)
    except VariantRefused:
        return None


def _rounded(s: Sample, dtype: str) -> Sample:
    return Sample(tuple(_round(a, dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in s.args),
                  s.kwargs, s.desc)


def to_gpu(a, dtype: str):
    """a NumPy float array as a CuPy array of dtype (bfloat16 via torch and DLPack)."""
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        return a
    cp = _cp()
    if dtype != "bfloat16":
        return cp.asarray(a.astype(dtype))
    import torch
    t = torch.from_numpy(np.ascontiguousarray(a, np.float32)).to("cuda").to(torch.bfloat16)
    try:
        return cp.from_dlpack(t)
    except Exception as exc:
        pytest.skip(f"this CuPy cannot take bfloat16 arrays through DLPack ({exc}); "
                    "needs CuPy >= 14 with ml_dtypes")


def to_host(a) -> np.ndarray | None:
    """A CuPy array (any dtype) as float64 NumPy."""
    if a is None:
        return None
    if str(a.dtype) == "bfloat16":
        import torch
        return torch.from_dlpack(a).to(torch.float64).cpu().numpy()
    return a.get().astype(np.float64)


def max_err(actual, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0


def check(actual, expected, naive, dtype: str, what: str) -> None:
    """float64/float32: norm-wise tolerance; float16/bfloat16: at most 2x the naive error."""
    if expected is None:
        assert actual is None, what
        return
    a = to_host(actual)
    assert a.shape == expected.shape, f"{what}: shape {a.shape} != {expected.shape}"
    if expected.size == 0:
        return
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = max_err(a, expected)
    if dtype in TOL:
        bound = TOL[dtype] * 4 * scale
        assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"
    else:
        bound = 2 * max_err(naive, expected) + 1e-6 * scale
        assert err <= bound, f"{what}: {dtype} error {err:.3g} > 2x naive {bound:.3g}"


def _conv_cases(direction: str) -> list:
    out = []
    for k in dk.kernels("conv2d", direction, "cuda"):
        for dtype in DTYPES:
            for op_id in CONV_IDS:
                out.append(pytest.param(op_id, k.variant, dtype, id=f"{op_id}-{k.variant}-{dtype}"))
    return out


def _refuses(variant: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) on the forced variant; None where the variant refuses this input."""
    from dlkernels._registry import VariantRefused
    try:
        with dk.backend("cuda", variant):
            return fn(*args, **kwargs)
    except VariantRefused:
        return None


@pytest.mark.parametrize("op_id,variant,dtype", _conv_cases("forward"))
def test_conv_forward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            expected = np.asarray(op.forward(*s.args, **s.kwargs)[0])
            rounded = Sample(tuple(_round(a, dtype) if isinstance(a, np.ndarray) else a for a in s.args),
                             s.kwargs)
            naive = _round(np.asarray(op.forward(*rounded.args, **rounded.kwargs)[0]), dtype)
        args = tuple(to_gpu(a, dtype) for a in s.args)
        got = _refuses(variant, op.forward, *args, **s.kwargs)
        got = None if got is None else got[0]
        if got is None:
            continue
        assert str(got.dtype) == dtype and type(got).__module__.startswith("cupy")
        check(got, expected, naive, dtype, f"{s.desc}: forward")
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("op_id,variant,dtype", _conv_cases("backward"))
def test_conv_backward(op_id, variant, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        with dk.backend("reference"):
            y, saved = op.forward(*s.args, **s.kwargs)
            g = np.random.default_rng(1).standard_normal(np.shape(y))
            expected = op.backward(g, saved)
            rounded = tuple(_round(a, dtype) if isinstance(a, np.ndarray) else a for a in s.args)
            _, rsaved = op.forward(*rounded, **s.kwargs)
            naive = [None if d is None else _round(np.asarray(d), dtype)
                     for d in op.backward(_round(g, dtype), rsaved)]
        args = tuple(to_gpu(a, dtype) for a in s.args)
        with dk.backend("cuda"):
            _, gsaved = op.forward(*args, **s.kwargs)
        got = _refuses(variant, op.backward, to_gpu(g, dtype), gsaved)
        if got is None:
            continue
        for i, (a, e, n) in enumerate(zip(got, expected, naive, strict=True)):
            what = f"{s.desc}: grad of arg {op.diff_args[i]}"
            check(a, None if e is None else np.asarray(e), n, dtype, what)
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("variant", sorted({k.variant for k in dk.kernels("conv2d", backend="cuda")}))
def test_conv_bitwise_repeatable(variant, rng):
    """Twice on the same input: identical bits (the atomic variant is exempt: it is the opt-in
    non-deterministic one, so only its forward and dx are checked)."""
    op = OPS_BY_ID["conv2d"]
    dtype = "float16" if variant == "mma" else "float32"
    for s in op.samples(rng):
        args = tuple(to_gpu(a, dtype) for a in s.args)
        runs = []
        for _ in range(2):
            with dk.backend("cuda"):
                y, saved = op.forward(*args, **s.kwargs)
            grads = _refuses(variant, op.backward, to_gpu(np.ones(y.shape), dtype), saved)
            if grads is None:
                break
            if variant == "atomic":
                grads = grads[:1]
            runs.append([to_host(y)] + [to_host(a) for a in grads])
        if len(runs) == 2:
            for a, b in zip(*runs, strict=True):
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=s.desc)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_conv_matches_torch_on_the_gpu(dtype, rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import dlkernels.torch as dlt
    tdt = getattr(torch, dtype)
    torch.backends.cudnn.allow_tf32 = False
    for s in OPS_BY_ID["conv2d"].samples(rng):
        x, w, b = (None if a is None else torch.tensor(a, dtype=tdt, device="cuda", requires_grad=True)
                   for a in s.args)
        y = dlt.conv2d(x, w, b, **s.kwargs)
        yt = F.conv2d(x, w, b, **s.kwargs)
        assert y.device == x.device and y.dtype == tdt
        g = torch.randn_like(yt)
        diff = [t for t in (x, w, b) if t is not None]
        if yt.numel() == 0:
            continue
        got = torch.autograd.grad(y, diff, g)
        want = torch.autograd.grad(yt, diff, g)
        tol = {"float64": 1e-9, "float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}[dtype]
        for a, e in zip((y, *got), (yt, *want), strict=True):
            scale = max(1.0, float(e.abs().max()))
            assert float((a - e).abs().max()) <= tol * scale, s.desc


def test_torch_adapter_on_cuda_tensors():
    """opcheck, gradcheck in float64 on the device, torch.compile fullgraph, and no copies."""
    torch = pytest.importorskip("torch")
    import dlkernels.torch as dlt
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: dlt.conv2d(x, w, b, padding=1, stride=2), (x, w, b))
    torch.library.opcheck(torch.ops.dlkernels.conv2d.default,
                          (x.float().detach(), w.float().detach(), b.float().detach(), [1, 1], [1, 1, 1, 1],
                           [1, 1], 1))
    f = torch.compile(lambda x, w, b: torch.relu(dlt.conv2d(x, w, b, padding=1)), fullgraph=True)
    xf, wf, bf = (t.float().detach() for t in (x, w, b))
    torch.testing.assert_close(f(xf, wf, bf), torch.relu(torch.nn.functional.conv2d(xf, wf, bf, padding=1)),
                               rtol=1e-4, atol=1e-4)
    cp = _cp()
    arr = cp.from_dlpack(xf)
    assert arr.data.ptr == xf.data_ptr()  # the crossing is a view


def test_conv_runs_on_the_current_stream():
    cp = _cp()
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, 3, 9, 9)), cp.float32)
    w = cp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 3)), cp.float32)
    with dk.backend("cuda"):
        ref = dk.conv2d(x, w, padding=1).get()
        s = cp.cuda.Stream(non_blocking=True)
        with s:
            y = dk.conv2d(x, w, padding=1)
        s.synchronize()
    np.testing.assert_array_equal(y.get(), ref)


def test_cuda_info_names_the_gpu_and_cache():
    from dlkernels._cuda import cuda_info
    text = cuda_info()
    assert "sm_" in text and "CuPy" in text and "kernel cache" in text


# ---- graph kernels (called with the registry's signature) -----------------------------------

def _graphs(index_dtype):
    from dlkernels.ops.graph.structure import Graph
    rng = np.random.default_rng(0)
    V = 97
    ei = rng.integers(0, V, (2, 1500)).astype(index_dtype)
    ei[1, :700] = 5  # a hub: one target with 700+ incoming edges (cut into 256-edge chunks)
    ei[:, 700:705] = [[1, 1, 1, 2, 2], [9, 9, 9, 9, 9]]  # repeated edges: ties for max/min
    yield "random with a hub", Graph(ei, V + 3)  # 3 nodes without edges
    yield "empty", Graph(np.zeros((2, 0), index_dtype), 4)


@pytest.fixture
def graph_cuda():
    return pytest.importorskip("dlkernels.ops.graph.cuda")


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("weighted", [False, True])
def test_graph_aggregate(graph_cuda, index_dtype, dtype, reduce, weighted):
    from dlkernels.ops.graph import reference as R
    rng = np.random.default_rng(2)
    for desc, g in _graphs(index_dtype):
        csr = g._csr
        for F in (1, 7, 33, 300):
            x = rng.standard_normal((csr.n_src, F))
            w = rng.standard_normal(csr.num_edges) if weighted else None
            if reduce in ("max", "min"):
                x = np.round(x, 1)  # ties inside a row
            out = R.aggregate_forward_reference(csr, x, w, reduce)
            gy = rng.standard_normal(out.shape)
            saved_out = out if reduce in ("max", "min") else None
            dx, dw = R.aggregate_backward_reference(csr, gy, x, w, saved_out, reduce)
            xr, wr = _round(x, dtype), None if w is None else _round(w, dtype)
            nout = R.aggregate_forward_reference(csr, xr, wr, reduce)
            ndx, ndw = R.aggregate_backward_reference(csr, _round(gy, dtype), xr, wr,
                                                      nout if reduce in ("max", "min") else None, reduce)
            xg, wg = to_gpu(x, dtype), None if w is None else to_gpu(w, dtype)
            got = graph_cuda.aggregate_forward_cuda(csr, xg, wg, reduce)
            check(got, out, _round(nout, dtype), dtype, f"{desc} F={F}: {reduce} forward")
            if dtype in ("float16", "bfloat16") and reduce in ("max", "min"):
                continue  # the argmax of rounded messages differs from float64's: compared in float32/64 only
            gdx, gdw = graph_cuda.aggregate_backward_cuda(csr, to_gpu(gy, dtype), xg, wg,
                                                          got if reduce in ("max", "min") else None, reduce)
            check(gdx, dx, _round(ndx, dtype), dtype, f"{desc} F={F}: {reduce} dx")
            check(gdw, dw, None if ndw is None else _round(ndw, dtype), dtype, f"{desc} F={F}: {reduce} dw")
            again = graph_cuda.aggregate_backward_cuda(csr, to_gpu(gy, dtype), xg, wg,
                                                       got if reduce in ("max", "min") else None, reduce)
            np.testing.assert_array_equal(to_host(again[0]), to_host(gdx))  # bitwise repeatable


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_sddmm_and_edge_softmax(graph_cuda, index_dtype, dtype):
    from dlkernels.ops.graph import reference as R
    rng = np.random.default_rng(3)
    for desc, g in _graphs(index_dtype):
        csr = g._csr
        for H, F in ((1, 5), (4, 40)):
            a, b = rng.standard_normal((csr.n_src, H, F)), rng.standard_normal((csr.n_dst, H, F))
            out = R.sddmm_forward_reference(csr, a, b)
            gy = rng.standard_normal(out.shape)
            da, db = R.sddmm_backward_reference(csr, gy, a, b)
            ar, br, gr = _round(a, dtype), _round(b, dtype), _round(gy, dtype)
            nda, ndb = R.sddmm_backward_reference(csr, gr, ar, br)
            ag, bg = to_gpu(a, dtype), to_gpu(b, dtype)
            check(graph_cuda.sddmm_forward_cuda(csr, ag, bg), out,
                  _round(R.sddmm_forward_reference(csr, ar, br), dtype), dtype, f"{desc}: sddmm")
            gda, gdb = graph_cuda.sddmm_backward_cuda(csr, to_gpu(gy, dtype), ag, bg)
            check(gda, da, _round(nda, dtype), dtype, f"{desc}: sddmm da")
            check(gdb, db, _round(ndb, dtype), dtype, f"{desc}: sddmm db")
            s = rng.standard_normal((csr.num_edges, H)) * 3
            y = R.edge_softmax_forward_reference(csr, s)
            ds = R.edge_softmax_backward_reference(csr, gy, y)
            ny = _round(R.edge_softmax_forward_reference(csr, _round(s, dtype)), dtype)
            gyy = graph_cuda.edge_softmax_forward_cuda(csr, to_gpu(s, dtype))
            check(gyy, y, ny, dtype, f"{desc}: edge_softmax")
            nds = _round(R.edge_softmax_backward_reference(csr, gr, ny), dtype)
            check(graph_cuda.edge_softmax_backward_cuda(csr, to_gpu(gy, dtype), gyy), ds, nds, dtype,
                  f"{desc}: edge_softmax backward")
