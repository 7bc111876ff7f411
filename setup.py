"""Builds dlkernels._C, the one pybind11 module, from csrc/.

Every kernel unit in csrc/ (all .cpp files but bindings.cpp) is compiled once per
instruction set, as its own objects, with -DDLK_ISA=<name> and that set's -m flags; the
binding picks one set at import from the CPU's features (DLKERNELS_ISA overrides). No
-march=native: the wheel runs on any x86-64.

Environment:
  DLKERNELS_SANITIZE=1   build with -fsanitize=address,undefined (CI runs the cpp tests so)
  DLKERNELS_DEBUG=1      -O0 -g
"""

import glob
import os
import platform
import shutil

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Instruction sets and their flags. 'scalar' is the baseline (SSE2 on x86-64).
ISAS = {"scalar": []}
if X86:
    ISAS["avx2"] = ["-mavx2", "-mfma"]
    ISAS["avx512"] = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"]

SANITIZE = os.environ.get("DLKERNELS_SANITIZE") == "1"
DEBUG = os.environ.get("DLKERNELS_DEBUG") == "1"

# -std=c++17 (strict ISO) turns off FMA contraction; -ffp-contract=fast turns it back on, so a*b + c on
# vectors compiles to one fused multiply-add (still deterministic: the same code for the same build).
COMMON = ["-std=c++17", "-ffp-contract=fast", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
COMMON += ["-O0", "-g"] if DEBUG else ["-O3"]
LINK = ["-fopenmp"]
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    COMMON += san + ["-g"]
    LINK += san


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


KERNEL_SOURCES = [p for p in _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))) if not p.endswith("bindings.cpp")]
HEADERS = _rel(glob.glob(os.path.join(HERE, "csrc", "*.h")))


class BuildExt(build_ext):
    """Compiles the kernel units once per ISA, then links them into the extension."""

    def build_extension(self, ext):
        objects = []
        for isa, flags in ISAS.items():
            objects += self.compiler.compile(
                KERNEL_SOURCES,
                output_dir=os.path.join(self.build_temp, isa),
                macros=[("DLK_ISA", isa)],
                include_dirs=["csrc"],
                extra_postargs=COMMON + flags,
                depends=HEADERS,
            )
        ext.extra_objects = objects
        super().build_extension(ext)


class BuildPy(build_py):
    """Ships kernels/*.cu inside the package (dlkernels/kernels/) as data."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "dlkernels", "kernels")
        os.makedirs(dest, exist_ok=True)
        for f in glob.glob(os.path.join(HERE, "kernels", "*.cu*")):
            shutil.copy(f, dest)


ext = Pybind11Extension(
    "dlkernels._C",
    ["csrc/bindings.cpp"],
    include_dirs=["csrc"],
    define_macros=[("DLK_HAVE_X86_ISAS", "1" if X86 else "0")],
    extra_compile_args=COMMON,
    extra_link_args=LINK,
    depends=HEADERS + KERNEL_SOURCES,
    cxx_std=17,
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
