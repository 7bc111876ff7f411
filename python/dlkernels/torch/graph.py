"""scatter and spmm for PyTorch, as torch_geometric.utils', over dlkernels' graph kernels.

Registered as torch.library custom ops dlkernels::scatter / scatter_backward and
dlkernels::spmm_csr / spmm_csr_backward, with register_fake and register_autograd calling the
hand-written backward: they pass opcheck and gradcheck and run under torch.compile(fullgraph=True).
Deterministic (no atomics), and the indices are checked before any kernel reads them.

    import dlkernels.torch as dlt
    out = dlt.scatter(src, index, dim=0, dim_size=V, reduce="mean")   # torch_geometric.utils.scatter
    out = dlt.spmm(adj, x, reduce="sum")                             # torch_geometric.utils.spmm
"""


import numpy as np
import torch

from .._arrays import contiguous
from ..ops import graph as G
from . import _bridge as B

# ---- scatter --------------------------------------------------------------------------------


@torch.library.custom_op("dlkernels::scatter", mutates_args=())
def _scatter(src: torch.Tensor, index: torch.Tensor, dim: int, dim_size: int, reduce: str) -> torch.Tensor:
    with B.cuda_stream(src):
        out, _ = G.scatter_forward(B.to_array(src.contiguous(), "src"), B.to_array(index.contiguous(), "index"),
                                   dim, dim_size, reduce)
        return B.to_tensor(out)


@_scatter.register_fake
def _(src, index, dim, dim_size, reduce):
    d = dim % src.dim()
    return src.new_empty(src.shape[:d] + (dim_size,) + src.shape[d + 1:])


@torch.library.custom_op("dlkernels::scatter_backward", mutates_args=())
def _scatter_backward(grad: torch.Tensor, src: torch.Tensor, index: torch.Tensor, out: torch.Tensor, dim: int,
                      reduce: str) -> torch.Tensor:
    with B.cuda_stream(src):
        saved = G.scatter_saved(B.to_array(src.contiguous(), "src"), B.to_array(index.contiguous(), "index"), dim,
                                B.to_array(out.contiguous(), "out"), reduce)
        (ds,) = G.scatter_backward(B.to_array(grad.contiguous(), "grad_output"), saved)
        return B.to_tensor(ds)


@_scatter_backward.register_fake
def _(grad, src, index, out, dim, reduce):
    return torch.empty_like(src)


def _scatter_setup(ctx, inputs, output):
    src, index, dim, dim_size, reduce = inputs
    ctx.save_for_backward(src, index, output)
    ctx.args = (dim, reduce)


def _scatter_grad(ctx, grad):
    src, index, out = ctx.saved_tensors
    return torch.ops.dlkernels.scatter_backward(grad, src, index, out, *ctx.args), None, None, None, None


_scatter.register_autograd(_scatter_grad, setup_context=_scatter_setup)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = 0, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """torch_geometric.utils.scatter, run by dlkernels: same arguments, same result, deterministic.

    reduce: 'sum' ('add'), 'mean', 'max', 'min'. dim_size=None reads index.max() + 1 (a sync
    point under torch.compile: pass dim_size there).
    """
    B.check_tensor(src, "src")
    if index.dim() != 1:
        raise ValueError(f"index: expected a 1-D tensor, got {index.dim()} dimensions")
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
    r = G._reduce(reduce)
    return torch.ops.dlkernels.scatter(src, index, dim, dim_size, r)


# ---- spmm -----------------------------------------------------------------------------------


def _csr(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> G.Csr:
    # the CSR lives on the host (the cuda glue keeps device copies): CUDA indices are copied once
    ip = G.host(B.to_array(crow.contiguous(), "crow_indices")).astype(np.int64, copy=False)
    cx = G.host(B.to_array(col.contiguous(), "col_indices"))
    M = ip.shape[0] - 1
    dst = np.repeat(np.arange(M, dtype=cx.dtype), np.diff(ip))
    G.structure._check_edges(cx, dst, n_cols, M, "adj")
    return G.Csr(n_cols, M, cx, dst, indptr=ip, col=cx, perm=None)


@torch.library.custom_op("dlkernels::spmm_csr", mutates_args=())
def _spmm_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
              reduce: str) -> torch.Tensor:
    """out = adj @ x with adj given by CSR arrays (crow (M+1,), col (E,), values (E,)); x (N, F)."""
    csr = _csr(crow, col, x.shape[0])
    with B.cuda_stream(x):
        out, _ = G.aggregate_csr(csr, B.to_array(x.contiguous(), "x"), reduce,
                                 B.to_array(values.contiguous(), "values"))
        return B.to_tensor(out)


@_spmm_csr.register_fake
def _(crow, col, values, x, reduce):
    return x.new_empty((crow.shape[0] - 1,) + tuple(x.shape[1:]))


@torch.library.custom_op("dlkernels::spmm_csr_backward", mutates_args=())
def _spmm_csr_backward(grad: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                       x: torch.Tensor, out: torch.Tensor, reduce: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_values, grad_x)."""
    csr = _csr(crow, col, x.shape[0])
    with B.cuda_stream(x):
        xa, w = B.to_array(x.contiguous(), "x"), B.to_array(values.contiguous(), "values")
        x2 = xa.reshape(xa.shape[0], -1) if xa.shape[0] else xa.reshape(0, int(np.prod(xa.shape[1:])))
        o = B.to_array(out.contiguous(), "out")
        saved = G.AggregateSaved(csr, contiguous(x2), w,
                                 contiguous(o.reshape(csr.n_dst, x2.shape[1])) if reduce in ("max", "min") else None,
                                 reduce, tuple(xa.shape))
        dx, dw = G.aggregate_backward(B.to_array(grad.contiguous(), "grad_output"), saved)
        return B.to_tensor(dw), B.to_tensor(dx)


@_spmm_csr_backward.register_fake
def _(grad, crow, col, values, x, out, reduce):
    return torch.empty_like(values), torch.empty_like(x)


def _spmm_setup(ctx, inputs, output):
    crow, col, values, x, reduce = inputs
    ctx.save_for_backward(crow, col, values, x, output)
    ctx.reduce = reduce


def _spmm_grad(ctx, grad):
    crow, col, values, x, out = ctx.saved_tensors
    dv, dx = torch.ops.dlkernels.spmm_csr_backward(grad, crow, col, values, x, out, ctx.reduce)
    return None, None, dv, dx, None


_spmm_csr.register_autograd(_spmm_grad, setup_context=_spmm_setup)


def spmm(adj: torch.Tensor, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """torch_geometric.utils.spmm for a torch sparse adj (COO, CSR or CSC), run by dlkernels.

    out[i] = reduce_j adj[i, j] * x[j] over the stored entries of row i; reduce 'sum', 'mean',
    'max', 'min'; an empty row gives 0. Gradients flow to x and to adj's values.
    """
    B.check_tensor(x, "x")
    r = G._reduce(reduce)
    if not getattr(adj, "is_sparse", False) and adj.layout not in (torch.sparse_csr, torch.sparse_csc):
        raise ValueError("adj: expected a torch sparse tensor (COO, CSR or CSC)")
    if adj.dim() != 2 or x.dim() != 2 or adj.shape[1] != x.shape[0]:
        raise ValueError(f"adj, x: expected adj (M, N) and x (N, F), got {tuple(adj.shape)} and {tuple(x.shape)}")
    if adj.layout != torch.sparse_csr:
        adj = adj.to_sparse_csr()
    values = adj.values()
    if values.dtype != x.dtype:
        values = values.to(x.dtype)
    return torch.ops.dlkernels.spmm_csr(adj.crow_indices(), adj.col_indices(), values, x, r)
