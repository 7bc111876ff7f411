"""dlkernels for PyTorch: drop-in functions and modules over the hand-written kernels.

    import dlkernels.torch as dlt
    y = dlt.conv2d(x, w, b, padding=1)        # as torch.nn.functional.conv2d
    layer = dlt.Conv2d(3, 16, 3)              # a torch.nn.Conv2d; loads its state_dict

Every op is a torch.library custom op in the `dlkernels` namespace whose autograd calls the
hand-written backward. CPU tensors cross as NumPy views, CUDA tensors by DLPack: no copies.
"""

from .attention import scaled_dot_product_attention
from .conv import Conv1d, Conv2d, conv1d, conv2d
from .graph import scatter, spmm
from .lstm import LSTM, LSTMCell, lstm_cell, lstm_layer

__all__ = ["scaled_dot_product_attention", "lstm_cell", "lstm_layer", "LSTMCell", "LSTM", "conv1d", "conv2d",
           "Conv1d", "Conv2d", "scatter", "spmm"]
