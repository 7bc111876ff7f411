PY ?= python3

.PHONY: build test test-gpu bench lint typecheck kernels sanitize

build:
	$(PY) setup.py build_ext --inplace

test: build
	PYTHONPATH=python $(PY) -m pytest -q

test-gpu: build
	PYTHONPATH=python $(PY) -m pytest -q -m gpu

bench: build
	PYTHONPATH=python $(PY) -m dlkernels bench

lint:
	$(PY) -m ruff check python tests bench

typecheck:
	$(PY) -m mypy python/dlkernels --ignore-missing-imports

kernels:
	bash .ci/nvcc_check.sh

sanitize:
	bash .ci/sanitize.sh
