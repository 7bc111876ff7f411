// bindings.cpp: the single pybind11 module, dlkernels._C.
//
// It converts and checks arrays (dtype, shape, C-contiguity, writeability), naming each
// argument in its error, releases the GIL, and calls the kernels of the instruction set
// chosen at import (set_isa). The Python layer has validated shapes and indices already;
// the checks here are the last line of defence against a wrong pointer, not the user API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Declare every kernel once per instruction set: dlk::scalar::*, dlk::avx2::*, dlk::avx512::*.
#define DLK_ISA scalar
#include "kernels.h"
#undef DLK_ISA
#if DLK_HAVE_X86_ISAS
#define DLK_ISA avx2
#include "kernels.h"
#undef DLK_ISA
#define DLK_ISA avx512
#include "kernels.h"
#undef DLK_ISA
#endif

namespace py = pybind11;
using dlk::scalar::ConvShape;  // the same struct in every namespace; layouts are identical

namespace {

enum class Isa { scalar, avx2, avx512 };
Isa g_isa = Isa::scalar;

// Call fn from the chosen instruction set's namespace.
#if DLK_HAVE_X86_ISAS
#define DLK_CALL(fn, ...)                                                   \
  do {                                                                      \
    switch (g_isa) {                                                        \
      case Isa::avx512: dlk::avx512::fn(__VA_ARGS__); break;                \
      case Isa::avx2: dlk::avx2::fn(__VA_ARGS__); break;                    \
      default: dlk::scalar::fn(__VA_ARGS__); break;                         \
    }                                                                       \
  } while (0)
#else
#define DLK_CALL(fn, ...) dlk::scalar::fn(__VA_ARGS__)
#endif

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
#if DLK_HAVE_X86_ISAS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    out.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back("avx2");
#endif
  out.push_back("scalar");
  return out;
}

void set_isa(const std::string& name) {
  auto ok = supported_isas();
  bool found = false;
  for (auto& s : ok) found |= (s == name);
  if (!found) throw py::value_error("isa: '" + name + "' is not supported by this CPU or build");
  g_isa = name == "avx512" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : Isa::scalar;
}

std::string get_isa() {
  return g_isa == Isa::avx512 ? "avx512" : g_isa == Isa::avx2 ? "avx2" : "scalar";
}

// ---- argument checks -----------------------------------------------------------------------

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// Checks dtype T, C-contiguity, the exact shape (-1 = any size) and, for outputs,
// writeability. Returns the data pointer.
template <typename T>
T* check(py::array& a, const char* name, const std::vector<int64_t>& shape, bool write) {
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  if (write && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  bool same = got.size() == shape.size();
  for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || shape[i] == got[i];
  if (!same)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(got));
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
T* check_opt(py::object o, const char* name, const std::vector<int64_t>& shape, bool write) {
  if (o.is_none()) return nullptr;
  py::array a = o.cast<py::array>();
  return check<T>(a, name, shape, write);
}

bool is_f64(py::array& a) { return a.dtype().is(py::dtype::of<double>()); }

// ---- matmul --------------------------------------------------------------------------------

// c (M, N) = a (M, K) @ b (K, N); a and b may be any strided 2-D views (strides in elements
// are read from the arrays), c must be C-contiguous.
template <typename T>
void matmul_t(py::array a, py::array b, py::array c, bool accumulate) {
  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a, b: expected 2-D arrays");
  int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
  if (b.shape(0) != K) throw py::value_error("b: expected " + std::to_string(K) + " rows");
  if (!a.dtype().is(py::dtype::of<T>()) || !b.dtype().is(py::dtype::of<T>()))
    throw py::type_error("a, b: expected the dtype of c");
  T* C = check<T>(c, "out", {M, N}, true);
  const T* A = static_cast<const T*>(a.data());
  const T* B = static_cast<const T*>(b.data());
  int64_t rsa = a.strides(0) / (int64_t)sizeof(T), csa = a.strides(1) / (int64_t)sizeof(T);
  int64_t rsb = b.strides(0) / (int64_t)sizeof(T), csb = b.strides(1) / (int64_t)sizeof(T);
  if (a.strides(0) % sizeof(T) || a.strides(1) % sizeof(T) || b.strides(0) % sizeof(T) ||
      b.strides(1) % sizeof(T))
    throw py::value_error("a, b: strides must be multiples of the item size");
  py::gil_scoped_release nogil;
  DLK_CALL(gemm<T>, M, N, K, A, rsa, csa, B, rsb, csb, C, N, accumulate, true);
}

void matmul(py::array a, py::array b, py::array c, bool accumulate) {
  if (is_f64(c)) matmul_t<double>(a, b, c, accumulate);
  else matmul_t<float>(a, b, c, accumulate);
}

// ---- conv ----------------------------------------------------------------------------------

ConvShape conv_shape(py::array& x, py::array& w, const std::vector<int64_t>& p) {
  if (p.size() != 8) throw py::value_error("params: expected 8 values");
  if (x.ndim() != 4 || w.ndim() != 4) throw py::value_error("input, weight: expected 4-D");
  ConvShape s{};
  s.N = x.shape(0); s.C = x.shape(1); s.H = x.shape(2); s.W = x.shape(3);
  s.K = w.shape(0); s.R = w.shape(2); s.S = w.shape(3);
  s.stride_h = p[0]; s.stride_w = p[1]; s.pad_h = p[2]; s.pad_w = p[3];
  s.dil_h = p[4]; s.dil_w = p[5]; s.P = p[6]; s.Q = p[7];
  return s;
}

template <typename T>
void conv2d_forward_t(const std::string& variant, py::array x, py::array w, py::object b,
                      py::array y, const std::vector<int64_t>& p, int64_t groups) {
  ConvShape s = conv_shape(x, w, p);
  s.groups = groups;
  if (groups < 1 || s.C % groups || s.K % groups) throw py::value_error("groups: must divide C and K");
  const T* X = check<T>(x, "input", {s.N, s.C, s.H, s.W}, false);
  const T* Wt = check<T>(w, "weight", {s.K, s.C / groups, s.R, s.S}, false);
  const T* B = check_opt<T>(b, "bias", {s.K}, false);
  T* Y = check<T>(y, "out", {s.N, s.K, s.P, s.Q}, true);
  py::gil_scoped_release nogil;
  if (variant == "im2col") DLK_CALL(conv2d_forward_im2col<T>, s, X, Wt, B, Y);
  else if (variant == "depthwise") DLK_CALL(conv2d_forward_depthwise<T>, s, X, Wt, B, Y);
  else throw std::invalid_argument("variant: unknown conv2d forward variant '" + variant + "'");
}

template <typename T>
void conv2d_backward_t(const std::string& variant, py::array dy, py::array x, py::array w,
                       py::object dx, py::object dw, py::object db,
                       const std::vector<int64_t>& p, int64_t groups) {
  ConvShape s = conv_shape(x, w, p);
  s.groups = groups;
  if (groups < 1 || s.C % groups || s.K % groups) throw py::value_error("groups: must divide C and K");
  const T* DY = check<T>(dy, "grad_output", {s.N, s.K, s.P, s.Q}, false);
  const T* X = check<T>(x, "input", {s.N, s.C, s.H, s.W}, false);
  const T* Wt = check<T>(w, "weight", {s.K, s.C / groups, s.R, s.S}, false);
  T* DX = check_opt<T>(dx, "grad_input", {s.N, s.C, s.H, s.W}, true);
  T* DW = check_opt<T>(dw, "grad_weight", {s.K, s.C / groups, s.R, s.S}, true);
  T* DB = check_opt<T>(db, "grad_bias", {s.K}, true);
  py::gil_scoped_release nogil;
  if (variant == "im2col") DLK_CALL(conv2d_backward_im2col<T>, s, DY, X, Wt, DX, DW, DB);
  else if (variant == "depthwise") DLK_CALL(conv2d_backward_depthwise<T>, s, DY, X, Wt, DX, DW, DB);
  else throw std::invalid_argument("variant: unknown conv2d backward variant '" + variant + "'");
}

void conv2d_forward(const std::string& variant, py::array x, py::array w, py::object b,
                    py::array y, const std::vector<int64_t>& p, int64_t groups) {
  if (is_f64(y)) conv2d_forward_t<double>(variant, x, w, b, y, p, groups);
  else conv2d_forward_t<float>(variant, x, w, b, y, p, groups);
}

void conv2d_backward(const std::string& variant, py::array dy, py::array x, py::array w,
                     py::object dx, py::object dw, py::object db, const std::vector<int64_t>& p,
                     int64_t groups) {
  if (is_f64(dy)) conv2d_backward_t<double>(variant, dy, x, w, dx, dw, db, p, groups);
  else conv2d_backward_t<float>(variant, dy, x, w, dx, dw, db, p, groups);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dlkernels C++ kernels (see csrc/)";
  m.def("supported_isas", &supported_isas, "instruction sets this CPU and build support, best first");
  m.def("set_isa", &set_isa);
  m.def("get_isa", &get_isa);
  m.def("set_num_threads", [](int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
  });
  m.def("get_num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("accumulate") = false);
  m.def("conv2d_forward", &conv2d_forward, py::arg("variant"), py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("out"), py::arg("params"), py::arg("groups"));
  m.def("conv2d_backward", &conv2d_backward, py::arg("variant"), py::arg("grad_output"),
        py::arg("input"), py::arg("weight"), py::arg("grad_input"), py::arg("grad_weight"),
        py::arg("grad_bias"), py::arg("params"), py::arg("groups"));
}
