"""pytest-benchmark: attention A1, A2, A2c, A3, A5 (cpp, every variant) and torch SDPA.

A4 (B1 H4 L=S=16384, forward only) is a memory figure, not a timing: bench/attention_memory.py.
"""

import pytest
from conftest import params, run_case

from dlkernels.benchmarks import attention


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("case,backend,variant", params(attention.CASES))
def test_attention(benchmark, case, backend, variant, direction):
    run_case(benchmark, case, backend, variant, direction)
