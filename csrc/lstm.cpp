// lstm.cpp: one LSTM layer, one direction, forward and backward through time (float, double).
//
// The plan of Appleyard, Kocisky and Blunsom (2016), "Optimizing performance of recurrent
// neural networks on GPUs", on the CPU:
//   forward   Z = X W_ihᵀ for all T steps as ONE gemm ([T*B, I] x [I, 4H]);
//             W_hhᵀ packed once (gemm_pack_b) and reused by every step's
//             Z_t += h_{t-1} W_hhᵀ (gemm_prepacked_b);
//             one fused, vectorised pass per step for bias, the four activations, c and h;
//             with a projection, h = m W_hrᵀ by a second prepacked gemm.
//   backward  per step only what the recurrence needs: dh_{t-1} = dZ_t W_hh (prepacked) and
//             the fused elementwise pass; then dX = dZ W_ih, dW_ih = dZᵀ X, dW_hh = dZᵀ H_prev,
//             dW_hr = dHᵀ M as single gemms over all T*B rows, and db as one column sum.
// Layout: time-major, C-contiguous; gates saved activated (i, f, g, o), c saved every step.
// Lengths (or null): sequence b runs steps t < lengths[b]; past its end it keeps its state
// and outputs 0, and its gradients pass through unchanged.
// Deterministic: the gemm is (see gemm.cpp) and every other sum runs in a fixed order.
#include "dlk.h"
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace dlk {
namespace DLK_ISA {
namespace {

template <typename T>
struct Workspace {  // per-call scratch, freed on return (no global state)
  std::vector<T> v;
  explicit Workspace(int64_t n) : v((size_t)std::max<int64_t>(n, 1)) {}
  T* data() { return v.data(); }
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

template <typename T>
inline vec<T> vsigmoid(vec<T> x) {
  return T(1) / (T(1) + vexp<T>(-x));
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

// The per-step product C (M x N) (+)= A (M x K) @ B (K x N) with B fixed for the whole
// sequence. Big M: B packed once for the shared BLIS gemm (gemm_pack_b / gemm_prepacked_b).
// Small M (online forecasting, B <= SMALL_M rows): that gemm's 1-row micro-tile is bound by
// FMA latency (two accumulator chains), so B is kept as a zero-padded row-major copy and each
// row runs 8 vector accumulators side by side along N. Either way every C element sums over
// k in order: deterministic.
constexpr int64_t SMALL_M = 4;

template <typename T>
struct StepB {
  int64_t K, N, ld;  // ld: N rounded up to the vector width (small path)
  bool small;
  std::vector<T> buf;
  StepB(int64_t M, int64_t K_, int64_t N_, const T* B, int64_t rsb, int64_t csb)
      : K(K_), N(N_), ld((N_ + simd<T>::width - 1) / simd<T>::width * simd<T>::width), small(M <= SMALL_M) {
    if (K <= 0 || N <= 0) return;
    if (small) {
      buf.assign((size_t)(K * ld), T(0));
      // 16 x 16 tiles, so that a transposed B (rsb == 1) is read along its rows too
      for (int64_t j0 = 0; j0 < N; j0 += 16)
        for (int64_t k0 = 0; k0 < K; k0 += 16)
          for (int64_t j = j0; j < std::min<int64_t>(N, j0 + 16); ++j)
            for (int64_t k = k0; k < std::min<int64_t>(K, k0 + 16); ++k)
              buf[(size_t)(k * ld + j)] = B[k * rsb + j * csb];
    } else {
      buf.resize((size_t)gemm_packed_b_size<T>(K, N));
      gemm_pack_b<T>(K, N, B, rsb, csb, buf.data());
    }
  }

  template <int NV>
  void chunk(const T* a, int64_t j0, T* c, bool accumulate) const {
    constexpr int W = simd<T>::width;
    vec<T> acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = vec<T>{};
    const T* b = buf.data() + j0;
    for (int64_t k = 0; k < K; ++k) {
      const vec<T> av = vec<T>{} + a[k];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[v] = vfma<T>(av, vload(b + k * ld + v * W), acc[v]);
    }
    for (int v = 0; v < NV; ++v) {
      const int64_t j = j0 + (int64_t)v * W;
      const int n = (int)std::min<int64_t>(W, N - j);
      vec<T> r = accumulate ? (n == W ? vload(c + j) : vload_n(c + j, n)) + acc[v] : acc[v];
      if (n == W) vstore(c + j, r);
      else vstore_n(c + j, r, n);
    }
  }

  void mul(int64_t M, const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate,
           bool parallel = true) const {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, (size_t)N * sizeof(T));
      return;
    }
    if (!small || M > SMALL_M) {
      gemm_prepacked_b<T>(M, N, K, A, lda, 1, buf.data(), C, ldc, accumulate, parallel);
      return;
    }
    constexpr int W = simd<T>::width;
    const int64_t nvec = ld / W;
    for (int64_t i = 0; i < M; ++i) {
      int64_t v0 = 0;
      for (; v0 + 8 <= nvec; v0 += 8) chunk<8>(A + i * lda, v0 * W, C + i * ldc, accumulate);
      switch (nvec - v0) {
        case 7: chunk<7>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 6: chunk<6>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 5: chunk<5>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 4: chunk<4>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 3: chunk<3>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 2: chunk<2>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        case 1: chunk<1>(A + i * lda, v0 * W, C + i * ldc, accumulate); break;
        default: break;
      }
    }
  }
};

inline bool running(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// ---- the threads of one call --------------------------------------------------------------
// One OpenMP region runs the whole sequence. Thread r owns a slice of the hidden units (and of
// the P outputs): it computes the recurrent product only for the gate columns of its units,
// with its own packed slice of W_hh (which stays in its core's cache from step to step), runs
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

inline void barrier() {
#pragma omp barrier
}

// ---- forward: one step's elementwise work, row b, hidden units [j0, j0 + n) -----------------
// z: the gates array at unit j0 (gate q at z + q * H), holding x W_ihᵀ, replaced by the
// activated gates; zr: the recurrent product h W_hhᵀ for the same units (gate q at zr + q * n);
// bias (4H) at unit j0 or null; c: c_{t-1} in, c_t out when running; m gets o * tanh(c_t).
template <typename T>
void gates_forward(int64_t n, int64_t H, T* z, const T* zr, const T* bias, T* c, T* m, bool run) {
  constexpr int W = simd<T>::width;
  for (int64_t j = 0; j < n; j += W) {
    const int w = (int)std::min<int64_t>(W, n - j);
    auto ld = [&](const T* p) { return w == W ? vload(p) : vload_n(p, w); };
    auto st = [&](T* p, vec<T> v) {
      if (w == W) vstore(p, v);
      else vstore_n(p, v, w);
    };
    vec<T> zq[4];
    for (int q = 0; q < 4; ++q) {
      zq[q] = ld(z + q * H + j) + ld(zr + q * n + j);
      if (bias) zq[q] += ld(bias + q * H + j);
    }
    vec<T> i = vsigmoid<T>(zq[0]), f = vsigmoid<T>(zq[1]), g = vtanh<T>(zq[2]), o = vsigmoid<T>(zq[3]);
    vec<T> cn = f * ld(c + j) + i * g;
    st(z + j, i);
    st(z + H + j, f);
    st(z + 2 * H + j, g);
    st(z + 3 * H + j, o);
    st(m + j, o * vtanh<T>(cn));
    if (run) st(c + j, cn);
  }
}

// ---- backward: one step's elementwise work, row b, hidden units [j0, j0 + n) ----------------
// gates: activated, at unit j0 (gate q at + q * H); ct, cprev, dm, dc at unit j0: dm the
// gradient of m = o tanh(c_t), dc that of c_t from later steps, replaced by that of c_{t-1};
// dz out (like gates); m out (o tanh(c_t), for dW_hr) when non-null. A row that is not
// running gets dz = 0.
template <typename T>
void gates_backward(int64_t n, int64_t H, const T* gates, const T* ct, const T* cprev, const T* dm,
                    T* dc, T* dz, T* m, bool run) {
  constexpr int W = simd<T>::width;
  if (!run) {
    for (int q = 0; q < 4; ++q) std::memset(dz + q * H, 0, (size_t)n * sizeof(T));
    if (m) std::memset(m, 0, (size_t)n * sizeof(T));
    return;
  }
  for (int64_t j = 0; j < n; j += W) {
    const int w = (int)std::min<int64_t>(W, n - j);
    auto ld = [&](const T* p) { return w == W ? vload(p) : vload_n(p, w); };
    auto st = [&](T* p, vec<T> v) {
      if (w == W) vstore(p, v);
      else vstore_n(p, v, w);
    };
    vec<T> i = ld(gates + j), f = ld(gates + H + j), g = ld(gates + 2 * H + j),
           o = ld(gates + 3 * H + j);
    vec<T> tc = vtanh<T>(ld(ct + j));
    vec<T> dmv = ld(dm + j);
    vec<T> dct = ld(dc + j) + dmv * o * (T(1) - tc * tc);
    st(dz + j, dct * g * i * (T(1) - i));
    st(dz + H + j, dct * ld(cprev + j) * f * (T(1) - f));
    st(dz + 2 * H + j, dct * i * (T(1) - g * g));
    st(dz + 3 * H + j, dmv * tc * o * (T(1) - o));
    st(dc + j, dct * f);
    if (m) st(m + j, o * tc);
  }
}

// The rows of W_hh for hidden units s of all four gates, gathered (4 |s| x P): the columns of
// W_hhᵀ that one thread's recurrent product needs, gate q's at q * |s|.
template <typename T>
std::vector<T> gather_gate_rows(const T* w_hh, int64_t H, int64_t P, Slice s) {
  std::vector<T> g((size_t)std::max<int64_t>(4 * s.size() * P, 1));
  for (int q = 0; q < 4; ++q)
    std::memcpy(g.data() + q * s.size() * P, w_hh + (q * H + s.j0) * P, (size_t)(s.size() * P) * sizeof(T));
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
  // Z = X W_ihᵀ for every step at once, into the gates array
  gemm<T>(Tn * B, G, I, x, I, 1, w_ih, 1, I, gates, G, false, true);
  const bool proj = w_hr != nullptr;
  // h_{t-1} and h_t (double-buffered: a thread writes its slice of h_t while another may
  // still read h_{t-1}); m = o tanh(c) of all units, shared only with a projection
  Workspace<T> hbuf(2 * B * P), mall(proj ? B * H : 0);
  std::memcpy(hbuf.data(), h0, (size_t)(B * P) * sizeof(T));
  const int nt = threads_for_steps(B, P, G, H, W);

#pragma omp parallel num_threads(nt)
  {
    const int n = num_threads_here(), r = thread_id();
    const Slice s = slice_of(H, W, r, n);           // hidden units (c, gates)
    const Slice ps = proj ? slice_of(P, W, r, n) : s;  // outputs (h, y)
    const int64_t hs = s.size();
    // W_hhᵀ restricted to this thread's gate columns (P x 4hs); W_hrᵀ to its outputs (H x ps)
    const std::vector<T> wg = gather_gate_rows(w_hh, H, P, s);
    const StepB<T> pk_hh(B, P, 4 * hs, wg.data(), 1, P);
    const StepB<T> pk_hr(B, proj ? H : 0, proj ? ps.size() : 0, proj ? w_hr + ps.j0 * H : nullptr, 1, H);
    Workspace<T> zr(B * 4 * hs), mown(proj ? 0 : B * hs), hp(proj ? B * ps.size() : 0);

    for (int64_t t = 0; t < Tn; ++t) {
      const T* hprev = hbuf.data() + (t % 2) * B * P;
      T* hnext = hbuf.data() + ((t + 1) % 2) * B * P;
      T* z = gates + t * B * G;
      pk_hh.mul(B, hprev, P, zr.data(), 4 * hs, false, false);
      // m for this thread's units: its own buffer, or the shared one the projection reads
      T* m = proj ? mall.data() + s.j0 : mown.data();
      const int64_t ldm = proj ? H : hs;
      for (int64_t b = 0; b < B; ++b) {
        gates_forward<T>(hs, H, z + b * G + s.j0, zr.data() + b * 4 * hs, bias ? bias + s.j0 : nullptr,
                         c_n + b * H + s.j0, m + b * ldm, running(lengths, t, b));
        std::memcpy(cs + (t * B + b) * H + s.j0, c_n + b * H + s.j0, (size_t)hs * sizeof(T));
      }
      const T* hnew = m;  // this thread's outputs, row stride ldh
      int64_t ldh = ldm;
      if (proj) {
        barrier();  // the projection reads all of m
        pk_hr.mul(B, mall.data(), H, hp.data(), ps.size(), false, false);
        hnew = hp.data();
        ldh = ps.size();
      }
      for (int64_t b = 0; b < B; ++b) {
        T* yb = y + (t * B + b) * P + ps.j0;
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
      barrier();  // h_t complete before any thread's next product reads it
    }
  }
  std::memcpy(h_n, hbuf.data() + (Tn % 2) * B * P, (size_t)(B * P) * sizeof(T));
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

#pragma omp parallel num_threads(nt)
  {
    const int n = num_threads_here(), r = thread_id();
    const Slice s = slice_of(H, W, r, n);              // hidden units (c, gates, dZ columns)
    const Slice ps = proj ? slice_of(P, W, r, n) : s;  // outputs (h)
    const int64_t hs = s.size();
    // W_hh's columns for this thread's outputs (4H x ps); W_hr's for its units (P x hs)
    const StepB<T> pk_hh(B, TB > 0 ? G : 0, ps.size(), w_hh + ps.j0, P, 1);
    const StepB<T> pk_hr(B, proj && TB > 0 ? P : 0, hs, proj ? w_hr + s.j0 : nullptr, H, 1);
    Workspace<T> dhp(lengths ? B * ps.size() : 0);

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
        barrier();  // dM = dH W_hr reads all of dh
        pk_hr.mul(B, dh, P, dm.data() + s.j0, H, false, false);
        dmt = dm.data();
        ldm = H;
      }
      const T* cprev = t > 0 ? cs + (t - 1) * B * H : c0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = (t * B + b) * H + s.j0;
        gates_backward<T>(hs, H, gates + (t * B + b) * G + s.j0, cs + o, cprev + b * H + s.j0,
                          dmt + b * ldm + s.j0, dc0 + b * H + s.j0, dzt + b * G + s.j0,
                          proj ? mall.data() + o : nullptr, running(lengths, t, b));
      }
      barrier();  // dZ_t complete before any thread's product reads it
      // dh_{t-1} = dZ_t W_hh, this thread's outputs; a row that is not running keeps its dh
      if (lengths == nullptr) {
        pk_hh.mul(B, dzt, G, dh0 + ps.j0, P, false, false);
      } else {
        pk_hh.mul(B, dzt, G, dhp.data(), ps.size(), false, false);
        for (int64_t b = 0; b < B; ++b)
          if (running(lengths, t, b))
            std::memcpy(dh0 + b * P + ps.j0, dhp.data() + b * ps.size(), (size_t)ps.size() * sizeof(T));
      }
    }
  }
  // the weight gradients and dX, each one gemm over all T*B rows
  gemm<T>(TB, I, G, dz.data(), G, 1, w_ih, I, 1, dx, I, false, true);          // dX = dZ W_ih
  gemm<T>(G, I, TB, dz.data(), 1, G, x, I, 1, dw_ih, I, false, true);          // dW_ih = dZᵀ X
  gemm<T>(G, P, std::min<int64_t>(B, TB), dz.data(), 1, G, h0, P, 1, dw_hh, P, false, true);
  if (Tn > 1)                                                                   // dW_hh = dZᵀ H_prev
    gemm<T>(G, P, TB - B, dz.data() + B * G, 1, G, y, P, 1, dw_hh, P, true, true);
  if (proj) gemm<T>(P, H, TB, dht.data(), 1, P, mall.data(), H, 1, dw_hr, H, false, true);
  // db = column sums of dZ, rows in order (deterministic), columns split across threads
  const int64_t ncol = (G + W - 1) / W;
#pragma omp parallel for num_threads(in_parallel() || TB * G < (1 << 16) ? 1 : max_threads())
  for (int64_t cb = 0; cb < ncol; ++cb) {
    const int64_t j0 = cb * W, j1 = std::min<int64_t>(G, j0 + W);
    for (int64_t j = j0; j < j1; ++j) db[j] = T(0);
    for (int64_t r = 0; r < TB; ++r)
      for (int64_t j = j0; j < j1; ++j) db[j] += dz.data()[r * G + j];
  }
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
