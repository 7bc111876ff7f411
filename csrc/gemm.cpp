// gemm.cpp: BLIS-style packed GEMM, C[M,N] (+)= A[M,K] @ B[K,N], for float and double.
//
// Loop nest (Goto / BLIS):
//   jc over N in NC columns
//     pc over K in KC-deep blocks          (K blocking depends on K only, never on threads)
//       pack B[pc, jc] into NR-wide micro-panels, row-major inside ([k][NR])
//       ic over this thread's rows in MC blocks
//         pack A[ic, pc] into MR-tall micro-panels ([k][MR]), private to the thread (a
//         row-major A that serves at most AROWS_PANELS panels is read in place instead)
//         jr over this thread's NR panels
//           ir over MR panels: micro-kernel, an MR x NR register tile of NV vectors per row
//
// C's rows are contiguous, so the micro-kernel vectorises along N: each k step loads NV
// vectors of the B panel, broadcasts MR elements of the A panel and does MR*NV FMAs.
// Edge tiles use smaller instances of the same kernel (every mr in 1..MR, every nv in 1..NV)
// so no work is padded beyond one vector's width.
//
// Determinism: every C element is computed by the same sequence of operations whatever the
// thread count or its tile position: within a K block, acc = fma(a_k, b_k, acc) for k in order
// starting from 0; the first block stores (or adds to C when accumulating), the next ones add.
// Threads split M and N only.
#include "dlk.h"
#include "kernels.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dlk {
namespace DLK_ISA {
namespace {

// ---- per-ISA configuration ----------------------------------------------------------------
// MR: rows of the register tile (broadcast side), NV: vectors per row (NR = NV * width).
// KC: depth of a K block; MC: rows of A packed at once (L2); NC: columns of B packed at once.
template <typename T>
struct Cfg {
  static constexpr int W = simd<T>::width;
#if defined(__AVX512F__)
  // 32 zmm registers: 24 accumulators + 3 B vectors + broadcasts. 8 x 48 measured faster
  // than 14 x 32, 12 x 32 and 6 x 64 (float, one core).
#ifndef GEMM_MR512
#define GEMM_MR512 8
#endif
#ifndef GEMM_NV512
#define GEMM_NV512 3
#endif
  static constexpr int MR = GEMM_MR512;
  static constexpr int NV = GEMM_NV512;
#elif defined(__AVX2__)
  // 16 ymm registers: 12 accumulators + 2 B vectors + 1 broadcast.
#ifndef GEMM_MR256
#define GEMM_MR256 6
#endif
#ifndef GEMM_NV256
#define GEMM_NV256 2
#endif
  static constexpr int MR = GEMM_MR256;
  static constexpr int NV = GEMM_NV256;
#else
  // 16 xmm registers, no FMA: 12 accumulators + 2 B + broadcast + a product temporary.
#ifndef GEMM_MR128
#define GEMM_MR128 6
#endif
#ifndef GEMM_NV128
#define GEMM_NV128 2
#endif
  static constexpr int MR = GEMM_MR128;
  static constexpr int NV = GEMM_NV128;
#endif
  static constexpr int NR = NV * W;
#ifndef GEMM_KC_BYTES
#define GEMM_KC_BYTES 1024
#endif
#ifndef GEMM_MC_BYTES
#define GEMM_MC_BYTES (128 * 1024)
#endif
  static constexpr int64_t KC = GEMM_KC_BYTES / sizeof(T);
  // A block of MC x KC: 128 KiB of the 1 MiB L2 (measured best), a multiple of MR.
  static constexpr int64_t MC =
      std::max<int64_t>(MR, (GEMM_MC_BYTES / (int64_t)sizeof(T) / KC) / MR * MR);
  static constexpr int64_t NC = 4096;
  // A is read in place, not packed, when a block of it serves at most this many panels.
  static constexpr int64_t AROWS_PANELS = 4;
};

// ---- vector helpers -----------------------------------------------------------------------
template <typename T>
inline vec<T> vfma(vec<T> a, vec<T> b, vec<T> c) {  // a * b + c
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    return (vec<T>)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  else
    return (vec<T>)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__FMA__) && defined(__AVX2__)
  if constexpr (sizeof(T) == 4)
    return (vec<T>)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  else
    return (vec<T>)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;  // ISO mode: -ffp-contract=off, so a multiply then an add
#endif
}


// ---- thread-local aligned buffers ---------------------------------------------------------
struct Buffer {
  void* p = nullptr;
  size_t cap = 0;
  ~Buffer() { std::free(p); }
  template <typename T>
  T* get(int64_t n) {
    size_t bytes = ((size_t)n * sizeof(T) + 4095) & ~(size_t)4095;
    if (bytes > cap) {
      std::free(p);
      p = std::aligned_alloc(4096, bytes);
      if (!p) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = bytes;
    }
    return static_cast<T*>(p);
  }
};
thread_local Buffer tl_buf_a;  // packed A block (+ an edge B panel), private to a thread
thread_local Buffer tl_buf_b;  // packed B block, private to a thread

// ---- micro-kernel -------------------------------------------------------------------------
// The tile acc to C: n valid columns (n > (NVt-1)*W); overwrite: C = acc, else C += acc.
template <typename T, int MRt, int NVt>
inline void store_tile(vec<T> (&acc)[MRt][NVt], T* __restrict c, int64_t ldc, int n, bool overwrite) {
  constexpr int W = simd<T>::width;
  if (n == NVt * W) {
    if (overwrite) {
#pragma GCC unroll 32
      for (int i = 0; i < MRt; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NVt; ++j) vstore(c + i * ldc + j * W, acc[i][j]);
    } else {
#pragma GCC unroll 32
      for (int i = 0; i < MRt; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NVt; ++j)
          vstore(c + i * ldc + j * W, vload(c + i * ldc + j * W) + acc[i][j]);
    }
  } else {
    constexpr int jl = NVt - 1;  // the partial vector
    const int rem = n - jl * W;
    for (int i = 0; i < MRt; ++i) {
      T* ci = c + i * ldc;
      for (int j = 0; j < jl; ++j)
        vstore(ci + j * W, overwrite ? acc[i][j] : vload(ci + j * W) + acc[i][j]);
      alignas(64) T tmp[W];
      vstore(tmp, acc[i][jl]);
      T* cl = ci + jl * W;
      if (overwrite)
        for (int t = 0; t < rem; ++t) cl[t] = tmp[t];
      else
        for (int t = 0; t < rem; ++t) cl[t] = cl[t] + tmp[t];
    }
  }
}

// acc[MRt x NVt*W] = sum_k a[k*MRt + i] * b[k*ldb + j], then stored to C (store_tile).
template <typename T, int MRt, int NVt>
void ukernel(int64_t kc, const T* __restrict a, const T* __restrict b, int64_t ldb,
             T* __restrict c, int64_t ldc, int n, bool overwrite) {
  constexpr int W = simd<T>::width;
  vec<T> acc[MRt][NVt];
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) acc[i][j] = vec<T>{};
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i) __builtin_prefetch(c + i * ldc, 1);

  // Not unrolled: GCC then hoists the broadcasts of later steps and spills accumulators.
#pragma GCC unroll 1
  for (int64_t k = 0; k < kc; ++k) {
    vec<T> bv[NVt];
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) bv[j] = vload(b + j * W);
#pragma GCC unroll 32
    for (int i = 0; i < MRt; ++i) {
      vec<T> av = vbroadcast<T>(a[i]);
#pragma GCC unroll 8
      for (int j = 0; j < NVt; ++j) acc[i][j] = vfma<T>(av, bv[j], acc[i][j]);
    }
    a += MRt;
    b += ldb;
  }
  store_tile<T, MRt, NVt>(acc, c, ldc, n, overwrite);
}

template <typename T>
using ukernel_fn = void (*)(int64_t, const T*, const T*, int64_t, T*, int64_t, int, bool);

// ukernel with A read in place, row-major (row i at a + i*lda): MRt broadcast streams instead
// of one packed panel, for an A that would be packed to serve only a few panels.
template <typename T, int MRt, int NVt>
void ukernel_arows(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b,
                   int64_t ldb, T* __restrict c, int64_t ldc, int n, bool overwrite) {
  constexpr int W = simd<T>::width;
  vec<T> acc[MRt][NVt];
  const T* ar[MRt];
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i) {
    ar[i] = a + i * lda;
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) acc[i][j] = vec<T>{};
  }
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i) __builtin_prefetch(c + i * ldc, 1);

#pragma GCC unroll 1
  for (int64_t k = 0; k < kc; ++k) {
    vec<T> bv[NVt];
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) bv[j] = vload(b + j * W);
#pragma GCC unroll 32
    for (int i = 0; i < MRt; ++i) {
      vec<T> av = vbroadcast<T>(ar[i][k]);
#pragma GCC unroll 8
      for (int j = 0; j < NVt; ++j) acc[i][j] = vfma<T>(av, bv[j], acc[i][j]);
    }
    b += ldb;
  }
  store_tile<T, MRt, NVt>(acc, c, ldc, n, overwrite);
}

template <typename T>
using ukernel_arows_fn = void (*)(int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, int, bool);

template <typename T, size_t... I>
constexpr std::array<ukernel_fn<T>, sizeof...(I)> make_table(std::index_sequence<I...>) {
  return {{&ukernel<T, (int)(I / Cfg<T>::NV) + 1, (int)(I % Cfg<T>::NV) + 1>...}};
}

template <typename T>
inline ukernel_fn<T> get_kernel(int mr, int nv) {
  static constexpr auto table =
      make_table<T>(std::make_index_sequence<(size_t)(Cfg<T>::MR * Cfg<T>::NV)>{});
  return table[(mr - 1) * Cfg<T>::NV + (nv - 1)];
}

template <typename T, size_t... I>
constexpr std::array<ukernel_arows_fn<T>, sizeof...(I)> make_table_arows(std::index_sequence<I...>) {
  return {{&ukernel_arows<T, (int)(I / Cfg<T>::NV) + 1, (int)(I % Cfg<T>::NV) + 1>...}};
}

template <typename T>
inline ukernel_arows_fn<T> get_kernel_arows(int mr, int nv) {
  static constexpr auto table =
      make_table_arows<T>(std::make_index_sequence<(size_t)(Cfg<T>::MR * Cfg<T>::NV)>{});
  return table[(mr - 1) * Cfg<T>::NV + (nv - 1)];
}

#if defined(__AVX512F__)
// ukernel on a full MR x NR tile whose B rows are read in place (GatherCols: two masked loads
// per vector) and stored to the packed panel bdst on the way, for the tiles after it. The
// extra loads and stores go to ports the FMAs leave idle. Same FMA order as ukernel.
template <typename T>
void ukernel_gather(int64_t kc, const T* __restrict a, const T* base, const int64_t* rowoff,
                    const GatherCols& g, T* __restrict bdst, T* __restrict c, int64_t ldc,
                    bool overwrite) {
  constexpr int MRt = Cfg<T>::MR, NVt = Cfg<T>::NV, W = simd<T>::width;
  static_assert(NVt <= 4, "GatherCols holds 4 vectors");
  vec<T> acc[MRt][NVt];
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) acc[i][j] = vec<T>{};
#pragma GCC unroll 32
  for (int i = 0; i < MRt; ++i) __builtin_prefetch(c + i * ldc, 1);

#pragma GCC unroll 1
  for (int64_t k = 0; k < kc; ++k) {
    const T* row = base + rowoff[k];
    vec<T> bv[NVt];
#pragma GCC unroll 8
    for (int j = 0; j < NVt; ++j) {
      ivec<T> lo, hi;
      if constexpr (sizeof(T) == 4) {
        lo = (ivec<T>)_mm512_maskz_loadu_ps((__mmask16)g.m1[j], row + g.a[j]);
        hi = (ivec<T>)_mm512_maskz_loadu_ps((__mmask16)g.m2[j], row + g.b[j]);
      } else {
        lo = (ivec<T>)_mm512_maskz_loadu_pd((__mmask8)g.m1[j], row + g.a[j]);
        hi = (ivec<T>)_mm512_maskz_loadu_pd((__mmask8)g.m2[j], row + g.b[j]);
      }
      bv[j] = (vec<T>)(lo | hi);
      vstore(bdst + j * W, bv[j]);
    }
#pragma GCC unroll 32
    for (int i = 0; i < MRt; ++i) {
      vec<T> av = vbroadcast<T>(a[i]);
#pragma GCC unroll 8
      for (int j = 0; j < NVt; ++j) acc[i][j] = vfma<T>(av, bv[j], acc[i][j]);
    }
    a += MRt;
    bdst += NVt * W;
  }
  store_tile<T, MRt, NVt>(acc, c, ldc, NVt * W, overwrite);
}
#endif

// ---- packing ------------------------------------------------------------------------------
// One B micro-panel: kc x nr (nr <= NR) from B(k, j) = B[k*rsb + j*csb] into dst[k*w + j],
// w = nr rounded up to the vector width, the padding zeroed.
template <typename T>
void pack_b_panel(int64_t kc, int nr, const T* B, int64_t rsb, int64_t csb, T* dst) {
  constexpr int W = simd<T>::width, NR = Cfg<T>::NR;
  const int w = (nr + W - 1) / W * W;
  if (csb == 1 && nr == NR) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = B + k * rsb;
      T* d = dst + k * NR;
#pragma GCC unroll 8
      for (int j = 0; j < NR; j += W) vstore(d + j, vload(s + j));
    }
    return;
  }
  if (csb == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = B + k * rsb;
      T* d = dst + k * w;
      int j = 0;
      for (; j < nr; ++j) d[j] = s[j];
      for (; j < w; ++j) d[j] = T(0);
    }
    return;
  }
  if (w != nr)
    for (int64_t k = 0; k < kc; ++k)
      for (int j = nr; j < w; ++j) dst[k * w + j] = T(0);
  if (rsb == 1) {  // transposed B: columns contiguous in k; W x W blocks transposed in registers
    const int nfull = nr / W * W;
    int64_t k0 = 0;
    for (; k0 + W <= kc; k0 += W) {
      for (int jg = 0; jg < nfull; jg += W) {
        vec<T> r[W];
#pragma GCC unroll 16
        for (int t = 0; t < W; ++t) r[t] = vload(B + (jg + t) * csb + k0);
        transpose<T>(r);
#pragma GCC unroll 16
        for (int u = 0; u < W; ++u) vstore(dst + (k0 + u) * w + jg, r[u]);
      }
      for (int j = nfull; j < nr; ++j)
        for (int u = 0; u < W; ++u) dst[(k0 + u) * w + j] = B[j * csb + k0 + u];
    }
    for (; k0 < kc; ++k0)
      for (int j = 0; j < nr; ++j) dst[k0 * w + j] = B[j * csb + k0];
    return;
  }
  // strided B: row by row, gathering
  for (int64_t k = 0; k < kc; ++k)
    for (int j = 0; j < nr; ++j) dst[k * w + j] = B[k * rsb + j * csb];
}

// A block mc x kc into MR-row micro-panels: panel p holds rows [p*MR, p*MR+mr) as
// dst[p*MR*kc + k*mr + i] (the last panel is mr < MR rows tall, no padding).
//
// Row-major A (csa == 1): W x W blocks transposed in registers, the W rows being W / MR whole
// panels side by side (or one panel and zero rows). Column-major A (rsa == 1): column k's mc
// elements are contiguous, so each is read once, whole, and dealt out to the panels; panel by
// panel, the reads stride csa per k (a power of two: the same L1 set) and come from L2
// (M1024 K4096 N64 took 39% longer than with a row-major A).
template <typename T>
void pack_a_block(int64_t mc, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* dst) {
  constexpr int MR = Cfg<T>::MR, W = simd<T>::width;
  if (rsa == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = A + k * csa;
      int64_t i0 = 0;
      for (; i0 + MR <= mc; i0 += MR) std::memcpy(dst + i0 * kc + k * MR, s + i0, sizeof(T) * MR);
      const int64_t mr = mc - i0;
      for (int64_t i = 0; i < mr; ++i) dst[i0 * kc + k * mr + i] = s[i0 + i];
    }
    return;
  }
  constexpr int G = MR <= W ? W / MR : 0;  // whole panels per transposed block
  int64_t i0 = 0;
  if (G > 0 && csa == 1) {
    while (i0 + MR <= mc) {
      const int g = (int)std::min<int64_t>(G, (mc - i0) / MR);  // whole panels in this block
      const T* s = A + i0 * rsa;
      T* d = dst + i0 * kc;
      int64_t k = 0;
      for (; k + W <= kc; k += W) {
        vec<T> r[W];
#pragma GCC unroll 16
        for (int t = 0; t < W; ++t) r[t] = t < g * MR ? vload(s + t * rsa + k) : vbroadcast(T(0));
        transpose<T>(r);
#pragma GCC unroll 16
        for (int u = 0; u < W; ++u)
          for (int p = 0; p < g; ++p)
            std::memcpy(d + p * MR * kc + (k + u) * MR, (const T*)&r[u] + p * MR, sizeof(T) * MR);
      }
      for (; k < kc; ++k)
        for (int i = 0; i < g * MR; ++i) d[(i / MR) * MR * kc + k * MR + i % MR] = s[i * rsa + k];
      i0 += g * MR;
    }
  }
  for (; i0 < mc; i0 += MR) {  // the rest: element by element
    const int mr = (int)std::min<int64_t>(MR, mc - i0);
    const T* s = A + i0 * rsa;
    T* d = dst + i0 * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int i = 0; i < mr; ++i) d[k * mr + i] = s[i * rsa + k * csa];
  }
}

// ---- driver -------------------------------------------------------------------------------
template <typename T>
struct KBlocking {
  int64_t nblocks, kcb;  // number of K blocks and their depth (the last may be shallower)
  explicit KBlocking(int64_t K, int64_t KC = Cfg<T>::KC) {
    nblocks = K <= 0 ? 0 : (K + KC - 1) / KC;
    kcb = nblocks ? (K + nblocks - 1) / nblocks : 0;
    if (kcb) nblocks = (K + kcb - 1) / kcb;  // every block non-empty
  }
};

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// Splits `panels` panels into `parts` contiguous ranges; range r is [first(r), first(r+1)).
inline int64_t split_first(int64_t panels, int parts, int r) {
  int64_t q = panels / parts, rem = panels % parts;
  return r * q + std::min<int64_t>(r, rem);
}

struct Grid {
  int tm, tn;
};

// Block grid tm x tn (tm * tn = nt): M panels split tm ways and N panels tn ways.
// Minimises the largest per-thread share of MACs plus the packing of its A rows and B columns.
inline Grid choose_grid(int nt, int64_t mpan, int mr, int64_t npan, int nr) {
  Grid best{1, nt};
  double best_cost = -1;
  for (int tm = 1; tm <= nt; ++tm) {
    if (nt % tm) continue;
    int tn = nt / tm;
    double rows = (double)((mpan + tm - 1) / tm) * mr;
    double cols = (double)((npan + tn - 1) / tn) * nr;
    double cost = rows * cols + 16.0 * (rows + cols);
    if (best_cost < 0 || cost < best_cost * 0.999) {
      best_cost = cost;
      best = {tm, tn};
    }
  }
  return best;
}

template <typename T>
void zero_c(int64_t M, int64_t N, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, (size_t)N * sizeof(T));
}

// Number of threads for an M x N x K problem.
inline int threads_for(int64_t M, int64_t N, int64_t K, bool parallel) {
  if (!parallel || in_parallel()) return 1;
  int nt = max_threads();
  if (nt <= 1) return 1;
  double work = (double)M * (double)N * (double)K;
  // below ~2^19 MACs the fork/join costs more than it saves
  int64_t by_work = (int64_t)(work / (double)(1 << 19));
  if (by_work < 2) return 1;
  return (int)std::min<int64_t>(nt, by_work);
}

// One call's operands. B is either prepacked (whole K x N in the gemm_pack_b layout), packed
// here block by block, or read in place (direct: csb == 1 and few rows of A, where packing B
// would cost more than it saves).
template <typename T>
struct Operands {
  int64_t M, N, K;
  const T* A;
  int64_t rsa, csa;
  const T* B;
  int64_t rsb, csb;
  const T* prepacked;
  T* C;
  int64_t ldc;
  bool accumulate, direct_b;
};

// The serial algorithm on C rows [m0, m1) and columns [n0, n1), n0 a multiple of NR.
// Threads run it on disjoint blocks with their own buffers: no barriers, no sharing.
template <typename T>
void gemm_block(const Operands<T>& o, const KBlocking<T>& kb, int64_t m0, int64_t m1, int64_t n0,
                int64_t n1) {
  using CF = Cfg<T>;
  constexpr int MR = CF::MR, NR = CF::NR, W = CF::W;
  constexpr int64_t AROWS_PANELS = CF::AROWS_PANELS;
  if (m0 >= m1 || n0 >= n1) return;
  const int64_t npad = round_up(o.N, NR);
  const int64_t NC = o.prepacked || o.direct_b ? n1 - n0 : CF::NC;
  T* abuf = tl_buf_a.get<T>(CF::MC * kb.kcb + kb.kcb * NR);
  T* edge_b = abuf + CF::MC * kb.kcb;
  T* bbuf = nullptr;
  if (!o.prepacked && !o.direct_b)
    bbuf = tl_buf_b.get<T>(kb.kcb * std::min<int64_t>(NC, round_up(n1 - n0, NR)));

  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, n1 - jc);
    for (int64_t pb = 0; pb < kb.nblocks; ++pb) {
      const int64_t pc = pb * kb.kcb;
      const int64_t kc = std::min<int64_t>(kb.kcb, o.K - pc);
      const bool overwrite = !o.accumulate && pb == 0;

      // B block: the panel of columns [j, j + NR) starts at bblk + j * kc
      const T* bblk = nullptr;
      if (o.prepacked) {
        bblk = o.prepacked + pc * npad + jc * kc;
      } else if (!o.direct_b) {
        for (int64_t j = 0; j < nc; j += NR) {
          const int nr = (int)std::min<int64_t>(NR, nc - j);
          pack_b_panel<T>(kc, nr, o.B + pc * o.rsb + (jc + j) * o.csb, o.rsb, o.csb,
                          bbuf + j * kc);
        }
        bblk = bbuf;
      }

      // A row-major and this block of it serving few panels: read in place (ukernel_arows)
      // rather than packed, where packing was a large share of the work (M 3200, K 1024, one
      // core: N 16 46 -> 85 GFLOP/s, N 64 75 -> 94, N 192 91 -> 93; N 256 the same; N 512
      // 98 -> 96). The same FMAs in the same order, so the same bits.
      const bool arows = o.csa == 1 && nc <= AROWS_PANELS * NR;
      for (int64_t ic = m0; ic < m1; ic += CF::MC) {
        const int64_t mc = std::min<int64_t>(CF::MC, m1 - ic);
        if (!arows) pack_a_block<T>(mc, kc, o.A + ic * o.rsa + pc * o.csa, o.rsa, o.csa, abuf);
        for (int64_t j = 0; j < nc; j += NR) {
          const int nr = (int)std::min<int64_t>(NR, nc - j);
          const int nv = (nr + W - 1) / W;
          const T* bp;
          int64_t ldb;
          if (!o.direct_b) {
            bp = bblk + j * kc;
            ldb = nv * W;
          } else if (nr % W == 0) {
            bp = o.B + pc * o.rsb + (jc + j);
            ldb = o.rsb;
          } else {  // a partial vector would read past the row: pack this panel
            pack_b_panel<T>(kc, nr, o.B + pc * o.rsb + (jc + j), o.rsb, 1, edge_b);
            bp = edge_b;
            ldb = nv * W;
          }
          T* cp = o.C + ic * o.ldc + jc + j;
          for (int64_t i = 0; i < mc; i += MR) {
            const int mr = (int)std::min<int64_t>(MR, mc - i);
            if (arows)
              get_kernel_arows<T>(mr, nv)(kc, o.A + (ic + i) * o.rsa + pc, o.rsa, bp, ldb,
                                          cp + i * o.ldc, o.ldc, nr, overwrite);
            else
              get_kernel<T>(mr, nv)(kc, abuf + i * kc, bp, ldb, cp + i * o.ldc, o.ldc, nr,
                                    overwrite);
          }
        }
      }
    }
  }
}

template <typename T>
void gemm_driver(const Operands<T>& o, bool parallel) {
  using CF = Cfg<T>;
  constexpr int MR = CF::MR, NR = CF::NR;
  if (o.M <= 0 || o.N <= 0) return;
  if (o.K <= 0) {
    if (!o.accumulate) zero_c(o.M, o.N, o.C, o.ldc);
    return;
  }
  const KBlocking<T> kb(o.K);
  const int nt = threads_for(o.M, o.N, o.K, parallel);
  if (nt <= 1) {
    gemm_block<T>(o, kb, 0, o.M, 0, o.N);
    return;
  }
  // Independent C blocks handed out dynamically. Big problems get two blocks per thread, so a
  // thread slowed by other load (other processes, concurrent calls) gets fewer of them; the
  // price is packing more A / B copies. Which thread computes a block changes nothing in it.
  const int64_t mpan = (o.M + MR - 1) / MR, npan = (o.N + NR - 1) / NR;
  const double work = (double)o.M * (double)o.N * (double)o.K;
  const int nblk = work >= (double)(1 << 26) ? 2 * nt : nt;
  const Grid g = choose_grid(nblk, mpan, MR, npan, NR);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int blk = 0; blk < nblk; ++blk) {
    const int gm = blk / g.tn, gn = blk % g.tn;
    const int64_t m0 = std::min<int64_t>(o.M, split_first(mpan, g.tm, gm) * MR);
    const int64_t m1 = std::min<int64_t>(o.M, split_first(mpan, g.tm, gm + 1) * MR);
    const int64_t n0 = std::min<int64_t>(o.N, split_first(npan, g.tn, gn) * NR);
    const int64_t n1 = std::min<int64_t>(o.N, split_first(npan, g.tn, gn + 1) * NR);
    gemm_block<T>(o, kb, m0, m1, n0, n1);
  }
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B,
          int64_t rsb, int64_t csb, T* C, int64_t ldc, bool accumulate, bool parallel) {
  // B read in place when its rows are contiguous and A fits one MC block (each B panel is
  // then read once from memory whether packed or not, so packing is pure overhead). With
  // narrow panels (one cache line per row: avx2, SSE) the rows of a panel, ldb apart, fight
  // over L1 sets when re-read for the next MR rows, so there only a single pass goes direct.
  const bool wide = Cfg<T>::NR * (int)sizeof(T) >= 128;
  const bool direct_b = csb == 1 && (wide ? M <= Cfg<T>::MC : M <= Cfg<T>::MR);
  gemm_driver<T>({M, N, K, A, rsa, csa, B, rsb, csb, nullptr, C, ldc, accumulate, direct_b},
                 parallel);
}

template <typename T>
int64_t gemm_packed_b_size(int64_t K, int64_t N) {
  if (K <= 0 || N <= 0) return 0;
  return K * round_up(N, Cfg<T>::NR);
}

template <typename T>
void gemm_pack_b(int64_t K, int64_t N, const T* B, int64_t rsb, int64_t csb, T* packed) {
  constexpr int NR = Cfg<T>::NR;
  if (K <= 0 || N <= 0) return;
  const KBlocking<T> kb(K);
  const int64_t npad = round_up(N, NR);
  for (int64_t pb = 0; pb < kb.nblocks; ++pb) {
    const int64_t pc = pb * kb.kcb;
    const int64_t kc = std::min<int64_t>(kb.kcb, K - pc);
    T* blk = packed + pc * npad;
    for (int64_t j = 0; j < N; j += NR) {
      const int nr = (int)std::min<int64_t>(NR, N - j);
      pack_b_panel<T>(kc, nr, B + pc * rsb + j * csb, rsb, csb, blk + j * kc);
    }
  }
}

template <typename T>
void gemm_prepacked_b(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                      const T* packed_b, T* C, int64_t ldc, bool accumulate, bool parallel) {
  gemm_driver<T>({M, N, K, A, rsa, csa, nullptr, 0, 0, packed_b, C, ldc, accumulate, false},
                 parallel);
}

// K blocks of the packed-operand entry points. Nothing is packed per block, so the only cost
// of a deep block is streaming the B micro-panel from L2 instead of L1, and each block less
// saves a pass over C: 1024 floats measured 2-4% faster than KC (256) on conv's C2, C3, C5
// (fwd and dw, whose K is 448 to 1152), flat from 768 up; 2048 (C3's K = 1152 in one block
// instead of two) 1% faster again on C3's forward and dx, panel by panel.
template <typename T>
constexpr int64_t packed_kc() {
  return 8192 / (int64_t)sizeof(T);
}

template <typename T>
int gemm_panel_width() {
  return Cfg<T>::NR;
}

template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K) {
  return M > 0 && K > 0 ? M * K : 0;
}

// K block pb of the packed A starts at pc * M (pc = its first k): the pack_a_block layout of
// all M rows, whose MR-row panel i0 sits at i0 * kc within the block.
template <typename T>
void gemm_pack_a(int64_t M, int64_t K, const T* A, int64_t rsa, int64_t csa, T* packed) {
  if (M <= 0 || K <= 0) return;
  const KBlocking<T> kb(K, packed_kc<T>());
  for (int64_t pb = 0; pb < kb.nblocks; ++pb) {
    const int64_t pc = pb * kb.kcb;
    pack_a_block<T>(M, std::min<int64_t>(kb.kcb, K - pc), A + pc * csa, rsa, csa, packed + pc * M);
  }
}

// The K blocks of the packed entry points: body(pc, kc, overwrite) for the block of kc k's from
// pc; overwrite: C is stored, not added to (the first block, unless accumulating).
template <typename T, typename Body>
void for_packed_k_blocks(int64_t K, bool accumulate, Body&& body) {
  const KBlocking<T> kb(K, packed_kc<T>());
  for (int64_t pb = 0; pb < kb.nblocks; ++pb) {
    const int64_t pc = pb * kb.kcb;
    body(pc, std::min<int64_t>(kb.kcb, K - pc), !accumulate && pb == 0);
  }
}

// The loop nest of gemm_block with nothing left to pack: A from gemm_pack_a, B in panels.
template <typename T>
void gemm_packed_panels(int64_t M, int64_t N, int64_t K, const T* packed_a, const T* panels,
                        T* C, int64_t ldc, bool accumulate) {
  using CF = Cfg<T>;
  constexpr int MR = CF::MR, NR = CF::NR, W = CF::W;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) zero_c(M, N, C, ldc);
    return;
  }
  for_packed_k_blocks<T>(K, accumulate, [&](int64_t pc, int64_t kc, bool overwrite) {
    const T* ablk = packed_a + pc * M;
    for (int64_t ic = 0; ic < M; ic += CF::MC) {
      const int64_t mc = std::min<int64_t>(CF::MC, M - ic);
      for (int64_t j = 0; j < N; j += NR) {
        const int nr = (int)std::min<int64_t>(NR, N - j);
        const int nv = (nr + W - 1) / W;
        const T* bp = panels + j * K + pc * (nv * W);
        for (int64_t i = ic; i < ic + mc; i += MR) {
          const int mr = (int)std::min<int64_t>(MR, M - i);
          get_kernel<T>(mr, nv)(kc, ablk + i * kc, bp, nv * W, C + i * ldc + j, ldc, nr, overwrite);
        }
      }
    }
  });
}

// gemm_packed_panels' loop nest with A read in place: the same K blocks, the same FMA order.
template <typename T>
void gemm_rowa_panels(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* panels,
                      T* C, int64_t ldc, bool accumulate) {
  using CF = Cfg<T>;
  constexpr int MR = CF::MR, NR = CF::NR, W = CF::W;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) zero_c(M, N, C, ldc);
    return;
  }
  for_packed_k_blocks<T>(K, accumulate, [&](int64_t pc, int64_t kc, bool overwrite) {
    for (int64_t j = 0; j < N; j += NR) {
      const int nr = (int)std::min<int64_t>(NR, N - j);
      const int nv = (nr + W - 1) / W;
      const T* bp = panels + j * K + pc * (nv * W);
      for (int64_t i = 0; i < M; i += MR) {
        const int mr = (int)std::min<int64_t>(MR, M - i);
        get_kernel_arows<T>(mr, nv)(kc, A + i * lda + pc, lda, bp, nv * W, C + i * ldc + j, ldc, nr,
                                    overwrite);
      }
    }
  });
}

template <typename T>
bool gemm_gathered_panel(int64_t M, int64_t nr, int64_t K, const T* packed_a, const T* base,
                         const int64_t* rowoff, const GatherCols& g, T* panel, T* C, int64_t ldc,
                         bool accumulate) {
#if defined(__AVX512F__)
  using CF = Cfg<T>;
  constexpr int MR = CF::MR, NR = CF::NR, NV = CF::NV;
  if (nr != NR || M < MR || K <= 0) return false;
  // gemm_packed_panels' loop nest on one panel: the same K blocks, each tile's FMAs in order
  for_packed_k_blocks<T>(K, accumulate, [&](int64_t pc, int64_t kc, bool overwrite) {
    const T* ablk = packed_a + pc * M;
    T* bp = panel + pc * NR;
    ukernel_gather<T>(kc, ablk, base, rowoff + pc, g, bp, C, ldc, overwrite);
    for (int64_t i = MR; i < M; i += MR) {
      const int mr = (int)std::min<int64_t>(MR, M - i);
      get_kernel<T>(mr, NV)(kc, ablk + i * kc, bp, NR, C + i * ldc, ldc, NR, overwrite);
    }
  });
  return true;
#else
  (void)M, (void)nr, (void)K, (void)packed_a, (void)base, (void)rowoff, (void)g, (void)panel,
      (void)C, (void)ldc, (void)accumulate;
  return false;
#endif
}

#define DLK_GEMM_INSTANTIATE(T)                                                               \
  template void gemm<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*,     \
                        int64_t, int64_t, T*, int64_t, bool, bool);                          \
  template int64_t gemm_packed_b_size<T>(int64_t, int64_t);                                  \
  template void gemm_pack_b<T>(int64_t, int64_t, const T*, int64_t, int64_t, T*);            \
  template void gemm_prepacked_b<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t,   \
                                    const T*, T*, int64_t, bool, bool);                      \
  template int gemm_panel_width<T>();                                                         \
  template int64_t gemm_packed_a_size<T>(int64_t, int64_t);                                  \
  template void gemm_pack_a<T>(int64_t, int64_t, const T*, int64_t, int64_t, T*);            \
  template void gemm_packed_panels<T>(int64_t, int64_t, int64_t, const T*, const T*, T*,     \
                                      int64_t, bool);                                         \
  template void gemm_rowa_panels<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, T*, \
                                    int64_t, bool);                                           \
  template bool gemm_gathered_panel<T>(int64_t, int64_t, int64_t, const T*, const T*,        \
                                       const int64_t*, const GatherCols&, T*, T*, int64_t, bool);
DLK_GEMM_INSTANTIATE(float)
DLK_GEMM_INSTANTIATE(double)
#undef DLK_GEMM_INSTANTIATE

}  // namespace DLK_ISA
}  // namespace dlk
