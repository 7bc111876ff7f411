"""pytest-benchmark: graph aggregation G1-G4 (sum and max), every backend and variant, and the peers."""

import pytest
from conftest import params, run_case

from dlkernels.benchmarks import graph


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("case,backend,variant", params(graph.CASES))
def test_graph(benchmark, case, backend, variant, direction):
    run_case(benchmark, case, backend, variant, direction)
