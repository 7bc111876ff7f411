// conv.cpp: 2-D convolution (NCHW, cross-correlation as torch.nn.functional.conv2d), forward
// and hand-written backward, for one instruction set (compiled once per ISA by setup.py).
//
// Variants
//   im2col    any groups / stride / dilation / padding. The output positions of each sample are
//             cut into chunks (or several small samples are batched) so that one column block
//             col[(c,r,s), j] of CRS x ~L2-sized columns is unfolded and then multiplied with
//             the filters by gemm, y_g = W_g @ col, written straight into y.
//             Backward, per sample and chunk: dw_g += dy_g @ col^T (gemm, accumulate) and
//             dcol = W_g^T @ dy_g (gemm) scattered back by col2im. 1x1 / stride 1 / no padding
//             convolutions use the input itself as the column matrix.
//             The fallback of implicit (strides > 1, small batches); its speed is gemm's.
//   implicit  stride 1 (the default): im2col's GEMM without the column matrix. gemm's B panels
//             are packed straight from a zero-padded copy of the sample, the filters once per
//             call; the micro-kernels run on both (gemm_packed_panels). dx is the forward
//             convolution of dy with the flipped, transposed filters (no col2im scatter);
//             dw = dy @ col^T with col^T's panels built from the padded sample too.
//   depthwise groups == C and K == C*m: a direct kernel vectorized along the output width,
//             reading a zero-padded, stride-deinterleaved copy of each input plane so that
//             every tap is one unaligned vector load. Backward, one pass per plane: with stride
//             1 and m == 1, one zero-padded copy of the dy plane serves both gradients, each of
//             its shifted vectors loaded once for dx (the flipped-filter forward convolution)
//             and dw (against x read in place); otherwise dw as vector dot products per tap with
//             db summed on the way and dx by vectorized scatter-adds into a padded plane.
//             Other shapes fall back to im2col.
//
// Threads (all static, no atomics): the forward splits its independent column blocks over
// the OpenMP threads (each thread calls gemm(parallel=false) on its own buffers), or runs them
// in turn with gemm(parallel=true) when there are too few. The im2col backward splits samples
// when there are enough, summing dw and db per thread and reducing in thread order; the
// depthwise backward splits channels, so each dw / db element has one owner. Gradients are
// therefore bitwise repeatable at a fixed thread count. No global mutable state: every buffer
// belongs to one call, or, for implicit, to one thread (kept for its next call; CallScratch).
#include <algorithm>
#include <cstring>
#include <vector>

#include "dlk.h"
#include "kernels.h"

namespace dlk {
namespace DLK_ISA {

namespace {

// ---- helpers --------------------------------------------------------------------------------

// db[k] += the sum of dy's row k, for Kg rows of PQ: one sample and group's bias gradient.
template <typename T>
inline void add_bias_grad(const T* dy, int64_t Kg, int64_t PQ, T* db) {
  for (int64_t k = 0; k < Kg; ++k) {
    const T* d = dy + k * PQ;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < PQ; ++i) acc += d[i];
    db[k] += acc;
  }
}

// Output positions q in [lo, hi) whose input coordinate q*stride + off lies in [0, n).
inline void valid_range(int64_t off, int64_t stride, int64_t n, int64_t count, int64_t& lo,
                        int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = (n - 1 - off) >= 0 ? (n - 1 - off) / stride + 1 : 0;
  lo = std::min(lo, count);
  hi = std::min(std::max(hi, lo), count);
}

int num_threads_for(int64_t work) {
  if (in_parallel()) return 1;
  int t = max_threads();
  return (int)std::max<int64_t>(1, std::min<int64_t>(t, work));
}

// Unfold: col[(c*R + r)*S + s][j - j0] (row stride ldcol) = x[c, p*sh - ph + r*dh, q*sw - pw + s*dw]
// for the flattened output positions j = p*Q + q in [j0, j1) and c < Cg; xg points at channel
// 0 of the group in one sample. Out-of-range input reads zero.
template <typename T>
void im2col(const ConvShape& s, const T* xg, int64_t Cg, int64_t j0, int64_t j1, T* col,
            int64_t ldcol) {
  if (j1 <= j0) return;
  const int64_t H = s.H, W = s.W, Q = s.Q, R = s.R, S = s.S, sw = s.stride_w;
  const int64_t p0 = j0 / Q, p1 = (j1 - 1) / Q;
  for (int64_t c = 0; c < Cg; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t sx = 0; sx < S; ++sx) {
        T* row = col + ((c * R + r) * S + sx) * ldcol;
        const int64_t iw0 = sx * s.dil_w - s.pad_w;
        int64_t qlo, qhi;
        valid_range(iw0, sw, W, Q, qlo, qhi);
        for (int64_t p = p0; p <= p1; ++p) {
          const int64_t qa = p == p0 ? j0 - p * Q : 0, qb = p == p1 ? j1 - p * Q : Q;
          T* out = row + (p * Q + qa - j0);  // holds q in [qa, qb)
          const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
          if (ih < 0 || ih >= H) {
            std::memset(out, 0, sizeof(T) * (qb - qa));
            continue;
          }
          const int64_t lo = std::min(std::max(qlo, qa), qb), hi = std::min(std::max(qhi, lo), qb);
          if (lo > qa) std::memset(out, 0, sizeof(T) * (lo - qa));
          if (hi > lo) {
            const T* src = xg + ((c * H + ih) * W + iw0 + lo * sw);
            T* dst = out + (lo - qa);
            if (sw == 1) {
              std::memcpy(dst, src, sizeof(T) * (hi - lo));
            } else {
              for (int64_t q = 0; q < hi - lo; ++q) dst[q] = src[q * sw];
            }
          }
          if (qb > hi) std::memset(out + (hi - qa), 0, sizeof(T) * (qb - hi));
        }
      }
    }
  }
}

// The adjoint of im2col over the same range: dxg[c, ih, iw] += col[...] where valid.
template <typename T>
void col2im(const ConvShape& s, const T* col, int64_t ldcol, int64_t Cg, int64_t j0, int64_t j1,
            T* dxg) {
  if (j1 <= j0) return;
  const int64_t H = s.H, W = s.W, Q = s.Q, R = s.R, S = s.S, sw = s.stride_w;
  const int64_t p0 = j0 / Q, p1 = (j1 - 1) / Q;
  for (int64_t c = 0; c < Cg; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t sx = 0; sx < S; ++sx) {
        const T* row = col + ((c * R + r) * S + sx) * ldcol;
        const int64_t iw0 = sx * s.dil_w - s.pad_w;
        int64_t qlo, qhi;
        valid_range(iw0, sw, W, Q, qlo, qhi);
        if (qlo >= qhi) continue;
        for (int64_t p = p0; p <= p1; ++p) {
          const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
          if (ih < 0 || ih >= H) continue;
          const int64_t qa = p == p0 ? j0 - p * Q : 0, qb = p == p1 ? j1 - p * Q : Q;
          const int64_t lo = std::min(std::max(qlo, qa), qb), hi = std::min(std::max(qhi, lo), qb);
          if (hi <= lo) continue;
          const T* in = row + (p * Q + lo - j0);
          T* d = dxg + ((c * H + ih) * W + iw0 + lo * sw);
          const int64_t n = hi - lo;
          if (sw == 1) {
#pragma omp simd
            for (int64_t q = 0; q < n; ++q) d[q] += in[q];
          } else {
            for (int64_t q = 0; q < n; ++q) d[q * sw] += in[q];
          }
        }
      }
    }
  }
}

// Static split of n items over nt threads: [begin, end) of thread t.
inline void split(int64_t n, int nt, int t, int64_t& b, int64_t& e) {
  b = n * t / nt;
  e = n * (t + 1) / nt;
}

bool is_pointwise(const ConvShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 &&
         s.pad_w == 0 && s.P == s.H && s.Q == s.W;
}

// Columns per GEMM: enough to keep the micro-kernels busy and to repack the filters (gemm's A)
// rarely, few enough that one column block (CRS x cols, about the 1 MiB L2) stays cached between
// im2col writing it and gemm packing it. 1 MiB measured 5-15% faster than 384 KiB on C2/C3/C5
// (fwd, dx and dw, one thread; 768 KiB in between).
template <typename T>
int64_t chunk_cols(int64_t CRS) {
  const int64_t budget = 1024 * 1024 / (int64_t)sizeof(T);
  return std::max<int64_t>(128, std::min<int64_t>(4096, budget / std::max<int64_t>(CRS, 1)));
}

// Splits PQ output positions into near-equal chunks of at most about cols, in multiples of 48
// (whole register tiles of gemm's micro-kernels) where the chunks are long enough.
// unit: the multiple for implicit's panels (0: im2col's rule above).
inline int64_t chunk_len(int64_t PQ, int64_t cols, int64_t unit = 0) {
  const int64_t nch = (PQ + cols - 1) / cols;
  int64_t len = (PQ + nch - 1) / nch;
  if (nch > 1 && unit > 0) len = (len + unit - 1) / unit * unit;
  else if (nch > 1 && len >= 96) len = (len + 47) / 48 * 48;
  return std::max<int64_t>(1, len);
}

// A block of output columns: samples [n0, n0 + nb) whole when nb > 1, else positions
// [j0, j1) of sample n0.
struct Block {
  int64_t n0, nb, j0, j1;
};

// Work list: whole-sample batches when P*Q is small, else chunks of each sample.
void make_blocks(int64_t n_begin, int64_t n_end, int64_t PQ, int64_t cols, std::vector<Block>& out,
                 int64_t unit = 0) {
  out.clear();
  if (PQ * 2 <= cols) {
    const int64_t nb = std::max<int64_t>(1, cols / PQ);
    for (int64_t n = n_begin; n < n_end; n += nb)
      out.push_back({n, std::min(nb, n_end - n), 0, PQ});
  } else {
    const int64_t clen = chunk_len(PQ, cols, unit);
    for (int64_t n = n_begin; n < n_end; ++n)
      for (int64_t j = 0; j < PQ; j += clen) out.push_back({n, 1, j, std::min(PQ, j + clen)});
  }
}

// ---- im2col forward -------------------------------------------------------------------------
//
// Per block and group: y_g[Kg, cols] = W_g[Kg, CRS] @ col[CRS, cols], one gemm written
// straight into y (through a scratch buffer when several samples share the gemm), then bias.
// (The other orientation, col^T @ W^T with the filters packed once by gemm_pack_b, needs a
// transpose of the output and measured no faster: the filters are a small part of the traffic.)

// Where a one-sample block's GEMM writes group g's rows of y: straight into y.
template <typename T>
T* block_output(const ConvShape& s, const Block& blk, int64_t g, int64_t Kg, T* y) {
  return y + ((blk.n0 * s.K + g * Kg) * s.P * s.Q + blk.j0);
}

// After a block's GEMM for group g: a one-sample block's rows are in y already and get the bias;
// several samples' rows sit side by side in `out` (Kg x len) and are copied to y plus the bias.
template <typename T>
void finish_block(const ConvShape& s, const Block& blk, int64_t g, int64_t Kg, int64_t len, const T* b, T* y,
                  const T* out) {
  const int64_t PQ = s.P * s.Q;
  if (blk.nb == 1) {
    if (!b) return;
    T* yg = block_output(s, blk, g, Kg, y);
    for (int64_t k = 0; k < Kg; ++k) {
      const T bk = b[g * Kg + k];
      T* yr = yg + k * PQ;
      for (int64_t u = 0; u < len; ++u) yr[u] += bk;
    }
    return;
  }
  for (int64_t i = 0; i < blk.nb; ++i)
    for (int64_t k = 0; k < Kg; ++k) {
      const T bk = b ? b[g * Kg + k] : T(0);
      T* yr = y + ((blk.n0 + i) * s.K + g * Kg + k) * PQ;
      const T* o = out + (k * len + i * PQ);
      for (int64_t u = 0; u < PQ; ++u) yr[u] = o[u] + bk;
    }
}

template <typename T>
void fwd_block(const ConvShape& s, const T* x, const T* w, const T* b, T* y, const Block& blk,
               std::vector<T>& colbuf, std::vector<T>& outbuf, bool parallel) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, PQ = s.P * s.Q;
  const int64_t CRS = Cg * s.R * s.S, HW = s.H * s.W;
  const int64_t len = blk.nb > 1 ? blk.nb * PQ : blk.j1 - blk.j0;
  const bool pointwise = is_pointwise(s);
  T* col = pointwise && blk.nb == 1 ? nullptr : grow<T>(colbuf, CRS * len);
  T* out = blk.nb > 1 ? grow<T>(outbuf, len * Kg) : nullptr;
  for (int64_t g = 0; g < G; ++g) {
    const T* B;  // the columns, B[crs, j] = B[crs * ldb + j]
    int64_t ldb;
    if (!col) {  // 1x1, stride 1, no padding: the input is its own column matrix
      B = x + (blk.n0 * s.C + g * Cg) * HW + blk.j0;
      ldb = HW;
    } else {
      if (blk.nb > 1) {
        for (int64_t i = 0; i < blk.nb; ++i)
          im2col(s, x + ((blk.n0 + i) * s.C + g * Cg) * HW, Cg, 0, PQ, col + i * PQ, len);
      } else {
        im2col(s, x + (blk.n0 * s.C + g * Cg) * HW, Cg, blk.j0, blk.j1, col, len);
      }
      B = col;
      ldb = len;
    }
    const T* wg = w + g * Kg * CRS;
    if (blk.nb == 1)
      gemm<T>(Kg, len, CRS, wg, CRS, 1, B, ldb, 1, block_output(s, blk, g, Kg, y), PQ, false, parallel);
    else
      gemm<T>(Kg, len, CRS, wg, CRS, 1, B, ldb, 1, out, len, false, parallel);
    finish_block(s, blk, g, Kg, len, b, y, out);
  }
}

}  // namespace

template <typename T>
void conv2d_forward_im2col(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t PQ = s.P * s.Q;
  if (s.N <= 0 || s.K <= 0 || PQ <= 0) return;
  const int64_t CRS = (s.C / s.groups) * s.R * s.S;
  if (CRS == 0) {  // empty reduction: y = bias
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t k = 0; k < s.K; ++k)
        std::fill(y + (n * s.K + k) * PQ, y + (n * s.K + k + 1) * PQ, b ? b[k] : T(0));
    return;
  }
  std::vector<Block> blocks;
  make_blocks(0, s.N, PQ, chunk_cols<T>(CRS), blocks);
  const int64_t nblk = (int64_t)blocks.size();
  const int nt = num_threads_for(nblk);
  if (nt > 1 && nblk >= 2 * nt) {
    // Blocks are independent: split them statically, each thread on its own buffers.
#pragma omp parallel num_threads(nt)
    {
      std::vector<T> colbuf, outbuf;
      int64_t b0, e0;
      split(nblk, nt, thread_id(), b0, e0);
      for (int64_t i = b0; i < e0; ++i)
        fwd_block(s, x, w, b, y, blocks[(size_t)i], colbuf, outbuf, false);
    }
  } else {
    std::vector<T> colbuf, outbuf;
    for (const Block& blk : blocks)
      fwd_block(s, x, w, b, y, blk, colbuf, outbuf, !in_parallel());
  }
}

// ---- im2col backward ------------------------------------------------------------------------
//
// Per sample, chunk of output positions [j0, j1) and group:
//   db[k]  += sum_j dy[k, j]
//   dw_g   += dy_g[:, j0:j1] @ col[:, j0:j1]^T                    (gemm, accumulate)
//   dcol    = W_g^T @ dy_g[:, j0:j1]; col2im(dcol) into dx       (gemm, then scatter-add)

namespace {

template <typename T>
void bwd_sample(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dwp, T* dbp,
                int64_t n, std::vector<T>& colbuf, std::vector<T>& dcolbuf, bool parallel) {
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, PQ = s.P * s.Q;
  const int64_t CRS = Cg * s.R * s.S, HW = s.H * s.W;
  const bool pointwise = is_pointwise(s);
  const int64_t clen = pointwise ? std::max<int64_t>(PQ, 1) : chunk_len(PQ, chunk_cols<T>(CRS));
  if (dx && !pointwise) std::memset(dx + n * s.C * HW, 0, sizeof(T) * s.C * HW);
  for (int64_t g = 0; g < G; ++g) {
    const T* dyg = dy + (n * s.K + g * Kg) * PQ;
    const T* xg = x + (n * s.C + g * Cg) * HW;
    if (dbp) add_bias_grad(dyg, Kg, PQ, dbp + g * Kg);
    if (!dwp && !dx) continue;
    const T* wg = w + g * Kg * CRS;
    T* dxg = dx ? dx + (n * s.C + g * Cg) * HW : nullptr;
    for (int64_t j0 = 0; j0 < PQ; j0 += clen) {
      const int64_t j1 = std::min(PQ, j0 + clen), len = j1 - j0;
      if (dwp) {
        const T* B;
        int64_t csb;
        if (pointwise) {
          B = xg;
          csb = HW;
        } else {
          T* col = grow<T>(colbuf, CRS * len);
          im2col(s, xg, Cg, j0, j1, col, len);
          B = col;
          csb = len;
        }
        // dw_g[Kg, CRS] += dy_g[Kg, j0:j1] @ col^T[len, CRS]
        gemm<T>(Kg, CRS, len, dyg + j0, PQ, 1, B, 1, csb, dwp + g * Kg * CRS, CRS, true, parallel);
      }
      if (dxg) {
        // dcol[CRS, len] = W_g^T[CRS, Kg] @ dy_g[Kg, j0:j1]
        if (pointwise) {
          gemm<T>(CRS, PQ, Kg, wg, 1, CRS, dyg, PQ, 1, dxg, PQ, false, parallel);
        } else {
          T* dcol = grow<T>(dcolbuf, CRS * len);
          gemm<T>(CRS, len, Kg, wg, 1, CRS, dyg + j0, PQ, 1, dcol, len, false, parallel);
          col2im(s, dcol, len, Cg, j0, j1, dxg);
        }
      }
    }
  }
}

// Samples split over nt threads, body(n0, n1, dwp, dbp) adding its samples' dw and db into
// zeroed per-thread partial sums (null where not wanted), reduced in thread order afterwards:
// bitwise repeatable at a fixed thread count.
// partials: the caller's buffer for the nt partial sums.
template <typename T, typename Body>
void per_thread_sums(int nt, int64_t N, int64_t wsize, int64_t K, T* dw, T* db,
                     std::vector<T>& partials, const Body& body) {
  const int64_t part = (dw ? wsize : 0) + (db ? K : 0);
  T* parts = grow<T>(partials, part * nt);
  std::fill(parts, parts + part * nt, T(0));
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    T* mine = parts + part * t;
    int64_t n0, n1;
    split(N, nt, t, n0, n1);
    body(n0, n1, dw ? mine : nullptr, db ? mine + (dw ? wsize : 0) : nullptr);
#pragma omp barrier
    int64_t b0, e0;
    split(part, nt, t, b0, e0);
    for (int64_t i = b0; i < e0; ++i) {
      T acc = parts[i];
      for (int u = 1; u < nt; ++u) acc += parts[part * u + i];
      if (dw && i < wsize) dw[i] = acc;
      else db[i - (dw ? wsize : 0)] = acc;
    }
  }
}

// Enough samples for every thread to get a fair share of whole ones.
inline bool split_samples(int nt, int64_t N) {
  return nt > 1 && (N % nt == 0 || N >= 4 * nt);
}

}  // namespace

template <typename T>
void conv2d_backward_im2col(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                            T* db) {
  const int64_t G = s.groups, Cg = s.C / G, PQ = s.P * s.Q;
  const int64_t wsize = s.K * Cg * s.R * s.S;
  if (dw) std::fill(dw, dw + wsize, T(0));
  if (db) std::fill(db, db + s.K, T(0));
  if (s.N <= 0) return;
  if (dx && (PQ == 0 || s.K == 0 || wsize == 0)) {  // nothing flows back: zero gradient
    std::fill(dx, dx + s.N * s.C * s.H * s.W, T(0));
    dx = nullptr;
  }
  if (PQ == 0 || s.K == 0) return;
  if (!dx && !dw && !db) return;
  const int nt = num_threads_for(s.N);
  if (!split_samples(nt, s.N)) {
    std::vector<T> colbuf, dcolbuf;
    for (int64_t n = 0; n < s.N; ++n)
      bwd_sample(s, dy, x, w, dx, dw, db, n, colbuf, dcolbuf, !in_parallel());
    return;
  }
  std::vector<T> partials;
  per_thread_sums(nt, s.N, wsize, s.K, dw, db, partials, [&](int64_t n0, int64_t n1, T* dwp, T* dbp) {
    std::vector<T> colbuf, dcolbuf;
    for (int64_t n = n0; n < n1; ++n)
      bwd_sample(s, dy, x, w, dx, dwp, dbp, n, colbuf, dcolbuf, false);
  });
}

// ---- implicit GEMM (stride 1) ----------------------------------------------------------------
//
// With stride 1 the column matrix need not be materialised: in a zero-padded copy xp of the
// input (planes of Hp x Wp, input pixel (ih, iw) at (ih + pad_h, iw + pad_w)),
//   col[(c, r, s), (p, q)] = xp[c*Hp*Wp + r*dh*Wp + s*dw  +  p*Wp + q],
// a row offset (per tap) plus a column offset (per output position). So gemm's B panels (NR
// columns of all CRS rows) are packed straight from xp, and the filters once per call
// (gemm_pack_a): what is left per block is the micro-kernels. Every row of a panel copies the
// same lane pattern from a new base, so the pattern is worked out once per panel: a vector of
// one contiguous run is one load, of two runs (an output row ends inside it) two masked loads,
// anything else goes lane by lane. With AVX-512 a panel of one- and two-run vectors is packed
// by its first row tile's micro-kernel as it goes (gemm_gathered_panel), the loads and stores
// hidden under the FMAs: C2 / C3 / C5 forward 8% / 4% / 6% faster than packing it first.

namespace {

struct Padded {
  int64_t Hp, Wp, plane, sample;  // plane = Hp*Wp, sample = C*plane
};

Padded padded_geom(const ConvShape& s) {
  Padded g;
  g.Hp = (s.P - 1) + (s.R - 1) * s.dil_h + 1;
  g.Wp = (s.Q - 1) + (s.S - 1) * s.dil_w + 1;
  g.plane = g.Hp * g.Wp;
  g.sample = s.C * g.plane;
  return g;
}

// Offset in the padded planes of col's row (c, r, s), c within a group.
std::vector<int64_t> row_offsets(const ConvShape& s, const Padded& g) {
  std::vector<int64_t> off((size_t)(s.C / s.groups * s.R * s.S));
  for (int64_t c = 0; c < s.C / s.groups; ++c)
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t sx = 0; sx < s.S; ++sx)
        off[(size_t)((c * s.R + r) * s.S + sx)] = c * g.plane + r * s.dil_h * g.Wp + sx * s.dil_w;
  return off;
}

// The padded copy of one sample's C planes (input pixels that no tap reads are dropped, so
// a negative padding works too: the transposed convolution of the dx pass can have one).
template <typename T>
void pad_fill(const ConvShape& s, const Padded& g, const T* xs, T* dst) {
  const int64_t iw_lo = std::max<int64_t>(0, -s.pad_w);
  const int64_t iw_hi = std::min<int64_t>(s.W, g.Wp - s.pad_w);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t i = 0; i < g.Hp; ++i) {
      T* row = dst + c * g.plane + i * g.Wp;
      const int64_t ih = i - s.pad_h;
      if (ih < 0 || ih >= s.H || iw_lo >= iw_hi) {
        std::memset(row, 0, sizeof(T) * g.Wp);
        continue;
      }
      const int64_t a = iw_lo + s.pad_w, e = iw_hi + s.pad_w;
      std::memset(row, 0, sizeof(T) * a);
      std::memcpy(row + a, xs + (c * s.H + ih) * s.W + iw_lo, sizeof(T) * (e - a));
      std::memset(row + e, 0, sizeof(T) * (g.Wp - e));
    }
}

// Where the lanes of one vector of a packed B row come from, relative to the row's base:
// RUN: lane t reads a + t (all lanes); TWO: lanes t < split read a + t, lanes split <= t < n
// read b + t, the rest are zero; LANES: lane t reads idx[t], or is zero where idx[t] < 0.
template <typename T>
struct LaneSrc {
  enum Kind { RUN, TWO, LANES } kind;
  int64_t a, b;
  int split, n;
  int64_t idx[simd<T>::width];
};

template <typename T>
LaneSrc<T> lane_src(const int64_t* src, int n) {
  constexpr int W = simd<T>::width;
  LaneSrc<T> l{};
  for (int t = 0; t < W; ++t) l.idx[t] = t < n ? src[t] : -1;
  int split = 1;
  while (split < n && src[split] == src[0] + split) ++split;
  int end = split;
  while (end < n && src[end] == src[split] + (end - split)) ++end;
  l.a = src[0];
  l.split = split;
  l.n = n;
  if (split == W) {
    l.kind = LaneSrc<T>::RUN;
  } else if (end == n) {
    l.kind = LaneSrc<T>::TWO;
    l.b = split < n ? src[split] - split : 0;
  } else {
    l.kind = LaneSrc<T>::LANES;
  }
  return l;
}

// Lanes t in [lo, hi) of base + off + t, the others zero; masked loads never touch the others.
template <typename T>
inline vec<T> load_lanes(const T* base, int64_t off, int lo, int hi) {
#if defined(__AVX512F__)
  const unsigned m = ((1u << hi) - 1) & ~((1u << lo) - 1);  // hi <= 16
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm512_maskz_loadu_ps((__mmask16)m, base + off);
  else return (vec<T>)_mm512_maskz_loadu_pd((__mmask8)m, base + off);
#else
  vec<T> v = vbroadcast(T(0));
  for (int t = lo; t < hi; ++t) v[t] = base[off + t];
  return v;
#endif
}

template <typename T>
inline vec<T> vor(vec<T> x, vec<T> y) {  // bitwise: lanes zero in one keep the other's bits
  return (vec<T>)((ivec<T>)x | (ivec<T>)y);
}

// One vector of an unfolded row at base, the columns of l (whose kind is KIND).
template <typename T, int KIND>
inline vec<T> load_row(const T* base, const LaneSrc<T>& l) {
  if constexpr (KIND == LaneSrc<T>::RUN) {
    return vload(base + l.a);
  } else if constexpr (KIND == LaneSrc<T>::TWO) {
    return vor<T>(load_lanes(base, l.a, 0, l.split), load_lanes(base, l.b, l.split, l.n));
  } else {
    vec<T> v = vbroadcast(T(0));
    for (int t = 0; t < simd<T>::width; ++t)
      if (l.idx[t] >= 0) v[t] = base[l.idx[t]];
    return v;
  }
}

// The lane patterns of columns src[0..n), one per vector (the last one possibly partial).
template <typename T>
void lane_srcs(const int64_t* src, int64_t n, std::vector<LaneSrc<T>>& out) {
  constexpr int W = simd<T>::width;
  out.clear();
  for (int64_t j = 0; j < n; j += W) out.push_back(lane_src<T>(src + j, (int)std::min<int64_t>(W, n - j)));
}

// Rows k < K of the unfolded matrix, row k at xg + rowoff[k] with the columns of `lanes`,
// into dst[k * w + column] (w = lanes.size() * width).
template <typename T>
void pack_rows(const T* xg, const int64_t* rowoff, int64_t K, const LaneSrc<T>* lanes, int64_t nvec,
               T* dst) {
  constexpr int W = simd<T>::width;
  const int64_t w = nvec * W;
  for (int64_t v = 0; v < nvec; ++v) {
    const LaneSrc<T>& l = lanes[v];
    T* d = dst + v * W;
    if (l.kind == LaneSrc<T>::RUN)
      for (int64_t k = 0; k < K; ++k) vstore(d + k * w, load_row<T, LaneSrc<T>::RUN>(xg + rowoff[k], l));
    else if (l.kind == LaneSrc<T>::TWO)
      for (int64_t k = 0; k < K; ++k) vstore(d + k * w, load_row<T, LaneSrc<T>::TWO>(xg + rowoff[k], l));
    else
      for (int64_t k = 0; k < K; ++k) vstore(d + k * w, load_row<T, LaneSrc<T>::LANES>(xg + rowoff[k], l));
  }
}

// The transpose of pack_rows, for dw's B panel: dst[j * w + k] = row k's column j, for the
// nr rows at xg + rowoff[k] (w = nr rounded up to the vector width, the padding zero) and the
// columns of one lane pattern l (nj of them, at dst's rows). W rows at a time are loaded and
// transposed in registers.
template <typename T, int KIND>
void pack_rows_t_group(const T* xg, const int64_t* rowoff, int64_t nr, const LaneSrc<T>& l,
                       int64_t nj, int64_t w, T* dst) {
  constexpr int W = simd<T>::width;
  for (int64_t k0 = 0; k0 < w; k0 += W) {
    vec<T> r[W];
    if (k0 + W <= nr) {
#pragma GCC unroll 16
      for (int t = 0; t < W; ++t) r[t] = load_row<T, KIND>(xg + rowoff[k0 + t], l);
    } else {
      for (int t = 0; t < W; ++t)
        r[t] = k0 + t < nr ? load_row<T, KIND>(xg + rowoff[k0 + t], l) : vbroadcast(T(0));
    }
    transpose<T>(r);
    for (int64_t u = 0; u < nj; ++u) vstore(dst + u * w + k0, r[u]);
  }
}

template <typename T>
void pack_rows_t(const T* xg, const int64_t* rowoff, int64_t nr, const LaneSrc<T>* lanes,
                 int64_t len, T* dst) {
  constexpr int W = simd<T>::width;
  const int64_t w = (nr + W - 1) / W * W;
  for (int64_t j0 = 0; j0 < len; j0 += W) {
    const LaneSrc<T>& l = lanes[j0 / W];
    const int64_t nj = std::min<int64_t>(W, len - j0);
    T* d = dst + j0 * w;
    if (l.kind == LaneSrc<T>::RUN) pack_rows_t_group<T, LaneSrc<T>::RUN>(xg, rowoff, nr, l, nj, w, d);
    else if (l.kind == LaneSrc<T>::TWO) pack_rows_t_group<T, LaneSrc<T>::TWO>(xg, rowoff, nr, l, nj, w, d);
    else pack_rows_t_group<T, LaneSrc<T>::LANES>(xg, rowoff, nr, l, nj, w, d);
  }
}

// A full panel's lane patterns as gemm_gathered_panel's GatherCols (RUN: all lanes from a;
// TWO: lanes below split from a, the rest from b); false where a vector has more runs.
template <typename T>
bool gather_cols(const std::vector<LaneSrc<T>>& lanes, GatherCols& gc) {
  constexpr int W = simd<T>::width;
  static_assert(W <= 16, "lane masks of 16 bits");
  const uint32_t all = (1u << W) - 1;
  if (lanes.size() > 4) return false;
  for (size_t v = 0; v < lanes.size(); ++v) {
    const LaneSrc<T>& l = lanes[v];
    if (l.kind == LaneSrc<T>::LANES || l.n != W) return false;
    const bool run = l.kind == LaneSrc<T>::RUN;
    gc.a[v] = l.a;
    gc.b[v] = run ? l.a : l.b;
    gc.m1[v] = run ? all : (1u << l.split) - 1;
    gc.m2[v] = run ? 0u : all & ~gc.m1[v];
  }
  return true;
}

// Columns per block (the unit of work, and of the bias pass): CRS x cols about 256 KiB
// (budgets from 192 to 512 KiB measured within 2% of each other on C2, C3, C5, when the
// block's panels were all packed before its GEMM).
// Whole panels only, so that a sample's one partial panel is its last.
template <typename T>
int64_t implicit_cols(int64_t CRS) {
  const int64_t NR = gemm_panel_width<T>();
  const int64_t budget = 256 * 1024 / (int64_t)sizeof(T);
  const int64_t cols = std::max<int64_t>(NR, std::min<int64_t>(4096, budget / std::max<int64_t>(CRS, 1)));
  return (cols + NR / 2) / NR * NR;
}

template <typename T>
void implicit_block(const ConvShape& s, const Padded& g, const int64_t* rowoff, const T* pa,
                    const T* xpad, const T* b, T* y, const Block& blk, std::vector<int64_t>& src,
                    std::vector<LaneSrc<T>>& lanes, std::vector<T>& panels, std::vector<T>& outbuf) {
  const int64_t NR = gemm_panel_width<T>();
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, PQ = s.P * s.Q;
  const int64_t CRS = Cg * s.R * s.S;
  const int64_t len = blk.nb > 1 ? blk.nb * PQ : blk.j1 - blk.j0;
  const int64_t asz = gemm_packed_a_size<T>(Kg, CRS);
  // column offsets in xpad (samples n0.. of the block laid one after the other)
  int64_t* so = grow<int64_t>(src, len);
  for (int64_t jb = 0; jb < len; ++jb) {
    const int64_t i = blk.nb > 1 ? jb / PQ : 0, pos = blk.nb > 1 ? jb % PQ : blk.j0 + jb;
    so[jb] = i * g.sample + (pos / s.Q) * g.Wp + pos % s.Q;
  }
  T* pan = grow<T>(panels, CRS * NR);
  T* out = blk.nb > 1 ? grow<T>(outbuf, len * Kg) : nullptr;
  const int64_t ldc = blk.nb > 1 ? len : PQ;
  for (int64_t gi = 0; gi < G; ++gi) {
    const T* xg = xpad + gi * Cg * g.plane;
    T* cg = blk.nb > 1 ? out : block_output(s, blk, gi, Kg, y);
    // panel by panel: packed by the first row tile's micro-kernel where it can, else first
    for (int64_t j = 0; j < len; j += NR) {
      const int64_t nr = std::min<int64_t>(NR, len - j);
      lane_srcs<T>(so + j, nr, lanes);
      GatherCols gc;
      if (gather_cols(lanes, gc) &&
          gemm_gathered_panel<T>(Kg, nr, CRS, pa + gi * asz, xg, rowoff, gc, pan, cg + j, ldc, false))
        continue;
      pack_rows<T>(xg, rowoff, CRS, lanes.data(), (int64_t)lanes.size(), pan);
      gemm_packed_panels<T>(Kg, nr, CRS, pa + gi * asz, pan, cg + j, ldc, false);
    }
    finish_block(s, blk, gi, Kg, len, b, y, out);
  }
}

// dw and db of one sample, per chunk of J output positions and group:
//   dw_g[Kg, CRS] += dy_g[Kg, J] @ col[CRS, J]^T
// For each NR-wide slice of col's rows, the col^T panel (J x NR) built from the padded sample
// by pack_rows_t, times dy_g's chunk read in place as gemm's A (gemm_rowa_panels: packing it
// measured 1-2% slower on C2, C3, C5's dw).
template <typename T>
struct DwBufs {
  std::vector<int64_t> src;
  std::vector<LaneSrc<T>> lanes;
  std::vector<T> panel;
};

// The implicit path's buffers, kept by each thread from call to call (C2's padded sample is
// 861 KB) and freed past SCRATCH_KEEP (dlk.h). Two sets per thread: the calling thread's for the
// whole call (the team reads its packed filters), trimmed when the call ends, and the worker's
// for its share (the calling thread is a worker too), trimmed when the share is done.

template <typename T>
struct CallScratch {
  std::vector<T> pa, wf, partials;  // packed filters, flipped filters, dw's per-thread sums
  void trim() {
    if (held(pa) + held(wf) + held(partials) > SCRATCH_KEEP) *this = CallScratch();
  }
};

template <typename T>
struct WorkScratch {
  std::vector<T> xpad, panels, outbuf;  // padded samples, packed B panels
  std::vector<int64_t> src;
  std::vector<LaneSrc<T>> lanes;
  DwBufs<T> dw;
  void trim() {
    if (held(xpad) + held(panels) + held(outbuf) + held(src) + held(lanes) + held(dw.src) +
            held(dw.lanes) + held(dw.panel) > SCRATCH_KEEP)
      *this = WorkScratch();
  }
};

template <typename T>
CallScratch<T>& call_scratch() {
  thread_local CallScratch<T> s;
  return s;
}

template <typename T>
WorkScratch<T>& work_scratch() {
  thread_local WorkScratch<T> s;
  return s;
}

template <typename T>
void dw_sample(const ConvShape& s, const Padded& g, const int64_t* rowoff, const T* xpad,
               const T* dy, int64_t n, T* dwp, T* dbp, DwBufs<T>& bf) {
  const int64_t NR = gemm_panel_width<T>();
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, PQ = s.P * s.Q;
  const int64_t CRS = Cg * s.R * s.S;
  // chunks: dy's chunk (Kg x J) at most 512 KiB, so that it and a panel stay in L2 (each
  // chunk is one more pass over dw); J whole vectors (measured 2% faster than the 256 KiB
  // chunks of any length that were packed as gemm's A)
  constexpr int64_t W = simd<T>::width;
  const int64_t jmax = std::max<int64_t>(NR, 512 * 1024 / (int64_t)sizeof(T) / std::max<int64_t>(Kg, 1));
  const int64_t nch = (PQ + jmax - 1) / jmax, J = ((PQ + nch - 1) / nch + W - 1) / W * W;
  T* panel = grow<T>(bf.panel, J * NR);
  int64_t* so = grow<int64_t>(bf.src, J);
  for (int64_t gi = 0; gi < G; ++gi) {
    const T* dyg = dy + (n * s.K + gi * Kg) * PQ;
    if (dbp) add_bias_grad(dyg, Kg, PQ, dbp + gi * Kg);
  }
  if (!dwp) return;
  for (int64_t j0 = 0; j0 < PQ; j0 += J) {
    const int64_t len = std::min(J, PQ - j0);
    for (int64_t jj = 0; jj < len; ++jj) so[jj] = ((j0 + jj) / s.Q) * g.Wp + (j0 + jj) % s.Q;
    lane_srcs<T>(so, len, bf.lanes);
    for (int64_t gi = 0; gi < G; ++gi) {
      const T* dyg = dy + (n * s.K + gi * Kg) * PQ + j0;
      const T* xg = xpad + gi * Cg * g.plane;
      for (int64_t c0 = 0; c0 < CRS; c0 += NR) {
        const int64_t nr = std::min<int64_t>(NR, CRS - c0);
        pack_rows_t<T>(xg, rowoff + c0, nr, bf.lanes.data(), len, panel);
        gemm_rowa_panels<T>(Kg, nr, len, dyg, PQ, panel, dwp + gi * Kg * CRS + c0, CRS, true);
      }
    }
  }
}

// The implicit forward, set up by the calling thread and run by a team of threads, so that
// the backward can run dx's blocks in the same parallel region as dw.
template <typename T>
struct ImplicitForward {
  ConvShape s;
  Padded g;
  const T *x, *b;
  T* y;
  std::vector<int64_t> rowoff, units;  // units: first block of each, then the block count
  const T* pa;                          // the filters, packed per group (the caller's scratch)
  std::vector<Block> blocks;

  // False where implicit does not apply (the caller falls back to im2col): strides, an empty
  // reduction, or too few blocks for nt threads (a small batch; im2col's gemm splits each
  // product over the threads instead).
  bool setup(const ConvShape& shape, const T* x_, const T* w, const T* b_, T* y_, int nt) {
    s = shape, x = x_, b = b_, y = y_;
    const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, PQ = s.P * s.Q;
    const int64_t CRS = Cg * s.R * s.S;
    if (s.stride_h != 1 || s.stride_w != 1 || CRS == 0) return false;
    make_blocks(0, s.N, PQ, implicit_cols<T>(CRS), blocks, gemm_panel_width<T>());
    const int64_t nblk = (int64_t)blocks.size();
    if (nt > 1 && nblk < 2 * nt) return false;
    g = padded_geom(s);
    rowoff = row_offsets(s, g);
    const int64_t asz = gemm_packed_a_size<T>(Kg, CRS);
    T* packed = grow<T>(call_scratch<T>().pa, G * asz);
    for (int64_t gi = 0; gi < G; ++gi) gemm_pack_a<T>(Kg, CRS, w + gi * Kg * CRS, CRS, 1, packed + gi * asz);
    pa = packed;
    // Units handed out dynamically (a thread slowed by other load takes fewer; which thread
    // computes a block changes nothing in it): a sample's blocks together, so that it is
    // padded once, when there are samples enough to balance the threads; else single blocks.
    // The last nt samples go block by block all the same: the threads then finish within a
    // block of each other, not a sample (C3, 8 samples a thread: ~3% of waiting at the end).
    const bool by_sample = s.N >= 4 * nt;
    const int64_t tail = s.N - nt;
    units.clear();
    for (int64_t i = 0; i < nblk; ++i) {
      const int64_t n = blocks[(size_t)i].n0;
      if (!by_sample || n >= tail || i == 0 || n != blocks[(size_t)i - 1].n0) units.push_back(i);
    }
    units.push_back(nblk);
    return true;
  }

  // Called by every thread of the team (no barrier at the end).
  void run() const {
    WorkScratch<T>& sc = work_scratch<T>();
    int64_t loaded = -1;
    const int64_t nunits = (int64_t)units.size() - 1;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t u = 0; u < nunits; ++u)
      for (int64_t i = units[(size_t)u]; i < units[(size_t)u + 1]; ++i) {
        const Block& blk = blocks[(size_t)i];
        if (blk.n0 != loaded || blk.nb > 1) {  // pad the block's samples (once per sample)
          T* xp = grow<T>(sc.xpad, blk.nb * g.sample);
          for (int64_t v = 0; v < blk.nb; ++v)
            pad_fill(s, g, x + (blk.n0 + v) * s.C * s.H * s.W, xp + v * g.sample);
          loaded = blk.nb > 1 ? -1 : blk.n0;
        }
        implicit_block(s, g, rowoff.data(), pa, sc.xpad.data(), b, y, blk, sc.src, sc.lanes,
                       sc.panels, sc.outbuf);
      }
    sc.trim();
  }
};

}  // namespace

template <typename T>
void conv2d_forward_implicit(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (s.N <= 0 || s.K <= 0 || s.P * s.Q <= 0) return;
  const int nt = num_threads_for(s.N * s.P * s.Q);
  ImplicitForward<T> f;
  if (!f.setup(s, x, w, b, y, nt)) return conv2d_forward_im2col(s, x, w, b, y);
#pragma omp parallel num_threads(nt)
  f.run();
  call_scratch<T>().trim();
}

// dx of a stride-1 convolution is the forward convolution of dy with the flipped, transposed
// filters w'[g*Cg + c, k, r, s] = w[g*Kg + k, c, R-1-r, S-1-s], padded by (R-1)*dh - pad_h on
// top (likewise left) and with dx's size as its output: a gather, no col2im scatter (when
// there are input channels enough for its gemm). dw and db by dw_sample, samples split over
// the threads as in the im2col backward (which takes over when there are too few samples for
// that); dx's blocks follow in the same parallel region.
template <typename T>
void conv2d_backward_implicit(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                              T* db) {
  if (s.stride_h != 1 || s.stride_w != 1 || s.N <= 0)
    return conv2d_backward_im2col(s, dy, x, w, dx, dw, db);
  const int64_t G = s.groups, Cg = s.C / G, Kg = s.K / G, RS = s.R * s.S, PQ = s.P * s.Q;
  const int64_t wsize = s.K * Cg * RS;
  const int nt = num_threads_for(s.N);
  // dx: the flipped convolution, whose gemm has Cg rows; with few, im2col's W^T @ dy (CRS rows)
  // and col2im is the better shape (C1, one input channel: 2.5x faster).
  ImplicitForward<T> dxf;
  CallScratch<T>& sc = call_scratch<T>();
  bool dx_flip = false;
  if (dx && Cg >= 16) {
    T* wf = grow<T>(sc.wf, wsize);
    for (int64_t gi = 0; gi < G; ++gi)
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t u = 0; u < RS; ++u)
            wf[((gi * Cg + c) * Kg + k) * RS + RS - 1 - u] = w[((gi * Kg + k) * Cg + c) * RS + u];
    ConvShape t = s;
    t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C, t.P = s.H, t.Q = s.W;
    t.pad_h = (s.R - 1) * s.dil_h - s.pad_h, t.pad_w = (s.S - 1) * s.dil_w - s.pad_w;
    dx_flip = dxf.setup(t, dy, wf, (const T*)nullptr, dx, nt);
  }
  if (dx && !dx_flip) conv2d_backward_im2col(s, dy, x, w, dx, (T*)nullptr, (T*)nullptr);
  const bool dw_implicit = (dw || db) && PQ > 0 && wsize > 0 && (nt == 1 || split_samples(nt, s.N));
  if ((dw || db) && !dw_implicit) conv2d_backward_im2col(s, dy, x, w, (T*)nullptr, dw, db);
  if (dw_implicit) {
    const Padded g = padded_geom(s);
    const std::vector<int64_t> rowoff = row_offsets(s, g);
    per_thread_sums(nt, s.N, wsize, s.K, dw, db, sc.partials, [&](int64_t n0, int64_t n1, T* dwp, T* dbp) {
      WorkScratch<T>& mine = work_scratch<T>();
      T* xpad = dwp ? grow<T>(mine.xpad, g.sample) : nullptr;
      for (int64_t n = n0; n < n1; ++n) {
        if (dwp) pad_fill(s, g, x + n * s.C * s.H * s.W, xpad);
        dw_sample(s, g, rowoff.data(), xpad, dy, n, dwp, dbp, mine.dw);
      }
      // then dx's blocks, in the same region: a thread done with its dw share starts on them
      // (its padded samples take over mine.xpad)
      if (dx_flip) dxf.run();
      mine.trim();
    });
  } else if (dx_flip) {
#pragma omp parallel num_threads(nt)
    dxf.run();
  }
  sc.trim();
}

// ---- depthwise --------------------------------------------------------------------------------
//
// Each input plane is copied into a zero-padded buffer, deinterleaved by the column stride:
// padded column j = u*sw + phase is stored at buf[i*rowlen + phase*U + u], for padded row i.
// Output (p, q) with tap (r, s) reads padded row p*sh + r*dh, column q*sw + s*dw, i.e. phase
// (s*dw) % sw at u = q + (s*dw) / sw: consecutive q are consecutive in memory for every stride.

namespace {

struct DwGeom {
  int64_t Hp, Wp, U, rowlen, size;
  std::vector<int64_t> off;  // per tap r*S + s: offset from the start of output row's base
};

template <typename T>
DwGeom dw_geom(const ConvShape& s) {
  const int64_t V = simd<T>::width;
  DwGeom g;
  g.Hp = (s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1;
  g.Wp = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1;
  g.U = s.Q + ((s.S - 1) * s.dil_w) / s.stride_w + 2 * V;  // slack: dw_plane_fwd loads 2 vectors past q
  g.rowlen = g.U * s.stride_w;
  g.size = g.Hp * g.rowlen;
  g.off.resize((size_t)(s.R * s.S));
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t c = 0; c < s.S; ++c) {
      const int64_t j = c * s.dil_w;
      g.off[(size_t)(r * s.S + c)] = r * s.dil_h * g.rowlen + (j % s.stride_w) * g.U + j / s.stride_w;
    }
  return g;
}

// The first n (< width) lanes at p, the others zero; and the store of the first n lanes of v.
// One masked instruction where the ISA has one (masked lanes are never touched, so reading or
// writing up to the very end of an array is safe).
#if defined(__AVX2__) && !defined(__AVX512F__)
template <typename T>
inline __m256i lanes_below(int64_t n) {
  if constexpr (sizeof(T) == 4)
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  else
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
#endif
template <typename T>
inline vec<T> vload_n(const T* p, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
  else return (vec<T>)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm256_maskload_ps(p, lanes_below<T>(n));
  else return (vec<T>)_mm256_maskload_pd(p, lanes_below<T>(n));
#else
  vec<T> v = vbroadcast(T(0));
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
#endif
}
template <typename T>
inline void vstore_n(T* p, vec<T> v, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
  else _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) _mm256_maskstore_ps(p, lanes_below<T>(n), (__m256)v);
  else _mm256_maskstore_pd(p, lanes_below<T>(n), (__m256d)v);
#else
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
#endif
}
// dst[0:n] = src[0:n] by vectors, the last one masked: the rows copied here are a few vectors
// long, where a memcpy call costs more than the copy itself.
template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  constexpr int64_t V = simd<T>::width;
  int64_t i = 0;
  for (; i + V <= n; i += V) vstore(dst + i, vload(src + i));
  if (i < n) vstore_n(dst + i, vload_n(src + i, n - i), n - i);
}

// Copy input plane xp (H, W) into the padded, deinterleaved buffer. Which elements it writes
// depends only on the geometry, so buf is zeroed once when allocated and the padding stays 0.
template <typename T>
void dw_fill(const ConvShape& s, const DwGeom& g, const T* xp, T* buf) {
  const int64_t sw = s.stride_w;
  // input column iw sits at padded column j = iw + pad_w, kept only while j < Wp
  const int64_t iw_lo = std::max<int64_t>(0, -s.pad_w);
  const int64_t iw_hi = std::min<int64_t>(s.W, g.Wp - s.pad_w);
  for (int64_t i = 0; i < g.Hp; ++i) {
    const int64_t ih = i - s.pad_h;
    if (ih < 0 || ih >= s.H || iw_lo >= iw_hi) continue;
    const T* src = xp + ih * s.W;
    T* dst = buf + i * g.rowlen;
    if (sw == 1) {
      copy_row(dst + iw_lo + s.pad_w, src + iw_lo, iw_hi - iw_lo);
    } else {
      int64_t ph = (iw_lo + s.pad_w) % sw, u = (iw_lo + s.pad_w) / sw;
      for (int64_t iw = iw_lo; iw < iw_hi; ++iw) {
        dst[ph * g.U + u] = src[iw];
        if (++ph == sw) ph = 0, ++u;
      }
    }
  }
}

// Store the lanes of v that lie before the end of the row, n elements away.
template <typename T>
inline void vstore_row(T* p, vec<T> v, int64_t n) {
  if (n >= simd<T>::width) vstore(p, v);
  else vstore_n(p, v, n);
}

// One output plane: yp[p, q] = bias + sum_t wt[t] * buf[p*sh*rowlen + off[t] + q].
// Two output rows and two vectors per row at a time: four independent FMA chains, since one
// chain of taps per vector is latency-bound on short rows (C4's Q = 28 is 1.75 vectors).
// The loads may run past the row into the buffer's slack; the stores stop at the row's end.
// NT > 0: the tap count known at compile time.
template <typename T, int NT>
void dw_plane_fwd(const ConvShape& s, const DwGeom& g, const T* buf, const T* wt, T bias, T* yp) {
  constexpr int64_t V = simd<T>::width;
  const int64_t ntaps = NT > 0 ? NT : s.R * s.S;
  const int64_t* off = g.off.data();
  const int64_t Q = s.Q, rstep = s.stride_h * g.rowlen;
  for (int64_t p = 0; p < s.P; p += 2) {
    const bool two = p + 1 < s.P;  // a last odd row is computed twice and stored once
    const T* b0 = buf + p * rstep;
    const T* b1 = two ? b0 + rstep : b0;
    T* y0 = yp + p * Q;
    for (int64_t q = 0; q < Q; q += 2 * V) {
      vec<T> a00 = vbroadcast(bias), a01 = a00, a10 = a00, a11 = a00;
      for (int64_t t = 0; t < ntaps; ++t) {
        const vec<T> wv = vbroadcast(wt[t]);
        const int64_t o = off[t] + q;
        a00 += wv * vload(b0 + o);
        a01 += wv * vload(b0 + o + V);
        a10 += wv * vload(b1 + o);
        a11 += wv * vload(b1 + o + V);
      }
      vstore_row(y0 + q, a00, Q - q);
      if (q + V < Q) vstore_row(y0 + q + V, a01, Q - q - V);
      if (two) {
        vstore_row(y0 + Q + q, a10, Q - q);
        if (q + V < Q) vstore_row(y0 + Q + q + V, a11, Q - q - V);
      }
    }
  }
}

template <typename T>
bool is_depthwise(const ConvShape& s) {
  return s.groups == s.C && s.C > 0 && s.K % s.C == 0;
}

}  // namespace

template <typename T>
void conv2d_forward_depthwise(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (!is_depthwise<T>(s)) return conv2d_forward_im2col(s, x, w, b, y);
  const int64_t PQ = s.P * s.Q, m = s.K / s.C, RS = s.R * s.S;
  if (s.N <= 0 || s.K <= 0 || PQ <= 0) return;
  if (RS == 0) return conv2d_forward_im2col(s, x, w, b, y);
  const DwGeom g = dw_geom<T>(s);
  const int64_t planes = s.N * s.C;
  const int nt = num_threads_for(planes);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf((size_t)g.size);
    int64_t b0, e0;
    split(planes, nt, thread_id(), b0, e0);
    for (int64_t i = b0; i < e0; ++i) {
      const int64_t n = i / s.C, c = i % s.C;
      dw_fill(s, g, x + i * s.H * s.W, buf.data());
      for (int64_t j = 0; j < m; ++j) {
        const int64_t k = c * m + j;
        T* yp = y + (n * s.K + k) * PQ;
        const T bias = b ? b[k] : T(0);
        if (RS == 9) dw_plane_fwd<T, 9>(s, g, buf.data(), w + k * RS, bias, yp);
        else dw_plane_fwd<T, 0>(s, g, buf.data(), w + k * RS, bias, yp);
      }
    }
  }
}

namespace {

// One plane of the general backward (strides, multipliers). dyb holds the dy plane in rows Qv
// apart (Q rounded up to the vector width), each zero from Q up to Qv, so every load is a full
// vector and the tail lanes add zero.
//   dw: accw[t] += sum_{p,q} dy[p,q] * buf[p*sh*rowlen + off[t] + q]
//   dx: dbuf[p*sh*rowlen + off[t] + q] += wt[t] * dy[p,q]
//   db: *accb += sum_{p,q} dy[p,q], in the dw pass with a known tap count (accb null: not here)
// Taps are the outer loop, so consecutive read-modify-writes of dbuf never overlap (no
// store-to-load forwarding stalls) and the dw sums live in registers.
template <typename T, int NT>
void dw_plane_bwd(const ConvShape& s, const DwGeom& g, const T* dyb, int64_t Qv, const T* buf,
                  T* dbuf, const T* wt, vec<T>* accw, vec<T>* accb) {
  constexpr int64_t V = simd<T>::width;
  const int64_t ntaps = NT > 0 ? NT : s.R * s.S;
  const int64_t rstep = s.stride_h * g.rowlen;
  if constexpr (NT > 0) {
    // Known tap count: all taps per dy row at once, 2*NT independent sums in registers instead
    // of two FMA chains per tap (the tap-outer loop below is bound by FMA latency).
    if (buf) {
      const int64_t* off = g.off.data();
      vec<T> a[NT][2], b0 = vbroadcast(T(0)), b1 = b0;
      for (int t = 0; t < NT; ++t) a[t][0] = a[t][1] = vbroadcast(T(0));
      for (int64_t p = 0; p < s.P; ++p) {
        const T* src = buf + p * rstep;
        const T* dr = dyb + p * Qv;
        int64_t q = 0;
        for (; q + 2 * V <= Qv; q += 2 * V) {
          const vec<T> d0 = vload(dr + q), d1 = vload(dr + q + V);
          b0 += d0;
          b1 += d1;
#pragma GCC unroll 16
          for (int t = 0; t < NT; ++t) {
            a[t][0] += d0 * vload(src + off[t] + q);
            a[t][1] += d1 * vload(src + off[t] + q + V);
          }
        }
        if (q < Qv) {
          const vec<T> d0 = vload(dr + q);
          b0 += d0;
#pragma GCC unroll 16
          for (int t = 0; t < NT; ++t) a[t][0] += d0 * vload(src + off[t] + q);
        }
      }
      for (int t = 0; t < NT; ++t) accw[t] += a[t][0] + a[t][1];
      if (accb) *accb += b0 + b1;
      buf = nullptr;  // dw done
    }
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    const int64_t o = g.off[(size_t)t];
    if (buf) {
      vec<T> a0 = vbroadcast(T(0)), a1 = a0;
      for (int64_t p = 0; p < s.P; ++p) {
        const T* src = buf + p * rstep + o;
        const T* dr = dyb + p * Qv;
        int64_t q = 0;
        for (; q + 2 * V <= Qv; q += 2 * V) {
          a0 += vload(dr + q) * vload(src + q);
          a1 += vload(dr + q + V) * vload(src + q + V);
        }
        if (q < Qv) a0 += vload(dr + q) * vload(src + q);
      }
      accw[t] += a0 + a1;
    }
    if (dbuf) {
      const T wv = wt[t];
      for (int64_t p = 0; p < s.P; ++p) {
        T* dst = dbuf + p * rstep + o;
        const T* dr = dyb + p * Qv;
        for (int64_t q = 0; q < Qv; q += V) vstore(dst + q, vload(dst + q) + wv * vload(dr + q));
      }
    }
  }
}

// One plane of the stride-1, multiplier-1 backward: dx and dw in one pass over the padded dy
// plane dyb, laid out for the flipped convolution t (whose output plane is dx's, H x W):
//   D_u(ih, iw) = dyb[ih*rowlen + off[u] + iw]    tap u of the flipped filter wf
//   dx[ih, iw]  = sum_u wf[u] * D_u(ih, iw)
//   dw[RS-1-u] += sum_{ih,iw} x[ih, iw] * D_u(ih, iw)    (accw[RS-1-u], vector partial sums)
// Each shifted dy vector is loaded once for both gradients, and x is read in place (no padded
// copy): the lanes of its row tail are masked to zero, so dy's loads past the row add nothing.
// DX: write dx (else dw only). NT > 0: the tap count known at compile time.
template <typename T, int NT, bool DX>
void dw_plane_bwd_gather(const ConvShape& t, const DwGeom& gt, const T* dyb, const T* xp, const T* wf,
                         T* dxp, vec<T>* accw) {
  constexpr int64_t V = simd<T>::width;
  constexpr int64_t NTC = NT > 0 ? NT : 1;
  const int64_t ntaps = NT > 0 ? NT : t.R * t.S, H = t.P, W = t.Q;
  const int64_t* off = gt.off.data();
  // With NT known, the filter and the dw sums live in registers for the whole plane.
  vec<T> wv[NTC], aw[NTC];
  if constexpr (NT > 0)
    for (int u = 0; u < NT; ++u) wv[u] = vbroadcast(wf[u]), aw[u] = accw[NT - 1 - u];
  for (int64_t ih = 0; ih < H; ++ih) {
    const T* drow = dyb + ih * gt.rowlen;
    const T* xr = xp + ih * W;
    for (int64_t q = 0; q < W; q += V) {
      const vec<T> xv = q + V <= W ? vload(xr + q) : vload_n(xr + q, W - q);
      vec<T> a = vbroadcast(T(0));
      if constexpr (NT > 0) {
#pragma GCC unroll 16
        for (int u = 0; u < NT; ++u) {
          const vec<T> d = vload(drow + off[u] + q);
          if constexpr (DX) a += wv[u] * d;
          aw[u] += xv * d;
        }
      } else {
        for (int64_t u = 0; u < ntaps; ++u) {
          const vec<T> d = vload(drow + off[u] + q);
          if constexpr (DX) a += wf[u] * d;
          accw[ntaps - 1 - u] += xv * d;
        }
      }
      if constexpr (DX) vstore_row(dxp + ih * W + q, a, W - q);
    }
  }
  if constexpr (NT > 0)
    for (int u = 0; u < NT; ++u) accw[NT - 1 - u] = aw[u];
}

// A vector in a struct, so that std::vector keeps its alignment attributes.
template <typename T>
struct VBox {
  vec<T> v;
};

template <typename T>
T hsum(vec<T> v) {
  T tmp[simd<T>::width];
  vstore(tmp, v);
  T acc = 0;
  for (int i = 0; i < simd<T>::width; ++i) acc += tmp[i];
  return acc;
}

// dw_plane_bwd_gather for a known (9) or any tap count.
template <typename T, bool DX>
void dw_plane_bwd_gather_any(const ConvShape& t, const DwGeom& gt, const T* dyb, const T* xp, const T* wf,
                             T* dxp, vec<T>* accw) {
  if (t.R * t.S == 9) dw_plane_bwd_gather<T, 9, DX>(t, gt, dyb, xp, wf, dxp, accw);
  else dw_plane_bwd_gather<T, 0, DX>(t, gt, dyb, xp, wf, dxp, accw);
}

}  // namespace

template <typename T>
void conv2d_backward_depthwise(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx,
                               T* dw, T* db) {
  if (!is_depthwise<T>(s)) return conv2d_backward_im2col(s, dy, x, w, dx, dw, db);
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W, RS = s.R * s.S;
  if (s.N <= 0 || s.K <= 0 || PQ <= 0 || RS == 0)
    return conv2d_backward_im2col(s, dy, x, w, dx, dw, db);
  const int64_t m = s.K / s.C;
  const DwGeom g = dw_geom<T>(s);
  // The gather (stride 1, multiplier 1): dx is the forward depthwise convolution of dy with the
  // flipped filters, padded by (R-1)*dh - pad_h on top (likewise left), with dx's size as the
  // output, so each dx element is written once instead of R*S read-modify-writes; and dw reads
  // the same padded dy against x in place (dw_plane_bwd_gather): one padded copy per plane.
  ConvShape t = s;
  t.H = s.P, t.W = s.Q, t.P = s.H, t.Q = s.W;
  t.pad_h = (s.R - 1) * s.dil_h - s.pad_h, t.pad_w = (s.S - 1) * s.dil_w - s.pad_w;
  const bool gather = (dx || dw) && m == 1 && s.stride_h == 1 && s.stride_w == 1 && t.pad_h >= 0 &&
                      t.pad_w >= 0 && HW > 0;
  const DwGeom gt = gather ? dw_geom<T>(t) : DwGeom{};
  // Parallel over channels: each thread owns whole channels, so dw and db need no reduction.
  // Samples are the outer loop: a thread's planes (n, c0..c1) lie next to each other in x, dy
  // and dx, so they stream from memory; channel-outer, each 3 KB plane (C4) sat a whole
  // sample's stride from the last and every plane started the prefetchers cold (2x slower).
  // Each channel's sums still run over n in order: bitwise the same result.
  const int nt = num_threads_for(s.C);
#pragma omp parallel num_threads(nt)
  {
    constexpr int64_t V = simd<T>::width;
    const int64_t Qv = (s.Q + V - 1) / V * V;
    int64_t c0, c1;
    split(s.C, nt, thread_id(), c0, c1);
    std::vector<VBox<T>> accw((size_t)((c1 - c0) * m * RS), VBox<T>{vbroadcast(T(0))});
    std::vector<VBox<T>> accb((size_t)((c1 - c0) * m), VBox<T>{vbroadcast(T(0))});
    if (gather) {  // m == 1: channel c's only output channel is k = c
      std::vector<T> dybuf((size_t)gt.size), wflip((size_t)((c1 - c0) * RS));
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t u = 0; u < RS; ++u) wflip[(size_t)((c - c0) * RS + u)] = w[c * RS + RS - 1 - u];
      for (int64_t n = 0; n < s.N; ++n) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t kl = c - c0;
          dw_fill(t, gt, dy + (n * s.K + c) * PQ, dybuf.data());
          if (db) {  // dy's rows in the padded copy, zero from Q up to Qv
            const T* dyr = dybuf.data() + t.pad_h * gt.rowlen + t.pad_w;
            vec<T> a = accb[(size_t)kl].v;
            for (int64_t p = 0; p < s.P; ++p)
              for (int64_t q = 0; q < Qv; q += V) a += vload(dyr + p * gt.rowlen + q);
            accb[(size_t)kl].v = a;
          }
          const T* xp = x + (n * s.C + c) * HW;
          T* dxp = dx ? dx + (n * s.C + c) * HW : nullptr;
          const T* wf = wflip.data() + kl * RS;
          vec<T>* aw = &accw[(size_t)(kl * RS)].v;
          if (dw && dx) dw_plane_bwd_gather_any<T, true>(t, gt, dybuf.data(), xp, wf, dxp, aw);
          else if (dw) dw_plane_bwd_gather_any<T, false>(t, gt, dybuf.data(), xp, wf, dxp, aw);
          else if (RS == 9) dw_plane_fwd<T, 9>(t, gt, dybuf.data(), wf, T(0), dxp);
          else dw_plane_fwd<T, 0>(t, gt, dybuf.data(), wf, T(0), dxp);
        }
      }
    } else {
      std::vector<T> buf(dw ? (size_t)g.size : 0), dbuf(dx ? (size_t)g.size : 0);
      std::vector<T> dyb((size_t)(s.P * Qv), T(0));  // tails stay zero
      for (int64_t n = 0; n < s.N; ++n) {
        for (int64_t c = c0; c < c1; ++c) {
          if (dw) dw_fill(s, g, x + (n * s.C + c) * HW, buf.data());
          if (dx) std::memset(dbuf.data(), 0, sizeof(T) * g.size);
          for (int64_t j = 0; j < m; ++j) {
            const int64_t k = c * m + j, kl = (c - c0) * m + j;  // kl: k among this thread's channels
            const T* dyp = dy + (n * s.K + k) * PQ;
            for (int64_t p = 0; p < s.P; ++p) copy_row(dyb.data() + p * Qv, dyp + p * s.Q, s.Q);
            const bool db_in_dw = db && dw && RS == 9;  // dw_plane_bwd<T, 9> sums db on the way
            if (db && !db_in_dw) {
              vec<T> a = accb[(size_t)kl].v;
              for (int64_t i = 0; i < s.P * Qv; i += V) a += vload(dyb.data() + i);
              accb[(size_t)kl].v = a;
            }
            if (!dw && !dx) continue;
            T* bp = dw ? buf.data() : nullptr;
            T* dbp = dx ? dbuf.data() : nullptr;
            vec<T>* aw = &accw[(size_t)(kl * RS)].v;
            vec<T>* ab = db_in_dw ? &accb[(size_t)kl].v : nullptr;
            if (RS == 9) dw_plane_bwd<T, 9>(s, g, dyb.data(), Qv, bp, dbp, w + k * RS, aw, ab);
            else dw_plane_bwd<T, 0>(s, g, dyb.data(), Qv, bp, dbp, w + k * RS, aw, nullptr);
          }
          if (dx) {
            T* dxp = dx + (n * s.C + c) * HW;
            const int64_t sw = s.stride_w;
            for (int64_t ih = 0; ih < s.H; ++ih) {
              T* dr = dxp + ih * s.W;
              const int64_t i = ih + s.pad_h;
              if (i >= g.Hp) {
                std::memset(dr, 0, sizeof(T) * s.W);
                continue;
              }
              const T* src = dbuf.data() + i * g.rowlen;
              // input column iw is padded column iw + pad_w, inside the buffer while < Wp
              const int64_t wn = std::max<int64_t>(0, std::min<int64_t>(s.W, g.Wp - s.pad_w));
              if (sw == 1) {
                std::memcpy(dr, src + s.pad_w, sizeof(T) * wn);
              } else {
                int64_t ph = s.pad_w % sw, u = s.pad_w / sw;
                for (int64_t iw = 0; iw < wn; ++iw) {
                  dr[iw] = src[ph * g.U + u];
                  if (++ph == sw) ph = 0, ++u;
                }
              }
              if (wn < s.W) std::memset(dr + wn, 0, sizeof(T) * (s.W - wn));
            }
          }
        }
      }
    }
    for (int64_t kl = 0; kl < (c1 - c0) * m; ++kl) {
      const int64_t k = c0 * m + kl;
      if (dw)
        for (int64_t u = 0; u < RS; ++u) dw[k * RS + u] = hsum<T>(accw[(size_t)(kl * RS + u)].v);
      if (db) db[k] = hsum<T>(accb[(size_t)kl].v);
    }
  }
}

// ---- direct: few input channels --------------------------------------------------------------
//
// groups == 1 with a shallow reduction C*R*S (C1: one channel, 5x5: 25 taps), where GEMM's
// depth is too small to pay for its packing. Output-stationary and vectorized along the output
// row, like depthwise: a sample's C input planes sit in dw_fill's padded, deinterleaved layout,
// so each tap (c, r, s) is one unaligned vector load per output vector, multiplied by the tap's
// weight broadcast for a block of output channels.
// Backward, per sample, from one padded copy of x and one of dy:
//   dw[k, c, r, s] += sum_{p,q} dy[k, p, q] * xbuf_c[p*rstep + off(r, s) + q]  (vector partials)
//   dx = the same output-stationary kernel run on dy, dilated by the stride and padded by
//        (R-1)*dh - ph (left alike), with the filters flipped and transposed (K inputs, C
//        outputs): a gather, so each dx element is written once.

namespace {

// Output channels per register block, and output rows per block when the channels are few.
// AVX-512 has 32 vector registers, AVX2 and SSE 16; two vectors per row.
constexpr int DIRECT_KB = VBYTES == 64 ? 8 : 4;
constexpr int DIRECT_RB1 = 4;  // rows per block of the one-channel kernel (KB = 1)

inline int direct_kb(int64_t cout) { return cout >= DIRECT_KB ? DIRECT_KB : 1; }

// out[k][p, q] = bias[k] + sum_t wp[t*KB + k] * buf[p*rstep + off[t] + q] for the nk (<= KB)
// output planes `ostride` apart (P x Q each). A register block is RB output rows x NV vectors x
// KB channels; the taps are the inner loop, so each output vector is stored once. The loads may
// run into the rows' slack (DwGeom's 2V), the stores stop at the row's end; a last partial block
// of rows recomputes the last row and stores it once.
template <typename T, int KB, int RB, int NV>
void direct_planes(const T* buf, const int64_t* off, int64_t ntaps, const T* wp, const T* bias,
                   int64_t nk, T* out, int64_t ostride, int64_t P, int64_t Q, int64_t rstep) {
  constexpr int64_t V = simd<T>::width;
  for (int64_t p = 0; p < P; p += RB) {
    const T* rows[RB];
    for (int i = 0; i < RB; ++i) rows[i] = buf + std::min<int64_t>(p + i, P - 1) * rstep;
    for (int64_t q = 0; q < Q; q += NV * V) {
      vec<T> acc[RB][KB][NV];
#pragma GCC unroll 8
      for (int k = 0; k < KB; ++k) {
        const vec<T> bv = vbroadcast(bias[k]);
#pragma GCC unroll 4
        for (int i = 0; i < RB; ++i)
#pragma GCC unroll 2
          for (int j = 0; j < NV; ++j) acc[i][k][j] = bv;
      }
      for (int64_t t = 0; t < ntaps; ++t) {
        const int64_t o = off[t] + q;
        vec<T> xv[RB][NV];
#pragma GCC unroll 4
        for (int i = 0; i < RB; ++i)
#pragma GCC unroll 2
          for (int j = 0; j < NV; ++j) xv[i][j] = vload(rows[i] + o + j * V);
        const T* wt = wp + t * KB;
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) {
          const vec<T> wv = vbroadcast(wt[k]);
#pragma GCC unroll 4
          for (int i = 0; i < RB; ++i)
#pragma GCC unroll 2
            for (int j = 0; j < NV; ++j) acc[i][k][j] += wv * xv[i][j];
        }
      }
      for (int k = 0; k < KB && k < nk; ++k)
        for (int i = 0; i < RB && p + i < P; ++i) {
          T* yr = out + k * ostride + (p + i) * Q;
          for (int j = 0; j < NV && q + j * V < Q; ++j) vstore_row(yr + q + j * V, acc[i][k][j], Q - q - j * V);
        }
    }
  }
}

// One output plane when the rows of a register block share their input rows (row stride and
// dilation 1, R known): a block of RB output rows reads RB + R - 1 input rows, and each input
// vector, loaded once per (channel, column tap), serves up to R of the block's rows, with the R
// weights of that column in registers. direct_planes<T, 1, ...> loads one vector per FMA (the
// dx gather of C1, one output channel, was load-bound at 2x the forward's time).
//   out[p, q] = bias + sum_{c, r, s} wt[(c*R + r)*S + s] * buf[c*plane + (p + r)*rstep + coff[s] + q]
// add: start from out's values instead of bias (the caller sums over input channels in turn).
// A last partial block reads up to RB - 1 rows past a plane's last row: the caller leaves them
// readable (direct_plane_slack).
template <typename T, int R, int RB, int NV>
void direct_plane_rows(const T* buf, int64_t cin, int64_t plane, const int64_t* coff, int64_t S,
                       const T* wt, T bias, T* out, int64_t P, int64_t Q, int64_t rstep, bool add) {
  constexpr int64_t V = simd<T>::width;
  for (int64_t p = 0; p < P; p += RB) {
    for (int64_t q = 0; q < Q; q += NV * V) {
      vec<T> acc[RB][NV];
#pragma GCC unroll 16
      for (int i = 0; i < RB; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NV; ++j) {
          const int64_t n = Q - q - j * V;
          const T* yr = out + std::min<int64_t>(p + i, P - 1) * Q + q + j * V;
          acc[i][j] = !add ? vbroadcast(bias) : n >= V ? vload(yr) : n > 0 ? vload_n(yr, n) : vbroadcast(T(0));
        }
      for (int64_t c = 0; c < cin; ++c)
        for (int64_t sx = 0; sx < S; ++sx) {
          vec<T> wv[R];
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) wv[r] = vbroadcast(wt[(c * R + r) * S + sx]);
          const T* row = buf + c * plane + coff[sx] + q + p * rstep;
#pragma GCC unroll 24
          for (int u = 0; u < RB + R - 1; ++u, row += rstep) {  // input row p + u
            vec<T> xv[NV];
#pragma GCC unroll 2
            for (int j = 0; j < NV; ++j) xv[j] = vload(row + j * V);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {  // feeds output row i = u - r
              const int i = u - r;
              if (i < 0 || i >= RB) continue;
#pragma GCC unroll 2
              for (int j = 0; j < NV; ++j) acc[i][j] += wv[r] * xv[j];
            }
          }
        }
      for (int i = 0; i < RB && p + i < P; ++i) {
        T* yr = out + (p + i) * Q;
        for (int j = 0; j < NV && q + j * V < Q; ++j) vstore_row(yr + q + j * V, acc[i][j], Q - q - j * V);
      }
    }
  }
}

// Rows per block of direct_plane_rows: its RB x NV sums, R weights and NV inputs in registers.
// (C1's dx, AVX-512: 8 rows 0.67-0.69 ms, 4 rows 0.70-0.78.)
constexpr int DIRECT_ROWS = VBYTES == 64 ? 8 : 4;
// dy channels per dx pass when dx's output channels are few: their padded planes (~100 KB for
// C1) stay in L2 while every dx row gathers from them. (C1: 8 or 32 planes 0.67-0.69 ms; one
// plane at a time, 0.84-0.95: the sums go through memory too often.)
constexpr int64_t DX_KC = 8;

// Plane stride for direct_plane_rows' inputs: the padded plane and DIRECT_ROWS spare rows.
inline int64_t direct_plane_stride(const DwGeom& g) { return g.size + DIRECT_ROWS * g.rowlen; }

template <typename T, int R>
void direct_plane_rows_nv(const T* buf, int64_t cin, int64_t plane, const int64_t* coff, int64_t S,
                          const T* wt, T bias, T* out, int64_t P, int64_t Q, int64_t rstep, bool add) {
  if (Q <= simd<T>::width)
    direct_plane_rows<T, R, DIRECT_ROWS, 1>(buf, cin, plane, coff, S, wt, bias, out, P, Q, rstep, add);
  else
    direct_plane_rows<T, R, DIRECT_ROWS, 2>(buf, cin, plane, coff, S, wt, bias, out, P, Q, rstep, add);
}

// The input of direct_sample: planes `plane` apart, tap (c, r, s) at off[(c*R + r)*S + s].
// rows: consecutive output rows read consecutive input rows for consecutive r (stride and
// dilation 1 along H), so direct_plane_rows may run.
struct DirectIn {
  const int64_t* off;
  int64_t cin, R, S, plane, rstep;
  bool rows;
};

// cout output planes of one sample, in blocks of kb channels (the weights packed by direct_pack
// for that block size: DIRECT_KB or 1); one vector per row when a row fits in one.
template <typename T>
void direct_sample(const T* buf, const DirectIn& in, const T* wp, const T* bias, int kb, int64_t cout,
                   T* out, int64_t P, int64_t Q) {
  constexpr int64_t V = simd<T>::width;
  const bool one = Q <= V;
  const int64_t ntaps = in.cin * in.R * in.S, rstep = in.rstep;
  const int64_t* off = in.off;
  for (int64_t k0 = 0; k0 < cout; k0 += kb) {
    const T* w = wp + k0 * ntaps;
    T* o = out + k0 * P * Q;
    const int64_t nk = std::min<int64_t>(kb, cout - k0);
    if (kb == 1 && in.rows && (in.R == 3 || in.R == 5 || in.R == 7)) {
      auto run = in.R == 3 ? direct_plane_rows_nv<T, 3> : in.R == 5 ? direct_plane_rows_nv<T, 5>
                                                                    : direct_plane_rows_nv<T, 7>;
      run(buf, in.cin, in.plane, off, in.S, w, bias[k0], o, P, Q, rstep, false);
    } else if (kb == DIRECT_KB) {
      if (one) direct_planes<T, DIRECT_KB, 1, 1>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
      else direct_planes<T, DIRECT_KB, 1, 2>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
    } else if (P < DIRECT_RB1) {  // conv1d (P = 1): a block of rows would recompute the one row
      if (one) direct_planes<T, 1, 1, 1>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
      else direct_planes<T, 1, 1, 2>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
    } else {
      if (one) direct_planes<T, 1, DIRECT_RB1, 1>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
      else direct_planes<T, 1, DIRECT_RB1, 2>(buf, off, ntaps, w, bias + k0, nk, o, P * Q, P, Q, rstep);
    }
  }
}

// wp[(k0 + t)*kb + k - k0]: weight(k, t) for blocks of kb = direct_kb(cout) channels, zero past
// cout; bias likewise (zeros without one). Returned sizes: ceil(cout / kb) * kb * ntaps and
// ceil(cout / kb) * kb.
template <typename T, typename F>
void direct_pack(int64_t cout, int64_t ntaps, F weight, const T* b, std::vector<T>& wp,
                 std::vector<T>& bias) {
  const int64_t kb = direct_kb(cout), kp = (cout + kb - 1) / kb * kb;
  wp.assign((size_t)(kp * ntaps), T(0));
  bias.assign((size_t)kp, T(0));
  for (int64_t k = 0; k < cout; ++k) {
    const int64_t k0 = k / kb * kb;
    for (int64_t t = 0; t < ntaps; ++t) wp[(size_t)((k0 * ntaps) + t * kb + (k - k0))] = weight(k, t);
    if (b) bias[(size_t)k] = b[k];
  }
}

// Tap offsets of the C planes of a padded sample, `plane` elements apart: tap (c, r, s) at
// c*plane + g.off[r*S + s].
inline std::vector<int64_t> direct_offsets(const DwGeom& g, int64_t C, int64_t RS, int64_t plane) {
  std::vector<int64_t> off((size_t)(C * RS));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t) off[(size_t)(c * RS + t)] = c * plane + g.off[(size_t)t];
  return off;
}

}  // namespace

// Threads take contiguous runs of (sample, channel block) items, so a sample's padded copy is
// made once per thread that touches it. Needs groups == 1 (else im2col).
template <typename T>
void conv2d_forward_direct(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  const int64_t PQ = s.P * s.Q, RS = s.R * s.S, CRS = s.C * RS;
  if (s.N <= 0 || s.K <= 0 || PQ <= 0) return;
  if (s.groups != 1 || CRS == 0) return conv2d_forward_im2col(s, x, w, b, y);
  const DwGeom g = dw_geom<T>(s);
  const int64_t plane = direct_plane_stride(g);
  const std::vector<int64_t> off = direct_offsets(g, s.C, RS, plane);
  std::vector<T> wp, bias;
  direct_pack<T>(s.K, CRS, [&](int64_t k, int64_t t) { return w[k * CRS + t]; }, b, wp, bias);
  const DirectIn in{off.data(), s.C, s.R, s.S, plane, s.stride_h * g.rowlen, s.stride_h == 1 && s.dil_h == 1};
  const int64_t kb = direct_kb(s.K), nkb = (s.K + kb - 1) / kb, items = s.N * nkb;
  const int nt = num_threads_for(items);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf((size_t)(s.C * plane), T(0));  // padding written once, stays zero
    int64_t i0, i1, filled = -1;
    split(items, nt, thread_id(), i0, i1);
    // Whole samples at a time (the blocks of one sample in a row), a partial one at either end.
    for (int64_t i = i0; i < i1;) {
      const int64_t n = i / nkb, kb0 = i % nkb, kb1 = std::min(nkb, kb0 + (i1 - i));
      if (n != filled)
        for (int64_t c = 0; c < s.C; ++c) dw_fill(s, g, x + (n * s.C + c) * s.H * s.W, buf.data() + c * plane);
      filled = n;
      const int64_t k0 = kb0 * kb, k1 = std::min(s.K, kb1 * kb);
      direct_sample<T>(buf.data(), in, wp.data() + k0 * CRS, bias.data() + k0, (int)kb, k1 - k0,
                       y + (n * s.K + k0) * PQ, s.P, s.Q);
      i += kb1 - kb0;
    }
  }
}

namespace {

// Register block of the dw sums: KB output channels x TB taps (AVX-512: 20 sums, 4 dy and one
// x vector live; AVX2/SSE: 10).
constexpr int DW_KB = VBYTES == 64 ? 4 : 2;
constexpr int DW_TB = 5;

// acc[k*ld + t] += sum_{p < P, q < Q} dyk[k][p*Q + q] * buf[p*rstep + off[t] + q] for k < DW_KB,
// t < DW_TB. dy is read in place; the last vector of a row is a masked load of dy and of x
// (zero past the row), so the lanes past the row add nothing.
template <typename T>
void direct_dw_tile(const T* const* dyk, int64_t Q, const T* buf, const int64_t* off, int64_t P,
                    int64_t rstep, vec<T>* acc, int64_t ld) {
  constexpr int64_t V = simd<T>::width;
  vec<T> a[DW_KB][DW_TB];
  for (int k = 0; k < DW_KB; ++k)
    for (int t = 0; t < DW_TB; ++t) a[k][t] = vbroadcast(T(0));
  const int64_t qfull = Q / V * V;
  for (int64_t p = 0; p < P; ++p) {
    const T* xr = buf + p * rstep;
    auto step = [&](int64_t q, auto masked) {
      vec<T> d[DW_KB];
#pragma GCC unroll 8
      for (int k = 0; k < DW_KB; ++k) {
        const T* dr = dyk[k] + p * Q + q;
        if constexpr (decltype(masked)::value) d[k] = vload_n(dr, Q - q);
        else d[k] = vload(dr);
      }
#pragma GCC unroll 8
      for (int t = 0; t < DW_TB; ++t) {
        // Masked too: the x lanes past the row may hold an inf that this tap never reads (0 * inf).
        vec<T> xv;
        if constexpr (decltype(masked)::value) xv = vload_n(xr + off[t] + q, Q - q);
        else xv = vload(xr + off[t] + q);
#pragma GCC unroll 8
        for (int k = 0; k < DW_KB; ++k) a[k][t] += d[k] * xv;
      }
    };
    for (int64_t q = 0; q < qfull; q += V) step(q, std::false_type{});
    if (qfull < Q) step(qfull, std::true_type{});
  }
  for (int k = 0; k < DW_KB; ++k)
    for (int t = 0; t < DW_TB; ++t) acc[k * ld + t] += a[k][t];
}

}  // namespace

// Threads split the samples (a fixed, contiguous share each): dx rows have one owner, and dw and
// db are summed per thread, then over the threads in order: bitwise repeatable at a fixed
// thread count. Needs groups == 1 (else im2col).
template <typename T>
void conv2d_backward_direct(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                            T* db) {
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W, RS = s.R * s.S, CRS = s.C * RS;
  if (s.groups != 1 || s.N <= 0 || s.K <= 0 || PQ <= 0 || CRS == 0 || HW <= 0)
    return conv2d_backward_im2col(s, dy, x, w, dx, dw, db);
  constexpr int64_t V = simd<T>::width;
  const int64_t K = s.K, C = s.C;
  // dw: x padded as in the forward; taps and channels rounded up to whole tiles (the extra ones
  // repeat tap 0 / channel 0 into sums that are dropped).
  const DwGeom g = dw_geom<T>(s);
  const int64_t ntp = (CRS + DW_TB - 1) / DW_TB * DW_TB, Kp = (K + DW_KB - 1) / DW_KB * DW_KB;
  std::vector<int64_t> xoff = direct_offsets(g, C, RS, g.size);
  xoff.resize((size_t)ntp, xoff[0]);
  // dx: the flipped convolution t of dy dilated by the stride, stride 1, output H x W.
  ConvShape t = s;
  t.stride_h = t.stride_w = 1;
  t.P = s.H, t.Q = s.W;
  const int64_t tph = (s.R - 1) * s.dil_h - s.pad_h, tpw = (s.S - 1) * s.dil_w - s.pad_w;
  const DwGeom gt = dw_geom<T>(t);
  const int64_t tplane = direct_plane_stride(gt);
  const std::vector<int64_t> doff = direct_offsets(gt, K, RS, tplane);
  const DirectIn din{doff.data(), K, s.R, s.S, tplane, gt.rowlen, s.dil_h == 1};
  std::vector<T> wf, zero;
  if (dx)
    direct_pack<T>(C, K * RS, [&](int64_t c, int64_t u) {
      const int64_t k = u / RS, r = u % RS;
      return w[(k * C + c) * RS + RS - 1 - r];
    }, (const T*)nullptr, wf, zero);
  // With one output channel per block and rows shared (C1), dx runs dy's channels in the outer
  // loop, each through one padded plane that stays in L1 while all dx rows gather from it (the
  // sums in dx itself); otherwise direct_sample reads all K padded planes of the sample.
  const bool dx_rows = dx && direct_kb(C) == 1 && din.rows && (s.R == 3 || s.R == 5 || s.R == 7);
  auto rows_run = s.R == 3 ? direct_plane_rows_nv<T, 3> : s.R == 5 ? direct_plane_rows_nv<T, 5>
                                                                   : direct_plane_rows_nv<T, 7>;
  const int nt = num_threads_for(s.N);
  const int64_t nsum = K * CRS + K;  // one thread's dw and db partial sums
  std::vector<T> part((size_t)(nt * nsum), T(0));
#pragma omp parallel num_threads(nt)
  {
    const int th = thread_id();
    int64_t n0, n1;
    split(s.N, nt, th, n0, n1);
    std::vector<T> xbuf(dw ? (size_t)(C * g.size) : 0, T(0));
    std::vector<T> dybuf(dx ? (size_t)((dx_rows ? std::min<int64_t>(K, DX_KC) : K) * tplane) : 0, T(0));  // padding stays 0
    std::vector<VBox<T>> accw(dw ? (size_t)(Kp * ntp) : 0, VBox<T>{vbroadcast(T(0))});
    std::vector<VBox<T>> accb(db ? (size_t)K : 0, VBox<T>{vbroadcast(T(0))});
    // dy[k, p, q] at padded (p*sh + tph, q*sw + tpw) of plane `dst`; what falls outside is never read.
    const int64_t qlo = tpw >= 0 ? 0 : (-tpw + s.stride_w - 1) / s.stride_w;
    const int64_t qhi = std::min<int64_t>(s.Q, (gt.Wp - 1 - tpw) / s.stride_w + 1);
    auto fill_dy = [&](const T* src, T* dst) {
      for (int64_t p = 0; p < s.P && qlo < qhi; ++p) {
        const int64_t i = p * s.stride_h + tph;
        if (i < 0 || i >= gt.Hp) continue;
        T* row = dst + i * gt.rowlen;
        const T* sr = src + p * s.Q;
        if (s.stride_w == 1) copy_row(row + qlo + tpw, sr + qlo, qhi - qlo);
        else
          for (int64_t q = qlo; q < qhi; ++q) row[q * s.stride_w + tpw] = sr[q];
      }
    };
    for (int64_t n = n0; n < n1; ++n) {
      const T* dyn = dy + n * K * PQ;
      if (db)
        for (int64_t k = 0; k < K; ++k) {
          const T* d = dyn + k * PQ;
          vec<T> a = accb[(size_t)k].v;
          int64_t i = 0;
          for (; i + V <= PQ; i += V) a += vload(d + i);
          if (i < PQ) a += vload_n(d + i, PQ - i);
          accb[(size_t)k].v = a;
        }
      if (dw) {
        for (int64_t c = 0; c < C; ++c) dw_fill(s, g, x + (n * C + c) * HW, xbuf.data() + c * g.size);
        for (int64_t k0 = 0; k0 < Kp; k0 += DW_KB) {
          const T* dyk[DW_KB];  // channels past K repeat channel 0 into sums that are dropped
          for (int k = 0; k < DW_KB; ++k) dyk[k] = dyn + (k0 + k < K ? k0 + k : 0) * PQ;
          for (int64_t t0 = 0; t0 < ntp; t0 += DW_TB)
            direct_dw_tile<T>(dyk, s.Q, xbuf.data(), xoff.data() + t0, s.P, s.stride_h * g.rowlen,
                              &accw[(size_t)(k0 * ntp + t0)].v, ntp);
        }
      }
      if (dx_rows) {
        for (int64_t k0 = 0; k0 < K; k0 += DX_KC) {
          const int64_t kc = std::min<int64_t>(DX_KC, K - k0);
          for (int64_t k = 0; k < kc; ++k) fill_dy(dyn + (k0 + k) * PQ, dybuf.data() + k * tplane);
          for (int64_t c = 0; c < C; ++c)
            rows_run(dybuf.data(), kc, tplane, doff.data(), s.S, wf.data() + (c * K + k0) * RS, T(0),
                     dx + (n * C + c) * HW, s.H, s.W, gt.rowlen, k0 > 0);
        }
      } else if (dx) {
        for (int64_t k = 0; k < K; ++k) fill_dy(dyn + k * PQ, dybuf.data() + k * tplane);
        direct_sample<T>(dybuf.data(), din, wf.data(), zero.data(), direct_kb(C), C, dx + n * C * HW, s.H, s.W);
      }
    }
    T* mine = part.data() + th * nsum;
    if (dw)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t u = 0; u < CRS; ++u) mine[k * CRS + u] = hsum<T>(accw[(size_t)(k * ntp + u)].v);
    if (db)
      for (int64_t k = 0; k < K; ++k) mine[K * CRS + k] = hsum<T>(accb[(size_t)k].v);
  }
  // Thread partials summed in thread order.
  if (dw)
    for (int64_t i = 0; i < K * CRS; ++i) {
      T a = 0;
      for (int th = 0; th < nt; ++th) a += part[(size_t)(th * nsum + i)];
      dw[i] = a;
    }
  if (db)
    for (int64_t k = 0; k < K; ++k) {
      T a = 0;
      for (int th = 0; th < nt; ++th) a += part[(size_t)(th * nsum + K * CRS + k)];
      db[k] = a;
    }
}

#define DLK_CONV_INSTANTIATE(T)                                                                   \
  template void conv2d_forward_im2col<T>(const ConvShape&, const T*, const T*, const T*, T*);     \
  template void conv2d_backward_im2col<T>(const ConvShape&, const T*, const T*, const T*, T*, T*, \
                                          T*);                                                    \
  template void conv2d_forward_implicit<T>(const ConvShape&, const T*, const T*, const T*, T*);   \
  template void conv2d_backward_implicit<T>(const ConvShape&, const T*, const T*, const T*, T*,   \
                                            T*, T*);                                              \
  template void conv2d_forward_depthwise<T>(const ConvShape&, const T*, const T*, const T*, T*);  \
  template void conv2d_backward_depthwise<T>(const ConvShape&, const T*, const T*, const T*, T*,  \
                                             T*, T*);                                             \
  template void conv2d_forward_direct<T>(const ConvShape&, const T*, const T*, const T*, T*);     \
  template void conv2d_backward_direct<T>(const ConvShape&, const T*, const T*, const T*, T*, T*, \
                                          T*);
DLK_CONV_INSTANTIATE(float)
DLK_CONV_INSTANTIATE(double)

}  // namespace DLK_ISA
}  // namespace dlk
