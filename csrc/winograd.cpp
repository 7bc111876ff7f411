// winograd.cpp: conv2d_*_winograd, the Winograd F(2x2, 3x3) convolution for 3x3 filters,
// stride 1, dilation 1, groups 1 (one instruction set; compiled once per ISA by setup.py).
//
// The math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015). The
// output is cut into 2x2 tiles; tile (n, th, tw) needs the 4x4 input patch d whose corner is
// input pixel (2th - pad_h, 2tw - pad_w) (zero outside the input). With
//
//        | 1  0 -1  0 |          | 1    0    0  |
//   Bt = | 0  1  1  0 |      G = | 1/2  1/2  1/2 |      At = | 1  1  1  0 |
//        | 0 -1  1  0 |          | 1/2 -1/2  1/2 |           | 0  1 -1 -1 |
//        | 0  1  0 -1 |          | 0    0    1  |
//
//   U[k, c] = G g[k, c] Gt     (4x4, per filter: g is the 3x3 of w[k, c])
//   V[c, t] = Bt d[c, t] B     (4x4, per channel and tile)
//   M[k, t] = sum_c U[k, c] (.) V[c, t]       (.) element-wise: 16 products, not 36
//   y tile  = At M[k, t] A + b[k]              (2x2)
// For each of the 16 positions xi of the 4x4, M[xi] = U[xi] @ V[xi] is a GEMM, (K x C) @
// (C x tiles): 16 K*C*tiles multiply-adds where direct convolution does 36 (2.25x fewer),
// plus transforms that are O((C + K) * tiles) additions.
//
// Blocks: the tiles, numbered (n, th, tw) row-major, are cut into blocks of Tb (a multiple of
// gemm's panel width NR). Per block: V (16 x C x Tb, packed as gemm's B panels) is built
// channel by channel, then for each chunk of kc output channels 16 GEMMs give M (16 x kc x Tb)
// and the output transform writes y. V is never materialized for the whole tensor (C2's would
// be 100 MB); one block's V and M chunk stay in the 1 MiB L2. U is transformed and packed
// (gemm_pack_a) once per call, per output-channel chunk and xi.
//
// Vectorization: the transforms run across tiles, lane l of a vector being tile t0 + l. The
// lanes of one vector are a few runs of consecutive tiles of one tile row (a new run starts
// where a tile row starts). Lane l of a run reads input columns base + 2l + j, j < 4: the even
// and odd elements of two vectors loaded at base and base + 2 (one shuffle each); the loads are
// masked to the run's lanes and to the input (padding reads zero), and the runs of a vector are
// OR-ed together. The output's four 2x2 results interleave back into two rows of y, by stores
// masked the same way (ragged edges: the columns and rows past Q and P are not written).
// Masked loads and stores are AVX-512's; the AVX2 and scalar builds do them lane by lane
// (correct, not tuned: they are the fallbacks of CPUs without AVX-512).
//
// Threads: blocks handed out dynamically; each block's arithmetic is the same whichever thread
// runs it, so y is bitwise repeatable. Buffers are per thread.
//
// Backward: dx is the forward winograd convolution of dy with the flipped, transposed filters
// w'[c, k, r, s] = w[k, c, 2-r, 2-s] and padding 2 - pad (the stride-1 transposed convolution).
// dw: the same tiles, transformed the other way (see "dw" below): 16 GEMMs reduced over tiles,
// per-thread sums over a fixed split of the blocks, added in thread order (bitwise repeatable
// at a fixed thread count). C3 / C2 dw measured 13.3 / 27.7 ms against implicit's 17.9 / 38.0.
//
// Assumptions: 3x3, stride 1, dilation 1, groups 1 (else the implicit variant runs); any
// padding, any sizes (partial tiles at odd P, Q). Accuracy: the transforms only add, subtract
// and halve, so float32 stays close to direct convolution (C2, C3: max error 3e-7 / 4e-7 of
// the output's scale against the float64 reference, implicit's 7e-7 / 1.2e-6). Where it wins
// (ops/conv/cpp.py, winograd): 16+ channels and 256+ tiles; the filter transform and dw's
// per-thread sums (16 K C each) dominate calls with few tiles.
#include <algorithm>
#include <cstring>
#include <vector>

#include "dlk.h"
#include "kernels.h"

namespace dlk {
namespace DLK_ISA {

namespace {

inline int64_t round_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool winograd_applies(const ConvShape& s) {
  return s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
         s.dil_w == 1 && s.groups == 1 && s.C > 0;
}

// One run of a vector of tiles: lanes [lo, hi) are consecutive tiles tw0 .. of tile row th of
// sample n. Everything a transform needs of it is channel independent and worked out once per
// block: lane l of the run reads input row 2th + i - pad_h at columns vb + 2l + j - pad_w
// (j < 4) and writes output rows 2th + a, columns vb + 2l + {0, 1} (vb = 2 (tw0 - lo)).
// Loads and stores are masked: lanes outside the run, and pixels outside x or y, are neither
// read nor written (they read zero), so neighbouring blocks on other threads are left alone.
struct Run {
  int lo, hi;
  bool whole;           // all lanes, every load and store in bounds: plain vector loads/stores
  int64_t xoff[4];      // x offset (channel 0) of the column read by lane 0's j = 0, row i
  uint32_t xrows;       // bit i: input row i lies in x (else it reads zero)
  uint32_t xmask[2][2]; // columns j = 0, 1 (pair 0) and 2, 3 (pair 1): masks of the two loads
  int64_t yoff[2];      // y offset (channel 0) of lane 0's output column 0, row a
  uint32_t yrows;       // bit a: output row a lies in y
  uint32_t ymask[2];    // masks of the two interleaved stores of a row
};

template <typename T>
struct WinoPlan {
  static constexpr int W = simd<T>::width;
  ConvShape s;
  int64_t TH, TW, tiles;  // tile rows and columns per sample, tiles in all
  int64_t Tb, nblocks;    // tiles per block, blocks
  int64_t kc, nchunks;    // output channels per chunk, chunks
  int64_t asz;            // packed U size of one (chunk, xi)
  const T* pu;            // packed U: (chunk, xi) at pu + (chunk * 16 + xi) * asz
  int NR;

  // vbytes: the budget of one block's transformed data, per tile (vbytes / per_tile tiles)
  void setup(const ConvShape& shape, int threads, int64_t vbytes, int64_t per_tile, int64_t max_panels) {
    s = shape;
    NR = gemm_panel_width<T>();
    TH = (s.P + 1) / 2, TW = (s.Q + 1) / 2;
    tiles = s.N * TH * TW;
    const int64_t vb = vbytes / (16 * (int64_t)sizeof(T) * per_tile);
    Tb = std::max<int64_t>(1, std::min<int64_t>(max_panels, vb / NR)) * NR;
    Tb = std::min(Tb, std::max<int64_t>(W, round_to(tiles, W)));
    // at least two blocks per thread where the tiles allow (down to one panel a block)
    while (Tb > NR && (tiles + Tb - 1) / Tb < 2 * threads) Tb -= NR;
    nblocks = (tiles + Tb - 1) / Tb;
    // M chunk (16 x kc x Tb) within ~128 KiB, kc a multiple of 8 (gemm's MR on AVX-512)
    const int64_t kmax = std::max<int64_t>(8, 128 * 1024 / (16 * (int64_t)sizeof(T) * Tb) / 8 * 8);
    nchunks = (s.K + kmax - 1) / kmax;
    kc = round_to((s.K + nchunks - 1) / nchunks, 8);
    nchunks = (s.K + kc - 1) / kc;
    asz = gemm_packed_a_size<T>(kc, s.C);
  }
};

// U = G g Gt for every (k, c), as 16 matrices K x C, packed per chunk of kc rows.
template <typename T>
void transform_filters(const WinoPlan<T>& pl, const T* w, std::vector<T>& ubuf, std::vector<T>& packed) {
  const int64_t K = pl.s.K, C = pl.s.C, KC = K * C;
  T* u = grow(ubuf, 16 * KC);
  // in parallel: with few tiles (small images, many channels) this is a good part of the call
  const int nt = in_parallel() ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(max_threads(), KC / 4096));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t kc = 0; kc < KC; ++kc) {
    const T* g = w + kc * 9;
    T t[4][3];  // G g: rows of G times g
    for (int j = 0; j < 3; ++j) {
      const T g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
      t[0][j] = g0;
      t[1][j] = T(0.5) * (g0 + g1 + g2);
      t[2][j] = T(0.5) * (g0 - g1 + g2);
      t[3][j] = g2;
    }
    for (int i = 0; i < 4; ++i) {  // (G g) Gt
      const T a0 = t[i][0], a1 = t[i][1], a2 = t[i][2];
      u[(i * 4 + 0) * KC + kc] = a0;
      u[(i * 4 + 1) * KC + kc] = T(0.5) * (a0 + a1 + a2);
      u[(i * 4 + 2) * KC + kc] = T(0.5) * (a0 - a1 + a2);
      u[(i * 4 + 3) * KC + kc] = a2;
    }
  }
  T* pk = grow(packed, pl.nchunks * 16 * pl.asz);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t cx = 0; cx < pl.nchunks * 16; ++cx) {
    const int64_t ch = cx / 16, xi = cx % 16, k0 = ch * pl.kc, rows = std::min(pl.kc, K - k0);
    gemm_pack_a<T>(rows, C, u + xi * KC + k0 * C, C, 1, pk + cx * pl.asz);
  }
}

template <typename T>
struct WinoScratch {
  std::vector<T> v, m;
  std::vector<Run> runs;
  std::vector<int64_t> group_first;  // runs of vector g: [group_first[g], group_first[g + 1])
};

template <typename T>
WinoScratch<T>& wino_scratch() {
  thread_local WinoScratch<T> s;
  return s;
}

// Masked loads and stores: lane t only where bit t of m is set (masked-off lanes read zero and
// are never touched, so they may lie outside the array). AVX-512 has them; elsewhere lane by lane.
template <typename T>
inline vec<T> load_masked(const T* p, uint32_t m) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm512_maskz_loadu_ps((__mmask16)m, p);
  else return (vec<T>)_mm512_maskz_loadu_pd((__mmask8)m, p);
#else
  vec<T> v = vec<T>{};
  for (int t = 0; t < simd<T>::width; ++t)
    if (m >> t & 1) v[t] = p[t];
  return v;
#endif
}

template <typename T>
inline void store_masked(T* p, vec<T> v, uint32_t m) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, (__mmask16)m, (__m512)v);
  else _mm512_mask_storeu_pd(p, (__mmask8)m, (__m512d)v);
#else
  for (int t = 0; t < simd<T>::width; ++t)
    if (m >> t & 1) p[t] = v[t];
#endif
}

// ev[l] = the even elements of the 2W at p, od[l] = the odd ones (loads masked by m0, m1).
template <typename T>
inline void evens_odds(const T* p, bool whole, uint32_t m0, uint32_t m1, vec<T>& ev, vec<T>& od) {
  constexpr int W = simd<T>::width;
  ivec<T> me, mo;
  for (int t = 0; t < W; ++t) me[t] = 2 * t, mo[t] = 2 * t + 1;
  const vec<T> a = whole ? vload(p) : load_masked(p, m0);
  const vec<T> b = whole ? vload(p + W) : load_masked(p + W, m1);
  ev = __builtin_shuffle(a, b, me);
  od = __builtin_shuffle(a, b, mo);
}

// p[2l] = a[l], p[2l + 1] = b[l], for the lanes the masks keep.
template <typename T>
inline void store_interleaved(T* p, bool whole, uint32_t m0, uint32_t m1, vec<T> a, vec<T> b) {
  constexpr int W = simd<T>::width;
  ivec<T> mlo, mhi;
  for (int t = 0; t < W; ++t) {
    mlo[t] = (t % 2 ? W : 0) + t / 2;
    mhi[t] = (t % 2 ? W : 0) + W / 2 + t / 2;
  }
  const vec<T> lo = __builtin_shuffle(a, b, mlo), hi = __builtin_shuffle(a, b, mhi);
  if (whole) {
    vstore(p, lo);
    vstore(p + W, hi);
  } else {
    store_masked(p, lo, m0);
    store_masked(p + W, hi, m1);
  }
}

// Bits [lo, hi) of a 2W-bit mask (clipped to [0, 2W)).
inline uint64_t bit_range(int64_t lo, int64_t hi, int n) {
  lo = std::max<int64_t>(lo, 0), hi = std::min<int64_t>(hi, n);
  if (lo >= hi) return 0;
  const uint64_t upto = hi >= 64 ? ~0ull : (1ull << hi) - 1;
  return upto & ~((1ull << lo) - 1);
}

// The runs of the block of tiles [t0, t1), grouped by vector.
template <typename T>
void plan_block(const WinoPlan<T>& pl, int64_t t0, int64_t t1, WinoScratch<T>& sc) {
  constexpr int W = simd<T>::width;
  const ConvShape& s = pl.s;
  sc.runs.clear(), sc.group_first.clear();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = t / pl.TW, tw = t % pl.TW;
    const int l = (int)((t - t0) % W);
    if (l == 0) sc.group_first.push_back((int64_t)sc.runs.size());
    if (l == 0 || tw == 0) {
      Run run{};
      run.lo = l;
      run.xoff[0] = r / pl.TH;  // the sample and tile row, until the run is finished below
      run.xoff[1] = r % pl.TH;
      run.xoff[2] = tw - l;  // vb / 2
      sc.runs.push_back(run);
    }
    sc.runs.back().hi = l + 1;
  }
  sc.group_first.push_back((int64_t)sc.runs.size());
  const uint32_t full = (uint32_t)((1ull << W) - 1);
  for (Run& run : sc.runs) {
    const int64_t n = run.xoff[0], th = run.xoff[1], vb = 2 * run.xoff[2];
    const uint64_t lanes = bit_range(2 * run.lo, 2 * run.hi, 2 * W);
    bool whole = run.lo == 0 && run.hi == W;
    run.xrows = 0;
    for (int i = 0; i < 4; ++i) {
      const int64_t ih = 2 * th + i - s.pad_h;
      if (ih >= 0 && ih < s.H) run.xrows |= 1u << i;
      else whole = false;
      run.xoff[i] = (n * s.C * s.H + ih) * s.W + vb - s.pad_w;
    }
    for (int pr = 0; pr < 2; ++pr) {  // columns vb - pad_w + 2 pr + e, e < 2W
      const int64_t c0 = vb - s.pad_w + 2 * pr;
      const uint64_t m = lanes & bit_range(-c0, s.W - c0, 2 * W);
      run.xmask[pr][0] = (uint32_t)(m & full);
      run.xmask[pr][1] = (uint32_t)(m >> W);
      whole = whole && m == bit_range(0, 2 * W, 2 * W);
    }
    run.yrows = 0;
    for (int a = 0; a < 2; ++a) {
      const int64_t p = 2 * th + a;
      if (p < s.P) run.yrows |= 1u << a;
      else whole = false;
      run.yoff[a] = (n * s.K * s.P + p) * s.Q + vb;
    }
    const uint64_t m = lanes & bit_range(-vb, s.Q - vb, 2 * W);
    run.ymask[0] = (uint32_t)(m & full);
    run.ymask[1] = (uint32_t)(m >> W);
    run.whole = whole && m == bit_range(0, 2 * W, 2 * W);
  }
}

// V[xi][c][t] = (Bt d B)[xi] for the block's tiles, into gemm's B panel layout: panel p
// (tiles [p NR, p NR + NR)) at p * NR * C, row c at c * wp (wp: the panel's width rounded up
// to W), so that V + xi * vstride is the packed B of M[xi] = U[xi] @ V[xi]. With ldv > 0
// instead row-major, (c, t) at c * ldv + t (dw's gemm A).
template <typename T>
void input_transform(const WinoPlan<T>& pl, const T* x, int64_t nt, const WinoScratch<T>& sc, T* V,
                     int64_t vstride, int64_t ldv = 0) {
  constexpr int W = simd<T>::width;
  const int64_t C = pl.s.C, NR = pl.NR, HW = pl.s.H * pl.s.W;
  const int64_t ngroups = (int64_t)sc.group_first.size() - 1;
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = x + c * HW;
    for (int64_t g = 0; g < ngroups; ++g) {
      vec<T> d[4][4];  // the input patches, lanes = tiles: the runs' masked loads OR-ed together
      const int64_t r0 = sc.group_first[g], r1 = sc.group_first[g + 1];
      for (int64_t ri = r0; ri < r1; ++ri) {
        const Run& r = sc.runs[ri];
        for (int i = 0; i < 4; ++i) {
          vec<T> e[4];
          if (r.xrows >> i & 1) {
            const T* p = xc + r.xoff[i];
            evens_odds(p, r.whole, r.xmask[0][0], r.xmask[0][1], e[0], e[1]);
            evens_odds(p + 2, r.whole, r.xmask[1][0], r.xmask[1][1], e[2], e[3]);
          } else {
            for (int j = 0; j < 4; ++j) e[j] = vec<T>{};
          }
          for (int j = 0; j < 4; ++j)
            d[i][j] = ri == r0 ? e[j] : (vec<T>)((ivec<T>)d[i][j] | (ivec<T>)e[j]);
        }
      }
      vec<T> e[4][4];  // Bt d
      for (int j = 0; j < 4; ++j) {
        e[0][j] = d[0][j] - d[2][j];
        e[1][j] = d[1][j] + d[2][j];
        e[2][j] = d[2][j] - d[1][j];
        e[3][j] = d[1][j] - d[3][j];
      }
      const int64_t t = g * W, p = t / NR, col = t % NR;
      const int64_t wp = round_to(std::min<int64_t>(NR, nt - p * NR), W);
      T* dst = ldv > 0 ? V + c * ldv + t : V + p * NR * C + c * wp + col;
      for (int i = 0; i < 4; ++i) {  // (Bt d) B
        vstore(dst + (i * 4 + 0) * vstride, e[i][0] - e[i][2]);
        vstore(dst + (i * 4 + 1) * vstride, e[i][1] + e[i][2]);
        vstore(dst + (i * 4 + 2) * vstride, e[i][2] - e[i][1]);
        vstore(dst + (i * 4 + 3) * vstride, e[i][1] - e[i][3]);
      }
    }
  }
}

// y[k] for the block's tiles, k = k0 + kk, from M[xi] (rows x ldm, xi at mstride): At M A + b.
template <typename T>
void output_transform(const WinoPlan<T>& pl, const T* M, int64_t rows, int64_t ldm, int64_t mstride,
                      int64_t k0, const T* b, const WinoScratch<T>& sc, T* y) {
  constexpr int W = simd<T>::width;
  const int64_t PQ = pl.s.P * pl.s.Q;
  const int64_t ngroups = (int64_t)sc.group_first.size() - 1;
  for (int64_t kk = 0; kk < rows; ++kk) {
    const int64_t k = k0 + kk;
    T* yk = y + k * PQ;
    const vec<T> bias = vbroadcast<T>(b ? b[k] : T(0));
    for (int64_t g = 0; g < ngroups; ++g) {
      const T* mp = M + kk * ldm + g * W;
      vec<T> t[2][4];  // At M
      for (int j = 0; j < 4; ++j) {
        const vec<T> m0 = vload(mp + (0 + j) * mstride), m1 = vload(mp + (4 + j) * mstride);
        const vec<T> m2 = vload(mp + (8 + j) * mstride), m3 = vload(mp + (12 + j) * mstride);
        t[0][j] = m0 + m1 + m2;
        t[1][j] = m1 - m2 - m3;
      }
      vec<T> o[2][2];  // (At M) A + b
      for (int a = 0; a < 2; ++a) {
        o[a][0] = t[a][0] + t[a][1] + t[a][2] + bias;
        o[a][1] = t[a][1] - t[a][2] - t[a][3] + bias;
      }
      for (int64_t ri = sc.group_first[g]; ri < sc.group_first[g + 1]; ++ri) {
        const Run& r = sc.runs[ri];
        for (int a = 0; a < 2; ++a)
          if (r.yrows >> a & 1)
            store_interleaved(yk + r.yoff[a], r.whole, r.ymask[0], r.ymask[1], o[a][0], o[a][1]);
      }
    }
  }
}

template <typename T>
void wino_block(const WinoPlan<T>& pl, const T* x, const T* b, T* y, int64_t blk) {
  WinoScratch<T>& sc = wino_scratch<T>();
  const ConvShape& s = pl.s;
  const int64_t t0 = blk * pl.Tb, t1 = std::min(pl.tiles, t0 + pl.Tb), nt = t1 - t0;
  plan_block(pl, t0, t1, sc);
  // the 16 matrices one cache line more than a multiple of 4 KiB apart: the transforms touch
  // all 16 at once, and 16 streams 4 KiB apart would share L1 sets (8 ways)
  const int64_t vstride = s.C * round_to(nt, pl.NR) + 64 / (int64_t)sizeof(T);
  T* V = grow(sc.v, 16 * vstride);
  input_transform(pl, x, nt, sc, V, vstride);
  const int64_t ldm = round_to(nt, simd<T>::width);
  T* M = grow(sc.m, 16 * (pl.kc * ldm + 64 / (int64_t)sizeof(T)));
  for (int64_t ch = 0; ch < pl.nchunks; ++ch) {
    const int64_t k0 = ch * pl.kc, rows = std::min(pl.kc, s.K - k0);
    const int64_t mstride = rows * ldm + 64 / (int64_t)sizeof(T);  // as vstride
    for (int xi = 0; xi < 16; ++xi)
      gemm_packed_panels<T>(rows, nt, s.C, pl.pu + (ch * 16 + xi) * pl.asz, V + xi * vstride,
                            M + xi * mstride, ldm, false);
    output_transform(pl, M, rows, ldm, mstride, k0, b, sc, y);
  }
}

template <typename T>
struct WinoCallScratch {  // 16 K C each (dw's partials per thread): freed past SCRATCH_KEEP
  std::vector<T> u, packed, wf, partials;
  void trim() {
    if (held(u) + held(packed) + held(wf) + held(partials) > SCRATCH_KEEP) *this = WinoCallScratch();
  }
};

template <typename T>
WinoCallScratch<T>& wino_call_scratch() {
  thread_local WinoCallScratch<T> s;
  return s;
}

// The forward convolution of a shape winograd_applies to (any padding, even negative).
template <typename T>
void wino_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (s.N <= 0 || s.K <= 0 || s.P <= 0 || s.Q <= 0) return;
  WinoPlan<T> pl;
  // V (16 x C x Tb) within ~384 KiB, so that it and an M chunk stay in L2; at most 8 panels.
  // (C2, C3: 192 to 768 KiB and M chunks of 64 to 256 KiB all measured within 1%.)
  pl.setup(s, in_parallel() ? 1 : max_threads(), 384 * 1024, s.C, 8);
  WinoCallScratch<T>& cs = wino_call_scratch<T>();
  transform_filters(pl, w, cs.u, cs.packed);
  pl.pu = cs.packed.data();
  const int nt = in_parallel() ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(max_threads(), pl.nblocks));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t blk = 0; blk < pl.nblocks; ++blk) wino_block(pl, x, b, y, blk);
}

// ---- dw ---------------------------------------------------------------------------------
// Back through y = At M A, M = sum_c U (.) V, U = G g Gt:
//   dM[k, t] = A dy[k, t] At              (4x4 from the 2x2 tile of dy; zero past P, Q)
//   dU[xi]   = sum_t dM[xi][:, t] V[xi][:, t]^T     (16 GEMMs, K x C, reduced over tiles)
//   dw[k, c] = Gt dU[k, c] G
// Per block: V (row-major, C x Tb) and dM (K x Tb) per xi, then dU[xi]^T (C x K) += V[xi] @
// dM[xi]^T by gemm (B transposed: its packing transposes in registers). Each thread sums its
// own fixed range of blocks into its own dU, reduced in thread order: bitwise repeatable at a
// fixed thread count.

// dM[xi][k][t] for the block's tiles, row-major K x ldm per xi (xi at mstride).
template <typename T>
void dy_transform(const WinoPlan<T>& pl, const T* dy, const WinoScratch<T>& sc, T* dM, int64_t ldm,
                  int64_t mstride) {
  constexpr int W = simd<T>::width;
  const int64_t PQ = pl.s.P * pl.s.Q;
  const int64_t ngroups = (int64_t)sc.group_first.size() - 1;
  for (int64_t k = 0; k < pl.s.K; ++k) {
    const T* dyk = dy + k * PQ;
    for (int64_t g = 0; g < ngroups; ++g) {
      vec<T> d[2][2] = {};  // the 2x2 tiles of dy, lanes = tiles
      const int64_t r0 = sc.group_first[g], r1 = sc.group_first[g + 1];
      for (int64_t ri = r0; ri < r1; ++ri) {
        const Run& r = sc.runs[ri];
        for (int a = 0; a < 2; ++a) {
          vec<T> e[2] = {vec<T>{}, vec<T>{}};
          if (r.yrows >> a & 1) evens_odds(dyk + r.yoff[a], r.whole, r.ymask[0], r.ymask[1], e[0], e[1]);
          for (int j = 0; j < 2; ++j)
            d[a][j] = ri == r0 ? e[j] : (vec<T>)((ivec<T>)d[a][j] | (ivec<T>)e[j]);
        }
      }
      vec<T> t[4][2];  // A dy: A = (At)^T = [1 0; 1 1; 1 -1; 0 -1]
      for (int j = 0; j < 2; ++j) {
        t[0][j] = d[0][j];
        t[1][j] = d[0][j] + d[1][j];
        t[2][j] = d[0][j] - d[1][j];
        t[3][j] = -d[1][j];
      }
      T* dst = dM + k * ldm + g * W;
      for (int i = 0; i < 4; ++i) {  // (A dy) At
        vstore(dst + (i * 4 + 0) * mstride, t[i][0]);
        vstore(dst + (i * 4 + 1) * mstride, t[i][0] + t[i][1]);
        vstore(dst + (i * 4 + 2) * mstride, t[i][0] - t[i][1]);
        vstore(dst + (i * 4 + 3) * mstride, -t[i][1]);
      }
    }
  }
}

// dUt[xi] (C x K, xi at C*K) += V[xi] @ dM[xi]^T over the tiles of block blk.
template <typename T>
void dw_block(const WinoPlan<T>& pl, const T* x, const T* dy, T* dUt, int64_t blk) {
  WinoScratch<T>& sc = wino_scratch<T>();
  const ConvShape& s = pl.s;
  const int64_t t0 = blk * pl.Tb, t1 = std::min(pl.tiles, t0 + pl.Tb), nt = t1 - t0;
  plan_block(pl, t0, t1, sc);
  const int64_t ld = round_to(nt, simd<T>::width), pad = 64 / (int64_t)sizeof(T);
  const int64_t vstride = s.C * ld + pad, mstride = s.K * ld + pad;  // off 4 KiB, as in wino_block
  T* V = grow(sc.v, 16 * vstride);
  T* dM = grow(sc.m, 16 * mstride);
  input_transform(pl, x, nt, sc, V, vstride, ld);
  dy_transform(pl, dy, sc, dM, ld, mstride);
  for (int xi = 0; xi < 16; ++xi)
    gemm<T>(s.C, s.K, nt, V + xi * vstride, ld, 1, dM + xi * mstride, 1, ld, dUt + xi * s.C * s.K, s.K,
            true, false);
}

// dw (and db) of a shape winograd_applies to. Overwrites both.
template <typename T>
void wino_dw(const ConvShape& s, const T* dy, const T* x, T* dw, T* db) {
  const int64_t K = s.K, C = s.C, CK = C * K, PQ = s.P * s.Q;
  WinoPlan<T> pl;
  // Bigger blocks than the forward's: the tiles are gemm's reduction, each block one more pass
  // of C += over dU. V and dM (16 x (C + K) x Tb) within 1.5 MiB: C3's dw 6% faster than with
  // 384 KiB (3 and 6 MiB no better; C2 flat).
  pl.setup(s, in_parallel() ? 1 : max_threads(), 1536 * 1024, s.C + s.K, 16);
  const int nt = in_parallel() ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(max_threads(), pl.nblocks));
  WinoCallScratch<T>& cs = wino_call_scratch<T>();
  T* parts = dw ? grow(cs.partials, nt * 16 * CK) : nullptr;
#pragma omp parallel num_threads(nt)
  {
    const int th = thread_id();
    if (dw) {
      T* mine = parts + th * 16 * CK;
      std::fill(mine, mine + 16 * CK, T(0));
      const int64_t b0 = pl.nblocks * th / nt, b1 = pl.nblocks * (th + 1) / nt;
      for (int64_t blk = b0; blk < b1; ++blk) dw_block(pl, x, dy, mine, blk);
    }
    if (db) {  // each k summed by one thread, samples in order
#pragma omp for schedule(static)
      for (int64_t k = 0; k < K; ++k) {
        T acc = 0;
        for (int64_t n = 0; n < s.N; ++n) {
          const T* d = dy + (n * K + k) * PQ;
          T part = 0;
#pragma omp simd reduction(+ : part)
          for (int64_t i = 0; i < PQ; ++i) part += d[i];
          acc += part;
        }
        db[k] = acc;
      }
    }
#pragma omp barrier
    if (dw) {  // the threads' dU summed in thread order, then dw = Gt dU G; (k, c) split statically
#pragma omp for schedule(static)
      for (int64_t kc = 0; kc < CK; ++kc) {
        const int64_t k = kc / C, c = kc % C;
        T u[4][4];
        for (int xi = 0; xi < 16; ++xi) {
          T acc = parts[xi * CK + c * K + k];
          for (int t = 1; t < nt; ++t) acc += parts[t * 16 * CK + xi * CK + c * K + k];
          u[xi / 4][xi % 4] = acc;
        }
        T v[3][4];  // Gt dU: Gt = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]
        for (int j = 0; j < 4; ++j) {
          v[0][j] = u[0][j] + T(0.5) * (u[1][j] + u[2][j]);
          v[1][j] = T(0.5) * (u[1][j] - u[2][j]);
          v[2][j] = T(0.5) * (u[1][j] + u[2][j]) + u[3][j];
        }
        T* o = dw + kc * 9;
        for (int r = 0; r < 3; ++r) {  // (Gt dU) G
          o[r * 3 + 0] = v[r][0] + T(0.5) * (v[r][1] + v[r][2]);
          o[r * 3 + 1] = T(0.5) * (v[r][1] - v[r][2]);
          o[r * 3 + 2] = T(0.5) * (v[r][1] + v[r][2]) + v[r][3];
        }
      }
    }
  }
}

// dx: the forward winograd on dy with the filters flipped and transposed, padding 2 - pad.
template <typename T>
void wino_dx(const ConvShape& s, const T* dy, const T* w, T* dx) {
  std::vector<T>& wfv = wino_call_scratch<T>().wf;
  T* wf = grow(wfv, s.K * s.C * 9);
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t c = 0; c < s.C; ++c)
      for (int u = 0; u < 9; ++u) wf[(c * s.K + k) * 9 + 8 - u] = w[(k * s.C + c) * 9 + u];
  ConvShape t = s;
  t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.P = s.H, t.Q = s.W;
  t.pad_h = 2 - s.pad_h, t.pad_w = 2 - s.pad_w;
  wino_forward(t, dy, wf, (const T*)nullptr, dx);
}

}  // namespace

template <typename T>
void conv2d_forward_winograd(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (!winograd_applies(s)) return conv2d_forward_implicit(s, x, w, b, y);
  wino_forward(s, x, w, b, y);
  wino_call_scratch<T>().trim();
}

// dx by wino_dx, dw and db by wino_dw.
template <typename T>
void conv2d_backward_winograd(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                              T* db) {
  if (!winograd_applies(s) || s.K <= 0) return conv2d_backward_implicit(s, dy, x, w, dx, dw, db);
  if (dw || db) wino_dw(s, dy, x, dw, db);
  if (dx && s.N > 0) wino_dx(s, dy, w, dx);
  wino_call_scratch<T>().trim();
}

template void conv2d_forward_winograd<float>(const ConvShape&, const float*, const float*,
                                             const float*, float*);
template void conv2d_forward_winograd<double>(const ConvShape&, const double*, const double*,
                                              const double*, double*);
template void conv2d_backward_winograd<float>(const ConvShape&, const float*, const float*,
                                              const float*, float*, float*, float*);
template void conv2d_backward_winograd<double>(const ConvShape&, const double*, const double*,
                                               const double*, double*, double*, double*);

}  // namespace DLK_ISA
}  // namespace dlk
