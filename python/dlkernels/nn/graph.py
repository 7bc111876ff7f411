"""GraphConv (GCN), SAGEConv (mean), GATConv (multi-head): PyG's layers with the backward written out.

Parameter names follow PyG (GCNConv: lin.weight, bias; SAGEConv: lin_l.weight, lin_l.bias,
lin_r.weight; GATConv: lin.weight, att_src, att_dst, bias), so a PyG model's state_dict loads.
forward(x, graph) takes a dlkernels.Graph (or an edge_index, turned into one); the derived
graphs (with self-loops) and normalizations are cached on the Graph and reused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from .._arrays import Array, as_array
from ..ops.graph import Graph
from .layers import Linear
from .module import Module, Parameter, as_dtype, uniform


def _as_graph(graph: Any, num_nodes: int) -> Graph:
    return graph if isinstance(graph, Graph) else Graph(as_array(graph, "edge_index"), num_nodes=num_nodes)


def _cached(graph: Graph, key: Any, make) -> Any:
    cache = graph._csr._cache
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _glorot(shape: tuple[int, ...], fan_in: int, fan_out: int, d: np.dtype) -> Array:
    return uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)), d)


def _gcn_graph(graph: Graph, dtype: np.dtype) -> tuple[Graph, Array]:
    """The graph plus a self-loop on every node that lacks one, and the GCN weights
    norm[e] = deg(u)^-1/2 deg(v)^-1/2 (deg = in-degree with the loops), as PyG's gcn_norm."""
    def make():
        src, dst = graph.edge_index.astype(np.int64)
        V = graph.num_nodes
        has_loop = np.zeros(V, bool)
        has_loop[src[src == dst]] = True
        loops = np.flatnonzero(~has_loop)
        ei = np.concatenate([np.stack([src, dst]), np.stack([loops, loops])], axis=1)
        g = Graph(ei, num_nodes=V)
        deg = g.in_degree.astype(np.float64)
        inv = np.where(deg > 0, deg ** -0.5, 0.0)
        return g, (inv[ei[0]] * inv[ei[1]]).astype(dtype)
    return _cached(graph, ("gcn", np.dtype(dtype).str), make)


class GraphConv(Module):
    """GCN layer (Kipf & Welling; PyG's GCNConv): out = D^-1/2 (A + I) D^-1/2 x Wᵀ + b."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, dtype: Any = None):
        super().__init__()
        d = as_dtype(dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin = Linear(in_channels, out_channels, bias=False, dtype=d)
        self.lin.weight.data[...] = _glorot((out_channels, in_channels), in_channels, out_channels, d)
        self.bias = Parameter(np.zeros(out_channels, d)) if bias else None

    def forward(self, x: Any, graph: Any) -> Array:
        x = as_array(x, "x")
        g, norm = _gcn_graph(_as_graph(graph, x.shape[0]), x.dtype)
        h = self.lin(x)
        out, self._saved = ops.graph.aggregate_forward(g, h, "sum", norm)
        return out + self.bias.data if self.bias is not None else out

    def backward(self, grad_output: Any) -> Array:
        g = as_array(grad_output, "grad_output")
        if self.bias is not None:
            self.bias.accumulate(g.sum(axis=0))
        dh, _ = ops.graph.aggregate_backward(g, self._saved)
        return self.lin.backward(dh)


class SAGEConv(Module):
    """GraphSAGE (PyG's SAGEConv, aggr='mean'): out[v] = W_l mean_{u -> v} x[u] + b + W_r x[v]."""

    def __init__(self, in_channels: int, out_channels: int, aggr: str = "mean", bias: bool = True,
                 dtype: Any = None):
        super().__init__()
        d = as_dtype(dtype)
        self.aggr = aggr
        self.lin_l = Linear(in_channels, out_channels, bias=bias, dtype=d)
        self.lin_r = Linear(in_channels, out_channels, bias=False, dtype=d)

    def forward(self, x: Any, graph: Any) -> Array:
        x = as_array(x, "x")
        g = _as_graph(graph, x.shape[0])
        agg, self._saved = ops.graph.aggregate_forward(g, x, self.aggr)
        return self.lin_l(agg) + self.lin_r(x)

    def backward(self, grad_output: Any) -> Array:
        dagg = self.lin_l.backward(grad_output)
        dx, _ = ops.graph.aggregate_backward(dagg, self._saved)
        return dx + self.lin_r.backward(grad_output)


def _gat_graph(graph: Graph) -> Graph:
    """Self-loops removed, then one added per node (PyG's GATConv)."""
    def make():
        src, dst = graph.edge_index.astype(np.int64)
        keep = src != dst
        loops = np.arange(graph.num_nodes)
        return Graph(np.concatenate([np.stack([src[keep], dst[keep]]), np.stack([loops, loops])], axis=1),
                     num_nodes=graph.num_nodes)
    return _cached(graph, "gat", make)


class GATConv(Module):
    """Graph attention (PyG's GATConv), H heads of C channels, dropout 0:
        h = x Wᵀ (N, H, C);  e[u -> v] = leaky_relu(<att_src, h[u]> + <att_dst, h[v]>)
        alpha = edge_softmax(e);  out[v] = sum_u alpha[u -> v] h[u]  (concat the heads or average them) + b
    The logit is one sddmm per head on a[u] = (<att_src, h[u]>, 1), b[v] = (1, <att_dst, h[v]>);
    the weighted sum is one aggregate per head with alpha as the edge weight.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, bias: bool = True, dtype: Any = None):
        super().__init__()
        d = as_dtype(dtype)
        self.heads, self.out_channels, self.concat, self.negative_slope = heads, out_channels, concat, negative_slope
        self.lin = Linear(in_channels, heads * out_channels, bias=False, dtype=d)
        self.lin.weight.data[...] = _glorot((heads * out_channels, in_channels), in_channels, heads * out_channels, d)
        self.att_src = Parameter(_glorot((1, heads, out_channels), heads, out_channels, d))
        self.att_dst = Parameter(_glorot((1, heads, out_channels), heads, out_channels, d))
        self.bias = Parameter(np.zeros(heads * out_channels if concat else out_channels, d)) if bias else None

    def forward(self, x: Any, graph: Any) -> Array:
        x = as_array(x, "x")
        g = _gat_graph(_as_graph(graph, x.shape[0]))
        H, C, N = self.heads, self.out_channels, x.shape[0]
        h = self.lin(x).reshape(N, H, C)                                          # (N, H, C)
        s_src = (h * self.att_src.data).sum(-1)                                   # (N, H)
        s_dst = (h * self.att_dst.data).sum(-1)                                   # (N, H)
        one = np.ones_like(s_src)
        a, sa = ops.graph.sddmm_forward(g, np.stack([s_src, one], -1), np.stack([one, s_dst], -1))  # (E, H)
        e = np.where(a > 0, a, self.negative_slope * a)                           # (E, H)
        alpha, ss = ops.graph.edge_softmax_forward(g, e)                          # (E, H)
        outs, saves = [], []
        for k in range(H):
            o, sv = ops.graph.aggregate_forward(g, h[:, k], "sum", np.ascontiguousarray(alpha[:, k]))
            outs.append(o)
            saves.append(sv)
        out = np.stack(outs, 1)                                                   # (N, H, C)
        out = out.reshape(N, H * C) if self.concat else out.mean(1)
        self._saved = (h, a, sa, ss, saves)
        return out + self.bias.data if self.bias is not None else out

    def backward(self, grad_output: Any) -> Array:
        h, a, sa, ss, saves = self._saved
        N, H, C = h.shape
        g = as_array(grad_output, "grad_output")
        if self.bias is not None:
            self.bias.accumulate(g.sum(axis=0))
        gh = g.reshape(N, H, C) if self.concat else np.repeat(g[:, None, :] / H, H, axis=1)
        dh = np.empty_like(h)
        dalpha = np.empty((a.shape[0], H), h.dtype)
        for k in range(H):
            dh[:, k], dalpha[:, k] = ops.graph.aggregate_backward(np.ascontiguousarray(gh[:, k]), saves[k])
        (de,) = ops.graph.edge_softmax_backward(dalpha, ss)
        da_ = np.where(a > 0, de, self.negative_slope * de)                       # leaky_relu'
        d_src, d_dst = ops.graph.sddmm_backward(da_, sa)                          # (N, H, 2) each
        ds_src, ds_dst = d_src[..., 0], d_dst[..., 1]                             # (N, H)
        self.att_src.accumulate((ds_src[..., None] * h).sum(0, keepdims=True))
        self.att_dst.accumulate((ds_dst[..., None] * h).sum(0, keepdims=True))
        dh += ds_src[..., None] * self.att_src.data + ds_dst[..., None] * self.att_dst.data
        return self.lin.backward(dh.reshape(N, H * C))
