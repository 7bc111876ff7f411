// bindings.cpp: the single pybind11 module, dlkernels._C.
//
// It converts and checks arrays (dtype, shape, C-contiguity, writeability), naming each
// argument in its error, releases the GIL, and calls the kernels of the instruction set
// chosen at import (set_isa). The Python layer has validated shapes and indices already;
// the checks here are the last line of defence against a wrong pointer, not the user API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
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

// The thread count set by dlkernels.set_num_threads (0: OpenMP's default). OpenMP keeps the count
// per calling thread, so every call applies it on the thread that makes it (any Python thread).
std::atomic<int> g_threads{0};

inline void apply_threads() {
#ifdef _OPENMP
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
#endif
}

// Call fn from the chosen instruction set's namespace, on the chosen number of threads.
#if DLK_HAVE_X86_ISAS
#define DLK_CALL(fn, ...)                                                   \
  do {                                                                      \
    apply_threads();                                                        \
    switch (g_isa) {                                                        \
      case Isa::avx512: dlk::avx512::fn(__VA_ARGS__); break;                \
      case Isa::avx2: dlk::avx2::fn(__VA_ARGS__); break;                    \
      default: dlk::scalar::fn(__VA_ARGS__); break;                         \
    }                                                                       \
  } while (0)
#else
#define DLK_CALL(fn, ...)     \
  do {                        \
    apply_threads();          \
    dlk::scalar::fn(__VA_ARGS__); \
  } while (0)
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

// ---- allocation ----------------------------------------------------------------------------

// An uninitialised C-contiguous array whose data starts on a cache line (64 bytes). NumPy's own
// allocations start 16 bytes past one (glibc's malloc), so where threads write neighbouring
// column slices of one row, the line at each boundary is written by two cores.
py::array empty_aligned(const std::vector<py::ssize_t>& shape, const py::dtype& dtype) {
  size_t bytes = (size_t)dtype.itemsize();
  for (py::ssize_t n : shape) {
    if (n < 0) throw py::value_error("shape: expected sizes >= 0, got " + std::to_string(n));
    bytes *= (size_t)n;
  }
  void* p = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
  if (!p) throw std::bad_alloc();
  py::capsule owner(p, [](void* q) { std::free(q); });
  return py::array(dtype, shape, p, owner);
}

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
  else if (variant == "implicit") DLK_CALL(conv2d_forward_implicit<T>, s, X, Wt, B, Y);
  else if (variant == "depthwise") DLK_CALL(conv2d_forward_depthwise<T>, s, X, Wt, B, Y);
  else if (variant == "direct") DLK_CALL(conv2d_forward_direct<T>, s, X, Wt, B, Y);
  else if (variant == "winograd") DLK_CALL(conv2d_forward_winograd<T>, s, X, Wt, B, Y);
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
  else if (variant == "implicit") DLK_CALL(conv2d_backward_implicit<T>, s, DY, X, Wt, DX, DW, DB);
  else if (variant == "depthwise") DLK_CALL(conv2d_backward_depthwise<T>, s, DY, X, Wt, DX, DW, DB);
  else if (variant == "direct") DLK_CALL(conv2d_backward_direct<T>, s, DY, X, Wt, DX, DW, DB);
  else if (variant == "winograd") DLK_CALL(conv2d_backward_winograd<T>, s, DY, X, Wt, DX, DW, DB);
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

// ---- attention ------------------------------------------------------------------------------

// check<T> for an input that may be read-only (a broadcast view, a read-only buffer).
template <typename T>
const T* check_in(py::array& a, const char* name, const std::vector<int64_t>& shape) {
  if (a.writeable()) return check<T>(a, name, shape, false);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  bool same = got.size() == shape.size();
  for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || shape[i] == got[i];
  if (!same)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(got));
  return static_cast<const T*>(a.data());
}

// Shapes and the index/mask offsets, checked so that no kernel read leaves the arrays.
template <typename T>
dlk::scalar::AttnShape attention_check(py::array& q, py::array& k, py::array& v, py::array& kv_index,
                                       py::object& mask, py::object& mask_off, int64_t mrs, int64_t mcs,
                                       const T** M, const int64_t** MO, const int64_t** KV) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3) throw py::value_error("query, key, value: expected 3-D");
  dlk::scalar::AttnShape a{};
  a.Z = q.shape(0); a.L = q.shape(1); a.E = q.shape(2);
  a.Zk = k.shape(0); a.S = k.shape(1); a.Ev = v.shape(2);
  check_in<T>(q, "query", {a.Z, a.L, a.E});
  check_in<T>(k, "key", {a.Zk, a.S, a.E});
  check_in<T>(v, "value", {a.Zk, a.S, a.Ev});
  *KV = check_in<int64_t>(kv_index, "kv_index", {a.Z});
  for (int64_t z = 0; z < a.Z; ++z)
    if ((*KV)[z] < 0 || (*KV)[z] >= a.Zk) throw py::index_error("kv_index: out of range");
  *M = nullptr;
  *MO = nullptr;
  if (!mask.is_none()) {
    py::array m = mask.cast<py::array>(), mo = mask_off.cast<py::array>();
    std::vector<int64_t> any(m.ndim(), -1);
    *M = check_in<T>(m, "attn_mask", any);
    *MO = check_in<int64_t>(mo, "mask_offset", {a.Z});
    if (mrs < 0 || mcs < 0) throw py::value_error("attn_mask: negative strides");
    for (int64_t z = 0; z < a.Z; ++z) {
      int64_t last = (*MO)[z] + (a.L > 0 ? (a.L - 1) * mrs : 0) + (a.S > 0 ? (a.S - 1) * mcs : 0);
      if ((*MO)[z] < 0 || (a.L > 0 && a.S > 0 && last >= (int64_t)m.size()))
        throw py::index_error("mask_offset: out of range");
    }
  }
  return a;
}

template <typename T>
void attention_forward_t(py::array q, py::array k, py::array v, py::array kv_index, py::object mask,
                         py::object mask_off, int64_t mrs, int64_t mcs, bool causal, double scale,
                         bool dropout, uint64_t seed, uint64_t threshold, double dscale, py::array out,
                         py::array lse) {
  const T* M;
  const int64_t *MO, *KV;
  auto a = attention_check<T>(q, k, v, kv_index, mask, mask_off, mrs, mcs, &M, &MO, &KV);
  a.causal = causal; a.scale = scale; a.dropout = dropout; a.seed = seed; a.threshold = threshold;
  a.dscale = dscale;
  const T* Q = static_cast<const T*>(q.data());
  const T* K = static_cast<const T*>(k.data());
  const T* V = static_cast<const T*>(v.data());
  T* O = check<T>(out, "out", {a.Z, a.L, a.Ev}, true);
  T* LSE = check<T>(lse, "lse", {a.Z, a.L}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(attention_forward<T>, a, Q, K, V, KV, M, MO, mrs, mcs, O, LSE);
}

template <typename T>
void attention_backward_t(py::array dout, py::array q, py::array k, py::array v, py::array out,
                          py::array lse, py::array kv_index, py::object mask, py::object mask_off,
                          int64_t mrs, int64_t mcs, bool causal, double scale, bool dropout,
                          uint64_t seed, uint64_t threshold, double dscale, py::array dq, py::array dk,
                          py::array dv, py::object dmask) {
  const T* M;
  const int64_t *MO, *KV;
  auto a = attention_check<T>(q, k, v, kv_index, mask, mask_off, mrs, mcs, &M, &MO, &KV);
  a.causal = causal; a.scale = scale; a.dropout = dropout; a.seed = seed; a.threshold = threshold;
  a.dscale = dscale;
  const T* Q = static_cast<const T*>(q.data());
  const T* K = static_cast<const T*>(k.data());
  const T* V = static_cast<const T*>(v.data());
  const T* DO = check_in<T>(dout, "grad_output", {a.Z, a.L, a.Ev});
  const T* O = check_in<T>(out, "out", {a.Z, a.L, a.Ev});
  const T* LSE = check_in<T>(lse, "lse", {a.Z, a.L});
  T* DQ = check<T>(dq, "grad_query", {a.Z, a.L, a.E}, true);
  T* DK = check<T>(dk, "grad_key", {a.Zk, a.S, a.E}, true);
  T* DV = check<T>(dv, "grad_value", {a.Zk, a.S, a.Ev}, true);
  T* DM = check_opt<T>(dmask, "grad_attn_mask", {a.Z, a.L, a.S}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(attention_backward<T>, a, DO, Q, K, V, O, LSE, KV, M, MO, mrs, mcs, DQ, DK, DV, DM);
}

void attention_forward(py::array q, py::array k, py::array v, py::array kv_index, py::object mask,
                       py::object mask_off, int64_t mrs, int64_t mcs, bool causal, double scale,
                       bool dropout, uint64_t seed, uint64_t threshold, double dscale, py::array out,
                       py::array lse) {
  if (is_f64(out)) attention_forward_t<double>(q, k, v, kv_index, mask, mask_off, mrs, mcs, causal, scale, dropout, seed, threshold, dscale, out, lse);
  else attention_forward_t<float>(q, k, v, kv_index, mask, mask_off, mrs, mcs, causal, scale, dropout, seed, threshold, dscale, out, lse);
}

void attention_backward(py::array dout, py::array q, py::array k, py::array v, py::array out,
                        py::array lse, py::array kv_index, py::object mask, py::object mask_off,
                        int64_t mrs, int64_t mcs, bool causal, double scale, bool dropout,
                        uint64_t seed, uint64_t threshold, double dscale, py::array dq, py::array dk,
                        py::array dv, py::object dmask) {
  if (is_f64(dq)) attention_backward_t<double>(dout, q, k, v, out, lse, kv_index, mask, mask_off, mrs, mcs, causal, scale, dropout, seed, threshold, dscale, dq, dk, dv, dmask);
  else attention_backward_t<float>(dout, q, k, v, out, lse, kv_index, mask, mask_off, mrs, mcs, causal, scale, dropout, seed, threshold, dscale, dq, dk, dv, dmask);
}

// ---- graph ---------------------------------------------------------------------------------
// CSR arrays: indptr (R+1,) int64 from 0 to E; col (E,) int32 or int64 (I); perm (E,) int64 or
// None. The Python layer (ops/graph/structure.py) validated every index when it built the graph.

const int64_t* graph_indptr(py::array& a, const char* name, int64_t E, int64_t& R) {
  if (a.ndim() != 1 || a.shape(0) < 1)
    throw py::value_error(std::string(name) + ": expected a 1-D array of R + 1 offsets");
  const int64_t* p = check<int64_t>(a, name, {-1}, false);
  R = a.shape(0) - 1;
  if (p[0] != 0 || p[R] != E)
    throw py::value_error(std::string(name) + ": expected offsets from 0 to " + std::to_string(E));
  return p;
}

// A tiled CSR's offsets (graph_segment_sum/maxmin): passes * R + 1 of them, R rows per pass.
const int64_t* graph_tiled_indptr(py::array& a, int64_t passes, int64_t E, int64_t& R) {
  if (passes < 1) throw py::value_error("passes: expected an integer >= 1");
  const int64_t* p = graph_indptr(a, "indptr", E, R);
  if (R % passes) throw py::value_error("indptr: expected passes * R + 1 offsets");
  R /= passes;
  return p;
}

int64_t graph_edges(py::array& col, const char* name) {
  if (col.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-D index array");
  return col.shape(0);
}

bool is_i32(py::array& a) { return a.dtype().is(py::dtype::of<int32_t>()); }

template <typename T, typename I>
void graph_segment_sum_t(py::array indptr, py::array col, py::object perm, py::object w, py::array x,
                         py::object scale, py::array out, int64_t passes) {
  int64_t E = graph_edges(col, "col"), R;
  const int64_t* IP = graph_tiled_indptr(indptr, passes, E, R);
  const I* C = check<I>(col, "col", {E}, false);
  const int64_t* PM = check_opt<int64_t>(perm, "perm", {E}, false);
  if (x.ndim() != 3) throw py::value_error("x: expected a 3-D array (N, H, F)");
  int64_t N = x.shape(0), H = x.shape(1), F = x.shape(2);
  const T* X = check<T>(x, "x", {N, H, F}, false);
  const T* Wt = check_opt<T>(w, "w", {E, H}, false);
  const T* S = check_opt<T>(scale, "scale", {R}, false);
  T* O = check<T>(out, "out", {R, H, F}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(graph_segment_sum, R, IP, passes, C, PM, Wt, H, F, X, S, O);
}

template <typename T, typename I>
void graph_segment_maxmin_t(py::array indptr, py::array col, py::object perm, py::object w, py::array x,
                            bool is_max, py::array out, int64_t passes) {
  int64_t E = graph_edges(col, "col"), R;
  const int64_t* IP = graph_tiled_indptr(indptr, passes, E, R);
  const I* C = check<I>(col, "col", {E}, false);
  const int64_t* PM = check_opt<int64_t>(perm, "perm", {E}, false);
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-D array (N, F)");
  int64_t N = x.shape(0), F = x.shape(1);
  const T* X = check<T>(x, "x", {N, F}, false);
  const T* Wt = check_opt<T>(w, "w", {E}, false);
  T* O = check<T>(out, "out", {R, F}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(graph_segment_maxmin, R, IP, passes, C, PM, Wt, F, X, is_max, O);
}

template <typename T, typename I>
void graph_edge_dot_t(py::array indptr, py::array col, py::object perm, py::array a, py::array b,
                      py::object scale, py::array out) {
  int64_t E = graph_edges(col, "col"), R;
  const int64_t* IP = graph_indptr(indptr, "indptr", E, R);
  const I* C = check<I>(col, "col", {E}, false);
  const int64_t* PM = check_opt<int64_t>(perm, "perm", {E}, false);
  if (a.ndim() != 3) throw py::value_error("a: expected a 3-D array (N, H, F)");
  int64_t N = a.shape(0), H = a.shape(1), F = a.shape(2);
  const T* A = check<T>(a, "a", {N, H, F}, false);
  const T* Bp = check<T>(b, "b", {R, H, F}, false);
  const T* S = check_opt<T>(scale, "scale", {R}, false);
  T* O = check<T>(out, "out", {E, H}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(graph_edge_dot, R, IP, C, PM, H, F, A, Bp, S, O);
}

template <typename T, typename I>
void graph_maxmin_backward_t(py::array indptr, py::array col, py::object perm, py::array t_indptr,
                             py::array t_col, py::object t_perm, py::object w, py::array x, py::array out,
                             py::array g, py::array dx, py::object dw) {
  int64_t E = graph_edges(col, "col"), R, N;
  const int64_t* IP = graph_indptr(indptr, "indptr", E, R);
  const int64_t* TIP = graph_indptr(t_indptr, "t_indptr", E, N);
  const I* C = check<I>(col, "col", {E}, false);
  const I* TC = check<I>(t_col, "t_col", {E}, false);
  const int64_t* PM = check_opt<int64_t>(perm, "perm", {E}, false);
  const int64_t* TPM = check_opt<int64_t>(t_perm, "t_perm", {E}, false);
  if (x.ndim() != 2) throw py::value_error("x: expected a 2-D array (N, F)");
  int64_t F = x.shape(1);
  const T* X = check<T>(x, "x", {N, F}, false);
  const T* Wt = check_opt<T>(w, "w", {E}, false);
  const T* O = check_in<T>(out, "out", {R, F});
  const T* G = check<T>(g, "grad_output", {R, F}, false);
  T* DX = check<T>(dx, "dx", {N, F}, true);
  T* DW = check_opt<T>(dw, "dw", {E}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(graph_maxmin_backward, R, IP, C, PM, N, TIP, TC, TPM, Wt, F, X, O, G, DX, DW);
}

template <typename T>
void graph_softmax_t(py::array indptr, py::object perm, py::array s, py::object g, py::array y, py::object ds) {
  if (s.ndim() != 2) throw py::value_error("scores: expected a 2-D array (E, H)");
  int64_t E = s.shape(0), H = s.shape(1), R;
  const int64_t* IP = graph_indptr(indptr, "indptr", E, R);
  const int64_t* PM = check_opt<int64_t>(perm, "perm", {E}, false);
  if (g.is_none()) {  // forward: s = scores, y = output
    const T* S = check<T>(s, "scores", {E, H}, false);
    T* Y = check<T>(y, "out", {E, H}, true);
    py::gil_scoped_release nogil;
    DLK_CALL(graph_softmax_forward, R, IP, PM, H, S, Y);
  } else {  // backward: s = the forward's output y, y = unused, ds = the gradient
    const T* Yf = check<T>(s, "out", {E, H}, false);
    const T* G = check_opt<T>(g, "grad_output", {E, H}, false);
    T* DS = check_opt<T>(ds, "grad_scores", {E, H}, true);
    py::gil_scoped_release nogil;
    DLK_CALL(graph_softmax_backward, R, IP, PM, H, Yf, G, DS);
  }
}

template <typename I>
void graph_group_by_t(py::array key, py::array indptr, py::array perm) {
  int64_t E = graph_edges(key, "key");
  if (indptr.ndim() != 1 || indptr.shape(0) < 1) throw py::value_error("indptr: expected G + 1 entries");
  int64_t G = indptr.shape(0) - 1;
  const I* K = check<I>(key, "key", {E}, false);
  int64_t* IP = check<int64_t>(indptr, "indptr", {G + 1}, true);
  int64_t* PM = check<int64_t>(perm, "perm", {E}, true);
  py::gil_scoped_release nogil;
  DLK_CALL(graph_group_by, G, E, K, IP, PM);
}

// Dispatch on the float dtype (of `f`) and the index dtype (of `i`).
#define DLK_GRAPH_DISPATCH(fn, f, i, ...)                                      \
  do {                                                                         \
    if (is_f64(f)) {                                                           \
      if (is_i32(i)) fn<double, int32_t>(__VA_ARGS__);                         \
      else fn<double, int64_t>(__VA_ARGS__);                                   \
    } else {                                                                   \
      if (is_i32(i)) fn<float, int32_t>(__VA_ARGS__);                          \
      else fn<float, int64_t>(__VA_ARGS__);                                    \
    }                                                                          \
  } while (0)

void graph_segment_sum_py(py::array indptr, py::array col, py::object perm, py::object w, py::array x,
                          py::object scale, py::array out, int64_t passes) {
  DLK_GRAPH_DISPATCH(graph_segment_sum_t, out, col, indptr, col, perm, w, x, scale, out, passes);
}
void graph_segment_maxmin_py(py::array indptr, py::array col, py::object perm, py::object w, py::array x,
                             bool is_max, py::array out, int64_t passes) {
  DLK_GRAPH_DISPATCH(graph_segment_maxmin_t, out, col, indptr, col, perm, w, x, is_max, out, passes);
}
void graph_edge_dot_py(py::array indptr, py::array col, py::object perm, py::array a, py::array b,
                       py::object scale, py::array out) {
  DLK_GRAPH_DISPATCH(graph_edge_dot_t, out, col, indptr, col, perm, a, b, scale, out);
}
void graph_maxmin_backward_py(py::array indptr, py::array col, py::object perm, py::array t_indptr,
                              py::array t_col, py::object t_perm, py::object w, py::array x, py::array out,
                              py::array g, py::array dx, py::object dw) {
  if (!t_col.dtype().is(col.dtype())) throw py::type_error("t_col: expected the dtype of col");
  DLK_GRAPH_DISPATCH(graph_maxmin_backward_t, dx, col, indptr, col, perm, t_indptr, t_col, t_perm, w, x, out,
                     g, dx, dw);
}
void graph_softmax_forward_py(py::array indptr, py::object perm, py::array s, py::array y) {
  if (is_f64(y)) graph_softmax_t<double>(indptr, perm, s, py::none(), y, py::none());
  else graph_softmax_t<float>(indptr, perm, s, py::none(), y, py::none());
}
void graph_softmax_backward_py(py::array indptr, py::object perm, py::array y, py::array g, py::array ds) {
  if (is_f64(ds)) graph_softmax_t<double>(indptr, perm, y, g, ds, ds);
  else graph_softmax_t<float>(indptr, perm, y, g, ds, ds);
}
void graph_group_by_py(py::array key, py::array indptr, py::array perm) {
  if (is_i32(key)) graph_group_by_t<int32_t>(key, indptr, perm);
  else graph_group_by_t<int64_t>(key, indptr, perm);
}
#undef DLK_GRAPH_DISPATCH

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dlkernels C++ kernels (see csrc/)";
  m.def("supported_isas", &supported_isas, "instruction sets this CPU and build support, best first");
  m.def("set_isa", &set_isa);
  m.def("get_isa", &get_isa);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n: expected a thread count >= 1");
    g_threads = n;
    apply_threads();
  });
  m.def("get_num_threads", []() {
    int n = g_threads.load();
#ifdef _OPENMP
    return n > 0 ? n : omp_get_max_threads();
#else
    return n > 0 ? n : 1;
#endif
  });
  m.def("empty_aligned", &empty_aligned, py::arg("shape"), py::arg("dtype"),
        "an uninitialised C-contiguous array whose data starts on a 64-byte boundary");
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
  m.def("attention_forward", &attention_forward, py::arg("query"), py::arg("key"), py::arg("value"),
        py::arg("kv_index"), py::arg("attn_mask"), py::arg("mask_offset"), py::arg("mask_row_stride"),
        py::arg("mask_col_stride"), py::arg("is_causal"), py::arg("scale"), py::arg("dropout"),
        py::arg("seed"), py::arg("threshold"), py::arg("dropout_scale"), py::arg("out"), py::arg("lse"));
  m.def("attention_backward", &attention_backward, py::arg("grad_output"), py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("out"), py::arg("lse"), py::arg("kv_index"),
        py::arg("attn_mask"), py::arg("mask_offset"), py::arg("mask_row_stride"),
        py::arg("mask_col_stride"), py::arg("is_causal"), py::arg("scale"), py::arg("dropout"),
        py::arg("seed"), py::arg("threshold"), py::arg("dropout_scale"), py::arg("grad_query"),
        py::arg("grad_key"), py::arg("grad_value"), py::arg("grad_attn_mask"));
  m.def("graph_segment_sum", &graph_segment_sum_py, py::arg("indptr"), py::arg("col"), py::arg("perm"),
        py::arg("w"), py::arg("x"), py::arg("scale"), py::arg("out"), py::arg("passes") = 1);
  m.def("graph_segment_maxmin", &graph_segment_maxmin_py, py::arg("indptr"), py::arg("col"), py::arg("perm"),
        py::arg("w"), py::arg("x"), py::arg("is_max"), py::arg("out"), py::arg("passes") = 1);
  m.def("graph_edge_dot", &graph_edge_dot_py, py::arg("indptr"), py::arg("col"), py::arg("perm"), py::arg("a"),
        py::arg("b"), py::arg("scale"), py::arg("out"));
  m.def("graph_maxmin_backward", &graph_maxmin_backward_py, py::arg("indptr"), py::arg("col"), py::arg("perm"),
        py::arg("t_indptr"), py::arg("t_col"), py::arg("t_perm"), py::arg("w"), py::arg("x"), py::arg("out"),
        py::arg("grad_output"), py::arg("dx"), py::arg("dw"));
  m.def("graph_softmax_forward", &graph_softmax_forward_py, py::arg("indptr"), py::arg("perm"), py::arg("scores"),
        py::arg("out"));
  m.def("graph_softmax_backward", &graph_softmax_backward_py, py::arg("indptr"), py::arg("perm"), py::arg("out"),
        py::arg("grad_output"), py::arg("grad_scores"));
  m.def("graph_group_by", &graph_group_by_py, py::arg("key"), py::arg("indptr"), py::arg("perm"));
}
