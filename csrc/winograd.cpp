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
// where a tile row starts). Input: per channel, the 4 input rows of each tile row of the block
// are copied to a zero-padded strip; lane l of a run reads strip[base + 2l + j] for column j,
// which is the even / odd lanes of two unaligned vectors (one shuffle), and the runs of a
// vector are merged by lane masks. Output: the four 2x2 results interleave back into two rows
// of a per-channel output strip (garbage lanes land in its guard columns), copied to y.
//
// Threads: blocks handed out dynamically; each block's arithmetic is the same whichever thread
// runs it, so y is bitwise repeatable. Buffers are per thread.
//
// Backward: dx is the forward winograd convolution of dy with the flipped, transposed filters
// w'[c, k, r, s] = w[k, c, 2-r, 2-s] and padding 2 - pad (the stride-1 transposed convolution).
// dw and db come from the implicit GEMM's backward (conv.cpp), see conv2d_backward_winograd.
#include <algorithm>
#include <cstring>
#include <vector>

#include "dlk.h"
#include "kernels.h"

namespace dlk {
namespace DLK_ISA {

namespace {

template <typename T>
T* wgrow(std::vector<T>& v, int64_t n) {
  const size_t need = (size_t)std::max<int64_t>(n, 1);
  if (v.size() < need) v.resize(need);
  return v.data();
}

inline int64_t round_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool winograd_applies(const ConvShape& s) {
  return s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
         s.dil_w == 1 && s.groups == 1 && s.C > 0;
}

// One run of a vector of tiles: lanes [lo, hi) are consecutive tiles of one tile row; lane l
// reads the input strip at in + 2l (+ column j, + row i * IW) and writes the output strip at
// out + 2l (+ column b, + row a * OW).
struct Run {
  int lo, hi;
  int64_t in, out;
};

// One tile row of a block: tiles [tw0, tw1) of row th of sample n, at strip row rl.
struct Seg {
  int64_t n, th, tw0, tw1;
};

template <typename T>
struct WinoPlan {
  static constexpr int W = simd<T>::width;
  static constexpr int64_t GUARD = 2 * W;  // strip columns before and after the data
  ConvShape s;
  int64_t TH, TW, tiles;  // tile rows and columns per sample, tiles in all
  int64_t IW, OW;         // strip row lengths (input: 2TW + 2 data columns, output: 2TW)
  int64_t Tb, nblocks;    // tiles per block, blocks
  int64_t kc, nchunks;    // output channels per chunk, chunks
  int64_t asz;            // packed U size of one (chunk, xi)
  const T* pu;            // packed U: (chunk, xi) at pu + (chunk * 16 + xi) * asz
  int NR;

  void setup(const ConvShape& shape) {
    s = shape;
    NR = gemm_panel_width<T>();
    TH = (s.P + 1) / 2, TW = (s.Q + 1) / 2;
    tiles = s.N * TH * TW;
    IW = GUARD + 2 * TW + 2 + GUARD;
    OW = GUARD + 2 * TW + GUARD;
    // V (16 x C x Tb) within ~384 KiB, so that it and an M chunk stay in L2; at most 8 panels
    const int64_t vb = 384 * 1024 / (16 * (int64_t)sizeof(T) * s.C);
    Tb = std::max<int64_t>(1, std::min<int64_t>(8, vb / NR)) * NR;
    Tb = std::min(Tb, round_to(tiles, W));
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
  T* u = wgrow(ubuf, 16 * KC);
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
  T* pk = wgrow(packed, pl.nchunks * 16 * pl.asz);
  for (int64_t ch = 0; ch < pl.nchunks; ++ch) {
    const int64_t k0 = ch * pl.kc, rows = std::min(pl.kc, K - k0);
    for (int xi = 0; xi < 16; ++xi)
      gemm_pack_a<T>(rows, C, u + xi * KC + k0 * C, C, 1, pk + (ch * 16 + xi) * pl.asz);
  }
}

template <typename T>
struct WinoScratch {
  std::vector<T> strip, v, m, ostrip;
  std::vector<Run> runs;
  std::vector<int64_t> group_first;  // runs of vector g: [group_first[g], group_first[g + 1])
  std::vector<Seg> segs;
};

template <typename T>
WinoScratch<T>& wino_scratch() {
  thread_local WinoScratch<T> s;
  return s;
}

// Lane masks and shuffles, written once with GCC's vector extensions (any width).
template <typename T>
inline ivec<T> lane_ids() {
  ivec<T> v;
  for (int t = 0; t < simd<T>::width; ++t) v[t] = t;
  return v;
}

template <typename T>
inline vec<T> lane_select(ivec<T> m, vec<T> a, vec<T> b) {  // m ? a : b, lane by lane (m all ones/zeros)
  return (vec<T>)(((ivec<T>)a & m) | ((ivec<T>)b & ~m));
}

template <typename T>
inline void evens_odds(const T* p, vec<T>& ev, vec<T>& od) {  // ev[l] = p[2l], od[l] = p[2l + 1]
  constexpr int W = simd<T>::width;
  ivec<T> me, mo;
  for (int t = 0; t < W; ++t) me[t] = 2 * t, mo[t] = 2 * t + 1;
  const vec<T> a = vload(p), b = vload(p + W);
  ev = __builtin_shuffle(a, b, me);
  od = __builtin_shuffle(a, b, mo);
}

template <typename T>
inline void store_interleaved(T* p, vec<T> a, vec<T> b) {  // p[2l] = a[l], p[2l + 1] = b[l]
  constexpr int W = simd<T>::width;
  ivec<T> mlo, mhi;
  for (int t = 0; t < W; ++t) {
    mlo[t] = (t % 2 ? W : 0) + t / 2;
    mhi[t] = (t % 2 ? W : 0) + W / 2 + t / 2;
  }
  vstore(p, __builtin_shuffle(a, b, mlo));
  vstore(p + W, __builtin_shuffle(a, b, mhi));
}

// The runs and tile rows of the block of tiles [t0, t1).
template <typename T>
void plan_block(const WinoPlan<T>& pl, int64_t t0, int64_t t1, WinoScratch<T>& sc) {
  constexpr int W = simd<T>::width;
  sc.runs.clear(), sc.group_first.clear(), sc.segs.clear();
  const int64_t r0 = t0 / pl.TW;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = t / pl.TW, tw = t % pl.TW;
    const int l = (int)((t - t0) % W);
    if (l == 0) sc.group_first.push_back((int64_t)sc.runs.size());
    if (l == 0 || tw == 0) {
      const int64_t rl = r - r0;
      sc.runs.push_back({l, l, rl * 4 * pl.IW + WinoPlan<T>::GUARD + 2 * (tw - l),
                         rl * 2 * pl.OW + WinoPlan<T>::GUARD + 2 * (tw - l)});
    }
    sc.runs.back().hi = l + 1;
    if (t == t0 || tw == 0) sc.segs.push_back({r / pl.TH, r % pl.TH, tw, tw});
    sc.segs.back().tw1 = tw + 1;
  }
  sc.group_first.push_back((int64_t)sc.runs.size());
}

// Channel c's strip: for each tile row of the block, its 4 input rows, columns
// [-pad_w, 2TW + 2 - pad_w) of the input at GUARD, zero outside the input and in the guards.
template <typename T>
void fill_strip(const WinoPlan<T>& pl, const T* x, int64_t c, const WinoScratch<T>& sc, T* strip) {
  const ConvShape& s = pl.s;
  const int64_t G = WinoPlan<T>::GUARD, w_lo = std::max<int64_t>(0, -s.pad_w);
  const int64_t w_hi = std::min<int64_t>(s.W, 2 * pl.TW + 2 - s.pad_w);
  for (size_t rl = 0; rl < sc.segs.size(); ++rl) {
    const Seg& sg = sc.segs[rl];
    for (int i = 0; i < 4; ++i) {
      T* row = strip + ((int64_t)rl * 4 + i) * pl.IW;
      const int64_t ih = 2 * sg.th + i - s.pad_h;
      if (ih < 0 || ih >= s.H || w_lo >= w_hi) {
        std::memset(row, 0, sizeof(T) * pl.IW);
        continue;
      }
      const int64_t a = G + w_lo + s.pad_w, e = G + w_hi + s.pad_w;
      std::memset(row, 0, sizeof(T) * a);
      std::memcpy(row + a, x + ((sg.n * s.C + c) * s.H + ih) * s.W + w_lo, sizeof(T) * (e - a));
      std::memset(row + e, 0, sizeof(T) * (pl.IW - e));
    }
  }
}

// V[xi][c][t] = (Bt d B)[xi] for the block's tiles, into gemm's B panel layout: panel p
// (tiles [p NR, p NR + NR)) at p * NR * C, row c at c * wp (wp: the panel's width rounded up
// to W), so that V + xi * vstride is the packed B of M[xi] = U[xi] @ V[xi].
template <typename T>
void input_transform(const WinoPlan<T>& pl, const T* x, int64_t nt, WinoScratch<T>& sc, T* strip,
                     T* V, int64_t vstride) {
  constexpr int W = simd<T>::width;
  const int64_t C = pl.s.C, NR = pl.NR, IW = pl.IW;
  const ivec<T> ids = lane_ids<T>();
  const int64_t ngroups = (int64_t)sc.group_first.size() - 1;
  for (int64_t c = 0; c < C; ++c) {
    fill_strip(pl, x, c, sc, strip);
    for (int64_t g = 0; g < ngroups; ++g) {
      vec<T> d[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) d[i][j] = vec<T>{};
      for (int64_t ri = sc.group_first[g]; ri < sc.group_first[g + 1]; ++ri) {
        const Run& r = sc.runs[ri];
        const ivec<T> m = (ids >= r.lo) & (ids < r.hi);
        const bool whole = r.lo == 0 && r.hi == W;
        for (int i = 0; i < 4; ++i) {
          const T* p = strip + r.in + i * IW;
          vec<T> e[4];
          evens_odds(p, e[0], e[1]);
          evens_odds(p + 2, e[2], e[3]);
          for (int j = 0; j < 4; ++j) d[i][j] = whole ? e[j] : lane_select<T>(m, e[j], d[i][j]);
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
      T* dst = V + p * NR * C + c * wp + col;
      for (int i = 0; i < 4; ++i) {  // (Bt d) B
        vstore(dst + (i * 4 + 0) * vstride, e[i][0] - e[i][2]);
        vstore(dst + (i * 4 + 1) * vstride, e[i][1] + e[i][2]);
        vstore(dst + (i * 4 + 2) * vstride, e[i][2] - e[i][1]);
        vstore(dst + (i * 4 + 3) * vstride, e[i][1] - e[i][3]);
      }
    }
  }
}

// y[k] for the block's tiles from M (16 x rows x ldm, row kk = channel k0 + kk): At M A + b.
template <typename T>
void output_transform(const WinoPlan<T>& pl, const T* M, int64_t rows, int64_t ldm, int64_t k0,
                      const T* b, WinoScratch<T>& sc, T* ostrip, T* y) {
  constexpr int W = simd<T>::width;
  const ConvShape& s = pl.s;
  const int64_t OW = pl.OW, G = WinoPlan<T>::GUARD, mstride = rows * ldm;
  const int64_t ngroups = (int64_t)sc.group_first.size() - 1;
  for (int64_t kk = 0; kk < rows; ++kk) {
    const int64_t k = k0 + kk;
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
        for (int a = 0; a < 2; ++a) store_interleaved(ostrip + r.out + a * OW, o[a][0], o[a][1]);
      }
    }
    for (size_t rl = 0; rl < sc.segs.size(); ++rl) {
      const Seg& sg = sc.segs[rl];
      const int64_t q0 = 2 * sg.tw0, q1 = std::min(s.Q, 2 * sg.tw1);
      for (int a = 0; a < 2; ++a) {
        const int64_t p = 2 * sg.th + a;
        if (p >= s.P) continue;
        std::memcpy(y + ((sg.n * s.K + k) * s.P + p) * s.Q + q0,
                    ostrip + ((int64_t)rl * 2 + a) * OW + G + q0, sizeof(T) * (q1 - q0));
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
  const int64_t nrows = (int64_t)sc.segs.size();
  T* strip = wgrow(sc.strip, nrows * 4 * pl.IW);
  T* ostrip = wgrow(sc.ostrip, nrows * 2 * pl.OW);
  const int64_t vstride = s.C * round_to(nt, pl.NR);
  T* V = wgrow(sc.v, 16 * vstride);
  input_transform(pl, x, nt, sc, strip, V, vstride);
  const int64_t ldm = round_to(nt, simd<T>::width);
  T* M = wgrow(sc.m, 16 * pl.kc * ldm);
  for (int64_t ch = 0; ch < pl.nchunks; ++ch) {
    const int64_t k0 = ch * pl.kc, rows = std::min(pl.kc, s.K - k0);
    for (int xi = 0; xi < 16; ++xi)
      gemm_packed_panels<T>(rows, nt, s.C, pl.pu + (ch * 16 + xi) * pl.asz, V + xi * vstride,
                            M + xi * rows * ldm, ldm, false);
    output_transform(pl, M, rows, ldm, k0, b, sc, ostrip, y);
  }
}

template <typename T>
struct WinoCallScratch {
  std::vector<T> u, packed, wf;
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
  pl.setup(s);
  WinoCallScratch<T>& cs = wino_call_scratch<T>();
  transform_filters(pl, w, cs.u, cs.packed);
  pl.pu = cs.packed.data();
  const int nt = in_parallel() ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(max_threads(), pl.nblocks));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t blk = 0; blk < pl.nblocks; ++blk) wino_block(pl, x, b, y, blk);
}

}  // namespace

template <typename T>
void conv2d_forward_winograd(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (!winograd_applies(s)) return conv2d_forward_implicit(s, x, w, b, y);
  wino_forward(s, x, w, b, y);
}

// dx by the forward winograd on dy with flipped, transposed filters; dw and db by the implicit
// GEMM's backward.
template <typename T>
void conv2d_backward_winograd(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                              T* db) {
  if (!winograd_applies(s) || s.K <= 0) return conv2d_backward_implicit(s, dy, x, w, dx, dw, db);
  if (dw || db) conv2d_backward_implicit(s, dy, x, w, (T*)nullptr, dw, db);
  if (!dx || s.N <= 0) return;
  std::vector<T>& wfv = wino_call_scratch<T>().wf;
  T* wf = wgrow(wfv, s.K * s.C * 9);
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t c = 0; c < s.C; ++c)
      for (int u = 0; u < 9; ++u) wf[(c * s.K + k) * 9 + 8 - u] = w[(k * s.C + c) * 9 + u];
  ConvShape t = s;
  t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.P = s.H, t.Q = s.W;
  t.pad_h = 2 - s.pad_h, t.pad_w = 2 - s.pad_w;
  wino_forward(t, dy, wf, (const T*)nullptr, dx);
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
