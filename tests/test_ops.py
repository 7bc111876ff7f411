"""Generic tests, run for every op in the op database, every backend, variant and dtype."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from opdb import OPS_BY_ID, OpInfo, Sample, cast

import dlkernels as dk
from dlkernels import _cpp
from dlkernels._registry import VariantRefused, available

CPU_DTYPES = ["float64", "float32"]


# Kernels that by design take no input of an op sharing their registry entry: not collected for it
# (conv1d's filters are 1 x R; winograd needs 3x3). A refusal test covers them instead.
NEVER_APPLIES = {("conv1d", "cpp", "winograd")}


def _kernels(direction: str) -> list:
    """(op id, backend, variant, isa) for every CPU kernel; the C++ ones once per ISA."""
    out = []
    for op_id, op in OPS_BY_ID.items():
        for k in dk.kernels(op.name, direction):
            if k.backend == "cuda" or not available(k.backend):
                continue
            if (op_id, k.backend, k.variant) in NEVER_APPLIES:
                continue
            for isa in (_cpp.supported_isas() if k.backend == "cpp" else [None]):
                out.append(pytest.param(op_id, k.backend, k.variant, isa,
                                        id=f"{op_id}-{k.backend}-{k.variant}" + (f"-{isa}" if isa else "")))
    return out


def _isa(isa):
    return _cpp.use_isa(isa) if isa else _nullcontext()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _run_forward(op: OpInfo, s: Sample):
    out, saved = op.forward(*s.args, **s.kwargs)
    return op.outputs(out), saved


def _grads(op: OpInfo, outs: list, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]


def assert_close(actual, expected, tol: float, what: str) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|): a norm-wise check."""
    if expected is None:
        assert actual is None, f"{what}: expected None"
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return
    err = np.max(np.abs(actual.astype(np.float64) - expected))
    scale = max(1.0, float(np.max(np.abs(expected))))
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def _reference(op: OpInfo, s: Sample):
    with dk.backend("reference"):
        outs, saved = _run_forward(op, s)
        grads_out = _grads(op, outs)
        grads_in = op.backward(op.grads_to_backward(grads_out), saved)
    return outs, grads_out, grads_in


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("op_id,backend,variant,isa", _kernels("forward"))
def test_forward_matches_reference(op_id, backend, variant, isa, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        expected, _, _ = _reference(op, s)
        try:
            with dk.backend(backend, variant), _isa(isa):
                outs, _ = _run_forward(op, cast(s, dtype))
        except VariantRefused:
            continue
        for a, e in zip(outs, expected):
            assert a.dtype == np.dtype(dtype), f"{s.desc}: output dtype {a.dtype}"
            assert_close(a, e, op.tol[dtype], s.desc)
        ran += 1
    assert ran > 0, "no sample ran"


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("op_id,backend,variant,isa", _kernels("backward"))
def test_backward_matches_reference(op_id, backend, variant, isa, dtype, rng):
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        _, grads_out, expected = _reference(op, s)
        sd = cast(s, dtype)
        with dk.backend("reference"):
            _, saved = _run_forward(op, sd)
        try:
            with dk.backend(backend, variant), _isa(isa):
                got = op.backward(op.grads_to_backward([g.astype(dtype) for g in grads_out]), saved)
        except VariantRefused:
            continue
        for i, (a, e) in enumerate(zip(got, expected)):
            assert_close(a, e, op.tol[dtype] * 4, f"{s.desc}: grad of arg {op.diff_args[i]}")
        ran += 1
    assert ran > 0, "no sample ran"


@pytest.mark.parametrize("op_id", list(OPS_BY_ID))
def test_reference_backward_matches_finite_differences(op_id, rng):
    """The reference backward against central differences, float64, on a few elements of each input."""
    op = OPS_BY_ID[op_id]
    for s in op.samples(rng)[:6]:
        with dk.backend("reference"):
            outs, saved = _run_forward(op, s)
            gouts = _grads(op, outs)
            grads = op.backward(op.grads_to_backward(gouts), saved)

            def loss(args, s=s, gouts=gouts):
                o, _ = _run_forward(op, Sample(tuple(args), s.kwargs))
                return sum(float(np.sum(a * g)) for a, g in zip(o, gouts))

            for gi, pos in enumerate(op.diff_args):
                x = s.args[pos]
                if x is None or x.size == 0:
                    continue
                picks = rng.choice(x.size, size=min(x.size, 12), replace=False)
                for flat in picks:
                    h = 1e-6
                    args_p, args_m = list(s.args), list(s.args)
                    xp_, xm_ = x.copy(), x.copy()
                    xp_.flat[flat] += h
                    xm_.flat[flat] -= h
                    args_p[pos], args_m[pos] = xp_, xm_
                    fd = (loss(args_p) - loss(args_m)) / (2 * h)
                    an = float(np.asarray(grads[gi]).flat[flat])
                    assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), f"{s.desc}: arg {pos}[{flat}] fd {fd} vs {an}"


@pytest.mark.parametrize("op_id", [k for k, op in OPS_BY_ID.items() if op.torch_forward])
def test_matches_torch(op_id, rng):
    """Default backend, forward and backward, against PyTorch's op and autograd in float64."""
    torch = pytest.importorskip("torch")
    op = OPS_BY_ID[op_id]
    for s in op.samples(rng):
        outs, saved = _run_forward(op, s)
        gouts = _grads(op, outs)
        grads = op.backward(op.grads_to_backward(gouts), saved)
        targs = [torch.tensor(a, requires_grad=(i in op.diff_args)) if isinstance(a, np.ndarray) else a
                 for i, a in enumerate(s.args)]
        tout = op.torch_forward(*targs, **s.kwargs)
        touts = list(tout) if isinstance(tout, (tuple, list)) else [tout]
        for a, t in zip(outs, touts):
            assert_close(a, t.detach().numpy(), 1e-10, f"{s.desc}: forward vs torch")
        diff = [targs[i] for i in op.diff_args if isinstance(targs[i], torch.Tensor)]
        if sum(t.numel() for t in touts) == 0 or not diff:
            continue
        tg = torch.autograd.grad(touts, diff, [torch.tensor(g) for g in gouts], allow_unused=True)
        got = [g for i, g in zip(op.diff_args, grads) if isinstance(targs[i], torch.Tensor)]
        for a, t in zip(got, tg):
            assert_close(a, None if t is None else t.numpy(), 1e-9, f"{s.desc}: backward vs torch")


def _noncontiguous(a):
    """The same values in a strided view (every other element of a bigger array)."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


@pytest.mark.parametrize("op_id", list(OPS_BY_ID))
def test_noncontiguous_inputs(op_id, rng):
    op, strided_runs = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        s32 = cast(s, "float32")
        strided = Sample(tuple(_noncontiguous(a) for a in s32.args), s32.kwargs)
        strided_runs += any(isinstance(a, np.ndarray) and not a.flags.c_contiguous for a in strided.args)
        o1, sv1 = _run_forward(op, s32)
        o2, sv2 = _run_forward(op, strided)
        for a, b in zip(o1, o2):
            np.testing.assert_array_equal(a, b, err_msg=s.desc)
        g = _grads(op, o1)
        for a, b in zip(op.backward(op.grads_to_backward(g), sv1),
                        op.backward(op.grads_to_backward([_noncontiguous(x) for x in g]), sv2)):
            np.testing.assert_array_equal(a, b, err_msg=s.desc)
    assert strided_runs > 0


@pytest.mark.parametrize("op_id,backend,variant,isa", _kernels("backward"))
def test_bitwise_repeatable(op_id, backend, variant, isa, rng):
    """Forward and backward twice on the same float32 input: identical bits."""
    op, ran = OPS_BY_ID[op_id], 0
    for s in op.samples(rng):
        s32 = cast(s, "float32")
        try:
            with dk.backend(backend, variant), _isa(isa):
                runs = []
                for _ in range(2):
                    outs, saved = _run_forward(op, s32)
                    runs.append(outs + list(op.backward(op.grads_to_backward(_grads(op, outs)), saved)))
        except VariantRefused:
            continue
        for a, b in zip(*runs):
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=s.desc)
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("op_id", list(OPS_BY_ID))
def test_error_inputs(op_id, rng):
    op = OPS_BY_ID[op_id]
    for e in op.error_inputs(rng):
        with pytest.raises(e.exc, match=e.match):
            op.forward(*e.args, **e.kwargs)


@pytest.mark.parametrize("op_id", list(OPS_BY_ID))
def test_four_python_threads_at_once(op_id, rng):
    """The C++ kernels release the GIL; four threads calling together get correct results."""
    op = OPS_BY_ID[op_id]
    samples = [cast(s, "float32") for s in op.samples(rng)]
    expected = [_run_forward(op, s)[0] for s in samples]
    errors: list = []

    def work():
        try:
            for _ in range(3):
                for s, e in zip(samples, expected):
                    for a, b in zip(_run_forward(op, s)[0], e):
                        np.testing.assert_array_equal(a, b)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
