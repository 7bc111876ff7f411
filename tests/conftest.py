import contextlib

import numpy as np
import pytest

import dlkernels as dk


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def num_threads():
    """`with num_threads(n):` runs the block at dlkernels.set_num_threads(n); the test's count comes back after."""
    before = dk.get_num_threads()

    @contextlib.contextmanager
    def at(n: int):
        dk.set_num_threads(n)
        try:
            yield
        finally:
            dk.set_num_threads(before)

    return at


def pytest_collection_modifyitems(config, items):
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
