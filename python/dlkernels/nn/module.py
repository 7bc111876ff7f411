"""Module, Parameter and Sequential: torch.nn's shape, with the backward written out.

A Module's forward keeps what its backward needs; `backward(grad_output)` returns the
gradient of the input and adds the parameters' gradients into their `.grad`. There is no
autograd graph: each layer calls its op's hand-written backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .._arrays import Array, xp

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initializes parameters (and dropout masks of layers)."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _rng


def as_dtype(dtype: Any) -> np.dtype:
    """np.dtype of float32/float64 given as NumPy, string or torch dtype."""
    if dtype is None:
        d = np.dtype(np.float32)
    elif type(dtype).__module__.startswith("torch"):
        d = np.dtype(str(dtype).removeprefix("torch."))
    else:
        d = np.dtype(dtype)
    if d not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {d}")
    return d


def uniform(shape: tuple[int, ...], bound: float, dtype: np.dtype) -> Array:
    """U(-bound, bound), torch's default init for Linear, Conv and LSTM parameters."""
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


class Parameter:
    """A trainable array (.data) and its accumulated gradient (.grad, None until a backward)."""

    def __init__(self, data: Array):
        self.data = data
        self.grad: Array | None = None

    def accumulate(self, grad: Array | None) -> None:
        if grad is None:
            return
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=True)
        else:
            self.grad += grad

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: children and parameters are found by attribute, in assignment order.

    Subclasses define forward(*inputs) and backward(grad_output) -> grad_input.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif value is None and name in self._parameters:
            self._parameters[name] = None  # e.g. bias=False keeps torch's key order
        object.__setattr__(self, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters, keyed by torch.nn's names ("0.weight")."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays (any library with __dlpack__ or NumPy-convertible) into the parameters,
        cast to each parameter's dtype, as torch does."""
        own = dict(self.named_parameters())
        if strict:
            missing, unexpected = own.keys() - state_dict.keys(), state_dict.keys() - own.keys()
            if missing or unexpected:
                raise ValueError(f"state_dict: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
        for name, value in state_dict.items():
            if name not in own:
                continue
            p = own[name]
            arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            if arr.shape != p.data.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {p.data.shape}, got {arr.shape}")
            p.data[...] = xp(p.data).asarray(arr, dtype=p.data.dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(lines) + "\n)" if lines else ")")


class Sequential(Module):
    """Runs its modules in order; backward runs their backward in reverse."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output: Any) -> Any:
        for m in reversed(list(self._modules.values())):
            grad_output = m.backward(grad_output)
        return grad_output
