"""LSTMCell and LSTM: torch.nn's constructor arguments, parameter names and init, with the
backward written out (each layer and direction calls the lstm op's hand-written BPTT).

Parameters, as torch.nn names them (so a torch state_dict loads unchanged):
    LSTMCell: weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh (4H,)
    LSTM:     weight_ih_l{k}{sfx} (4H, I_k), weight_hh_l{k}{sfx} (4H, P), bias_ih_l{k}{sfx},
              bias_hh_l{k}{sfx} (4H,), weight_hr_l{k}{sfx} (P, H) with proj_size; sfx is ''
              or '_reverse'; I_0 = input_size, I_k = D·P (D = 2 if bidirectional else 1).
backward(grad) returns the input's gradient; the initial state's is left in `grad_hx`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._arrays import Array, as_array
from ..ops import lstm as ops_lstm
from .module import Module, Parameter, as_dtype, rng, uniform


class LSTMCell(Module):
    """torch.nn.LSTMCell: forward(input, hx=None) -> (h, c); backward((grad_h, grad_c)) -> grad_input."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = None):
        super().__init__()
        d, k = as_dtype(dtype), 1 / math.sqrt(hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = Parameter(uniform((4 * hidden_size, input_size), k, d))
        self.weight_hh = Parameter(uniform((4 * hidden_size, hidden_size), k, d))
        self.bias_ih = Parameter(uniform((4 * hidden_size,), k, d)) if bias else None
        self.bias_hh = Parameter(uniform((4 * hidden_size,), k, d)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"

    def forward(self, input: Any, hx: Any = None) -> tuple[Array, Array]:
        h0, c0 = (None, None) if hx is None else hx
        b = [p.data if p is not None else None for p in (self.bias_ih, self.bias_hh)]
        out, self._saved = ops_lstm.lstm_cell_forward(input, h0, c0, self.weight_ih.data, self.weight_hh.data, *b)
        return out

    def backward(self, grad_output: Any) -> Array:
        """grad_output: (grad_h, grad_c), either may be None; or grad_h alone."""
        grads = grad_output if isinstance(grad_output, tuple) else (grad_output, None)
        dx, dh0, dc0, dwi, dwh, dbi, dbh = ops_lstm.lstm_cell_backward(grads, self._saved)
        for p, g in ((self.weight_ih, dwi), (self.weight_hh, dwh), (self.bias_ih, dbi), (self.bias_hh, dbh)):
            if p is not None:
                p.accumulate(g)
        self.grad_hx = (dh0, dc0)
        return dx


def reverse_index(T: int, B: int, lengths: np.ndarray | None) -> np.ndarray:
    """(T, B) time index that reverses each sequence within its own length (an involution)."""
    t = np.arange(T)[:, None]
    if lengths is None:
        return np.broadcast_to(T - 1 - t, (T, B))
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


class LSTM(Module):
    """torch.nn.LSTM (num_layers, bias, batch_first, dropout, bidirectional, proj_size).

    forward(input, hx=None, lengths=None) -> (output, (h_n, c_n)); input (T, B, I), (B, T, I)
    with batch_first, or unbatched (T, I); lengths (B,) in any order (see dlkernels.lstm).
    backward(grad_output or (grad_output, (grad_h_n, grad_c_n))) -> grad_input.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, dtype: Any = None):
        super().__init__()
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout}")
        if proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise ValueError(f"proj_size: expected 0 or a size below hidden_size ({hidden_size}), got {proj_size}")
        d, k = as_dtype(dtype), 1 / math.sqrt(hidden_size)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        H, P, D = hidden_size, proj_size or hidden_size, 2 if bidirectional else 1
        for layer in range(num_layers):
            for sfx in ("", "_reverse")[:D]:
                n_in = input_size if layer == 0 else P * D
                setattr(self, f"weight_ih_l{layer}{sfx}", Parameter(uniform((4 * H, n_in), k, d)))
                setattr(self, f"weight_hh_l{layer}{sfx}", Parameter(uniform((4 * H, P), k, d)))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{sfx}", Parameter(uniform((4 * H,), k, d)))
                    setattr(self, f"bias_hh_l{layer}{sfx}", Parameter(uniform((4 * H,), k, d)))
                if proj_size:
                    setattr(self, f"weight_hr_l{layer}{sfx}", Parameter(uniform((P, H), k, d)))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, proj_size={self.proj_size}")

    def _params(self, layer: int, sfx: str) -> list[Parameter | None]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        return [getattr(self, f"{n}_l{layer}{sfx}", None) for n in names]

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Array, tuple[Array, Array]]:
        x = as_array(input, "input")
        self._unbatched = x.ndim == 2
        if self._unbatched:
            x = x[:, None]
        elif self.batch_first:
            x = x.swapaxes(0, 1)
        T, B, _ = x.shape
        H, P, D = self.hidden_size, self.proj_size or self.hidden_size, 2 if self.bidirectional else 1
        L = ops_lstm._check_lengths(lengths, T, B)
        if hx is not None:
            h0, c0 = (as_array(a, n) for a, n in zip(hx, ("hx[0]", "hx[1]")))
            if self._unbatched:
                h0, c0 = h0[:, None], c0[:, None]
        else:
            h0 = np.zeros((self.num_layers * D, B, P), x.dtype)
            c0 = np.zeros((self.num_layers * D, B, H), x.dtype)
        self._lengths, self._saved, self._masks = L, [], []
        rev = reverse_index(T, B, L)[:, :, None] if D == 2 else None
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                mask = (rng().random(x.shape) >= self.dropout).astype(x.dtype) / (1 - self.dropout)
                x = x * mask
                self._masks.append(mask)
            else:
                self._masks.append(None)
            outs = []
            for di, sfx in enumerate(("", "_reverse")[:D]):
                w = [p.data if p is not None else None for p in self._params(layer, sfx)]
                xd = np.take_along_axis(x, rev, 0) if di == 1 else x
                s = layer * D + di
                (y, (h, c)), saved = ops_lstm.lstm_forward(xd, h0[s], c0[s], *w, lengths=L)
                outs.append(np.take_along_axis(y, rev, 0) if di == 1 else y)
                self._saved.append(saved)
                h_n.append(h)
                c_n.append(c)
            x = np.concatenate(outs, axis=2) if D == 2 else outs[0]
        h_n, c_n = np.stack(h_n), np.stack(c_n)
        if self._unbatched:
            return x[:, 0], (h_n[:, 0], c_n[:, 0])
        return (x.swapaxes(0, 1) if self.batch_first else x), (h_n, c_n)

    def backward(self, grad_output: Any) -> Array:
        if isinstance(grad_output, tuple):
            g_out, (g_h, g_c) = grad_output
        else:
            g_out, g_h, g_c = grad_output, None, None
        D, P = 2 if self.bidirectional else 1, self.proj_size or self.hidden_size
        first = self._saved[0]
        T, B, _ = first.input.shape
        dt = first.input.dtype
        if g_out is None:
            g = np.zeros((T, B, D * P), dt)
        else:
            g = as_array(g_out, "grad_output")
            g = g[:, None] if self._unbatched else (g.swapaxes(0, 1) if self.batch_first else g)
        if g_h is not None and self._unbatched:
            g_h = as_array(g_h, "grad_h_n")[:, None]
        if g_c is not None and self._unbatched:
            g_c = as_array(g_c, "grad_c_n")[:, None]
        rev = reverse_index(T, B, self._lengths)[:, :, None] if D == 2 else None
        dh0 = [None] * (self.num_layers * D)
        dc0 = [None] * (self.num_layers * D)
        for layer in reversed(range(self.num_layers)):
            dx = None
            for di, sfx in enumerate(("", "_reverse")[:D]):
                s = layer * D + di
                gd = g[:, :, di * P:(di + 1) * P]
                gd = np.take_along_axis(gd, rev, 0) if di == 1 else gd
                grads = (gd, None if g_h is None else g_h[s], None if g_c is None else g_c[s])
                dxd, dh0[s], dc0[s], *dw = ops_lstm.lstm_backward(grads, self._saved[s])
                for p, gw in zip(self._params(layer, sfx), dw):
                    if p is not None:
                        p.accumulate(gw)
                dxd = np.take_along_axis(dxd, rev, 0) if di == 1 else dxd
                dx = dxd if dx is None else dx + dxd
            if self._masks[layer] is not None:
                dx = dx * self._masks[layer]
            g = dx
        dh, dc = np.stack(dh0), np.stack(dc0)
        if self._unbatched:
            self.grad_hx = (dh[:, 0], dc[:, 0])
            return g[:, 0]
        self.grad_hx = (dh, dc)
        return g.swapaxes(0, 1) if self.batch_first else g
