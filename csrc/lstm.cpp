// lstm.cpp: one LSTM layer, one direction, forward and backward through time (float, double).
//
// The plan of Appleyard, Kocisky and Blunsom (2016), "Optimizing performance of recurrent
// neural networks on GPUs", on a CPU's few cores:
//   one OpenMP region for the whole sequence; thread r owns a slice of the hidden units, packs
//   its slice of the weights once (it stays in its core's cache from step to step), computes
//   only its gate columns and their fused gate pass, and meets the others at one spinning
//   barrier per step, after which every thread reads all of h (forward) or dZ (backward).
//   forward   z_t = x_t W_ihᵀ + h_{t-1} W_hhᵀ per step on the thread's packed columns (the
//             shared BLIS gemm); for B <= 4, where a step is bound by streaming W_hh from
//             L2, X W_ihᵀ is one gemm for all steps (each thread its units' columns) and
//             h W_hhᵀ dot products on rows of W_hh packed without a transpose, in two fixed
//             halves over h so that a thread starts on the half it wrote while the other half
//             is on its way, and without lengths or projection no barrier at all, only
//             per-thread step counters; with a projection, h = m W_hrᵀ the same way.
//   backward  per step only what the recurrence needs: dh_{t-1} = dZ_t W_hh on the thread's
//             columns (for B <= 4 W_hh's columns copied and read row by row, without a
//             projection in two fixed halves over the units and with step counters, as in
//             the forward) and the fused elementwise pass, which also sums db; then
//             dX = dZ W_ih, dW_ih = dZᵀ X, dW_hh = dZᵀ H_prev (one gemm over [X H_prev]
//             when T*B is large), dW_hr = dHᵀ M as gemms over all T*B rows, their rows
//             shared by the threads.
// Layout: time-major, C-contiguous; gates saved activated (i, f, g, o), c saved every step.
// Lengths (or null): sequence b runs steps t < lengths[b]; past its end it keeps its state
// and outputs 0, and its gradients pass through unchanged.
// Deterministic: every output element is computed by the same operations in the same order
// whatever the number of threads (the gemm's promise, see gemm.cpp, and fixed-order sums).
#include "dlk.h"
#include "kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace dlk {
namespace DLK_ISA {
namespace {

// Per-call scratch, freed on return (no global state). Left uninitialised: every user writes
// it before reading, and zeroing the packed weights cost as much as packing them (a cell step).
// On a 64-byte line: with new[]'s 16-byte alignment every whole-vector load of the packed weights
// spanned two lines, and threads' neighbouring columns of dZ shared one (L4, 2 threads: forward
// 8% and forward+backward 3-5% faster aligned, same-process A/B of the two builds).
template <typename T>
struct Workspace {
  struct Free {
    void operator()(T* q) const { ::operator delete[](q, std::align_val_t(64)); }
  };
  std::unique_ptr<T[], Free> p;
  explicit Workspace(int64_t n)
      : p(static_cast<T*>(::operator new[](sizeof(T) * (size_t)std::max<int64_t>(n, 1), std::align_val_t(64)))) {}
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
};

// ---- vector math --------------------------------------------------------------------------
// exp for float lanes: Cephes' expf (range reduction by ln 2, degree-5 polynomial, ~1 ulp),
// the 2^n scaling done on the exponent bits. Double lanes call std::exp (the float64 path is
// for checking gradients, so it keeps libm's accuracy).
template <typename T>
inline vec<T> vexp(vec<T> x) {
  constexpr int W = simd<T>::width;
  if constexpr (sizeof(T) == 4) {
    typedef int32_t ivec __attribute__((vector_size(VBYTES)));
    x = x < 88.3762626647949f ? x : 88.3762626647949f;
    x = x > -87.3365447504f ? x : -87.3365447504f;
    const vec<T> magic = vec<T>{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    vec<T> t = x * 1.44269504088896341f + magic;
    vec<T> n = t - magic;
    ivec ni = (ivec)t - (ivec)magic;
    vec<T> r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vec<T> p = vec<T>{} + 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    ivec e = (ni + 127) << 23;
    return p * (vec<T>)e;
  } else {
    vec<T> out;
    for (int k = 0; k < W; ++k) out[k] = std::exp(x[k]);
    return out;
  }
}

// 1 / d for float lanes: the hardware estimate (14 bits with AVX-512, 12 with AVX2) and one
// Newton step (r (2 - d r), ~1 ulp), a quarter of a vector division's cost on Zen 4 / Skylake.
template <typename T>
inline vec<T> vrecip(vec<T> d) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const vec<T> r = (vec<T>)_mm512_maskz_rcp14_ps((__mmask16)0xFFFF, (__m512)d);
    return r * (T(2) - d * r);
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const vec<T> r = (vec<T>)_mm256_rcp_ps((__m256)d);
    return r * (T(2) - d * r);
  }
#endif
  return T(1) / d;
}

template <typename T>
inline vec<T> vsigmoid(vec<T> x) {
  return vrecip<T>(T(1) + vexp<T>(-x));
}

// tanh(x) = 2 σ(2x) - 1 for float (absolute error ~1e-7); std::tanh per lane for double.
template <typename T>
inline vec<T> vtanh(vec<T> x) {
  if constexpr (sizeof(T) == 4) {
    return T(2) * vsigmoid<T>(x + x) - T(1);
  } else {
    vec<T> out;
    for (int k = 0; k < simd<T>::width; ++k) out[k] = std::tanh(x[k]);
    return out;
  }
}

// Loads n <= W elements (the rest 0) / stores n elements: for the tail of a row.
template <typename T>
inline vec<T> vload_n(const T* p, int n) {
  vec<T> v = vec<T>{};
  for (int k = 0; k < n; ++k) v[k] = p[k];
  return v;
}
template <typename T>
inline void vstore_n(T* p, vec<T> v, int n) {
  for (int k = 0; k < n; ++k) p[k] = v[k];
}

template <typename T>
inline vec<T> vfma(vec<T> a, vec<T> b, vec<T> c) {  // a * b + c, fused where the ISA has it
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  else return (vec<T>)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__FMA__) && defined(__AVX2__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  else return (vec<T>)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}

// ---- the recurrent products ---------------------------------------------------------------
// Every step multiplies the B rows of h (or dZ) by a fixed slice of W_hh. Two ways, chosen by B
// alone (so the result does not depend on the thread count), each summing every output over k
// in one fixed order (deterministic):
//  - B > SMALL_M: the slice packed once per call for the shared BLIS gemm (gemm_pack_b /
//    gemm_prepacked_b), whose micro-tile reuses each loaded weight for 8 rows;
//  - B <= SMALL_M (online forecasting): a weight is used by so few rows that the step is bound
//    by streaming the slice from L2, and packing it would cost more than the whole sequence at
//    small T; W_hh is read in place, row by row, by the dot and axpy kernels below.
constexpr int64_t SMALL_M = 4;

// The fixed split of a sum over [0, n) into halves [0, split) and [split, n), at half of its
// vectors: the same at any thread count, so (first half) + (second half), each summed alone,
// gives the same bits whichever half a thread does first (see sum_in_halves).
inline int64_t half_split(int64_t n, int W) {
  return std::min(n, (n + W - 1) / W / 2 * W);
}

template <typename T>
struct Packed {  // K x N, element (k, j) at B[k * rsb + j * csb], packed for gemm_prepacked_b
  int64_t K, N;
  const T* B;
  int64_t rsb, csb;
  bool once;  // used by one product only (one step): not packed, gemm reads B as it is
  Workspace<T> buf;
  Packed(int64_t K_, int64_t N_, const T* B_, int64_t rsb_, int64_t csb_, bool once_ = false)
      : K(K_), N(N_), B(B_), rsb(rsb_), csb(csb_), once(once_),
        buf(K_ > 0 && N_ > 0 && !once_ ? gemm_packed_b_size<T>(K_, N_) : 0) {
    if (K <= 0 || N <= 0 || once) return;
    gemm_pack_b<T>(K, N, B, rsb, csb, buf.data());
  }
  // C (M x N, row stride ldc) (+)= A (M x K, row stride lda) @ B, on the calling thread
  void mul(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate = false) const {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, (size_t)N * sizeof(T));
      return;
    }
    if (once) gemm<T>(M, N, K, A, lda, 1, B, rsb, csb, C, ldc, accumulate, false);
    else gemm_prepacked_b<T>(M, N, K, A, lda, 1, buf.data(), C, ldc, accumulate, false);
  }
};

// The lanes of W accumulators summed, out[r] = Σ lanes of v[r]: pairs of vectors folded, each
// keeping the sum of its halves, until one vector holds every sum in row order (a 16 x 16
// transpose-and-add in 15 shuffle pairs for AVX-512 floats, rather than 16 horizontal sums).
template <typename T>
struct lane_index {  // shuffle masks: integers of T's size, one per lane
  using I = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  typedef I type __attribute__((vector_size(VBYTES)));
};

template <typename T, int N>  // N vectors left, each holding blocks of N lanes per row
inline void fold_sums(vec<T>* v) {
  constexpr int W = simd<T>::width;
  if constexpr (N > 1) {
    typename lane_index<T>::type lo, hi;  // in each N-lane block: [x's first half | y's first half], then the second halves
    for (int l = 0; l < W; ++l) {
      const int k = l / N * N, i = l % N;
      lo[l] = i < N / 2 ? k + i : W + k + i - N / 2;
      hi[l] = i < N / 2 ? k + i + N / 2 : W + k + i;
    }
    for (int r = 0; r < N / 2; ++r)
      v[r] = __builtin_shuffle(v[r], v[r + N / 2], lo) + __builtin_shuffle(v[r], v[r + N / 2], hi);
    fold_sums<T, N / 2>(v);
  }
}

// n rows of length K (a product by their transpose: C[b][i] = A_b · row i), packed for one
// stream of loads: groups of W rows, each group as K/W blocks holding the same W columns of its
// W rows, zero-padded to whole groups and blocks. A copy of whole vectors, no transpose.
template <typename T>
struct DotPacked {
  static constexpr int W = simd<T>::width;
  int64_t n, K, kv;  // kv: vectors per row
  Workspace<T> buf;
  template <typename RowFn>  // row(i): the start of row i
  DotPacked(int64_t n_, int64_t K_, RowFn row)
      : n(n_), K(K_), kv((K_ + W - 1) / W), buf((n_ + W - 1) / W * kv * W * W) {
    const int64_t groups = (n + W - 1) / W;
    const int64_t full = K / W;
    for (int64_t i = 0; i < groups * W; ++i) {
      T* dst = buf.data() + ((i / W) * kv * W + i % W) * W;
      if (i >= n) {  // padding rows
        for (int64_t v = 0; v < kv; ++v) vstore(dst + v * W * W, vec<T>{});
        continue;
      }
      const T* src = row(i);
      for (int64_t v = 0; v < full; ++v) vstore(dst + v * W * W, vload(src + v * W));
      if (full < kv) vstore(dst + full * W * W, vload_n(src + full * W, (int)(K - full * W)));
    }
  }
  // The two halves of the product, A's vectors [0, half()) and [half(), kv) (half_split): C =
  // A · rowsᵀ is always computed as (first half) + (second half).
  int64_t half() const { return half_split(K, W) / W; }
  // C (M x n, row stride ldc) (+)= A (M x K, row stride lda) · rowsᵀ over A's vectors [v0, v1)
  void mul(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc, int64_t v0, int64_t v1,
           bool accumulate) const {
    for (int64_t b = 0; b < M; ++b)
      for (int64_t g = 0; g * W < n; ++g) {
        const T* a = A + b * lda;
        const T* w = buf.data() + (g * kv + v0) * W * W;
        vec<T> acc[W];
        for (int r = 0; r < W; ++r) acc[r] = vec<T>{};
        int64_t v = v0;
        for (; v < v1 && (v + 1) * W <= K; ++v, w += W * W) {
          const vec<T> av = vload(a + v * W);
#pragma GCC unroll 16
          for (int r = 0; r < W; ++r) acc[r] = vfma<T>(av, vload(w + r * W), acc[r]);
        }
        if (v < v1) {  // the last, partial vector of A (the packed rows are zero past K)
          const vec<T> av = vload_n(a + v * W, (int)(K - v * W));
          for (int r = 0; r < W; ++r) acc[r] = vfma<T>(av, vload(w + r * W), acc[r]);
        }
        fold_sums<T, W>(acc);
        const int m = (int)std::min<int64_t>(W, n - g * W);
        T* c = C + b * ldc + g * W;
        if (accumulate) acc[0] += m == W ? vload(c) : vload_n(c, m);
        if (m == W) vstore(c, acc[0]);
        else vstore_n(c, acc[0], m);
      }
  }
  void mul(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc) const {  // both halves
    mul(M, A, lda, C, ldc, 0, half(), false);
    mul(M, A, lda, C, ldc, half(), kv, true);
  }
};

// c[0, n) (+)= Σ_k a[k] R[k, 0:n) for (NV - 1) W < n <= NV W columns, R's rows ldr apart, over
// the k of nseg segments [s step, s step + K) (one segment: k < K); the last vector may be
// partial. The even and odd k run in two sets of accumulators, added at the end (twice the FMA
// chains in flight when NV is small); with accumulate, c + that sum.
template <typename T, int NV, bool FULL>  // FULL: the last vector is whole (n == NV W)
inline void axpy_rows_impl(int64_t n, int64_t K, int nseg, int64_t step, const T* R, int64_t ldr,
                           const T* a, T* c, bool accumulate) {
  constexpr int W = simd<T>::width;
  const int last = (int)(n - (NV - 1) * W);  // columns in the last vector, 1..W
  auto ld_last = [&](const T* p) { return FULL ? vload(p) : vload_n(p, last); };
  vec<T> acc[2][NV];
  for (int v = 0; v < NV; ++v) acc[0][v] = acc[1][v] = vec<T>{};
  auto row = [&](vec<T>* ac, int64_t k) {
    const vec<T> av = vbroadcast<T>(a[k]);
    const T* rk = R + k * ldr;
#pragma GCC unroll 8
    for (int v = 0; v < NV - 1; ++v) ac[v] = vfma<T>(av, vload(rk + v * W), ac[v]);
    ac[NV - 1] = vfma<T>(av, ld_last(rk + (NV - 1) * W), ac[NV - 1]);
  };
  for (int sg = 0; sg < nseg; ++sg) {
    const int64_t k0 = sg * step, k1 = k0 + K;
    int64_t k = k0;
    for (; k + 2 <= k1; k += 2) {
      row(acc[0], k);
      row(acc[1], k + 1);
    }
    if (k < k1) row(acc[0], k);
  }
  for (int v = 0; v < NV; ++v) acc[0][v] += acc[1][v];
  if (accumulate) {
    for (int v = 0; v < NV - 1; ++v) acc[0][v] = vload(c + v * W) + acc[0][v];
    acc[0][NV - 1] = ld_last(c + (NV - 1) * W) + acc[0][NV - 1];
  }
  for (int v = 0; v < NV - 1; ++v) vstore(c + v * W, acc[0][v]);
  if (FULL) vstore(c + (NV - 1) * W, acc[0][NV - 1]);
  else vstore_n(c + (NV - 1) * W, acc[0][NV - 1], last);
}

// The columns [0, n) of one row for n <= V W: axpy_rows_impl with as many vectors as n needs.
template <typename T, int V>
inline void axpy_cols(int64_t n, int64_t K, int nseg, int64_t step, const T* R, int64_t ldr,
                      const T* a, T* c, bool accumulate) {
  constexpr int W = simd<T>::width;
  if constexpr (V > 1) {
    if (n <= (V - 1) * W) return axpy_cols<T, V - 1>(n, K, nseg, step, R, ldr, a, c, accumulate);
  }
  if (n == V * W) axpy_rows_impl<T, V, true>(n, K, nseg, step, R, ldr, a, c, accumulate);
  else axpy_rows_impl<T, V, false>(n, K, nseg, step, R, ldr, a, c, accumulate);
}

// C[b][0, n) (+)= Σ_k A_b[k] R[k, 0:n) for B rows of A (stride lda), R's rows ldr apart, k over
// nseg segments of K as in axpy_rows_impl: a product by R, read in place. The partial vector
// is handled outside the k loop (FULL): tested inside it, the compiler kept the accumulators
// on the stack (a step of L4's backward 0.3 us slower).
template <typename T>
void axpy_many(int64_t B, int64_t K, int64_t n, const T* R, int64_t ldr, const T* A, int64_t lda,
               T* C, int64_t ldc, int nseg = 1, int64_t step = 0, bool accumulate = false) {
  constexpr int W = simd<T>::width, NV = 8;
  for (int64_t b = 0; b < B; ++b) {
    const T* a = A + b * lda;
    T* c = C + b * ldc;
    int64_t j = 0;
    for (; j + NV * W <= n; j += NV * W)
      axpy_rows_impl<T, NV, true>(NV * W, K, nseg, step, R + j, ldr, a, c + j, accumulate);
    if (j < n) axpy_cols<T, NV - 1>(n - j, K, nseg, step, R + j, ldr, a, c + j, accumulate);
  }
}

inline bool running(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// ---- the threads of one call --------------------------------------------------------------
// One OpenMP region runs the whole sequence. Thread r owns a slice of the hidden units (and of
// the P outputs): it computes the step's products only for the gate columns of its units,
// with its own packed slice of the weights (which stays in its core's cache), runs
// the gate pass on those units, and meets the others at one barrier per step, after which
// every thread reads all of h (forward) or of dZ (backward). Splitting the columns rather than
// the batch rows keeps every thread busy at B = 1 and halves the weights each core streams.
// Each output element is computed by the same operations whatever the split: the result does
// not depend on the thread count.
struct Slice {
  int64_t j0, j1;
  int64_t size() const { return j1 - j0; }
};

// Thread r's share of n elements out of nt, in whole vectors of W.
inline Slice slice_of(int64_t n, int64_t W, int r, int nt) {
  const int64_t nv = (n + W - 1) / W;
  return {std::min<int64_t>(n, nv * r / nt * W), std::min<int64_t>(n, nv * (r + 1) / nt * W)};
}

// A step's product over [0, n) in the two halves of half_split, by the thread that wrote slice s
// of the operand, in a step without a barrier: first the half it wrote itself, if it wrote a
// whole one (with 2 threads each did), while the others' part is on its way; wait() returns
// once the others' part is written. sum(k0, k1, accumulate): the half [k0, k1), stored or added.
template <typename Sum, typename Wait>
inline void sum_in_halves(int64_t n, int W, Slice s, Sum sum, Wait wait) {
  const int64_t h = half_split(n, W);
  const bool lo = s.j0 == 0 && s.j1 >= h, hi = !lo && s.j0 <= h && s.j1 == n;
  if (!lo && !hi) wait();
  if (hi) sum(h, n, false);
  else sum(0, h, false);
  if (lo || hi) wait();
  if (hi) sum(0, h, true);
  else sum(h, n, true);
}

// Threads for a sequence whose every step multiplies B x K by K x N: one per slice of the
// hidden units, and one in all when a step is too small to pay for a barrier.
inline int threads_for_steps(int64_t B, int64_t K, int64_t N, int64_t H, int W) {
  if (in_parallel() || B * K * N < (int64_t(1) << 14)) return 1;
  return (int)std::min<int64_t>(max_threads(), (H + W - 1) / W);
}

inline int num_threads_here() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The barrier between steps: a counter and a phase on the caller's stack, spun on, since a step
// can be a microsecond and OpenMP's barrier costs a good part of that. After a while of
// spinning a thread yields its core, in case the machine has more threads than cores.
struct StepBarrier {
  int n = 1;  // threads in the region
  std::atomic<int> arrived{0}, phase{0};
  void wait() {
    if (n <= 1) return;
    const int ph = phase.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.store(ph + 1, std::memory_order_release);
      return;
    }
    for (int spin = 0; phase.load(std::memory_order_acquire) == ph; ++spin) {
      if (spin < (1 << 14)) pause();
      else std::this_thread::yield();
    }
  }
  static void pause() {
#if defined(__SSE2__)
    _mm_pause();
#endif
  }
};

// Per-thread step counters, one cache line each: thread r publishes that its part of step t is
// written (done = t + 1, release), a reader waits until every other thread's count reaches it
// (acquire). Lighter than StepBarrier where no buffer is ever rewritten (h_t in its own row
// y_t): a thread waits only for the data it reads, and a writer never waits for readers.
struct StepFlags {
  struct alignas(64) Slot {
    std::atomic<int64_t> done{0};
  };
  int n;
  std::unique_ptr<Slot[]> slot;
  explicit StepFlags(int n_) : n(n_), slot(new Slot[(size_t)n_]) {}
  void publish(int r, int64_t steps) { slot[r].done.store(steps, std::memory_order_release); }
  void wait_others(int r, int64_t steps) const {
    for (int o = 0; o < n; ++o)
      for (int spin = 0; o != r && slot[o].done.load(std::memory_order_acquire) < steps; ++spin) {
        if (spin < (1 << 14)) StepBarrier::pause();
        else std::this_thread::yield();
      }
  }
};

// Loads and stores of whole vectors, or of the first w lanes (the tail of a row).
template <typename T>
struct Whole {
  vec<T> ld(const T* p) const { return vload(p); }
  void st(T* p, vec<T> v) const { vstore(p, v); }
};
template <typename T>
struct Part {
  int w;
  vec<T> ld(const T* p) const { return vload_n(p, w); }
  void st(T* p, vec<T> v) const { vstore_n(p, v, w); }
};

// body(j, io) for the vectors at j = 0, W, 2W, ... < n, io a Whole or, for a partial last one,
// a Part: whole vectors get a loop of their own. With the width tested inside one loop, the
// compiler kept the vectors on the stack (L4's gate pass 0.35 us a step).
template <typename T, typename Body>
inline void for_vectors(int64_t n, Body body) {
  constexpr int W = simd<T>::width;
  int64_t j = 0;
  for (; j + W <= n; j += W) body(j, Whole<T>{});
  if (j < n) body(j, Part<T>{(int)(n - j)});
}

// ---- forward: one step's elementwise work, row b, hidden units [j0, j0 + n) -----------------
// z: the gates array at unit j0 (gate q at z + q * H), gets the activated gates; zx: x W_ihᵀ for
// the same units (gate q at zx + q * ldx), or null when zr holds it too;
// zr: the recurrent product h W_hhᵀ for the same units (gate q at zr + q * n);
// bias (4H) at unit j0 or null; cprev: c_{t-1}; c gets c_t (c_{t-1} when not running); m gets
// o * tanh(c_t).
template <typename T>
void gates_forward(int64_t n, int64_t H, T* z, const T* zx, int64_t ldx, const T* zr, const T* bias,
                   const T* cprev, T* c, T* m, bool run) {
  for_vectors<T>(n, [&](int64_t j, auto io) {
    vec<T> zq[4];
    for (int q = 0; q < 4; ++q) {
      zq[q] = zx ? io.ld(zx + q * ldx + j) + io.ld(zr + q * n + j) : io.ld(zr + q * n + j);
      if (bias) zq[q] += io.ld(bias + q * H + j);
    }
    vec<T> i = vsigmoid<T>(zq[0]), f = vsigmoid<T>(zq[1]), g = vtanh<T>(zq[2]), o = vsigmoid<T>(zq[3]);
    const vec<T> cp = io.ld(cprev + j);
    const vec<T> cn = f * cp + i * g;
    io.st(z + j, i);
    io.st(z + H + j, f);
    io.st(z + 2 * H + j, g);
    io.st(z + 3 * H + j, o);
    io.st(m + j, o * vtanh<T>(cn));
    io.st(c + j, run ? cn : cp);
  });
}

// ---- backward: one step's elementwise work, row b, hidden units [j0, j0 + n) ----------------
// gates: activated, at unit j0 (gate q at + q * H); ct, cprev, dm, dc at unit j0: dm the
// gradient of m = o tanh(c_t), dc that of c_t from later steps, replaced by that of c_{t-1};
// dz out (like gates); m out (o tanh(c_t), for dW_hr) when non-null. A row that is not
// running gets dz = 0.
template <typename T>
void gates_backward(int64_t n, int64_t H, const T* gates, const T* ct, const T* cprev, const T* dm,
                    T* dc, T* dz, T* m, bool run) {
  if (!run) {
    for (int q = 0; q < 4; ++q) std::memset(dz + q * H, 0, (size_t)n * sizeof(T));
    if (m) std::memset(m, 0, (size_t)n * sizeof(T));
    return;
  }
  for_vectors<T>(n, [&](int64_t j, auto io) {
    vec<T> i = io.ld(gates + j), f = io.ld(gates + H + j), g = io.ld(gates + 2 * H + j),
           o = io.ld(gates + 3 * H + j);
    vec<T> tc = vtanh<T>(io.ld(ct + j));
    vec<T> dmv = io.ld(dm + j);
    vec<T> dct = io.ld(dc + j) + dmv * o * (T(1) - tc * tc);
    io.st(dz + j, dct * g * i * (T(1) - i));
    io.st(dz + H + j, dct * io.ld(cprev + j) * f * (T(1) - f));
    io.st(dz + 2 * H + j, dct * i * (T(1) - g * g));
    io.st(dz + 3 * H + j, dmv * tc * o * (T(1) - o));
    io.st(dc + j, dct * f);
    if (m) io.st(m + j, o * tc);
  });
}

// The rows of a gate weight w (4H x K: W_ih or W_hh) for hidden units s of all four gates,
// gathered (4 |s| x K): the columns of wᵀ that one thread's products need, gate q's at q |s|.
template <typename T>
Workspace<T> gather_gate_rows(const T* w, int64_t H, int64_t K, Slice s) {
  Workspace<T> g(4 * s.size() * K);
  for (int q = 0; q < 4; ++q)
    std::memcpy(g.data() + q * s.size() * K, w + (q * H + s.j0) * K, (size_t)(s.size() * K) * sizeof(T));
  return g;
}

}  // namespace

template <typename T>
void lstm_forward(int64_t Tn, int64_t B, int64_t I, int64_t H, int64_t P, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* bias, const T* w_hr,
                  const int64_t* lengths, T* y, T* h_n, T* c_n, T* gates, T* cs) {
  constexpr int W = simd<T>::width;
  const int64_t G = 4 * H;
  std::memcpy(h_n, h0, (size_t)(B * P) * sizeof(T));
  std::memcpy(c_n, c0, (size_t)(B * H) * sizeof(T));
  if (Tn <= 0 || B <= 0) return;
  const bool proj = w_hr != nullptr;
  // Without lengths h_t is y_t: the steps read h from y. With lengths a finished sequence
  // keeps its h while its y is 0, so h lives in hbuf, double-buffered (a thread writes its
  // slice of h_t while another may still read h_{t-1}). m = o tanh(c) of all units is shared
  // with a projection; c_t is written straight into cs.
  Workspace<T> hbuf(lengths ? 2 * B * P : 0), mall(proj ? B * H : 0);
  if (lengths) std::memcpy(hbuf.data(), h0, (size_t)(B * P) * sizeof(T));
  const int nt = threads_for_steps(B, P, G, H, W);
  const bool small = B <= SMALL_M;
  // x W_ihᵀ: for B <= SMALL_M, for every step at once, in the region: each thread the gate
  // columns of its own units, in one gemm over their gathered rows of W_ih into a Z of its own
  // (only it reads them, so no barrier follows; one gemm rather than one a gate: 14 -> 10 us a
  // thread at L4), which may use every thread when the steps run on one.
  // Bigger B: step by step, each thread its gate columns just before their gate pass, so that
  // they are read from cache rather than from a Z too big for it.

  // small B without projection or lengths: h_t is row y_t, written once, so the steps need no
  // barrier, only each thread's count of steps done (StepFlags)
  const bool flags = small && !proj && !lengths;
  StepBarrier bar;
  StepFlags done(nt);
#pragma omp parallel num_threads(nt)
  {
    const int n = num_threads_here(), r = thread_id();
#pragma omp single
    bar.n = done.n = n;  // (the single's closing barrier publishes it)
    const Slice s = slice_of(H, W, r, n);           // hidden units (c, gates)
    const Slice ps = proj ? slice_of(P, W, r, n) : s;  // outputs (h, y)
    const int64_t hs = s.size();
    // the rows of W_ih for this thread's units (4hs x I): packed (B > SMALL_M) or read by the
    // gemm of X W_ihᵀ for all steps (Z, T*B x 4hs, gate q's columns at q hs)
    const Workspace<T> wgi = gather_gate_rows(w_ih, H, I, s);
    Workspace<T> zx(small ? Tn * B * 4 * hs : 0);
    if (small) gemm<T>(Tn * B, 4 * hs, I, x, I, 1, wgi.data(), 1, I, zx.data(), 4 * hs, false, n == 1);
    // packed (B > SMALL_M): W_ihᵀ and W_hhᵀ restricted to this thread's gate columns (I x 4hs,
    // P x 4hs), W_hrᵀ to its outputs (H x ps)
    const Workspace<T> wg = gather_gate_rows(w_hh, H, small ? 0 : P, s);
    const Packed<T> pk_ih(small ? 0 : I, 4 * hs, wgi.data(), 1, I);
    const Packed<T> pk_hh(small ? 0 : P, 4 * hs, wg.data(), 1, P);
    const Packed<T> pk_hr(small || !proj ? 0 : H, ps.size(), proj ? w_hr + ps.j0 * H : nullptr, 1, H);
    // row-packed (B <= SMALL_M): the same rows of W_hh and W_hr, for dot products
    auto gate_row = [&](int64_t i) { return w_hh + ((i / hs) * H + s.j0 + i % hs) * P; };
    auto proj_row = [&](int64_t i) { return w_hr + (ps.j0 + i) * H; };
    const DotPacked<T> dp_hh(small ? 4 * hs : 0, P, gate_row);
    const DotPacked<T> dp_hr(small && proj ? ps.size() : 0, H, proj_row);
    Workspace<T> zr(B * 4 * hs), mown(proj || !lengths ? 0 : B * hs), hp(proj && lengths ? B * ps.size() : 0);

    for (int64_t t = 0; t < Tn; ++t) {
      T* yt = y + t * B * P;
      const T* hprev = lengths ? hbuf.data() + (t % 2) * B * P : t > 0 ? yt - B * P : h0;
      T* z = gates + t * B * G;
      // m for this thread's units: y_t itself (no projection, no lengths), else its own
      // buffer, or the shared one the projection reads
      T* m = proj ? mall.data() + s.j0 : lengths ? mown.data() : yt + s.j0;
      const int64_t ldm = proj ? H : lengths ? hs : P;
      const T* cprev = t > 0 ? cs + (t - 1) * B * H : c0;
      if (flags) {  // (small B) h_{t-1} W_hhᵀ over h's two halves, the half this thread wrote first
        sum_in_halves(
            P, W, ps,
            [&](int64_t k0, int64_t k1, bool acc) {  // h's vectors [k0 / W, k1 / W)
              dp_hh.mul(B, hprev, P, zr.data(), 4 * hs, k0 / W, (k1 + W - 1) / W, acc);
            },
            [&] {
              if (t > 0) done.wait_others(r, t);
            });
      } else if (small) {
        dp_hh.mul(B, hprev, P, zr.data(), 4 * hs);
      } else {
        pk_ih.mul(B, x + t * B * I, I, zr.data(), 4 * hs);
        pk_hh.mul(B, hprev, P, zr.data(), 4 * hs, true);
      }
      for (int64_t b = 0; b < B; ++b) {
        const T* zxb = small ? zx.data() + (t * B + b) * 4 * hs : nullptr;  // x W_ihᵀ (small B)
        gates_forward<T>(hs, H, z + b * G + s.j0, zxb, hs, zr.data() + b * 4 * hs,
                         bias ? bias + s.j0 : nullptr, cprev + b * H + s.j0, cs + (t * B + b) * H + s.j0,
                         m + b * ldm, running(lengths, t, b));
      }
      const T* hnew = m;  // this thread's outputs, row stride ldh
      int64_t ldh = ldm;
      if (proj) {
        bar.wait();  // the projection reads all of m
        T* out = lengths ? hp.data() : yt + ps.j0;
        const int64_t ldo = lengths ? ps.size() : P;
        if (small) dp_hr.mul(B, mall.data(), H, out, ldo);
        else pk_hr.mul(B, mall.data(), H, out, ldo);
        hnew = out;
        ldh = ldo;
      }
      if (lengths) {
        T* hnext = hbuf.data() + ((t + 1) % 2) * B * P;
        for (int64_t b = 0; b < B; ++b) {
          T* yb = yt + b * P + ps.j0;
          T* hb = hnext + b * P + ps.j0;
          const size_t bytes = (size_t)ps.size() * sizeof(T);
          if (running(lengths, t, b)) {
            std::memcpy(yb, hnew + b * ldh, bytes);
            std::memcpy(hb, hnew + b * ldh, bytes);
          } else {
            std::memset(yb, 0, bytes);
            std::memcpy(hb, hprev + b * P + ps.j0, bytes);
          }
        }
      }
      if (flags) done.publish(r, t + 1);
      else bar.wait();  // h_t complete before any thread's next product reads it
    }
  }
  const T* hlast = lengths ? hbuf.data() + (Tn % 2) * B * P : y + (Tn - 1) * B * P;
  std::memcpy(h_n, hlast, (size_t)(B * P) * sizeof(T));
  std::memcpy(c_n, cs + (Tn - 1) * B * H, (size_t)(B * H) * sizeof(T));
}

template <typename T>
void lstm_backward(int64_t Tn, int64_t B, int64_t I, int64_t H, int64_t P, const T* dy,
                   const T* dh_n, const T* dc_n, const T* x, const T* h0, const T* c0,
                   const T* w_ih, const T* w_hh, const T* w_hr, const int64_t* lengths,
                   const T* gates, const T* cs, const T* y, T* dx, T* dh0, T* dc0, T* dw_ih,
                   T* dw_hh, T* db, T* dw_hr) {
  constexpr int W = simd<T>::width;
  const int64_t G = 4 * H;
  const bool proj = w_hr != nullptr;
  // dh0 / dc0 carry the gradient of the state from step to step, each thread its own slice
  std::memcpy(dh0, dh_n, (size_t)(B * P) * sizeof(T));
  std::memcpy(dc0, dc_n, (size_t)(B * H) * sizeof(T));
  const int64_t TB = Tn * B;
  Workspace<T> dz(TB * G);
  // dh of every step (kept for dW_hr with a projection; one step's worth otherwise)
  Workspace<T> dht(proj ? TB * P : B * P);
  Workspace<T> mall(proj ? TB * H : 0), dm(proj ? B * H : 0);
  const int nt = TB > 0 ? threads_for_steps(B, G, P, H, W) : 1;
  const bool small = B <= SMALL_M;
  // H_prev = [h0; y_0 .. y_{T-2}], the rows dW_hh = dZᵀ H_prev multiplies, in one buffer, so
  // that dW_hh is one gemm (h0's rows as a gemm of their own, K = B, wrote all of dW_hh once
  // more: 6-9 us a thread at T 50, B 1, H 128); each thread copies a share of the rows before
  // its first step, and the steps' waits order the copies before any gemm reads them.
  // With many rows (fuse), X's rows go in front, [X H_prev], and dW_ih and dW_hh are one gemm
  // dZᵀ [X H_prev] into dwcat, copied out: one pass over dZ (T*B x 4H, far out of cache) instead
  // of two, and N = I + P instead of a narrow N = I (L1, T*B 6400: forward+backward 0.985 of
  // two gemms, A/B in one process; 0.95-0.99 with fresh pages on every call). With few rows,
  // copying dwcat out costs more than it saves (fused anyway: L3, T*B 64, 1.02; L4, T*B 50, 1.03).
  const bool fuse = TB >= 8 * (I + P);
  const int64_t K2 = fuse ? I + P : P;  // the row length of hprev; H_prev at column K2 - P
  Workspace<T> hprev(TB * K2), dwcat(fuse ? G * K2 : 0);
  // small B without projection: a thread reads no other's data but dZ_t, written once, so the
  // steps need no barrier, only each thread's count of steps done (as in lstm_forward)
  const bool flags = small && !proj;
  // dX and the weight gradients from all of dZ, thread r of n taking a share of the rows of
  // each (every element is computed alike whatever the share); parallel: n == 1 and the gemms
  // may use every thread themselves
  auto weight_grads = [&](int r, int n, bool parallel) {
    auto rows = [&](int64_t m) { return Slice{m * r / n, m * (r + 1) / n}; };
    const Slice sx = rows(TB), sg = rows(G), sp = rows(P);
    const T* dzg = dz.data() + sg.j0;  // dZᵀ's rows sg: dZ's columns
    gemm<T>(sx.size(), I, G, dz.data() + sx.j0 * G, G, 1, w_ih, I, 1, dx + sx.j0 * I, I, false,
            parallel);                                                                // dX = dZ W_ih
    if (fuse) {
      gemm<T>(sg.size(), K2, TB, dzg, 1, G, hprev.data(), K2, 1, dwcat.data() + sg.j0 * K2, K2, false,
              parallel);                                                              // dZᵀ [X H_prev]
      for (int64_t i = sg.j0; i < sg.j1; ++i) {
        std::memcpy(dw_ih + i * I, dwcat.data() + i * K2, (size_t)I * sizeof(T));
        std::memcpy(dw_hh + i * P, dwcat.data() + i * K2 + I, (size_t)P * sizeof(T));
      }
    } else {
      gemm<T>(sg.size(), I, TB, dzg, 1, G, x, I, 1, dw_ih + sg.j0 * I, I, false, parallel);  // dZᵀ X
      gemm<T>(sg.size(), P, TB, dzg, 1, G, hprev.data(), P, 1, dw_hh + sg.j0 * P, P, false,
              parallel);                                                              // dZᵀ H_prev
    }
    if (proj)
      gemm<T>(sp.size(), H, TB, dht.data() + sp.j0, 1, P, mall.data(), H, 1, dw_hr + sp.j0 * H, H,
              false, parallel);                                                       // dW_hr = dHᵀ M
  };

  StepBarrier bar;
  StepFlags done(nt);
#pragma omp parallel num_threads(nt)
  {
    const int n = num_threads_here(), r = thread_id();
#pragma omp single
    bar.n = done.n = n;  // (the single's closing barrier publishes it)
    const Slice s = slice_of(H, W, r, n);              // hidden units (c, gates, dZ columns)
    const Slice ps = proj ? slice_of(P, W, r, n) : s;  // outputs (h)
    const int64_t hs = s.size();
    {
      const Slice rows{TB * r / n, TB * (r + 1) / n};  // rows of hprev
      for (int64_t i = rows.j0; i < rows.j1; ++i) {
        if (fuse) std::memcpy(hprev.data() + i * K2, x + i * I, (size_t)I * sizeof(T));
        std::memcpy(hprev.data() + i * K2 + K2 - P, i < B ? h0 + i * P : y + (i - B) * P,
                    (size_t)P * sizeof(T));
      }
    }
    // packed (B > SMALL_M): W_hh's columns for this thread's outputs (4H x ps), W_hr's for its
    // units (P x hs); with one step, read in place (packing for one product cost more than it
    // saved: L3's forward+backward 0.970 without it)
    const Packed<T> pk_hh(small ? 0 : G, ps.size(), w_hh + ps.j0, P, 1, Tn == 1);
    const Packed<T> pk_hr(small || !proj ? 0 : P, hs, proj ? w_hr + s.j0 : nullptr, H, 1, Tn == 1);
    // B <= SMALL_M: the same columns of W_hh, read in place, or copied into rows of their own
    // when this thread's columns are only part of each row and there are steps enough to pay
    // for the copy (about one step's reads): in place, the next-line prefetchers pull the rest
    // of every row (the other threads' columns) into L1 as well, and a step cost as much as
    // reading all of W_hh (measured 2.1 us a step at T 50, B 1, H 128, 2 threads; 1.2 copied).
    // The arithmetic is the same either way.
    const bool copy_hh = small && ps.size() < P && Tn * B >= 4;
    Workspace<T> whc(copy_hh ? G * ps.size() : 0);
    if (copy_hh)
      for (int64_t k = 0; k < G; ++k)
        std::memcpy(whc.data() + k * ps.size(), w_hh + k * P + ps.j0, (size_t)ps.size() * sizeof(T));
    const T* wh_cols = copy_hh ? whc.data() : w_hh + ps.j0;  // row k at k * ldw
    const int64_t ldw = copy_hh ? ps.size() : P;
    Workspace<T> dhp(lengths ? B * ps.size() : 0);
    // db = column sums of dZ, summed here while dZ_t is in cache: each thread its units'
    // columns, steps from last to first, rows in order (deterministic)
    for (int q = 0; q < 4; ++q) std::memset(db + q * H + s.j0, 0, (size_t)hs * sizeof(T));

    for (int64_t t = Tn - 1; t >= 0; --t) {
      T* dzt = dz.data() + t * B * G;
      T* dh = proj ? dht.data() + t * B * P : dht.data();
      for (int64_t b = 0; b < B; ++b) {
        const bool run = running(lengths, t, b);
        for (int64_t k = ps.j0; k < ps.j1; ++k)
          dh[b * P + k] = run ? dy[(t * B + b) * P + k] + dh0[b * P + k] : T(0);
      }
      const T* dmt = dh;  // the gradient of m, row stride ldm
      int64_t ldm = P;
      if (proj) {
        bar.wait();  // dM = dH W_hr reads all of dh
        if (small) axpy_many<T>(B, P, hs, w_hr + s.j0, H, dh, P, dm.data() + s.j0, H);
        else pk_hr.mul(B, dh, P, dm.data() + s.j0, H);
        dmt = dm.data();
        ldm = H;
      }
      const T* cprev = t > 0 ? cs + (t - 1) * B * H : c0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = (t * B + b) * H + s.j0;
        gates_backward<T>(hs, H, gates + (t * B + b) * G + s.j0, cs + o, cprev + b * H + s.j0,
                          dmt + b * ldm + s.j0, dc0 + b * H + s.j0, dzt + b * G + s.j0,
                          proj ? mall.data() + o : nullptr, running(lengths, t, b));
        for (int q = 0; q < 4; ++q) {
          T* d = db + q * H + s.j0;
          const T* zq = dzt + b * G + q * H + s.j0;
          for (int64_t j = 0; j < hs; ++j) d[j] += zq[j];
        }
      }
      // dh_{t-1} = dZ_t W_hh, this thread's outputs; a row that is not running keeps its dh
      T* out = lengths ? dhp.data() : dh0 + ps.j0;
      const int64_t ldo = lengths ? ps.size() : P;
      if (flags) {
        done.publish(r, Tn - t);  // dZ_t's columns of this thread's units are written
        // over the units' two halves, the half this thread wrote first; a half [u0, u1) sums
        // its units' rows of the four gates in order
        sum_in_halves(
            H, W, s,
            [&](int64_t u0, int64_t u1, bool acc) {
              axpy_many<T>(B, u1 - u0, ps.size(), wh_cols + u0 * ldw, ldw, dzt + u0, G, out, ldo, 4, H, acc);
            },
            [&] { done.wait_others(r, Tn - t); });
      } else {
        bar.wait();  // dZ_t complete before any thread's product reads it
        if (small) axpy_many<T>(B, G, ps.size(), wh_cols, ldw, dzt, G, out, ldo);
        else pk_hh.mul(B, dzt, G, out, ldo);
      }
      if (lengths) {
        for (int64_t b = 0; b < B; ++b)
          if (running(lengths, t, b))
            std::memcpy(dh0 + b * P + ps.j0, dhp.data() + b * ps.size(), (size_t)ps.size() * sizeof(T));
      }
    }
    // every step's dZ is complete: the last step's barrier came after its gate pass (with
    // flags, every thread has waited for the others' last step)
    if (nt > 1) weight_grads(r, n, false);
  }
  if (nt == 1) weight_grads(0, 1, true);
}

#define DLK_LSTM_INSTANTIATE(T)                                                                 \
  template void lstm_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, const T*, \
                                const T*, const T*, const T*, const T*, const T*, const int64_t*, \
                                T*, T*, T*, T*, T*);                                            \
  template void lstm_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*,         \
                                 const T*, const T*, const T*, const T*, const T*, const T*,    \
                                 const T*, const T*, const int64_t*, const T*, const T*,        \
                                 const T*, T*, T*, T*, T*, T*, T*, T*);
DLK_LSTM_INSTANTIATE(float)
DLK_LSTM_INSTANTIATE(double)
#undef DLK_LSTM_INSTANTIATE

}  // namespace DLK_ISA
}  // namespace dlk
