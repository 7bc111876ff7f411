"""SGD (momentum, Nesterov, weight decay) and Adam, with torch.optim's update formulas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .nn.module import Parameter


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("params: the optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"lr: expected a value >= 0, got {lr}")
        self.lr = lr
        self.state: dict[int, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + wd·p; buf = μ·buf + (1-dampening)·g; p -= lr·(g + μ·buf if nesterov else buf)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening, self.weight_decay, self.nesterov = momentum, dampening, weight_decay, nesterov

    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                st = self.state.setdefault(id(p), {})
                if "buf" not in st:
                    st["buf"] = g.copy()
                else:
                    st["buf"] *= self.momentum
                    st["buf"] += (1 - self.dampening) * g
                g = g + self.momentum * st["buf"] if self.nesterov else st["buf"]
            p.data -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam: m, v moving averages of g and g², bias-corrected; p -= lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + ε)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: expected values in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def step(self) -> None:
        b1, b2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            st = self.state.setdefault(id(p), {"t": 0, "m": 0 * p.data, "v": 0 * p.data})
            st["t"] += 1
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            step_size = self.lr / (1 - b1 ** st["t"])
            denom = (st["v"] ** 0.5) / ((1 - b2 ** st["t"]) ** 0.5) + self.eps
            p.data -= step_size * (st["m"] / denom)
