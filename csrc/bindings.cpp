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

// ---- lstm ----------------------------------------------------------------------------------

// Sizes come from x (T, B, I), c0 (B, H), h0 (B, P); every other array is checked against them.
template <typename T>
void lstm_forward_t(py::array x, py::array h0, py::array c0, py::array w_ih, py::array w_hh,
                    py::object bias, py::object w_hr, py::object lengths, py::array y,
                    py::array h_n, py::array c_n, py::array gates, py::array cs) {
  if (x.ndim() != 3 || h0.ndim() != 2 || c0.ndim() != 2)
    throw py::value_error("input, hx, cx: expected (T, B, I), (B, P), (B, H)");
  const int64_t Tn = x.shape(0), B = x.shape(1), I = x.shape(2), H = c0.shape(1), P = h0.shape(1);
  const T* X = check<T>(x, "input", {Tn, B, I}, false);
  const T* H0 = check<T>(h0, "hx", {B, P}, false);
  const T* C0 = check<T>(c0, "cx", {B, H}, false);
  const T* WI = check<T>(w_ih, "w_ih", {4 * H, I}, false);
  const T* WH = check<T>(w_hh, "w_hh", {4 * H, P}, false);
  const T* BI = check_opt<T>(bias, "bias", {4 * H}, false);
  const T* WR = check_opt<T>(w_hr, "w_hr", {P, H}, false);
  if (!WR && P != H) throw py::value_error("hx: expected P == H without w_hr");
  const int64_t* L = check_opt<int64_t>(lengths, "lengths", {B}, false);
  T* Y = check<T>(y, "output", {Tn, B, P}, true);
  T* HN = check<T>(h_n, "h_n", {B, P}, true);
  T* CN = check<T>(c_n, "c_n", {B, H}, true);
  T* GT = check<T>(gates, "gates", {Tn, B, 4 * H}, true);
  T* CS = check<T>(cs, "c", {Tn, B, H}, true);
  for (int64_t b = 0; L && b < B; ++b)
    if (L[b] < 0 || L[b] > Tn) throw py::value_error("lengths: expected values in [0, T]");
  py::gil_scoped_release nogil;
  DLK_CALL(lstm_forward<T>, Tn, B, I, H, P, X, H0, C0, WI, WH, BI, WR, L, Y, HN, CN, GT, CS);
}

void lstm_forward(py::array x, py::array h0, py::array c0, py::array w_ih, py::array w_hh,
                  py::object bias, py::object w_hr, py::object lengths, py::array y, py::array h_n,
                  py::array c_n, py::array gates, py::array cs) {
  if (is_f64(x)) lstm_forward_t<double>(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, y, h_n, c_n, gates, cs);
  else lstm_forward_t<float>(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, y, h_n, c_n, gates, cs);
}

template <typename T>
void lstm_backward_t(py::array dy, py::array dh_n, py::array dc_n, py::array x, py::array h0,
                     py::array c0, py::array w_ih, py::array w_hh, py::object w_hr,
                     py::object lengths, py::array gates, py::array cs, py::array y, py::array dx,
                     py::array dh0, py::array dc0, py::array dw_ih, py::array dw_hh, py::array db,
                     py::object dw_hr) {
  if (x.ndim() != 3 || h0.ndim() != 2 || c0.ndim() != 2)
    throw py::value_error("input, hx, cx: expected (T, B, I), (B, P), (B, H)");
  const int64_t Tn = x.shape(0), B = x.shape(1), I = x.shape(2), H = c0.shape(1), P = h0.shape(1);
  const T* DY = check<T>(dy, "grad_output", {Tn, B, P}, false);
  const T* DHN = check<T>(dh_n, "grad_h_n", {B, P}, false);
  const T* DCN = check<T>(dc_n, "grad_c_n", {B, H}, false);
  const T* X = check<T>(x, "input", {Tn, B, I}, false);
  const T* H0 = check<T>(h0, "hx", {B, P}, false);
  const T* C0 = check<T>(c0, "cx", {B, H}, false);
  const T* WI = check<T>(w_ih, "w_ih", {4 * H, I}, false);
  const T* WH = check<T>(w_hh, "w_hh", {4 * H, P}, false);
  const T* WR = check_opt<T>(w_hr, "w_hr", {P, H}, false);
  if (!WR && P != H) throw py::value_error("hx: expected P == H without w_hr");
  const int64_t* L = check_opt<int64_t>(lengths, "lengths", {B}, false);
  const T* GT = check<T>(gates, "gates", {Tn, B, 4 * H}, false);
  const T* CS = check<T>(cs, "c", {Tn, B, H}, false);
  const T* Y = check<T>(y, "output", {Tn, B, P}, false);
  T* DX = check<T>(dx, "grad_input", {Tn, B, I}, true);
  T* DH0 = check<T>(dh0, "grad_hx", {B, P}, true);
  T* DC0 = check<T>(dc0, "grad_cx", {B, H}, true);
  T* DWI = check<T>(dw_ih, "grad_w_ih", {4 * H, I}, true);
  T* DWH = check<T>(dw_hh, "grad_w_hh", {4 * H, P}, true);
  T* DB = check<T>(db, "grad_bias", {4 * H}, true);
  T* DWR = check_opt<T>(dw_hr, "grad_w_hr", {P, H}, true);
  if ((WR == nullptr) != (DWR == nullptr)) throw py::value_error("grad_w_hr: expected with w_hr only");
  for (int64_t b = 0; L && b < B; ++b)
    if (L[b] < 0 || L[b] > Tn) throw py::value_error("lengths: expected values in [0, T]");
  py::gil_scoped_release nogil;
  DLK_CALL(lstm_backward<T>, Tn, B, I, H, P, DY, DHN, DCN, X, H0, C0, WI, WH, WR, L, GT, CS, Y, DX,
           DH0, DC0, DWI, DWH, DB, DWR);
}

void lstm_backward(py::array dy, py::array dh_n, py::array dc_n, py::array x, py::array h0,
                   py::array c0, py::array w_ih, py::array w_hh, py::object w_hr,
                   py::object lengths, py::array gates, py::array cs, py::array y, py::array dx,
                   py::array dh0, py::array dc0, py::array dw_ih, py::array dw_hh, py::array db,
                   py::object dw_hr) {
  if (is_f64(x))
    lstm_backward_t<double>(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y, dx,
                            dh0, dc0, dw_ih, dw_hh, db, dw_hr);
  else
    lstm_backward_t<float>(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, cs, y, dx,
                           dh0, dc0, dw_ih, dw_hh, db, dw_hr);
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
  m.def("lstm_forward", &lstm_forward, py::arg("input"), py::arg("hx"), py::arg("cx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("bias"), py::arg("w_hr"), py::arg("lengths"), py::arg("output"),
        py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("c"));
  m.def("lstm_backward", &lstm_backward, py::arg("grad_output"), py::arg("grad_h_n"),
        py::arg("grad_c_n"), py::arg("input"), py::arg("hx"), py::arg("cx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("gates"), py::arg("c"),
        py::arg("output"), py::arg("grad_input"), py::arg("grad_hx"), py::arg("grad_cx"),
        py::arg("grad_w_ih"), py::arg("grad_w_hh"), py::arg("grad_bias"), py::arg("grad_w_hr"));
}
