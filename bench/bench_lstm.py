"""pytest-benchmark: lstm L1, L2, L4 and lstm_cell L3, every backend and variant, and torch.nn.LSTM / LSTMCell."""

import pytest
from conftest import params, run_case

from dlkernels.benchmarks import lstm


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("case,backend,variant", params(lstm.CASES))
def test_lstm(benchmark, case, backend, variant, direction):
    run_case(benchmark, case, backend, variant, direction)
