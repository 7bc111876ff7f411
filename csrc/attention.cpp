// attention.cpp: scaled dot-product attention, flash-style, forward and backward.
//
// Never builds the L x S score matrix. Queries go in blocks of BR rows, keys in blocks of BC;
// a BR x BC score tile lives in a per-thread buffer, so the memory beyond inputs and outputs
// is O((BR + S) * E) per thread (the S * E is the current head's packed keys and values).
//
// forward (flash): for each output head z (in order), the keys of its key head are packed
//   (per thread, once per key head it meets); tasks are query blocks of every head, no
//   barriers: S = Q Kᵀ (own register tile), online softmax on the tile rows (running max m,
//   sum l), O = alpha O + P V (own register tile, alpha = exp(m_old - m_new)). Key blocks past the causal
//   diagonal are never visited. The row log-sum-exp m + log l is saved (+inf: fully masked).
// forward (rows): L <= ROWS_MAX_L (decoding): one task per query row (and, with few rows, per
//   chunk of 2048 keys, the chunks combined in order afterwards) streams over the keys, dot
//   products along E, the same online softmax, O += p v: keys and values are read once.
// backward: D = rowsum(dO * O) first; then per tile S = Q Kᵀ, P = exp(S - lse), dP = dO Vᵀ,
//   dS = P * (dP * drop - D), dV_j += P~ᵀ dO, dK_j += scale dSᵀ Q_i, dQ_i += scale dS K_j. No two
//   tasks write the same block (no atomics, no races); with many key heads one task per key
//   head does all five products, with few a two-pass schedule splits the work finer: tasks
//   (key head, key block) for dK, dV, then tasks (head, query block) for dQ (S and dP are
//   recomputed). Both sum every block in the same order: bitwise repeatable at any thread count.
// Dropout: the counter-based generator of python/dlkernels/ops/attention/common.py.
#include "dlk.h"
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dlk {
namespace DLK_ISA {
namespace {

constexpr int64_t ROWS_MAX_L = 4;

template <typename T>
struct Blocks;
template <>
struct Blocks<float> {
  static constexpr int64_t BR = 112, BC = 240;  // BC: a multiple of the GEMM's 48-wide panels
};
template <>
struct Blocks<double> {
  static constexpr int64_t BR = 56, BC = 120;
};

// ---- vector exp: exp(x) = 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2], Taylor in r ----
template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  using I = int32_t;
  static constexpr float lo = -87.0f, hi = 88.0f, magic = 12582912.0f;  // 1.5 * 2^23
  static constexpr int deg = 7, mant = 23, bias = 127;
};
template <>
struct ExpConst<double> {
  using I = int64_t;
  static constexpr double lo = -708.0, hi = 709.0, magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int deg = 13, mant = 52, bias = 1023;
};

template <typename T>
inline vec<T> vexp(vec<T> x) {
  using C = ExpConst<T>;
  typedef typename C::I ivec __attribute__((vector_size(VBYTES)));
  const vec<T> zero = vec<T>{};
  const vec<T> lo = zero + C::lo, hi = zero + C::hi;
  auto tiny = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  vec<T> n = (x * (T)1.4426950408889634 + C::magic) - C::magic;  // round to nearest
  vec<T> r = x - n * (T)0.693145751953125;                          // ln2, high part
  r = r - n * (T)1.428606820309417232e-06;                           // low part
  vec<T> p = zero + (T)1;
  for (int d = C::deg; d >= 1; --d) p = p * r * (T)(1.0 / d) + (T)1;  // 1 + r/1 (1 + r/2 (1 + ...))
  ivec ni = __builtin_convertvector(n, ivec);
  ivec bits = (ni + (typename C::I)C::bias) << C::mant;
  vec<T> res = p * (vec<T>)bits;
  return tiny ? zero : res;
}

template <typename T>
inline T sexp(T x) {
  return x == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(x);
}

// ---- dropout: SplitMix64 on the element's position (see common.py) -------------------------
inline bool keep(uint64_t seed, uint64_t threshold, uint64_t ctr) {
  uint64_t x = seed + (ctr + 1) * 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  x = x ^ (x >> 31);
  return (x >> 40) >= threshold;
}

template <typename T>
struct Ctx {
  const AttnShape& a;
  const T* mask;
  const int64_t* mask_off;
  int64_t mrs, mcs;
};

// s[0..n) = s * scale + mask row, -inf past the causal diagonal (key index > row i); returns
// the row's max. j0: the tile's first key.
template <typename T>
inline T prep_row(const Ctx<T>& c, T* s, int64_t n, int64_t z, int64_t i, int64_t j0) {
  constexpr int W = simd<T>::width;
  const T scale = (T)c.a.scale;
  const T ninf = -std::numeric_limits<T>::infinity();
  vec<T> mv = vec<T>{} + ninf;
  int64_t jv = 0;  // s[0..jv) is already reduced into mv
  if (c.mask && c.mcs == 1) {  // scale, add the mask and take the max in one pass
    const T* mrow = c.mask + c.mask_off[z] + i * c.mrs + j0;
    for (; jv + W <= n; jv += W) {
      const vec<T> x = vload(s + jv) * scale + vload(mrow + jv);
      vstore(s + jv, x);
      mv = x > mv ? x : mv;
    }
    for (int64_t j = jv; j < n; ++j) s[j] = s[j] * scale + mrow[j];
  } else if (c.mask) {
    const T* mrow = c.mask + c.mask_off[z] + i * c.mrs + j0 * c.mcs;
    for (int64_t j = 0; j < n; ++j) s[j] = s[j] * scale + mrow[j * c.mcs];
  } else {
    int64_t j = 0;
    for (; j + W <= n; j += W) vstore(s + j, vload(s + j) * scale);
    for (; j < n; ++j) s[j] = s[j] * scale;
  }
  if (c.a.causal) {
    for (int64_t jj = std::max<int64_t>(0, i - j0 + 1); jj < n; ++jj) s[jj] = ninf;
    jv = 0;
    mv = vec<T>{} + ninf;
  }
  for (; jv + W <= n; jv += W) {
    const vec<T> x = vload(s + jv);
    mv = x > mv ? x : mv;
  }
  T m = ninf;
  for (int l = 0; l < W; ++l) m = std::max(m, (T)mv[l]);
  for (; jv < n; ++jv) m = std::max(m, s[jv]);
  return m;
}

// s = exp(s - m) in place; returns the sum. A row with m = -inf gives zeros.
template <typename T>
inline T exp_row(T* s, int64_t n, T m) {
  constexpr int W = simd<T>::width;
  if (m == -std::numeric_limits<T>::infinity()) {
    std::fill(s, s + n, T(0));
    return 0;
  }
  vec<T> acc = vec<T>{};
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    vec<T> e = vexp<T>(vload(s + j) - m);
    vstore(s + j, e);
    acc += e;
  }
  T sum = 0;
  for (int l = 0; l < W; ++l) sum += acc[l];
  for (; j < n; ++j) {
    s[j] = sexp(s[j] - m);
    sum += s[j];
  }
  return sum;
}

// Without a mask and with scale > 0: the number of keys row i may see in a tile starting at
// j0 (all n, or up to the causal diagonal) and the max of its raw products s[0..nv).
template <typename T>
inline int64_t visible(const AttnShape& a, int64_t n, int64_t i, int64_t j0) {
  return a.causal ? std::max<int64_t>(0, std::min<int64_t>(n, i - j0 + 1)) : n;
}

template <typename T>
inline T raw_max(const T* s, int64_t n) {
  constexpr int W = simd<T>::width;
  const T ninf = -std::numeric_limits<T>::infinity();
  vec<T> mv = vec<T>{} + ninf;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    vec<T> x = vload(s + j);
    mv = x > mv ? x : mv;
  }
  T m = ninf;
  for (int l = 0; l < W; ++l) m = std::max(m, (T)mv[l]);
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// s[j] = exp(s[j] * scale - m) for j < nv, 0 for nv <= j < n (one pass instead of prep_row's
// scaling pass and exp_row's); returns the sum. m = -inf gives zeros.
template <typename T>
inline T exp_row_scaled(T* s, int64_t nv, int64_t n, T scale, T m) {
  constexpr int W = simd<T>::width;
  if (m == -std::numeric_limits<T>::infinity()) nv = 0;
  vec<T> acc = vec<T>{};
  int64_t j = 0;
  for (; j + W <= nv; j += W) {
    vec<T> e = vexp<T>(vload(s + j) * scale - m);
    vstore(s + j, e);
    acc += e;
  }
  T sum = 0;
  for (int l = 0; l < W; ++l) sum += acc[l];
  for (; j < nv; ++j) {
    s[j] = sexp(s[j] * scale - m);
    sum += s[j];
  }
  std::fill(s + nv, s + n, T(0));
  return sum;
}

// Apply dropout to p[0..n) of row (z, i), keys j0.. : p *= keep / (1 - p_drop).
template <typename T>
inline void drop_row(const AttnShape& a, T* p, int64_t n, int64_t z, int64_t i, int64_t j0) {
  const uint64_t base = ((uint64_t)z * (uint64_t)a.L + (uint64_t)i) * (uint64_t)a.S + (uint64_t)j0;
  const T ds = (T)a.dscale;
  for (int64_t j = 0; j < n; ++j) p[j] = keep(a.seed, a.threshold, base + (uint64_t)j) ? p[j] * ds : T(0);
}

// gemm on a prepacked B that also handles an empty reduction (K == 0) by zeroing C.
template <typename T>
inline void mm_packed(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                      const T* packed, T* C, int64_t ldc, bool acc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!acc)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  gemm_prepacked_b<T>(M, N, K, A, rsa, csa, packed, C, ldc, acc, false);
}

// Number of key blocks row block [i0, i1) visits: all, or up to the causal diagonal.
inline int64_t key_blocks(const AttnShape& a, int64_t i1, int64_t BC) {
  int64_t nb = (a.S + BC - 1) / BC;
  if (a.causal) nb = std::min(nb, (std::min(i1, a.S) + BC - 1) / BC);  // keys j <= i1 - 1
  return nb;
}

// ---- forward micro-kernels (register tiles of their own; no A packing) ----------------------
// S = Q Kᵀ: Kᵀ of a key block packed once per key head into panels of PW = 3 vectors of keys,
// panel[e][PW] (zero-padded past the block's end); an MR_QK x PW register tile broadcasts Q's
// row elements straight from Q (row-major) and sums over e in order.
// O = alpha O + P V: P straight from the score tile, V straight from memory (rows of Ev), an
// MR_PV x (NV_PV vectors) tile; the online softmax's rescale by alpha is folded into the load of O.
#if defined(__AVX512F__)
constexpr int MR_QK = 8, MR_PV = 6;
#else
constexpr int MR_QK = 4, MR_PV = 3;
#endif
constexpr int NV_QK = 3, NV_PV = 4;

template <typename T>
constexpr int64_t panel_w() { return NV_QK * simd<T>::width; }


// Kᵀ of keys kj[0..bc) (rows of E) into ceil(bc / PW) panels dst[p][e][PW], zero-padded.
template <typename T>
void pack_kt(const T* kj, int64_t bc, int64_t E, T* dst) {
  constexpr int64_t PW = panel_w<T>();
  for (int64_t p = 0; p * PW < bc; ++p) {
    T* d = dst + p * E * PW;
    for (int64_t jj = 0; jj < PW; ++jj) {
      const int64_t j = p * PW + jj;
      if (j < bc) {
        const T* kr = kj + j * E;
        for (int64_t e = 0; e < E; ++e) d[e * PW + jj] = kr[e];
      } else {
        for (int64_t e = 0; e < E; ++e) d[e * PW + jj] = T(0);
      }
    }
  }
}

template <typename T, int MR>
inline void qk_tile(const T* q, int64_t ldq, const T* panel, int64_t E, T* s, int64_t lds) {
  constexpr int W = simd<T>::width, PW = NV_QK * W;
  vec<T> c[MR][NV_QK];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV_QK; ++n) c[r][n] = vec<T>{};
  for (int64_t e = 0; e < E; ++e) {
    vec<T> b[NV_QK];
#pragma GCC unroll 4
    for (int n = 0; n < NV_QK; ++n) b[n] = vload(panel + e * PW + n * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vec<T> a = vbroadcast(q[r * ldq + e]);
#pragma GCC unroll 4
      for (int n = 0; n < NV_QK; ++n) c[r][n] += a * b[n];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV_QK; ++n) vstore(s + r * lds + n * W, c[r][n]);
}

// st[0..br)[0..ceil(bc/PW)*PW) = Q Kᵀ for a key block packed by pack_kt.
template <typename T>
void qk_block(const T* q, int64_t br, int64_t E, const T* kt, int64_t bc, T* st, int64_t lds) {
  constexpr int64_t PW = panel_w<T>();
  for (int64_t p = 0; p * PW < bc; ++p) {
    const T* panel = kt + p * E * PW;
    int64_t r = 0;
    for (; r + MR_QK <= br; r += MR_QK) qk_tile<T, MR_QK>(q + r * E, E, panel, E, st + r * lds + p * PW, lds);
    T* so = st + r * lds + p * PW;
    const T* qo = q + r * E;
    switch (br - r) {
      case 0: break;
      case 1: qk_tile<T, 1>(qo, E, panel, E, so, lds); break;
      case 2: qk_tile<T, 2>(qo, E, panel, E, so, lds); break;
      case 3: qk_tile<T, 3>(qo, E, panel, E, so, lds); break;
#if defined(__AVX512F__)
      case 4: qk_tile<T, 4>(qo, E, panel, E, so, lds); break;
      case 5: qk_tile<T, 5>(qo, E, panel, E, so, lds); break;
      case 6: qk_tile<T, 6>(qo, E, panel, E, so, lds); break;
      case 7: qk_tile<T, 7>(qo, E, panel, E, so, lds); break;
#endif
      default: break;
    }
  }
}

// C[M x N] = alpha C + A B, A(m, k) = A[m * ars + k * acs] broadcast in place (P, or a score
// tile read transposed), B rows of N in place (V, dO, Q or K), k summed in order from the loaded
// C; alpha per row, or none. N a multiple of the vector width.
template <typename T, int MR, int NV>
inline void acc_tile(const T* A, int64_t ars, int64_t acs, int64_t K, const T* B, int64_t ldb, T* C,
                     int64_t ldc, const T* alpha) {
  constexpr int W = simd<T>::width;
  vec<T> c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) c[r][n] = vload(C + r * ldc + n * W);
    if (alpha) {
      const vec<T> al = vbroadcast(alpha[r]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) c[r][n] *= al;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    vec<T> b[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) b[n] = vload(B + k * ldb + n * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vec<T> a = vbroadcast(A[r * ars + k * acs]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) c[r][n] += a * b[n];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) vstore(C + r * ldc + n * W, c[r][n]);
}

template <typename T, int MR>
inline void acc_rows(const T* A, int64_t ars, int64_t acs, int64_t K, const T* B, int64_t N, int64_t ldb,
                     T* C, int64_t ldc, const T* alpha) {
  constexpr int W = simd<T>::width;
  for (int64_t f = 0; f < N; f += NV_PV * W) {
    switch (std::min<int64_t>(NV_PV, (N - f) / W)) {
      case 4: acc_tile<T, MR, 4>(A, ars, acs, K, B + f, ldb, C + f, ldc, alpha); break;
      case 3: acc_tile<T, MR, 3>(A, ars, acs, K, B + f, ldb, C + f, ldc, alpha); break;
      case 2: acc_tile<T, MR, 2>(A, ars, acs, K, B + f, ldb, C + f, ldc, alpha); break;
      case 1: acc_tile<T, MR, 1>(A, ars, acs, K, B + f, ldb, C + f, ldc, alpha); break;
      default: break;
    }
  }
}

// C (M x N, row stride ldc) = alpha C + A B; N % width == 0 (callers check own_tiles()).
template <typename T>
void acc_mm(int64_t M, int64_t N, int64_t K, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb,
            T* C, int64_t ldc, const T* alpha) {
  int64_t r = 0;
  for (; r + MR_PV <= M; r += MR_PV)
    acc_rows<T, MR_PV>(A + r * ars, ars, acs, K, B, N, ldb, C + r * ldc, ldc, alpha ? alpha + r : alpha);
  const T* Ao = A + r * ars;
  T* Co = C + r * ldc;
  const T* al = alpha ? alpha + r : alpha;
  switch (M - r) {
    case 0: break;
    case 1: acc_rows<T, 1>(Ao, ars, acs, K, B, N, ldb, Co, ldc, al); break;
    case 2: acc_rows<T, 2>(Ao, ars, acs, K, B, N, ldb, Co, ldc, al); break;
#if defined(__AVX512F__)
    case 3: acc_rows<T, 3>(Ao, ars, acs, K, B, N, ldb, Co, ldc, al); break;
    case 4: acc_rows<T, 4>(Ao, ars, acs, K, B, N, ldb, Co, ldc, al); break;
    case 5: acc_rows<T, 5>(Ao, ars, acs, K, B, N, ldb, Co, ldc, al); break;
#endif
    default: break;
  }
}

template <typename T>
inline bool own_tiles(int64_t n) { return n % simd<T>::width == 0; }

// C += A B through acc_mm when N allows, else the packed GEMM (both sum k in order from C).
template <typename T>
inline void mm_acc(int64_t M, int64_t N, int64_t K, const T* A, int64_t ars, int64_t acs, const T* B,
                   int64_t ldb, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (own_tiles<T>(N)) acc_mm<T>(M, N, K, A, ars, acs, B, ldb, C, ldc, (const T*)nullptr);
  else gemm<T>(M, N, K, A, ars, acs, B, ldb, 1, C, ldc, true, false);
}

// ---- forward, tiled ------------------------------------------------------------------------
template <typename T>
void forward_flash(const Ctx<T>& c, const T* q, const T* k, const T* v, const int64_t* kv_index,
                   T* out, T* lse) {
  const AttnShape& a = c.a;
  constexpr int64_t BR = Blocks<T>::BR, BC = Blocks<T>::BC;
  const int64_t L = a.L, S = a.S, E = a.E, Ev = a.Ev;
  const int64_t nkb = (S + BC - 1) / BC, nqb = (L + BR - 1) / BR;
  static_assert(BC % panel_w<T>() == 0, "key blocks are whole Kᵀ panels");
  // Kᵀ in pack_kt's panels; V used in place (own P V tile) when Ev is a whole number of vectors,
  // else packed for the GEMM
  const bool own_pv = own_tiles<T>(Ev);
  const int64_t kblk = BC * E, vblk = own_pv ? 0 : gemm_packed_b_size<T>(BC, Ev);
  const T ninf = -std::numeric_limits<T>::infinity();
  const bool par = (double)a.Z * (double)L * (double)S * (double)(E + Ev) > 262144.0;
  const bool fast = !c.mask && a.scale > 0;
  const T scale = (T)a.scale;
#pragma omp parallel if (par)
  {
    // per thread: the packed keys and values of the key head it works on (O(S * E)), repacked
    // when its next task reads another head; no barriers between the tasks
    std::vector<T> kpack((size_t)(nkb * kblk)), vpack((size_t)(nkb * vblk));
    int64_t packed_zk = -1;
    std::vector<T> st((size_t)(BR * BC)), acc((size_t)(BR * Ev)), m((size_t)BR), l((size_t)BR);
    std::vector<T> alphas((size_t)BR);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.Z * nqb; ++t) {
      const int64_t z = t / nqb, qb = nqb - 1 - t % nqb;  // the longest causal rows first
      const int64_t zk = kv_index[z];
      if (zk != packed_zk) {
        for (int64_t jb = 0; jb < nkb; ++jb) {
          const int64_t j0 = jb * BC, bc = std::min(BC, S - j0);
          pack_kt<T>(k + (zk * S + j0) * E, bc, E, kpack.data() + jb * kblk);
          if (!own_pv) gemm_pack_b<T>(bc, Ev, v + (zk * S + j0) * Ev, Ev, 1, vpack.data() + jb * vblk);
        }
        packed_zk = zk;
      }
      {
        const int64_t i0 = qb * BR, br = std::min(BR, L - i0);
        const T* qz = q + (z * L + i0) * E;
        std::fill(acc.begin(), acc.begin() + br * Ev, T(0));
        std::fill(m.begin(), m.end(), ninf);
        std::fill(l.begin(), l.end(), T(0));
        const int64_t nb = key_blocks(a, i0 + br, BC);
        for (int64_t jb = 0; jb < nb; ++jb) {
          const int64_t j0 = jb * BC, bc = std::min(BC, S - j0);
          qk_block<T>(qz, br, E, kpack.data() + jb * kblk, bc, st.data(), BC);
          for (int64_t r = 0; r < br; ++r) {
            T* s = st.data() + r * BC;
            T mnew, sum, alpha;
            if (fast) {  // no mask, scale > 0: max of the raw products, then one scaled exp pass
              const int64_t nv = visible<T>(a, bc, i0 + r, j0);
              const T mt = nv > 0 ? raw_max(s, nv) * scale : ninf;
              mnew = std::max(m[r], mt);
              alpha = mnew == ninf ? T(1) : sexp(m[r] - mnew);
              sum = exp_row_scaled(s, nv, bc, scale, mnew);
            } else {
              const T mt = prep_row(c, s, bc, z, i0 + r, j0);
              mnew = std::max(m[r], mt);
              alpha = mnew == ninf ? T(1) : sexp(m[r] - mnew);
              sum = exp_row(s, bc, mnew);
            }
            l[r] = l[r] * alpha + sum;
            m[r] = mnew;
            if (a.dropout) drop_row(a, s, bc, z, i0 + r, j0);
            alphas[r] = alpha;
            if (!own_pv && alpha != T(1)) {
              T* o = acc.data() + r * Ev;
              for (int64_t f = 0; f < Ev; ++f) o[f] *= alpha;
            }
          }
          if (own_pv)  // acc = alpha acc + P V_j
            acc_mm<T>(br, Ev, bc, st.data(), BC, 1, v + (zk * S + j0) * Ev, Ev, acc.data(), Ev, alphas.data());
          else
            mm_packed<T>(br, Ev, bc, st.data(), BC, 1, vpack.data() + jb * vblk, acc.data(), Ev, true);
        }
        for (int64_t r = 0; r < br; ++r) {
          T* o = out + (z * L + i0 + r) * Ev;
          if (l[r] == T(0)) {  // every key masked
            std::fill(o, o + Ev, T(0));
            lse[z * L + i0 + r] = std::numeric_limits<T>::infinity();
            continue;
          }
          const T inv = T(1) / l[r];
          for (int64_t f = 0; f < Ev; ++f) o[f] = acc[r * Ev + f] * inv;
          lse[z * L + i0 + r] = m[r] + std::log(l[r]);
        }
      }
    }
  }
}

// ---- forward, one row at a time (decoding) -------------------------------------------------
template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
  constexpr int W = simd<T>::width;
  vec<T> acc = vec<T>{};
  int64_t e = 0;
  for (; e + W <= n; e += W) acc += vload(x + e) * vload(y + e);
  T s = 0;
  for (int t = 0; t < W; ++t) s += acc[t];
  for (; e < n; ++e) s += x[e] * y[e];
  return s;
}

template <typename T>
void forward_rows(const Ctx<T>& c, const T* q, const T* k, const T* v, const int64_t* kv_index,
                  T* out, T* lse) {
  const AttnShape& a = c.a;
  constexpr int64_t BC = 256;
  const int64_t L = a.L, S = a.S, E = a.E, Ev = a.Ev;
  const T ninf = -std::numeric_limits<T>::infinity();
  const bool par = (double)a.Z * (double)L * (double)S * (double)(E + Ev) > 262144.0;
  // Few rows (e.g. one decoding head): the keys are split into chunks of CH, each chunk's
  // (max, sum, accumulator) computed alone, then combined per row in chunk order. CH depends
  // on the shape only, never on the thread count: the result is the same at any thread count.
  const int64_t rows = a.Z * L;
  const int64_t CH = rows >= 16 ? std::max<int64_t>(S, 1) : 2048;
  const int64_t nch = std::max<int64_t>(1, (S + CH - 1) / CH);
  const int64_t pw = Ev + 2;  // per (row, chunk): m, l, acc[Ev]
  std::vector<T> part((size_t)(rows * nch * pw));
#pragma omp parallel if (par)
  {
    std::vector<T> st((size_t)BC);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < rows * nch; ++t) {
      const int64_t zi = t / nch, ch = t % nch;
      const int64_t z = zi / L, i = zi % L, zk = kv_index[z];
      const T* qr = q + zi * E;
      const T* kz = k + zk * S * E;
      const T* vz = v + zk * S * Ev;
      T* pr = part.data() + t * pw;
      T* acc = pr + 2;
      T m = ninf, l = 0;
      std::fill(acc, acc + Ev, T(0));
      const int64_t send = std::min(a.causal ? std::min(S, i + 1) : S, (ch + 1) * CH);
      for (int64_t j0 = ch * CH; j0 < send; j0 += BC) {
        const int64_t bc = std::min(BC, send - j0);
        for (int64_t j = 0; j < bc; ++j) st[j] = dot(qr, kz + (j0 + j) * E, E);
        const T mt = prep_row(c, st.data(), bc, z, i, j0);
        const T mnew = std::max(m, mt);
        const T alpha = mnew == ninf ? T(1) : sexp(m - mnew);
        const T sum = exp_row(st.data(), bc, mnew);
        l = l * alpha + sum;
        m = mnew;
        if (a.dropout) drop_row(a, st.data(), bc, z, i, j0);
        constexpr int W = simd<T>::width;
        int64_t f = 0;
        for (; f + 2 * W <= Ev; f += 2 * W) {  // two vectors of V per key: 2 independent chains
          vec<T> o0 = vload(acc + f) * alpha, o1 = vload(acc + f + W) * alpha;
          for (int64_t j = 0; j < bc; ++j) {
            const T* vr = vz + (j0 + j) * Ev + f;
            o0 += st[j] * vload(vr);
            o1 += st[j] * vload(vr + W);
          }
          vstore(acc + f, o0);
          vstore(acc + f + W, o1);
        }
        for (; f + W <= Ev; f += W) {
          vec<T> o = vload(acc + f) * alpha;
          for (int64_t j = 0; j < bc; ++j) o += st[j] * vload(vz + (j0 + j) * Ev + f);
          vstore(acc + f, o);
        }
        for (; f < Ev; ++f) {
          T o = acc[f] * alpha;
          for (int64_t j = 0; j < bc; ++j) o += st[j] * vz[(j0 + j) * Ev + f];
          acc[f] = o;
        }
      }
      pr[0] = m;
      pr[1] = l;
    }
    // combine the chunks of each row, in chunk order
#pragma omp for schedule(static)
    for (int64_t zi = 0; zi < rows; ++zi) {
      const T* p0 = part.data() + zi * nch * pw;
      T M = ninf;
      for (int64_t ch = 0; ch < nch; ++ch) M = std::max(M, p0[ch * pw]);
      T* o = out + zi * Ev;
      T l = 0;
      std::fill(o, o + Ev, T(0));
      if (M != ninf) {
        for (int64_t ch = 0; ch < nch; ++ch) {
          const T* pr = p0 + ch * pw;
          const T w = sexp(pr[0] - M);
          l += pr[1] * w;
          for (int64_t f = 0; f < Ev; ++f) o[f] += pr[2 + f] * w;
        }
      }
      if (l == T(0)) {  // every key masked
        std::fill(o, o + Ev, T(0));
        lse[zi] = std::numeric_limits<T>::infinity();
      } else {
        const T inv = T(1) / l;
        for (int64_t f = 0; f < Ev; ++f) o[f] *= inv;
        lse[zi] = M + std::log(l);
      }
    }
  }
}

}  // namespace

template <typename T>
void attention_forward(const AttnShape& a, const T* q, const T* k, const T* v,
                       const int64_t* kv_index, const T* mask, const int64_t* mask_off,
                       int64_t mrs, int64_t mcs, T* out, T* lse) {
  Ctx<T> c{a, mask, mask_off, mrs, mcs};
  if (a.L <= ROWS_MAX_L) forward_rows(c, q, k, v, kv_index, out, lse);
  else forward_flash(c, q, k, v, kv_index, out, lse);
}

namespace {

// ---- backward ------------------------------------------------------------------------------
// One tile (z; rows i0..i0+br; keys j0..j0+bc): st <- P~ (dropped, rescaled probabilities),
// dp <- scale * dS, with S = Q Kᵀ (kpack: Kᵀ_j packed), dP = dO Vᵀ (vpack: Vᵀ_j packed),
// P = exp(S - lse), dS = P * (dP * drop - D). Writes dmask's (unscaled) dS when asked.
template <typename T>
void backward_tile(const Ctx<T>& c, int64_t z, int64_t i0, int64_t br, int64_t j0, int64_t bc,
                   const T* kpack, const T* vpack, const T* q, const T* dout, const T* lse,
                   const T* D, T* st, T* dp, T* dmask) {
  const AttnShape& a = c.a;
  constexpr int64_t BC = Blocks<T>::BC;
  const int64_t L = a.L, S = a.S, E = a.E, Ev = a.Ev;
  const T scale = (T)a.scale;
  qk_block<T>(q + (z * L + i0) * E, br, E, kpack, bc, st, BC);        // S = Q Kᵀ
  qk_block<T>(dout + (z * L + i0) * Ev, br, Ev, vpack, bc, dp, BC);  // dP = dO Vᵀ
  for (int64_t r = 0; r < br; ++r) {
    const int64_t i = i0 + r;
    T* s = st + r * BC;
    T* g = dp + r * BC;
    const T lr = lse[z * L + i];
    const bool fast = !c.mask && scale > 0;
    if (!fast) prep_row(c, s, bc, z, i, j0);
    if (lr == std::numeric_limits<T>::infinity()) {  // fully masked row: no gradient
      std::fill(s, s + bc, T(0));
      std::fill(g, g + bc, T(0));
    } else {
      if (fast) exp_row_scaled(s, visible<T>(a, bc, i, j0), bc, scale, lr);  // P = exp(scale s - lse)
      else exp_row(s, bc, lr);  // P = exp(s - lse)
      const T Di = D[z * L + i];
      if (a.dropout) {
        const uint64_t base = ((uint64_t)z * (uint64_t)L + (uint64_t)i) * (uint64_t)S + (uint64_t)j0;
        const T dsc = (T)a.dscale;
        for (int64_t j = 0; j < bc; ++j) {
          const T kf = keep(a.seed, a.threshold, base + (uint64_t)j) ? dsc : T(0);
          const T p = s[j];
          g[j] = p * (g[j] * kf - Di);  // dS
          s[j] = p * kf;                // P~
        }
      } else {
        for (int64_t j = 0; j < bc; ++j) g[j] = s[j] * (g[j] - Di);
      }
    }
    if (dmask) std::copy(g, g + bc, dmask + (z * L + i) * S + j0);
    for (int64_t j = 0; j < bc; ++j) g[j] *= scale;
  }
}

template <typename T>
void pack_kv(const AttnShape& a, const T* k, const T* v, int64_t zk, int64_t j0, int64_t bc, T* kpack,
             T* vpack) {
  pack_kt<T>(k + (zk * a.S + j0) * a.E, bc, a.E, kpack);     // Kᵀ_j
  pack_kt<T>(v + (zk * a.S + j0) * a.Ev, bc, a.Ev, vpack);  // Vᵀ_j
}

// Every sum below runs in one fixed order, whichever thread runs it and whichever schedule is
// chosen: dV_j, dK_j over (z ascending, query block ascending), dQ_i over key blocks ascending,
// each a gemm accumulating into the zeroed block. So the fused and the two-pass schedules give
// the same bits, at any thread count.
//   fused (enough key heads for the threads): one task per key head, all five products.
//   two-pass (fewer key heads): pass 1, tasks (key head, key block): dV_j, dK_j (four products);
//     pass 2, tasks (head, query block): dQ_i (S and dP recomputed: three products).
template <typename T>
void backward_impl(const Ctx<T>& c, const T* dout, const T* q, const T* k, const T* v, const T* out,
                   const T* lse, const int64_t* kv_index, T* dq, T* dk, T* dv, T* dmask) {
  const AttnShape& a = c.a;
  constexpr int64_t BR = Blocks<T>::BR, BC = Blocks<T>::BC;
  const int64_t L = a.L, S = a.S, E = a.E, Ev = a.Ev;
  const int64_t nkb = (S + BC - 1) / BC, nqb = (L + BR - 1) / BR;
  const double work = (double)a.Z * (double)L * (double)S * (double)(E + Ev);
  const bool par = work > 262144.0;  // small problems: no thread team
  const int nthreads = par ? omp_get_max_threads() : 1;
  const bool fused = a.Zk >= 2 * (int64_t)nthreads;
  std::vector<T> D((size_t)(a.Z * L));  // D = rowsum(dO * O)
#pragma omp parallel for schedule(static) if (par)
  for (int64_t zi = 0; zi < a.Z * L; ++zi) D[zi] = dot(dout + zi * Ev, out + zi * Ev, Ev);
  const size_t kps = (size_t)(BC * E), vps = (size_t)(BC * Ev);  // pack_kt's panels
  // pass 1 (and, fused, the whole backward)
#pragma omp parallel if (par)
  {
    std::vector<T> st((size_t)(BR * BC)), dp((size_t)(BR * BC)), kpack(kps), vpack(vps);
    const int64_t ntask = fused ? a.Zk : a.Zk * nkb;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      const int64_t zk = fused ? t : t / nkb;
      const int64_t jb_lo = fused ? 0 : t % nkb, jb_hi = fused ? nkb : jb_lo + 1;
      for (int64_t jb = jb_lo; jb < jb_hi; ++jb) {
        const int64_t j0 = jb * BC, bc = std::min(BC, S - j0);
        std::fill(dk + (zk * S + j0) * E, dk + (zk * S + j0 + bc) * E, T(0));
        std::fill(dv + (zk * S + j0) * Ev, dv + (zk * S + j0 + bc) * Ev, T(0));
      }
      if (fused)
        for (int64_t z = 0; z < a.Z; ++z)
          if (kv_index[z] == zk) std::fill(dq + z * L * E, dq + (z + 1) * L * E, T(0));
      for (int64_t jb = jb_lo; jb < jb_hi; ++jb) {
        const int64_t j0 = jb * BC, bc = std::min(BC, S - j0);
        pack_kv(a, k, v, zk, j0, bc, kpack.data(), vpack.data());
        for (int64_t z = 0; z < a.Z; ++z) {
          if (kv_index[z] != zk) continue;
          for (int64_t qb = 0; qb < nqb; ++qb) {
            const int64_t i0 = qb * BR, br = std::min(BR, L - i0);
            if (a.causal && j0 > i0 + br - 1) continue;  // tile entirely above the diagonal
            backward_tile(c, z, i0, br, j0, bc, kpack.data(), vpack.data(), q, dout, lse, D.data(),
                          st.data(), dp.data(), dmask);
            // dV_j += P~ᵀ dO_i ; dK_j += dSᵀ Q_i ; (fused) dQ_i += dS K_j
            mm_acc<T>(bc, Ev, br, st.data(), 1, BC, dout + (z * L + i0) * Ev, Ev, dv + (zk * S + j0) * Ev, Ev);
            mm_acc<T>(bc, E, br, dp.data(), 1, BC, q + (z * L + i0) * E, E, dk + (zk * S + j0) * E, E);
            if (fused)
              mm_acc<T>(br, E, bc, dp.data(), BC, 1, k + (zk * S + j0) * E, E, dq + (z * L + i0) * E, E);
          }
        }
      }
    }
  }
  if (fused) return;
  // pass 2: dQ_i = sum over key blocks of scale dS K_j
#pragma omp parallel if (par)
  {
    std::vector<T> st((size_t)(BR * BC)), dp((size_t)(BR * BC)), kpack(kps), vpack(vps);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.Z * nqb; ++t) {
      const int64_t z = t / nqb, qb = nqb - 1 - t % nqb;  // the longest causal rows first
      const int64_t zk = kv_index[z];
      const int64_t i0 = qb * BR, br = std::min(BR, L - i0);
      std::fill(dq + (z * L + i0) * E, dq + (z * L + i0 + br) * E, T(0));
      const int64_t nb = key_blocks(a, i0 + br, BC);
      for (int64_t jb = 0; jb < nb; ++jb) {
        const int64_t j0 = jb * BC, bc = std::min(BC, S - j0);
        pack_kv(a, k, v, zk, j0, bc, kpack.data(), vpack.data());
        backward_tile(c, z, i0, br, j0, bc, kpack.data(), vpack.data(), q, dout, lse, D.data(), st.data(),
                      dp.data(), (T*)nullptr);
        mm_acc<T>(br, E, bc, dp.data(), BC, 1, k + (zk * S + j0) * E, E, dq + (z * L + i0) * E, E);
      }
    }
  }
}

}  // namespace

template <typename T>
void attention_backward(const AttnShape& a, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const int64_t* kv_index, const T* mask,
                        const int64_t* mask_off, int64_t mrs, int64_t mcs, T* dq, T* dk, T* dv,
                        T* dmask) {
  Ctx<T> c{a, mask, mask_off, mrs, mcs};
  backward_impl(c, dout, q, k, v, out, lse, kv_index, dq, dk, dv, dmask);
}

#define DLK_ATTN_INSTANTIATE(T)                                                                \
  template void attention_forward<T>(const AttnShape&, const T*, const T*, const T*,           \
                                     const int64_t*, const T*, const int64_t*, int64_t, int64_t, \
                                     T*, T*);                                                  \
  template void attention_backward<T>(const AttnShape&, const T*, const T*, const T*, const T*, \
                                      const T*, const T*, const int64_t*, const T*,            \
                                      const int64_t*, int64_t, int64_t, T*, T*, T*, T*);
DLK_ATTN_INSTANTIATE(float)
DLK_ATTN_INSTANTIATE(double)

}  // namespace DLK_ISA
}  // namespace dlk
