"""The graph primitives in C++ (csrc/graph.cpp through dlkernels._C); the kernels are common.py's."""

from __future__ import annotations

from types import SimpleNamespace

from ... import _cpp
from .common import make_kernels


def _c(name: str):
    def call(*args):
        return getattr(_cpp._C, name)(*args)
    call.__name__ = name
    return call


_K = make_kernels("cpp", SimpleNamespace(
    segment_sum=_c("graph_segment_sum"), segment_maxmin=_c("graph_segment_maxmin"), edge_dot=_c("graph_edge_dot"),
    maxmin_backward=_c("graph_maxmin_backward"), softmax_forward=_c("graph_softmax_forward"),
    softmax_backward=_c("graph_softmax_backward")), tiled=True)
aggregate_forward_cpp = _K.aggregate_forward_cpp
aggregate_backward_cpp = _K.aggregate_backward_cpp
sddmm_forward_cpp = _K.sddmm_forward_cpp
sddmm_backward_cpp = _K.sddmm_backward_cpp
edge_softmax_forward_cpp = _K.edge_softmax_forward_cpp
edge_softmax_backward_cpp = _K.edge_softmax_backward_cpp
