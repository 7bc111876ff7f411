"""One registry of kernels: (op, direction, backend, variant) -> function.

Every variant of one op and direction takes the same arguments and returns the same
things, so tests and benchmarks loop over all of them. Each op module registers its
kernels in a table at its bottom; choosing among them happens here, once:

1. the backend: the one forced by `with dlkernels.backend(name)` or DLKERNELS_BACKEND,
   else the fastest available for the arrays' device (cpp, numba, reference on the CPU;
   cuda on the GPU). A forced backend that lacks the op or cannot take the input raises.
2. the variant: the one forced by `backend(name, variant=...)` where the op has it, else
   the first variant whose `prefer` gives a reason for this input, else the default.
   A variant whose `supports` refuses the input is skipped, and the skip is logged.

DLKERNELS_VERBOSE=1 logs every choice with its reason on the 'dlkernels' logger.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _env, _threads

log = logging.getLogger("dlkernels")
if _env.VERBOSE:
    log.setLevel(logging.INFO)
    if not log.handlers:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter("dlkernels: %(message)s"))
        log.addHandler(_handler)

BACKENDS = ("reference", "numba", "cpp", "cuda")
DEVICE_OF_BACKEND = {"reference": "cpu", "numba": "cpu", "cpp": "cpu", "cuda": "cuda"}
PREFERENCE = {"cpu": ("cpp", "numba", "reference"), "cuda": ("cuda",)}

# A check takes the kernel's own arguments and returns None (fine) or a reason string.
Check = Callable[..., "str | None"]


@dataclass(frozen=True)
class Kernel:
    op: str
    direction: str  # "forward" | "backward"
    backend: str
    variant: str
    fn: Callable[..., Any]
    default: bool = False
    supports: Check | None = None  # None: takes any input the op accepts
    prefer: Check | None = None  # a reason to choose this over the default for this input

    @property
    def name(self) -> str:
        """`<op>_<direction>_<backend>_<variant>`, the name used everywhere."""
        return f"{self.op}_{self.direction}_{self.backend}_{self.variant}"

    def refuses(self, *args: Any) -> str | None:
        return self.supports(*args) if self.supports else None


class VariantRefused(ValueError):
    """A forced variant cannot take this input (e.g. the depthwise kernel for a dense conv)."""


_REGISTRY: dict[tuple[str, str, str, str], Kernel] = {}
# (op, direction, backend) -> its kernels, defaults first: what every dispatch looks up
_BY_OP: dict[tuple[str, str, str], list[Kernel]] = {}
_AVAILABLE: dict[str, Callable[[], bool]] = {}


def register(op: str, direction: str, backend: str, variant: str, fn: Callable[..., Any], *,
             default: bool = False, supports: Check | None = None, prefer: Check | None = None) -> None:
    assert direction in ("forward", "backward") and backend in BACKENDS
    key = (op, direction, backend, variant)
    assert key not in _REGISTRY, f"kernel registered twice: {key}"
    if default:
        assert not any(k.default for k in kernels(op, direction, backend)), f"two defaults for {key}"
    k = Kernel(op, direction, backend, variant, fn, default, supports, prefer)
    _REGISTRY[key] = k
    same = _BY_OP.setdefault((op, direction, backend), [])
    same.insert(0 if default else len(same), k)


def set_availability(backend: str, check: Callable[[], bool]) -> None:
    _AVAILABLE[backend] = check


def available(backend: str) -> bool:
    check = _AVAILABLE.get(backend)
    return bool(check and check())


def kernels(op: str | None = None, direction: str | None = None, backend: str | None = None) -> list[Kernel]:
    """All registered kernels matching the filters, defaults first, in registration order."""
    if op is not None and direction is not None and backend is not None:
        return list(_BY_OP.get((op, direction, backend), ()))
    found = [k for (o, d, b, _), k in _REGISTRY.items()
             if (op is None or o == op) and (direction is None or d == direction) and (backend is None or b == backend)]
    return sorted(found, key=lambda k: not k.default)


def ops() -> list[str]:
    return sorted({k.op for k in _REGISTRY.values()})


# ---- the user's choice ---------------------------------------------------------------------

_choice: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "dlkernels_backend", default=(None, None))


@contextlib.contextmanager
def backend(name: str, variant: str | None = None) -> Iterator[None]:
    """Run the ops inside the block on backend `name` (and, where an op has it, `variant`).

    >>> with dlkernels.backend("numba"):
    ...     y = dlkernels.conv2d(x, w)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if not available(name):
        raise ValueError(f"backend: {name!r} is not available here (see `dlkernels info`)")
    if variant is not None and not any(k.variant == variant for k in kernels(backend=name)):
        names = sorted({k.variant for k in kernels(backend=name)})
        raise ValueError(f"variant: backend {name!r} has no variant {variant!r} (it has {', '.join(names)})")
    token = _choice.set((name, variant))
    try:
        yield
    finally:
        _choice.reset(token)


def current_backend() -> str | None:
    """The backend forced by `backend()` or DLKERNELS_BACKEND, or None (automatic)."""
    return _choice.get()[0] or _env.BACKEND


# ---- choosing and running a kernel ---------------------------------------------------------

def select(op: str, direction: str, device: str, *args: Any) -> tuple[Kernel, str]:
    """The kernel that runs op/direction on these arguments, and why it was chosen."""
    forced, variant = _choice.get()
    forced = forced or _env.BACKEND
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"DLKERNELS_BACKEND: expected one of {', '.join(BACKENDS)}, got {forced!r}")
        if DEVICE_OF_BACKEND[forced] != device:
            raise ValueError(f"backend: {forced!r} runs on the {DEVICE_OF_BACKEND[forced]}, "
                             f"but the input is on {device}")
        if not available(forced):
            raise ValueError(f"backend: {forced!r} is not available here (see `dlkernels info`)")
        candidates: tuple[str, ...] = (forced,)
    else:
        candidates = PREFERENCE[device]
    skipped = []
    for b in candidates:
        if b != forced and not available(b):  # checked only until one backend takes the op
            continue
        ks = _BY_OP.get((op, direction, b), ())
        if not ks:
            skipped.append(f"{b} has no {op} {direction}")
            continue
        if variant is not None and b == forced:
            chosen = [k for k in ks if k.variant == variant]
            if chosen:
                k = chosen[0]
                why = k.refuses(*args)
                if why:
                    raise VariantRefused(f"variant: {k.name} cannot take this input: {why}")
                return k, "variant forced"
        for k in ks:  # specialised variants that ask for this input come first
            if k.prefer and not k.refuses(*args):
                reason = k.prefer(*args)
                if reason:
                    return k, reason
        for k in ks:
            why = k.refuses(*args)
            if why is None:
                return k, "default" if k.default else "; ".join(skipped) or "only variant that fits"
            skipped.append(f"{k.name} skipped: {why}")
    if forced is not None:
        raise ValueError(f"backend: {forced!r} cannot run {op} {direction} on this input: {'; '.join(skipped)}")
    raise ValueError(f"{op}: no {device} kernel can run {direction} on this input: {'; '.join(skipped)}")


def dispatch(op: str, direction: str, device: str, *args: Any) -> Any:
    """Choose the kernel for these arguments, log the choice, run it."""
    k, reason = select(op, direction, device, *args)
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s -> %s/%s (%s)", op, direction, k.backend, k.variant, reason)
    if k.backend == "numba":
        _threads.numba_pool_ready()
    return k.fn(*args)
