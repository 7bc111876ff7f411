"""The layer API: torch.nn's names and shapes, with each layer's backward written out.

    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8*14*14, 10))
    loss = loss_fn(model(x), y)          # forward; the loss is a float
    model.backward(loss_fn.backward())   # hand-written backward; accumulates .grad
"""

from .attention import MultiheadAttention
from .graph import GATConv, GraphConv, SAGEConv
from .layers import Conv1d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from .loss import CrossEntropyLoss, MSELoss
from .lstm import LSTM, LSTMCell
from .module import Module, Parameter, Sequential, manual_seed

__all__ = ["Module", "Parameter", "Sequential", "manual_seed", "Linear", "Conv1d", "Conv2d", "MaxPool2d",
           "ReLU", "Flatten", "LSTMCell", "LSTM", "MSELoss", "CrossEntropyLoss", "GraphConv",
           "SAGEConv", "GATConv", "MultiheadAttention"]
