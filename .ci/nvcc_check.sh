#!/bin/sh
# Compiles every kernels/*.cu with nvcc for sm_80 and sm_90 (cubin, no device needed), with every
# template instantiation the loader uses (-DDLK_INSTANTIATE_ALL). Exits non-zero on the first
# failure; prints "nvcc not found: skipped" and exits 0 where there is no nvcc.
set -eu
NVCC="${NVCC:-nvcc}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "nvcc not found: skipped"
    exit 0
fi
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for cu in kernels/*.cu; do
    for arch in 80 90; do
        name="$(basename "$cu" .cu)_sm$arch"
        if "$NVCC" -std=c++17 -arch="sm_$arch" -cubin -DDLK_INSTANTIATE_ALL -Werror all-warnings \
                -o "$out/$name.cubin" "$cu"; then
            echo "ok   $cu sm_$arch"
        else
            echo "FAIL $cu sm_$arch"
            status=1
        fi
    done
done
exit $status
