"""Benchmark cases G1-G4 (issue 5): aggregate sum and max over generated graphs, float32.

Graphs are generated in-process with a fixed seed (nothing downloaded):
    G1  power-law: 200,000 nodes, 2,000,000 edges, zipf in-degrees (P(target = k-th node) ~ 1/k), F 64
    G2  uniform random: 100,000 nodes, 1,000,000 edges, F 128
    G3  ogbn-arxiv-sized: 169,343 nodes, 1,166,243 edges, power-law as G1, F 128
    G4  Cora-sized: 2,708 nodes, 10,556 edges, uniform, F 1433
Peers on the same inputs, same threads: scipy.sparse CSR @ dense, torch.sparse.mm (CSR), and PyG's
default path, torch index_add_ (sum) / scatter_reduce (max); their backward is torch autograd.
The bytes are the minimum a sum must move (ops.graph.aggregate_bytes): one x row per edge, the
output, the indices; the runner divides by the copy bandwidth measured in the same run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dlkernels as dk
from dlkernels.ops.graph import aggregate_bytes

from .case import Case, State


def make_graph(V: int, E: int, power_law: bool, seed: int = 0) -> np.ndarray:
    """edge_index (2, E) int64: sources uniform; targets uniform or zipf (the k-th node drawn ~ 1/k)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, V, E)
    if power_law:
        p = 1.0 / np.arange(1, V + 1)
        cdf = np.cumsum(p / p.sum())
        rank = np.minimum(np.searchsorted(cdf, rng.random(E)), V - 1)
        dst = rng.permutation(V)[rank]  # the hubs get random ids
    else:
        dst = rng.integers(0, V, E)
    return np.stack([src, dst])


def _case(id: str, V: int, E: int, F: int, power_law: bool, reduce: str, quick: bool = False) -> Case:
    def setup() -> State:
        ei = make_graph(V, E, power_law)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((V, F), dtype=np.float32)
        g = dk.Graph(ei, num_nodes=V)
        out, saved = dk.aggregate_forward(g, x, reduce)
        return {"edge_index": ei, "graph": g, "x": x, "dy": rng.standard_normal(out.shape, dtype=np.float32)}

    def forward(s: State) -> Any:
        return dk.aggregate(s["graph"], s["x"], reduce)

    def forward_backward(s: State) -> Any:
        _, saved = dk.aggregate_forward(s["graph"], s["x"], reduce)
        return dk.aggregate_backward(s["dy"], saved)

    def _torch(s: State):
        import torch
        ei = torch.from_numpy(s["edge_index"])
        return torch, ei[0], ei[1], torch.from_numpy(s["x"]), torch.from_numpy(s["dy"])

    def pyg_peer(s: State):  # PyG's default CPU path
        torch, src, dst, x, dy = _torch(s)
        xg = x.clone().requires_grad_()
        idx = dst[:, None].expand(-1, F)

        def f(x):
            if reduce == "sum":
                return x.new_zeros((V, F)).index_add_(0, dst, x[src])
            return x.new_zeros((V, F)).scatter_reduce_(0, idx, x[src], reduce="amax", include_self=False)

        def fwd():
            with torch.no_grad():
                return f(x)

        return fwd, lambda: torch.autograd.grad(f(xg), xg, dy)

    def scipy_peer(s: State):
        import scipy.sparse as sp
        src, dst = s["edge_index"]
        A = sp.csr_matrix((np.ones(E, np.float32), (dst, src)), shape=(V, V))
        AT = A.T.tocsr()
        return (lambda: A @ s["x"]), (lambda: (A @ s["x"], AT @ s["dy"]))

    def torch_sparse_peer(s: State):
        torch, src, dst, x, dy = _torch(s)
        A = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(E), (V, V)).coalesce().to_sparse_csr()
        xg = x.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                return torch.sparse.mm(A, x) if reduce == "sum" else torch.sparse.mm(A, x, "amax")

        def fwdbwd():
            y = torch.sparse.mm(A, xg) if reduce == "sum" else torch.sparse.mm(A, xg, "amax")
            return torch.autograd.grad(y, xg, dy)

        return fwd, fwdbwd

    peers: dict[str, Any] = {"torch_index_add" if reduce == "sum" else "torch_scatter_reduce": pyg_peer,
                             "torch_sparse_mm": torch_sparse_peer}
    if reduce == "sum":
        peers["scipy"] = scipy_peer
    shape = f"{'power-law' if power_law else 'uniform'} V{V} E{E} F{F}, {reduce}"
    return Case(id if reduce == "sum" else f"{id}-{reduce}", "aggregate", shape, setup, forward, forward_backward,
                flops=lambda s: 2.0 * E * F if reduce == "sum" else 1.0 * E * F,
                backward_flops=lambda s: 2.0 * E * F,
                bytes=lambda s: aggregate_bytes(V, E, F, 4, 8),
                peers=peers, quick=quick, oracle="torch_index_add" if reduce == "sum" else "torch_scatter_reduce")


CASES = [
    _case("G1", 200_000, 2_000_000, 64, True, "sum"),
    _case("G1", 200_000, 2_000_000, 64, True, "max"),
    _case("G2", 100_000, 1_000_000, 128, False, "sum"),
    _case("G3", 169_343, 1_166_243, 128, True, "sum"),
    _case("G4", 2_708, 10_556, 1433, False, "sum", quick=True),
    _case("G4", 2_708, 10_556, 1433, False, "max"),
]
