"""pytest-benchmark: conv C1–C5 and matmul M1, every backend and variant, and the peers."""

import pytest
from conftest import params, run_case

from dlkernels.benchmarks import conv, matmul


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("case,backend,variant", params(conv.CASES + matmul.CASES))
def test_conv(benchmark, case, backend, variant, direction):
    run_case(benchmark, case, backend, variant, direction)
