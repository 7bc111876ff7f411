#!/usr/bin/env bash
# Builds csrc/ with -fsanitize=address,undefined in a scratch copy and runs the C++ tests under it.
# Usage: .ci/sanitize.sh [python]   (a python with the test dependencies installed)
set -euo pipefail
PY=${1:-python3}
[[ $PY == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # it runs from a scratch dir
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$root/csrc" "$root/python" "$root/tests" "$root/kernels" "$work/"
find "$work/python" -name '*.so' -delete
cd "$work"
"$PY" -m pip install -q pybind11 setuptools wheel  # the build's own needs (pip's isolated build had them)
DLKERNELS_SANITIZE=1 "$PY" setup.py -q build_ext --inplace >/dev/null
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
# Python's own allocations are not instrumented, so leak reports would be noise.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$asan $ubsan" PYTHONPATH="$work/python" "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py -k "(cpp or four_python_threads) and not torch"
