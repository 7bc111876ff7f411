"""MSELoss and CrossEntropyLoss: calling one returns the loss as a float; backward()
returns the gradient of the loss with respect to the prediction (logits)."""

from __future__ import annotations

from typing import Any

from .._arrays import Array, as_array, check_index, xp
from .module import Module


def _reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    return reduction


class MSELoss(Module):
    """mean((input - target)²); backward: 2 (input - target) / numel."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _reduction(reduction)

    def forward(self, input: Any, target: Any) -> float:
        x, t = as_array(input, "input"), as_array(target, "target")
        if x.shape != t.shape:
            raise ValueError(f"target: expected shape {tuple(x.shape)} (the input's), got {tuple(t.shape)}")
        self._diff = x - t
        loss = (self._diff * self._diff).sum()
        return float(loss / x.size if self.reduction == "mean" else loss)

    def backward(self, grad_output: float = 1.0) -> Array:
        scale = 2.0 * grad_output / (self._diff.size if self.reduction == "mean" else 1)
        return self._diff * scale


class CrossEntropyLoss(Module):
    """-log softmax(logits)[target]; logits (N, C), target (N,) integer classes.

    backward: (softmax(logits) - onehot(target)) / N (without the /N for reduction='sum').
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _reduction(reduction)

    def forward(self, input: Any, target: Any) -> float:
        z, y = as_array(input, "input"), as_array(target, "target")
        check_index(y, "target")
        if z.ndim != 2 or y.shape != z.shape[:1]:
            raise ValueError(f"target: expected shape ({z.shape[0]},) for logits of shape {tuple(z.shape)}, "
                             f"got {tuple(y.shape)}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
            raise IndexError(f"target: class indices must be in [0, {z.shape[1]}), "
                             f"got [{int(y.min())}, {int(y.max())}]")
        m = xp(z)
        shifted = z - z.max(axis=1, keepdims=True)  # stable log-softmax
        logp = shifted - m.log(m.exp(shifted).sum(axis=1, keepdims=True))
        rows = m.arange(z.shape[0])
        self._p, self._y = m.exp(logp), y
        loss = -logp[rows, y].sum()
        return float(loss / z.shape[0] if self.reduction == "mean" else loss)

    def backward(self, grad_output: float = 1.0) -> Array:
        g = self._p.copy()
        g[xp(g).arange(g.shape[0]), self._y] -= 1
        return g * (grad_output / (g.shape[0] if self.reduction == "mean" else 1))
