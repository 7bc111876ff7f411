"""dlkernels: hand-written deep-learning kernels with hand-written backward passes.

Ops take NumPy arrays (CPU backends), CuPy arrays (CUDA backend) or anything with
__dlpack__ (viewed without a copy) and return results in the caller's library.
Each op `x` has `x(...)` (forward), `x_forward(...) -> (outputs, saved)` and
`x_backward(grads, saved)`; see the README and CONTRACT for the list.
"""

from __future__ import annotations

from . import _cpp, _registry, nn, optim
from ._registry import backend, current_backend, kernels
from ._threads import get_num_threads, set_num_threads
from .ops.attention import (
    AttentionSaved,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from .ops.conv import ConvSaved, conv1d, conv1d_backward, conv1d_forward, conv2d, conv2d_backward, conv2d_forward
from .ops.graph import (
    AggregateSaved,
    EdgeSoftmaxSaved,
    Graph,
    ScatterSaved,
    SddmmSaved,
    aggregate,
    aggregate_backward,
    aggregate_forward,
    edge_softmax,
    edge_softmax_backward,
    edge_softmax_forward,
    scatter,
    scatter_backward,
    scatter_forward,
    sddmm,
    sddmm_backward,
    sddmm_forward,
)
from .ops.lstm import LSTMSaved, lstm, lstm_backward, lstm_cell, lstm_cell_backward, lstm_cell_forward, lstm_forward
from .ops.matmul import MatmulSaved, matmul, matmul_backward, matmul_forward

__version__ = "0.1.0"


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_available() -> bool:
    from ._arrays import cupy_module
    cp = cupy_module()
    try:
        return cp is not None and cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


_registry.set_availability("reference", lambda: True)
_registry.set_availability("numba", _numba_available)
_registry.set_availability("cpp", _cpp.available)
_registry.set_availability("cuda", _cuda_available)

__all__ = [
    "scaled_dot_product_attention", "scaled_dot_product_attention_forward", "scaled_dot_product_attention_backward",
    "AttentionSaved",
    "nn", "optim",
    "backend", "current_backend", "kernels", "get_num_threads", "set_num_threads",
    "matmul", "matmul_forward", "matmul_backward", "MatmulSaved",
    "conv1d", "conv1d_forward", "conv1d_backward", "conv2d", "conv2d_forward", "conv2d_backward", "ConvSaved",
    "lstm", "lstm_forward", "lstm_backward", "lstm_cell", "lstm_cell_forward", "lstm_cell_backward", "LSTMSaved",
    "Graph", "aggregate", "aggregate_forward", "aggregate_backward", "AggregateSaved",
    "scatter", "scatter_forward", "scatter_backward", "ScatterSaved", "sddmm", "sddmm_forward", "sddmm_backward",
    "SddmmSaved", "edge_softmax", "edge_softmax_forward", "edge_softmax_backward", "EdgeSoftmaxSaved",
]
