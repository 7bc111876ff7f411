"""dlkernels.torch.scatter / spmm: PyG's results and gradients, custom-op checks, swapped into PyG's convs."""

import pytest

torch = pytest.importorskip("torch")
pyg_utils = pytest.importorskip("torch_geometric.utils")

import dlkernels.torch as dlt  # noqa: E402

REDUCES = ["sum", "mean", "max", "min"]


def _edges(V=9, E=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (2, E), generator=g)


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_matches_pyg(reduce, dim):
    src = torch.randn(6, 11, 3, dtype=torch.float64)
    n = src.shape[dim]
    index = torch.randint(0, 4, (n,))
    for dim_size in (None, 7):
        a, b = src.clone().requires_grad_(), src.clone().requires_grad_()
        out = dlt.scatter(a, index, dim, dim_size, reduce)
        ref = pyg_utils.scatter(b, index, dim, dim_size, reduce)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, a, g)[0], torch.autograd.grad(ref, b, g)[0])


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
def test_spmm_matches_pyg(reduce, layout):
    ei = _edges()
    vals = torch.rand(ei.shape[1], dtype=torch.float64) + 0.5
    adj = torch.sparse_coo_tensor(ei, vals, (9, 9)).coalesce()
    adj = adj if layout == torch.sparse_coo else adj.to_sparse_csr()
    x = torch.randn(9, 5, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = dlt.spmm(adj, a, reduce)
    with pytest.warns(UserWarning) if layout == torch.sparse_coo else _nowarn():
        ref = pyg_utils.spmm(adj, b, reduce)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, a, g)[0], torch.autograd.grad(ref, b, g)[0])


class _nowarn:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_opcheck_and_gradcheck(reduce):
    src = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 2, 2, 1, 4, 0, 2])
    torch.library.opcheck(torch.ops.dlkernels.scatter.default, (src, index, 0, 6, reduce))
    assert torch.autograd.gradcheck(lambda s: dlt.scatter(s, index, 0, 6, reduce), (src,))


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_opcheck_and_gradcheck(reduce):
    adj = torch.sparse_coo_tensor(_edges(6, 14, seed=3), torch.rand(14, dtype=torch.float64) + 0.5,
                                  (6, 6)).coalesce().to_sparse_csr()
    crow, col = adj.crow_indices(), adj.col_indices()
    vals = adj.values().clone().requires_grad_()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.dlkernels.spmm_csr.default, (crow, col, vals, x, reduce))
    f = lambda v, x: torch.ops.dlkernels.spmm_csr(crow, col, v, x, reduce)  # noqa: E731
    assert torch.autograd.gradcheck(f, (vals, x))


def test_scatter_compiles_fullgraph():
    src = torch.randn(10, 4)
    index = torch.randint(0, 5, (10,))

    def f(s):
        return dlt.scatter(s.relu(), index, 0, 5, "mean") * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(src), f(src))


def test_spmm_csr_compiles_fullgraph():
    adj = torch.sparse_coo_tensor(_edges(), torch.rand(30), (9, 9)).coalesce().to_sparse_csr()
    crow, col, vals = adj.crow_indices().clone(), adj.col_indices().clone(), adj.values().clone()
    x = torch.randn(9, 4)

    def f(crow, col, vals, x):
        return torch.ops.dlkernels.spmm_csr(crow, col, vals, x.relu(), "sum") + 1

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(crow, col, vals, x), f(crow, col, vals, x))


def test_scatter_index_out_of_range_raises():
    with pytest.raises(IndexError, match="index: entry 1 is 7"):
        dlt.scatter(torch.randn(3, 2), torch.tensor([0, 7, 1]), 0, 4)


def _grads(model, out):
    g = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    return [t.clone() for t in g]


@pytest.mark.parametrize("conv", ["GCNConv", "SAGEConv"])
def test_swapped_into_pyg_convs(conv, monkeypatch):
    """PyG's GCNConv/SAGEConv with dlkernels' scatter (edge_index path) and spmm (sparse adj path)."""
    import torch_geometric.nn as pyg_nn
    import torch_geometric.nn.aggr.base as aggr_base
    import torch_geometric.nn.conv.gcn_conv as gcn_mod
    import torch_geometric.nn.conv.sage_conv as sage_mod

    torch.manual_seed(0)
    ei = _edges(12, 50, seed=5)
    x = torch.randn(12, 6, dtype=torch.float64)
    model = getattr(pyg_nn, conv)(6, 4).double()
    ones = torch.ones(50, dtype=torch.float64)
    adj_t = torch.sparse_coo_tensor(ei.flip(0), ones, (12, 12)).coalesce().to_sparse_csr()

    ref_ei = model(x, ei)
    ref_ei_grads = _grads(model, ref_ei)
    ref_adj = model(x, adj_t)
    ref_adj_grads = _grads(model, ref_adj)

    monkeypatch.setattr(aggr_base, "scatter", dlt.scatter)
    monkeypatch.setattr(gcn_mod, "spmm", dlt.spmm)
    monkeypatch.setattr(sage_mod, "spmm", dlt.spmm)

    out_ei = model(x, ei)
    torch.testing.assert_close(out_ei, ref_ei)
    for a, b in zip(_grads(model, out_ei), ref_ei_grads):
        torch.testing.assert_close(a, b)
    out_adj = model(x, adj_t)
    torch.testing.assert_close(out_adj, ref_adj)
    for a, b in zip(_grads(model, out_adj), ref_adj_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_scatter_and_spmm_on_cuda_tensors(reduce):
    """CUDA tensors run the cuda kernels on torch's stream: same results and gradients as on the CPU."""
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    g = torch.Generator().manual_seed(0)
    src = torch.randn(40, 6, dtype=torch.float64, generator=g)
    index = torch.randint(0, 9, (40,), generator=g)
    ei = torch.randint(0, 12, (2, 50), generator=g)
    adj = torch.sparse_coo_tensor(ei, torch.rand(50, dtype=torch.float64, generator=g), (12, 12)).coalesce()
    x = torch.randn(12, 5, dtype=torch.float64, generator=g)
    for f, args in ((lambda s, i: dlt.scatter(s, i, 0, 9, reduce), (src, index)),
                    (lambda a, v: dlt.spmm(a, v, reduce), (adj, x))):
        cpu_in = [args[0], args[1].clone().requires_grad_()] if args[0].is_sparse else \
            [args[0].clone().requires_grad_(), args[1]]
        dev_in = [t.detach().cuda().requires_grad_(t.requires_grad) for t in cpu_in]
        y, yd = f(*cpu_in), f(*dev_in)
        assert yd.is_cuda
        torch.testing.assert_close(yd.cpu(), y)
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, [t for t in cpu_in if t.requires_grad], gy)
        grads_d = torch.autograd.grad(yd, [t for t in dev_in if t.requires_grad], gy.cuda())
        for a, b in zip(grads_d, grads):
            torch.testing.assert_close(a.cpu(), b)
