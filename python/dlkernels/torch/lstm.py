"""lstm_cell, LSTMCell and LSTM for PyTorch, over dlkernels' hand-written LSTM kernels.

One custom op pair carries everything: dlkernels::lstm (one layer, one direction, time-major;
it also returns the activated gates and cell states the backward needs, as tensors, so that
torch.compile can trace and save them) and dlkernels::lstm_backward (the hand-written BPTT).
lstm_cell is dlkernels::lstm with T = 1. LSTM runs layer by layer and direction by
direction; a reverse direction reads each sequence backwards within its own length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .._registry import dispatch
from . import _bridge as B


def _arrays(*pairs):
    return [B.to_array(t.contiguous() if t is not None else None, n) for t, n in pairs]


@torch.library.custom_op("dlkernels::lstm", mutates_args=())
def _lstm(x: torch.Tensor, hx: torch.Tensor, cx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
          b_ih: torch.Tensor | None, b_hh: torch.Tensor | None, w_hr: torch.Tensor | None,
          lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y (T, B, P), h_n, c_n, gates (T, B, 4H), c (T, B, H)); x is time-major."""
    b = None
    if b_ih is not None or b_hh is not None:
        b = (b_ih if b_ih is not None else 0) + (b_hh if b_hh is not None else 0)
    xa, ha, ca, wi, wh, ba, wr = _arrays((x, "input"), (hx, "hx"), (cx, "cx"), (w_ih, "w_ih"), (w_hh, "w_hh"),
                                         (b, "bias"), (w_hr, "w_hr"))
    L = None if lengths is None else B.to_array(lengths.to(torch.int64).contiguous(), "lengths")
    outs = dispatch("lstm", "forward", "cpu", xa, ha, ca, wi, wh, ba, wr, L)
    return tuple(torch.from_numpy(a) for a in outs)


@_lstm.register_fake
def _(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    T, Bn, _ = x.shape
    H, P = cx.shape[1], hx.shape[1]
    return (x.new_empty((T, Bn, P)), x.new_empty((Bn, P)), x.new_empty((Bn, H)), x.new_empty((T, Bn, 4 * H)),
            x.new_empty((T, Bn, H)))


@torch.library.custom_op("dlkernels::lstm_backward", mutates_args=())
def _lstm_backward(dy: torch.Tensor, dh_n: torch.Tensor, dc_n: torch.Tensor, x: torch.Tensor, hx: torch.Tensor,
                   cx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, w_hr: torch.Tensor | None,
                   lengths: torch.Tensor | None, gates: torch.Tensor, c: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    """(dx, dhx, dcx, dw_ih, dw_hh, db, dw_hr); dw_hr has 0 elements without w_hr."""
    arrays = _arrays((dy, "grad_output"), (dh_n, "grad_h_n"), (dc_n, "grad_c_n"), (x, "input"), (hx, "hx"),
                     (cx, "cx"), (w_ih, "w_ih"), (w_hh, "w_hh"), (w_hr, "w_hr"))
    L = None if lengths is None else B.to_array(lengths.to(torch.int64).contiguous(), "lengths")
    rest = _arrays((gates, "gates"), (c, "c"), (y, "output"))
    grads = dispatch("lstm", "backward", "cpu", *arrays, L, *rest)
    out = [torch.from_numpy(a) if a is not None else None for a in grads]
    if out[6] is None:
        out[6] = x.new_empty(0)
    return tuple(out)


@_lstm_backward.register_fake
def _(dy, dh_n, dc_n, x, hx, cx, w_ih, w_hh, w_hr, lengths, gates, c, y):
    return (torch.empty_like(x), torch.empty_like(hx), torch.empty_like(cx), torch.empty_like(w_ih),
            torch.empty_like(w_hh), x.new_empty((w_hh.shape[0],)),
            torch.empty_like(w_hr) if w_hr is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = inputs
    y, _, _, gates, c = output
    ctx.save_for_backward(x, hx, cx, w_ih, w_hh, w_hr, lengths, gates, c, y)
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.mark_non_differentiable(gates, c)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dc):
    x, hx, cx, w_ih, w_hh, w_hr, lengths, gates, c, y = ctx.saved_tensors
    dy = dy if dy is not None else torch.zeros_like(y)
    dh_n = dh_n if dh_n is not None else torch.zeros_like(hx)
    dc_n = dc_n if dc_n is not None else torch.zeros_like(cx)
    dx, dhx, dcx, dwi, dwh, db, dwr = torch.ops.dlkernels.lstm_backward(dy, dh_n, dc_n, x, hx, cx, w_ih, w_hh,
                                                                        w_hr, lengths, gates, c, y)
    return (dx, dhx, dcx, dwi, dwh, db if ctx.has_bias[0] else None, db.clone() if ctx.has_bias[1] else None,
            dwr if w_hr is not None else None, None)


_lstm.register_autograd(_backward, setup_context=_setup_context)


def _check(input: torch.Tensor, hx: torch.Tensor, cx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
           b_ih: torch.Tensor | None, b_hh: torch.Tensor | None, w_hr: torch.Tensor | None) -> None:
    B.check_tensor(input, "input")
    for t, n in ((hx, "hx"), (cx, "cx"), (w_ih, "w_ih"), (w_hh, "w_hh"), (b_ih, "b_ih"), (b_hh, "b_hh"),
                 (w_hr, "w_hr")):
        if t is not None:
            B.check_tensor(t, n, like=input)
    H = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    P = w_hh.shape[1]
    I = input.shape[-1]
    want = {"w_ih": (4 * H, I), "w_hh": (4 * H, P), "b_ih": (4 * H,), "b_hh": (4 * H,)}
    for t, n in ((w_ih, "w_ih"), (w_hh, "w_hh"), (b_ih, "b_ih"), (b_hh, "b_hh")):
        if t is not None and tuple(t.shape) != want[n]:
            raise ValueError(f"{n}: expected shape {want[n]}, got {tuple(t.shape)}")


def lstm_layer(input: torch.Tensor, hx: torch.Tensor, cx: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
               b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None,
               w_hr: torch.Tensor | None = None, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One layer, one direction, time-major input (T, B, I): dlkernels.lstm for torch tensors."""
    _check(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    T, Bn, _ = input.shape
    if tuple(hx.shape) != (Bn, w_hh.shape[1]) or tuple(cx.shape) != (Bn, w_hh.shape[0] // 4):
        raise ValueError(f"hx, cx: expected shapes {(Bn, w_hh.shape[1])} and {(Bn, w_hh.shape[0] // 4)}, "
                         f"got {tuple(hx.shape)} and {tuple(cx.shape)}")
    y, h, c, _, _ = torch.ops.dlkernels.lstm(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    return y, (h, c)


def lstm_cell(input: torch.Tensor, hx: torch.Tensor | None, cx: torch.Tensor | None, w_ih: torch.Tensor,
              w_hh: torch.Tensor, b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """dlkernels.lstm_cell for torch tensors: one torch.nn.LSTMCell step, (h, c); input (B, I) or (I,)."""
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    if x.dim() != 2:
        raise ValueError(f"input: expected a 1-D or 2-D tensor, got shape {tuple(input.shape)}")
    H = w_hh.shape[1]
    hx = x.new_zeros(x.shape[0], H) if hx is None else (hx.unsqueeze(0) if unbatched else hx)
    cx = x.new_zeros(x.shape[0], H) if cx is None else (cx.unsqueeze(0) if unbatched else cx)
    y, (_, c) = lstm_layer(x.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh)
    h = y[0]
    return (h[0], c[0]) if unbatched else (h, c)


class LSTMCell(torch.nn.LSTMCell):
    """torch.nn.LSTMCell whose forward runs dlkernels; same parameters, same state_dict."""

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        h0, c0 = (None, None) if hx is None else hx
        return lstm_cell(input, h0, c0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


def _reverse_index(T: int, Bn: int, lengths: torch.Tensor | None, device: Any) -> torch.Tensor:
    """(T, B) time index reversing each sequence within its own length."""
    t = torch.arange(T, device=device)[:, None]
    if lengths is None:
        return (T - 1 - t).expand(T, Bn)
    L = lengths.to(device)[None, :]
    return torch.where(t < L, L - 1 - t, t)


class LSTM(torch.nn.LSTM):
    """torch.nn.LSTM whose forward runs dlkernels (any num_layers, bidirectional, batch_first, dropout,
    proj_size); loads a torch.nn.LSTM state_dict unchanged. Accepts a PackedSequence as torch's does,
    and also padded input with `lengths` (any order)."""

    def forward(self, input: Any, hx: tuple[torch.Tensor, torch.Tensor] | None = None,
                lengths: torch.Tensor | None = None):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, B, I), original batch order
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got shape {tuple(x.shape)}")
        unbatched = not packed and x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first and not packed:
            x = x.transpose(0, 1)
        T, Bn, _ = x.shape
        D = 2 if self.bidirectional else 1
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.int64)
            if lengths.shape != (Bn,) or (Bn and (int(lengths.min()) < 0 or int(lengths.max()) > T)):
                raise ValueError(f"lengths: expected {Bn} lengths in [0, {T}]")
        if hx is None:
            h0 = x.new_zeros(self.num_layers * D, Bn, P)
            c0 = x.new_zeros(self.num_layers * D, Bn, H)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        rev = _reverse_index(T, Bn, lengths, x.device)[:, :, None] if D == 2 else None
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = torch.nn.functional.dropout(x, self.dropout, True)
            outs = []
            for di in range(D):
                sfx = "_reverse" if di else ""
                w = [getattr(self, f"{n}_l{layer}{sfx}", None)
                     for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
                xd = torch.gather(x, 0, rev.expand(T, Bn, x.shape[2])) if di else x
                s = layer * D + di
                y, (h, c) = lstm_layer(xd.contiguous(), h0[s], c0[s], *w, lengths=lengths)
                outs.append(torch.gather(y, 0, rev.expand(T, Bn, P)) if di else y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, 2) if D == 2 else outs[0]
        hn, cn = torch.stack(h_n), torch.stack(c_n)
        if packed:
            idx_t, idx_b = [], []
            sorted_idx = input.sorted_indices
            for t, bs in enumerate(input.batch_sizes.tolist()):
                idx_t += [t] * bs
                idx_b += (sorted_idx[:bs].tolist() if sorted_idx is not None else list(range(bs)))
            data = x[torch.tensor(idx_t), torch.tensor(idx_b)]
            return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (hn, cn)
        if unbatched:
            return x[:, 0], (hn[:, 0], cn[:, 0])
        return (x.transpose(0, 1) if self.batch_first else x), (hn, cn)
