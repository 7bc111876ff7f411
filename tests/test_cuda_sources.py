"""Checks on kernels/*.cu that need no GPU: the variant list each file opens with matches the
registry, the files include nothing NVRTC cannot find, and (where nvcc is on PATH) the source
exactly as NVRTC gets it (common.cuh pasted in by the loader) compiles for sm_80 and sm_90
with every template instantiation the loader asks for."""

from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import dlkernels as dk
from dlkernels import _cuda

KERNELS = sorted(glob.glob(os.path.join(_cuda.kernel_dir(), "*.cu")))
# ops whose CUDA kernels are registered by a module other than the op's own table
REGISTRARS = {"graph.cu": "dlkernels.ops.graph.cuda"}


def _header(path: str) -> tuple[list[str], list[str]]:
    """(ops, variants) from the file's opening comment: '// Ops: a b' and '//   name: what it does'."""
    ops: list[str] = []
    variants: list[str] = []
    in_variants = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("//"):
                break
            text = line[2:].rstrip()
            if text.startswith(" Ops:"):
                ops = text.split(":", 1)[1].split()
            elif text.strip() == "Variants:":
                in_variants = True
            elif in_variants and (m := re.match(r"^\s{2,}(\w+): \S", text)):
                variants.append(m.group(1))
            elif in_variants:
                in_variants = False
    return ops, variants


def test_there_are_kernel_files():
    names = {os.path.basename(p) for p in KERNELS}
    assert {"conv.cu", "graph.cu"} <= names, names


@pytest.mark.parametrize("path", KERNELS, ids=os.path.basename)
def test_variant_list_matches_registry(path):
    ops, variants = _header(path)
    assert ops, f"{path}: no '// Ops:' line in the opening comment"
    assert variants, f"{path}: no '// Variants:' list in the opening comment"
    assert len(variants) == len(set(variants)), f"{path}: a variant is listed twice"
    registered = {k.variant for op in ops for k in dk.kernels(op, backend="cuda")}
    if not registered and os.path.basename(path) in REGISTRARS:
        # the op's front-end does not register its CUDA kernels yet: compare with what the
        # glue module would register
        try:
            glue = importlib.import_module(REGISTRARS[os.path.basename(path)])
        except ImportError as exc:
            pytest.skip(f"{REGISTRARS[os.path.basename(path)]} not importable here: {exc}")
        registered = set(glue.VARIANTS)
    assert set(variants) == registered, (f"{os.path.basename(path)} lists {sorted(variants)}, "
                                         f"the registry has {sorted(registered)} for {ops}")


@pytest.mark.parametrize("path", KERNELS, ids=os.path.basename)
def test_includes_only_kernel_files(path):
    """NVRTC has no system headers (and CuPy may lack cuda_bf16.h): only kernels/ files."""
    text = _cuda.source(os.path.basename(path))
    left = [line for line in text.splitlines() if line.strip().startswith("#include")]
    assert not left, f"{path}: an #include survived the loader's expansion: {left}"
    for dep in re.findall(r'#include\s+[<"]([^>"]+)[>"]', open(path, encoding="utf-8").read()):
        assert os.path.exists(os.path.join(_cuda.kernel_dir(), dep)), f"{path} includes {dep}"


def test_nvcc_compiles_every_kernel_file_for_sm80_and_sm90():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        assert not os.environ.get("CI"), "CI must compile-check kernels/*.cu: nvcc is not on PATH"
        pytest.skip("nvcc not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for path in KERNELS:
            name = os.path.basename(path)
            src = os.path.join(tmp, name)
            with open(src, "w", encoding="utf-8") as f:
                f.write(_cuda.source(name))  # what NVRTC compiles: no include path needed
            for arch in ("80", "90"):
                cmd = [nvcc, "-std=c++17", f"-arch=sm_{arch}", "-cubin", "-DDLK_INSTANTIATE_ALL",
                       "-Werror", "all-warnings", "-o", os.path.join(tmp, f"{name}.{arch}.cubin"), src]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                jobs.append((name, arch, proc))
        failures = []
        for name, arch, proc in jobs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode:
                failures.append(f"{name} sm_{arch}:\n{out}")
        assert not failures, "\n".join(failures)
