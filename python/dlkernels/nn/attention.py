"""MultiheadAttention: torch.nn.MultiheadAttention's parameters and call, with the backward
written out on top of the scaled_dot_product_attention op and matmul.

Forward (x_q (B, L, E), x_k (B, S, E), x_v (B, S, E) after moving the batch first):
    q = x_q W_qᵀ + b_q,  k = x_k W_kᵀ + b_k,  v = x_v W_vᵀ + b_v     (W_q, W_k, W_v: rows of in_proj_weight)
    split E into H heads of E/H:  q (B, H, L, E/H), k, v (B, H, S, E/H)
    o = sdpa(q, k, v, mask, dropout)                                   (B, H, L, E/H)
    y = merge_heads(o) W_oᵀ + b_o                                      (B, L, E)
Backward (g = dL/dy):
    dW_o += gᵀ o,  db_o += Σ g,  do = g W_o (split into heads) -> sdpa backward -> dq, dk, dv
    dW_q += dqᵀ x_q,  db_q += Σ dq,  dx_q = dq W_q  (and the same for k and v)
    an input passed as several of query, key, value gets the sum of their gradients.

Masks as torch: key_padding_mask (B, S) and attn_mask (L, S) or (B*H, L, S); bool True means
"do not attend" (the opposite of the sdpa op's bool mask), float is added to the scores.
is_causal without attn_mask applies the causal mask; with attn_mask it is a hint, as in torch.
Dropout on the attention probabilities in training mode, seeded from dlkernels.nn.manual_seed's
generator; the backward regenerates the mask from the saved seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from .._arrays import Array, as_array, as_optional, check_float
from ..ops.attention import scaled_dot_product_attention_backward, scaled_dot_product_attention_forward
from .module import Module, Parameter, as_dtype, rng, uniform


class _Linear(Module):
    """out_proj: holds weight and bias under torch's names (out_proj.weight, out_proj.bias)."""

    def __init__(self, n: int, bias: bool, d: np.dtype):
        super().__init__()
        bound = 1 / math.sqrt(n) if n else 0.0
        self.weight = Parameter(uniform((n, n), bound, d))
        self.bias = Parameter(np.zeros(n, d)) if bias else None  # torch zeroes out_proj.bias


def _xavier_uniform(shape: tuple[int, int], d: np.dtype) -> Array:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return uniform(shape, bound, d)


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention (embed_dim = kdim = vdim), returning (output, None)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, dtype: Any = None):
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"num_heads: must divide embed_dim ({embed_dim}), got {num_heads}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {dropout}")
        d = as_dtype(dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj_weight = Parameter(_xavier_uniform((3 * embed_dim, embed_dim), d))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, d)) if bias else None
        self.out_proj = _Linear(embed_dim, bias, d)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")

    # ---- helpers ------------------------------------------------------------------------------
    def _batch_first(self, x: Array) -> Array:
        """(B, T, E) view of an input given as (T, B, E), (B, T, E) or unbatched (T, E)."""
        if self._unbatched:
            return x[None]
        return x if self.batch_first else x.swapaxes(0, 1)

    def _from_batch_first(self, y: Array) -> Array:
        if self._unbatched:
            return y[0]
        return y if self.batch_first else y.swapaxes(0, 1)

    def _w(self, i: int) -> tuple[Array, Array | None]:
        E = self.embed_dim
        w = self.in_proj_weight.data[i * E:(i + 1) * E]
        b = None if self.in_proj_bias is None else self.in_proj_bias.data[i * E:(i + 1) * E]
        return w, b

    def _heads(self, x: Array) -> Array:
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).swapaxes(1, 2)  # (B, H, T, hd)

    def _mask(self, key_padding_mask: Any, attn_mask: Any, is_causal: bool, B: int, L: int, S: int,
              dtype: np.dtype) -> tuple[Array | None, bool]:
        """The sdpa op's (attn_mask, is_causal): bool True = takes part, float added."""
        kpm = as_optional(key_padding_mask, "key_padding_mask")
        am = as_optional(attn_mask, "attn_mask")
        H = self.num_heads
        parts = []
        if kpm is not None:
            if self._unbatched and kpm.ndim == 1:
                kpm = kpm[None]
            if kpm.shape != (B, S):
                raise ValueError(f"key_padding_mask: expected shape {(B, S)}, got {tuple(kpm.shape)}")
            parts.append(kpm.reshape(B, 1, 1, S))
        if am is not None:
            if am.shape == (L, S):
                parts.append(am)
            elif am.shape == (B * H, L, S):
                parts.append(am.reshape(B, H, L, S))
            else:
                raise ValueError(f"attn_mask: expected shape {(L, S)} or {(B * H, L, S)}, got {tuple(am.shape)}")
        elif is_causal:
            if kpm is None:
                return None, True
            parts.append(~np.tril(np.ones((L, S), bool)))
        for p, name in zip(parts, ("key_padding_mask", "attn_mask")):
            if p.dtype != np.bool_ and p.dtype.kind != "f":
                raise TypeError(f"{name}: expected a bool or float mask, got {p.dtype}")
        if not parts:
            return None, False
        if all(p.dtype == np.bool_ for p in parts):
            allowed = ~parts[0]
            for p in parts[1:]:
                allowed = allowed & ~p
            return allowed, False
        total = None
        for p in parts:
            f = np.where(p, -np.inf, 0.0).astype(dtype) if p.dtype == np.bool_ else p.astype(dtype, copy=False)
            total = f if total is None else total + f
        return total, False

    # ---- forward / backward -------------------------------------------------------------------
    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = False,
                attn_mask: Any = None, is_causal: bool = False) -> tuple[Array, None]:
        if need_weights:
            raise ValueError("need_weights: dlkernels' attention never forms the attention weights; pass False")
        xq, xk, xv = as_array(query, "query"), as_array(key, "key"), as_array(value, "value")
        check_float(xq, "query")
        E = self.embed_dim
        for a, n in ((xq, "query"), (xk, "key"), (xv, "value")):
            if a.ndim not in (2, 3) or a.shape[-1] != E:
                raise ValueError(f"{n}: expected shape (L, B, {E}), (B, L, {E}) or (L, {E}), got {tuple(a.shape)}")
            if a.dtype != self.in_proj_weight.data.dtype:
                raise TypeError(f"{n}: expected dtype {self.in_proj_weight.data.dtype} (the parameters'), "
                                f"got {a.dtype}")
        if not xq.ndim == xk.ndim == xv.ndim:
            raise ValueError("query, key, value: expected the same number of dims")
        if xk.shape != xv.shape:
            raise ValueError(f"value: expected the shape of key {tuple(xk.shape)}, got {tuple(xv.shape)}")
        self._unbatched = xq.ndim == 2
        self._same = (key is query, value is query, value is key)
        xq, xk, xv = self._batch_first(xq), self._batch_first(xk), self._batch_first(xv)
        B, L, _ = xq.shape
        S = xk.shape[1]
        if xk.shape[0] != B:
            raise ValueError(f"key: expected batch size {B} (query's), got {xk.shape[0]}")
        mask, causal = self._mask(key_padding_mask, attn_mask, bool(is_causal), B, L, S, xq.dtype)
        proj = []
        for i, x in enumerate((xq, xk, xv)):
            w, b = self._w(i)
            y = ops.matmul.matmul(x, w.T)                                 # (B, T, E)
            proj.append(self._heads(y + b if b is not None else y))      # (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        seed = int(rng().integers(0, 2 ** 63)) if p > 0 else 0
        o, saved = scaled_dot_product_attention_forward(proj[0], proj[1], proj[2], mask, p, causal, seed=seed)
        o = np.ascontiguousarray(o.swapaxes(1, 2)).reshape(B, L, E)    # (B, L, E) heads merged
        y = ops.matmul.matmul(o, self.out_proj.weight.data.T)           # (B, L, E)
        if self.out_proj.bias is not None:
            y = y + self.out_proj.bias.data
        self._x, self._o, self._saved = (xq, xk, xv), o, saved
        return self._from_batch_first(y), None

    def backward(self, grad_output: Any) -> tuple[Array, Array, Array]:
        """(grad_query, grad_key, grad_value) in the inputs' layout; accumulates the parameters'
        .grad. An array passed as several of query, key, value gets, in each of its slots,
        the sum of the gradients of its uses (its total gradient)."""
        g = as_array(grad_output, "grad_output")
        g = self._batch_first(g)
        B, L, E = self._o.shape
        if g.shape != (B, L, E):
            raise ValueError(f"grad_output: expected shape {(B, L, E)} batch first, got {tuple(g.shape)}")
        g2 = g.reshape(-1, E)
        self.out_proj.weight.accumulate(ops.matmul.matmul(g2.T, self._o.reshape(-1, E)))  # dW_o = gᵀ o
        if self.out_proj.bias is not None:
            self.out_proj.bias.accumulate(g2.sum(axis=0))
        do = self._heads(ops.matmul.matmul(g, self.out_proj.weight.data))  # (B, H, L, hd)
        grads = scaled_dot_product_attention_backward(do, self._saved, (True, True, True, False))[:3]
        dW = np.zeros_like(self.in_proj_weight.data)
        db = None if self.in_proj_bias is None else np.zeros_like(self.in_proj_bias.data)
        dx = []
        for i, (gh, x) in enumerate(zip(grads, self._x)):
            dy = np.ascontiguousarray(gh.swapaxes(1, 2)).reshape(x.shape[0], x.shape[1], E)  # (B, T, E)
            dy2 = dy.reshape(-1, E)
            dW[i * E:(i + 1) * E] = ops.matmul.matmul(dy2.T, x.reshape(-1, E))  # dW_i = dyᵀ x
            if db is not None:
                db[i * E:(i + 1) * E] = dy2.sum(axis=0)
            dx.append(ops.matmul.matmul(dy, self._w(i)[0]))  # dx = dy W_i
        self.in_proj_weight.accumulate(dW)
        if self.in_proj_bias is not None:
            self.in_proj_bias.accumulate(db)
        kq, vq, vk = self._same
        dq, dk, dv = dx
        if kq and vq:
            dq = dk = dv = dq + dk + dv
        elif kq:
            dq = dk = dq + dk
        elif vq:
            dq = dv = dq + dv
        elif vk:
            dk = dv = dk + dv
        back = {id(d): self._from_batch_first(d) for d in (dq, dk, dv)}
        return back[id(dq)], back[id(dk)], back[id(dv)]
