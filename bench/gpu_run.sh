#!/bin/bash
# Everything the CUDA backend needs a device for, in one go (run from the repository root on a
# machine with a GPU, CuPy and torch with CUDA):
#   1. the offline checks (nvcc for sm_80/sm_90) and the GPU tests (pytest -m gpu)
#   2. compute-sanitizer memcheck and racecheck over the GPU tests (where the runtime has it)
#   3. the GPU benchmarks, saved as JSON (GPU, commit, command) under bench/results/
# Logs go to bench/results/gpu-<date>/; the exit status is non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
stamp="$(date +%Y%m%d-%H%M%S)"
logs="bench/results/gpu-$stamp"
mkdir -p "$logs"
status=0
step() {  # step NAME COMMAND...: run, tee to the log, remember failures
    local name="$1"; shift
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$logs/$name.log"; [ "${PIPESTATUS[0]}" -ne 0 ]; then
        echo "== $name FAILED"; status=1
    fi
}
"$PY" -c "from dlkernels._cuda import cuda_info; print(cuda_info())" | tee "$logs/info.txt"
step nvcc sh .ci/nvcc_check.sh
step tests "$PY" -m pytest tests/test_cuda.py tests/test_cuda_sources.py tests/test_cuda_attention.py tests/test_cuda_lstm.py -m gpu -q -p no:cacheprovider -rs
if command -v compute-sanitizer >/dev/null 2>&1; then
    # a smaller test set under the sanitizer (it slows kernels ~100x). CuPy's memory pool hands
    # out slices of bigger blocks, so memcheck catches overruns past a block, not past a slice.
    for tool in memcheck racecheck; do
        step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
            "$PY" -m pytest tests/test_cuda.py -m gpu -q -p no:cacheprovider -x \
            -k "float32 or float16 or graph_sddmm"
        step "sanitizer-$tool-attention-lstm" compute-sanitizer --tool "$tool" --error-exitcode 99 \
            --target-processes all "$PY" -m pytest tests/test_cuda_attention.py tests/test_cuda_lstm.py -m gpu -q \
            -p no:cacheprovider -x -k "(forward or backward) and (float32 or float16) and not matches"
    done
else
    echo "compute-sanitizer not found: memcheck/racecheck not run" | tee "$logs/sanitizer.txt"
fi
gpu="$("$PY" -c "import cupy as cp; p = cp.cuda.runtime.getDeviceProperties(0); n = p['name']; print((n.decode() if isinstance(n, bytes) else n).replace(' ', '_'))")"
step bench "$PY" bench/bench_cuda.py --json "bench/results/cuda-$gpu-$stamp.json"
echo "logs in $logs; results in bench/results/cuda-$gpu-$stamp.json; exit $status"
exit $status
