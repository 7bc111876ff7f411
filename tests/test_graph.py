"""Graph construction and validation, cpp-specific properties, and the graph layers against PyG."""

import numpy as np
import pytest

import dlkernels as dk
from dlkernels import _cpp, nn

# ---- Graph construction ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_graph_csr_and_transpose(dtype, rng):
    ei = rng.integers(0, 20, (2, 100)).astype(dtype)
    g = dk.Graph(ei, num_nodes=25)
    csr = g._csr
    assert g.indptr.dtype == np.int64 and g.indptr[-1] == 100
    np.testing.assert_array_equal(g.in_degree, np.bincount(ei[1], minlength=25))
    np.testing.assert_array_equal(g.out_degree, np.bincount(ei[0], minlength=25))
    for v in range(25):  # row v holds v's incoming edges, in edge order (stable)
        ids = csr.perm[g.indptr[v]:g.indptr[v + 1]]
        np.testing.assert_array_equal(ids, np.flatnonzero(ei[1] == v))
        np.testing.assert_array_equal(csr.col[g.indptr[v]:g.indptr[v + 1]], ei[0, ids])
    t = csr.transpose
    for u in range(25):
        ids = t.perm[t.indptr[u]:t.indptr[u + 1]]
        np.testing.assert_array_equal(ids, np.flatnonzero(ei[0] == u))
    assert csr.transpose is t  # cached


def test_from_csr_matches_edge_index(rng):
    indptr = np.array([0, 2, 2, 5], np.int64)
    indices = np.array([1, 2, 0, 0, 2], np.int64)
    g = dk.Graph.from_csr(indptr, indices, 3)
    np.testing.assert_array_equal(g.edge_index, [[1, 2, 0, 0, 2], [0, 0, 2, 2, 2]])
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(dk.aggregate(g, x), dk.aggregate(dk.Graph(g.edge_index, 3), x))


@pytest.mark.parametrize("edge_index,num_nodes,exc,match", [
    (np.array([[0, 1, 5], [1, 2, 0]]), 4, IndexError, r"edge_index: edge 2 \(5 -> 0\) is out of range for num_nodes=4"),
    (np.array([[0, 1, 2], [1, -2, 0]]), 4, IndexError, r"edge_index: edge 1 \(1 -> -2\) has a negative node index"),
    (np.array([[0, 1, 2], [1, -2, 0]]), None, IndexError, "edge 1 .* negative"),
    (np.array([[0, 1, 2]]), 4, ValueError, r"edge_index: expected shape \(2, E\)"),
    (np.zeros((3, 2), np.int64), 4, ValueError, r"edge_index: expected shape \(2, E\)"),
    (np.array([[0.0, 1.0], [1.0, 0.0]]), 4, TypeError, "edge_index: expected an integer index array"),
    (np.array([[0, 1], [1, 0]]), -1, ValueError, "num_nodes: expected an int >= 0"),
    (np.array([[0, 1], [1, 0]]), 2.5, TypeError, "num_nodes: expected an int"),
])
def test_graph_errors(edge_index, num_nodes, exc, match):
    with pytest.raises(exc, match=match):
        dk.Graph(edge_index, num_nodes=num_nodes)


def test_from_csr_errors():
    with pytest.raises(ValueError, match=r"indptr: expected shape \(4,\)"):
        dk.Graph.from_csr(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="indptr: expected non-decreasing"):
        dk.Graph.from_csr(np.array([0, 2, 1, 2]), np.array([0, 1]), 3)
    with pytest.raises(IndexError, match=r"indices: edge 1 \(7 -> 0\) is out of range"):
        dk.Graph.from_csr(np.array([0, 2, 2, 2]), np.array([0, 7]), 3)


def test_graph_built_once_reused(rng):
    g = dk.Graph(rng.integers(0, 10, (2, 40)), num_nodes=10)
    x = rng.standard_normal((10, 3))
    _, saved = dk.aggregate_forward(g, x, "mean")
    dk.aggregate_backward(x, saved)
    t = g._csr._transpose
    _, saved = dk.aggregate_forward(g, x, "sum")
    dk.aggregate_backward(x, saved)
    assert g._csr._transpose is t


# ---- cpp: every ISA, threads, hub rows --------------------------------------------------------

@pytest.mark.skipif(not _cpp.available(), reason="C++ backend not built")
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_cpp_same_bits_at_any_thread_count(reduce, rng, num_threads):
    """A target hub with most edges and a source hub (the backward's transpose), both past
    HUB_EDGES = 8192 (cut into pieces): 1 or 2 threads give the same bits, and the float64
    result matches the reference."""
    V, E = 300, 24000
    dst = np.where(rng.random(E) < 0.8, 7, rng.integers(0, V, E))
    src = np.where(rng.random(E) < 0.4, 11, rng.integers(0, V, E))
    g = dk.Graph(np.stack([src, dst]), num_nodes=V)
    x = rng.standard_normal((V, 37))
    w = rng.standard_normal(E)
    gy = rng.standard_normal((V, 37))
    with dk.backend("reference"):
        ref, rsaved = dk.aggregate_forward(g, x, reduce, w)
        ref_grads = dk.aggregate_backward(gy, rsaved)
    with dk.backend("cpp"):
        out, saved = dk.aggregate_forward(g, x, reduce, w)
        grads = dk.aggregate_backward(gy, saved)
    for a, b in zip([out, *grads], [ref, *ref_grads]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    x, w = x.astype(np.float32), w.astype(np.float32)
    runs = []
    for n in (1, 2):
        with num_threads(n), dk.backend("cpp"):
            out, saved = dk.aggregate_forward(g, x, reduce, w)
            runs.append([out, *dk.aggregate_backward(out, saved)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _cpp.available(), reason="C++ backend not built")
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_cpp_tiled_passes(reduce, weighted, rng, monkeypatch, num_threads):
    """x larger than the last-level cache is gathered in passes over source ranges (Csr.tiled).
    A pretend cache forces 2 and 5 passes on a graph with a hub row past HUB_EDGES, empty rows
    and a row whose edges all lie in the last pass: the reference's result (max/min: the bits of
    one pass) and, in float32, the same bits at 1 and 2 threads."""
    from dlkernels.ops.graph import structure
    V, E, F = 300, 30000, 37
    dst = np.where(rng.random(E) < 0.5, 7, rng.integers(0, V - 20, E))  # rows V-20.. have no edges
    src = rng.integers(0, V, E)
    src[dst == 3] = V - 1  # row 3 reads only the last source
    g = dk.Graph(np.stack([src, dst]), num_nodes=V)
    x = rng.standard_normal((V, F))
    w = rng.standard_normal(E) if weighted else None
    x32, w32 = x.astype(np.float32), None if w is None else w.astype(np.float32)
    with dk.backend("reference"):
        ref = dk.aggregate(g, x, reduce, w)
    with dk.backend("cpp"):
        one_pass = dk.aggregate(g, x, reduce, w)
    assert g._csr.passes(F * 8) == 1
    for want in (2, 5):
        monkeypatch.setattr(structure, "last_level_cache_bytes", lambda n=want: V * F * 8 // n)
        assert g._csr.passes(F * 8) == want
        with dk.backend("cpp"):
            out = dk.aggregate(g, x, reduce, w)
        np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
        if reduce in ("max", "min"):
            np.testing.assert_array_equal(out, one_pass)
        runs = []
        for n in (1, 2):
            with num_threads(n), dk.backend("cpp"):
                runs.append(dk.aggregate(g, x32, reduce, w32))
        np.testing.assert_array_equal(*runs)


def test_tiled_passes_only_where_x_is_reread(rng, monkeypatch):
    """Passes pay for rereading the output with cache hits on x: a graph with 10 edges per node
    gets them once x outgrows the cache; a sparse graph and a scatter (each x row read once) do not."""
    from dlkernels.ops.graph import structure
    monkeypatch.setattr(structure, "last_level_cache_bytes", lambda: 1000 * 64 // 3 + 1)
    dense = dk.Graph(rng.integers(0, 1000, (2, 10_000)), num_nodes=1000)
    sparse = dk.Graph(rng.integers(0, 1000, (2, 3000)), num_nodes=1000)
    scatter = structure.Csr(10_000, 100, np.arange(10_000), rng.integers(0, 100, 10_000))
    assert dense._csr.passes(64) == 3
    assert dense._csr.passes(16) == 1  # x fits
    assert sparse._csr.passes(64) == 1
    assert scatter.passes(64) == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_64bit_offsets_past_2_31(backend):
    """V*F > 2^31: row offsets col[k] * F overflow 32 bits; the kernels use int64. Sum forward
    and backward (the transpose, the per-edge dot) and max, with int32 indices. x and dy are
    calloc'd zeros, so only out and dx are touched: about 17 GB of memory."""
    V, F = 2**21 + 3, 1025  # V*F ~ 2.15e9 > 2^31
    ramp = np.arange(F, dtype=np.float32)
    x = np.zeros((V, F), np.float32)
    x[-1] = ramp
    x[-2] = 1
    g = dk.Graph(np.array([[V - 1, V - 2, V - 1], [0, 0, V - 1]], np.int32), num_nodes=V)
    w = np.array([1, 2, 3], np.float32)
    with dk.backend(backend):
        out, saved = dk.aggregate_forward(g, x, "sum", edge_weight=w)
        np.testing.assert_array_equal(out[0], ramp + 2)
        np.testing.assert_array_equal(out[V - 1], 3 * ramp)
        assert not out[V - 2].any()
        del out
        dy = np.zeros((V, F), np.float32)
        dy[0] = 1
        dy[V - 1] = 2
        dx, dw = dk.aggregate_backward(dy, saved)
        del saved
        np.testing.assert_array_equal(dx[V - 1], np.full(F, 1 + 3 * 2))
        np.testing.assert_array_equal(dx[V - 2], np.full(F, 2))
        assert not dx[0].any()
        np.testing.assert_array_equal(dw, [ramp.sum(), F, 2 * ramp.sum()])
        del dx, dy
        out = dk.aggregate(g, x, "max")
        np.testing.assert_array_equal(out[0], np.maximum(ramp, 1))
        np.testing.assert_array_equal(out[V - 1], ramp)


# ---- layers against PyG -----------------------------------------------------------------------

torch = pytest.importorskip("torch")


def _pyg_pair(name, rng, **kw):
    import torch_geometric.nn as pyg_nn
    torch.manual_seed(0)
    ref = getattr(pyg_nn, {"GraphConv": "GCNConv"}.get(name, name))(5, 4, **kw).double()
    ours = getattr(nn, name)(5, 4, dtype="float64", **kw)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items()})
    return ref, ours


@pytest.mark.parametrize("name,kw", [("GraphConv", {}), ("SAGEConv", {}), ("GATConv", {"heads": 3}),
                                     ("GATConv", {"heads": 2, "concat": False})])
def test_layers_match_pyg(name, kw, rng):
    ref, ours = _pyg_pair(name, rng, **kw)
    src = rng.integers(0, 11, 40)
    dst = rng.integers(0, 11, 40)
    keep = src != dst  # PyG's GCNConv and GATConv treat existing self-loops differently
    ei = np.stack([src[keep], dst[keep]])
    x = rng.standard_normal((11, 5))
    xt = torch.tensor(x, requires_grad=True)
    out_ref = ref(xt, torch.from_numpy(ei))
    g_out = rng.standard_normal(tuple(out_ref.shape))
    out_ref.backward(torch.tensor(g_out))
    out = ours(x, dk.Graph(ei, num_nodes=11))
    np.testing.assert_allclose(out, out_ref.detach().numpy(), atol=1e-10)
    dx = ours.backward(g_out)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    for k, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, ref_grads[k], atol=1e-10, err_msg=k)


# ---- the front-end on device arrays (CuPy; skipped without CuPy and a GPU) --------------------

@pytest.mark.gpu
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_front_end_dispatches_cuda_arrays(reduce, rng):
    """Graph from a device edge_index, aggregate/scatter/sddmm/edge_softmax on CuPy arrays run the
    cuda kernels (CuPy out) and match the cpu path in float64, forward and backward."""
    cp = pytest.importorskip("cupy")
    ei = rng.integers(0, 30, (2, 200))
    ei[1, :80] = 3  # a hub
    x, w = rng.standard_normal((30, 5)), rng.standard_normal(200)
    gy = rng.standard_normal((30, 5))
    g_host, g_dev = dk.Graph(ei, num_nodes=30), dk.Graph(cp.asarray(ei), num_nodes=30)
    out, saved = dk.aggregate_forward(g_host, x, reduce, w)
    dx, dw = dk.aggregate_backward(gy, saved)
    for g in (g_host, g_dev):  # one Graph serves both devices
        dout, dsaved = dk.aggregate_forward(g, cp.asarray(x), reduce, cp.asarray(w))
        assert isinstance(dout, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(dout), out, rtol=1e-10, atol=1e-12)
        ddx, ddw = dk.aggregate_backward(cp.asarray(gy), dsaved)
        np.testing.assert_allclose(cp.asnumpy(ddx), dx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cp.asnumpy(ddw), dw, rtol=1e-10, atol=1e-12)
    src, index = rng.standard_normal((4, 50, 3)), rng.integers(0, 12, 50)
    out, saved = dk.scatter_forward(src, index, 1, 12, reduce)
    dout, dsaved = dk.scatter_forward(cp.asarray(src), cp.asarray(index), 1, 12, reduce)
    np.testing.assert_allclose(cp.asnumpy(dout), out, rtol=1e-10, atol=1e-12)
    gs = rng.standard_normal(out.shape)
    np.testing.assert_allclose(cp.asnumpy(dk.scatter_backward(cp.asarray(gs), dsaved)[0]),
                               dk.scatter_backward(gs, saved)[0], rtol=1e-10, atol=1e-12)
    a, b = rng.standard_normal((30, 2, 4)), rng.standard_normal((30, 2, 4))
    s = dk.sddmm(g_dev, cp.asarray(a), cp.asarray(b))
    np.testing.assert_allclose(cp.asnumpy(s), dk.sddmm(g_host, a, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(dk.edge_softmax(g_dev, s)), dk.edge_softmax(g_host, cp.asnumpy(s)),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="index"):
        dk.scatter(cp.asarray(src), index, 1, 12, reduce)  # index on the host, src on the device


def test_cuda_kernels_are_registered_without_a_gpu():
    """The glue registers (variant csr, default) without importing CuPy; dispatch reaches it only for CuPy arrays."""
    for op in ("aggregate", "scatter", "sddmm", "edge_softmax"):
        for direction in ("forward", "backward"):
            ks = [k for k in dk.kernels(op, backend="cuda") if k.direction == direction]
            assert [k.variant for k in ks] == ["csr"], (op, direction, ks)
