"""scaled_dot_product_attention for PyTorch, over dlkernels' hand-written forward and backward.

Registered as the torch.library custom ops dlkernels::scaled_dot_product_attention (returns the
output and the row log-sum-exp) and dlkernels::scaled_dot_product_attention_backward, with
register_fake and register_autograd: opcheck, gradcheck and torch.compile(fullgraph=True).
With dropout, seed=None draws the seed from torch's generator with a tensor op
(torch.randint, so torch.manual_seed makes it reproducible and torch.compile(fullgraph=True)
traces it without a graph break); the seed travels to the custom ops as a 0-d int64 tensor
(a seed in [2**63, 2**64) as its two's-complement value), and the backward regenerates the
forward's mask from it.
"""


import numpy as np
import torch

from ..ops import attention as A
from . import _bridge as B


def _batch(q: torch.Tensor, k: torch.Tensor, enable_gqa: bool) -> tuple[int, ...]:
    kb = list(k.shape[:-2])
    if enable_gqa and kb:
        kb[-1] = q.shape[-3]
    return tuple(torch.broadcast_shapes(tuple(q.shape[:-2]), tuple(kb)))


def _seed_int(seed: torch.Tensor) -> int:
    """The 0-d int64 seed tensor as the generator's unsigned 64-bit seed."""
    if seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError(f"seed: expected a 0-d int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
    return int(seed.reshape(())) % 2 ** 64


def _seed_tensor(seed, dropout_p: float) -> torch.Tensor:
    if seed is None:  # a tensor op: traced by torch.compile, no .item() graph break
        if dropout_p > 0:
            return torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64, device="cpu")
        return torch.zeros((), dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        return seed.to(torch.int64).reshape(())
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed: expected None or an int in [0, 2**64), got {seed!r}")
    seed = int(seed)
    return torch.tensor(seed - 2 ** 64 if seed >= 2 ** 63 else seed, dtype=torch.int64)


def _arrays(*ts):
    return [None if t is None else B.to_array(t.contiguous(), n) for t, n in ts]


@torch.library.custom_op("dlkernels::scaled_dot_product_attention", mutates_args=())
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float,
          is_causal: bool, scale: float | None, enable_gqa: bool, seed: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (..., L, Ev), lse (..., L)); seed: a 0-d int64 tensor."""
    qa, ka, va, ma = _arrays((q, "query"), (k, "key"), (v, "value"), (attn_mask, "attn_mask"))
    out, saved = A.scaled_dot_product_attention_forward(qa, ka, va, ma, dropout_p, is_causal, scale, enable_gqa,
                                                        _seed_int(seed))
    return B.to_tensor(np.ascontiguousarray(out)), B.to_tensor(saved.lse.reshape(saved.batch + (q.shape[-2],)))


@_sdpa.register_fake
def _(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed):
    batch = _batch(q, k, enable_gqa)
    return q.new_empty(batch + (q.shape[-2], v.shape[-1])), q.new_empty(batch + (q.shape[-2],))


@torch.library.custom_op("dlkernels::scaled_dot_product_attention_backward", mutates_args=())
def _sdpa_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float, is_causal: bool,
                   scale: float | None, enable_gqa: bool, seed: torch.Tensor, mask_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dmask); dmask has 0 elements unless mask_grad."""
    g, qa, ka, va, oa, la, ma = _arrays((grad, "grad_output"), (q, "query"), (k, "key"), (v, "value"), (out, "out"),
                                        (lse, "lse"), (attn_mask, "attn_mask"))
    p = A._prepare(qa, ka, va, ma, dropout_p, is_causal, scale, enable_gqa, _seed_int(seed))
    Z, L = p.q.shape[:2]
    saved = p._replace(out=oa.reshape(Z, L, -1), lse=la.reshape(Z, L))
    dq, dk, dv, dm = A.scaled_dot_product_attention_backward(g, saved, (True, True, True, mask_grad))
    dm = q.new_empty(0) if dm is None else B.to_tensor(np.ascontiguousarray(dm))
    return tuple(B.to_tensor(np.ascontiguousarray(a)) for a in (dq, dk, dv)) + (dm,)


@_sdpa_backward.register_fake
def _(grad, q, k, v, out, lse, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed, mask_grad):
    dm = attn_mask.new_empty(attn_mask.shape) if mask_grad and attn_mask is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dm


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_mask, seed)
    ctx.args = (dropout_p, is_causal, scale, enable_gqa)
    ctx.mask_grad = attn_mask is not None and attn_mask.dtype != torch.bool and ctx.needs_input_grad[3]


def _backward(ctx, grad, grad_lse):
    q, k, v, out, lse, attn_mask, seed = ctx.saved_tensors
    dq, dk, dv, dm = torch.ops.dlkernels.scaled_dot_product_attention_backward(
        grad, q, k, v, out, lse, attn_mask, *ctx.args, seed, ctx.mask_grad)
    return dq, dk, dv, (dm if ctx.mask_grad else None), None, None, None, None, None


_sdpa.register_autograd(_backward, setup_context=_setup_context)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                                 seed: int | None = None) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention on dlkernels' kernels (plus `seed` for dropout)."""
    return _sdpa(query, key, value, attn_mask, float(dropout_p), bool(is_causal), scale, bool(enable_gqa),
                 _seed_tensor(seed, float(dropout_p)))[0]
