// graph.cpp: sparse aggregation over a CSR graph (rows = targets), forward and backward.
//
// Primitives (python/dlkernels/ops/graph/common.py says what each computes):
//   graph_segment_sum      out[r] = scale[r] * sum_{k in row r} w[perm[k]] * x[col[k]]   (per head)
//   graph_segment_maxmin   out[r] = max/min_{k in row r} w[perm[k]] * x[col[k]]; empty row -> 0
//   graph_edge_dot         out[perm[k]] = scale[r] * <a[col[k]], b[r]>                   (per head)
//   graph_maxmin_backward  ties counted over the CSR, then dx and dw over the transpose
//   graph_softmax_forward / graph_softmax_backward   per row over its edges
//   graph_group_by         the counting sort that builds a CSR (stable, O(V + E))
//
// Threads: rows are split into contiguous ranges of about equal (edges + rows), several per
// thread, handed out dynamically (for_rows), so a few hub rows on a power-law graph and a
// preempted thread on a loaded machine do not stall the others. Each output element is
// computed by one thread, its edges taken in CSR order; except that the hub rows of a sum or a
// max/min (more than HUB_EDGES edges) are cut into fixed HUB_EDGES-edge pieces, reduced in
// parallel and merged in piece order, so one node with most of the edges does not serialize. No atomics,
// and the pieces do not depend on the thread count: bitwise repeatable at any thread count.
// Vectorization: along the features, vec<T> in blocks of 8/4/2/1 registers held across the
// row's edges, then a scalar tail for F % width. All offsets are int64.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "dlk.h"
#include "kernels.h"

namespace dlk {
namespace DLK_ISA {
namespace {

// First row r in [0, n] with indptr[r] - indptr[0] + r >= target (the cost is monotone in r).
inline int64_t first_row_at(int64_t n, const int64_t* indptr, int64_t target) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (indptr[mid] - indptr[0] + mid < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Runs body(r0, r1) over consecutive ranges of rows of about equal cost (edges + rows, found
// by binary search on indptr, so a few hub rows on a power-law graph do not stall one thread),
// several per thread, handed out dynamically: a thread the OS preempts (a loaded machine) just
// takes fewer ranges. Each row is in one range, so the result does not depend on who runs it.
// `cost` is the work per edge-or-row (in elements), to keep small problems on one thread.
template <typename Body>
void for_rows(int64_t n, const int64_t* indptr, int64_t cost, Body&& body) {
  const int64_t total = indptr[n] - indptr[0] + n;
  const bool par = total * cost > (1 << 15) && !in_parallel() && max_threads() > 1;
  if (!par) {
    if (n > 0) body(0, n);
    return;
  }
  // ranges of at least ~64K elements of work, at most 16 per thread
  const int64_t nt = max_threads();
  int64_t nc = total * cost / (1 << 16);
  nc = nc < nt ? nt : (nc > 16 * nt ? 16 * nt : nc);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t r0 = c == 0 ? 0 : first_row_at(n, indptr, (int64_t)((double)total * c / nc));
    const int64_t r1 = c + 1 == nc ? n : first_row_at(n, indptr, (int64_t)((double)total * (c + 1) / nc));
    if (r0 < r1) body(r0, r1);
  }
}

inline int64_t edge_id(const int64_t* perm, int64_t k) { return perm ? perm[k] : k; }

// A tiled CSR (graph_segment_sum / graph_segment_maxmin with passes > 1). Its edges are grouped
// first by the range of sources they read, then by target, so pass p is itself a CSR over all R
// rows, at indptr + p * R, whose gathers stay inside one range of x that fits the last-level
// cache (Csr.tiled in ops/graph/structure.py builds it). A pass adds its edges to what the
// earlier passes left in out: per row, `first` says no earlier pass had edges (start afresh)
// and `last` that no later pass has any (finish: apply the scale). With passes = 1 both hold.
struct Tiles {
  const int64_t* indptr;
  int64_t R, passes;
  bool any(int64_t p, int64_t r) const { return indptr[p * R + r + 1] > indptr[p * R + r]; }
  bool first(int64_t p, int64_t r) const {
    for (int64_t q = 0; q < p; ++q)
      if (any(q, r)) return false;
    return true;
  }
  bool last(int64_t p, int64_t r) const {
    for (int64_t q = p + 1; q < passes; ++q)
      if (any(q, r)) return false;
    return true;
  }
  // pass p has nothing to do for row r: no edges, unless the row has none at all (pass 0 writes its 0)
  bool skip(int64_t p, int64_t r) const { return !any(p, r) && (p > 0 || !last(0, r)); }
};

// Software prefetch of the gathered rows. The rows x[col[k]] are scattered, and on sparse
// graphs most CSR rows have only a few edges, so the prefetch runs `dist` edges ahead along
// the CSR positions, across row boundaries (col is one array), up to the end of this thread's
// range `kend`. dist keeps about PREFETCH_BYTES of rows in flight (enough to cover a DRAM miss).
constexpr int64_t PREFETCH_BYTES = 4096;
inline int64_t prefetch_distance(int64_t row_bytes) {
  const int64_t d = PREFETCH_BYTES / (row_bytes > 0 ? row_bytes : 1);
  return d < 4 ? 4 : (d > 32 ? 32 : d);
}
template <int64_t BYTES>
inline void prefetch_lines(const void* p) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < BYTES; b += 64) __builtin_prefetch(c + b);
}
inline void prefetch_n(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

// ---- segment sum ------------------------------------------------------------------------

// o[0 : NV*W] = scale * ((o if acc_in) + sum_{k0 <= k < k1} w_k * x[col[k]*ldx + 0 : NV*W]); x, o and w
// are already offset to this head and feature block (w: stride H per edge).
// Prefetch: edge k + pd's row, this block's features while it is in this row, else the
// features the next rows start with (x0 + col * ldx: head 0, feature 0), for NV*W elements.
template <typename T, typename I, bool WEIGHTED, int NV>
inline void sum_block(int64_t k0, int64_t k1, const I* col, const int64_t* perm, const T* w, int64_t H,
                      const T* x, int64_t ldx, T scale, bool acc_in, T* o, const T* x0, int64_t pd,
                      int64_t kend) {
  constexpr int W = simd<T>::width;
  constexpr int64_t BYTES = (int64_t)NV * W * sizeof(T);
  vec<T> acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = acc_in ? vload<T>(o + j * W) : vec<T>{};
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t kp = k + pd;
    if (kp < kend) prefetch_lines<BYTES>((kp < k1 ? x : x0) + (int64_t)col[kp] * ldx);
    const T* xr = x + (int64_t)col[k] * ldx;
    if constexpr (WEIGHTED) {
      const vec<T> wk = vbroadcast<T>(w[edge_id(perm, k) * H]);
      for (int j = 0; j < NV; ++j) acc[j] += vload<T>(xr + j * W) * wk;
    } else {
      for (int j = 0; j < NV; ++j) acc[j] += vload<T>(xr + j * W);
    }
  }
  for (int j = 0; j < NV; ++j) vstore<T>(o + j * W, acc[j] * scale);
}

// The last n < W features: scalar accumulators, same order of edges.
template <typename T, typename I, bool WEIGHTED>
inline void sum_tail(int64_t k0, int64_t k1, const I* col, const int64_t* perm, const T* w, int64_t H,
                     const T* x, int64_t ldx, T scale, bool acc_in, T* o, int64_t n) {
  constexpr int W = simd<T>::width;
  T acc[W] = {};
  for (int64_t i = 0; i < n && acc_in; ++i) acc[i] = o[i];
  for (int64_t k = k0; k < k1; ++k) {
    const T* xr = x + (int64_t)col[k] * ldx;
    const T wk = WEIGHTED ? w[edge_id(perm, k) * H] : T(1);
    for (int64_t i = 0; i < n; ++i) acc[i] += WEIGHTED ? xr[i] * wk : xr[i];
  }
  for (int64_t i = 0; i < n; ++i) o[i] = acc[i] * scale;
}

// A row with more edges than this (a hub) is reduced in pieces of HUB_EDGES edges, in
// parallel, into partials that are then merged in piece order (reduce_hubs): the pieces and
// the order do not depend on the thread count, so the result stays bitwise repeatable.
constexpr int64_t HUB_EDGES = 8192;

// The hub rows of a CSR with R rows: piece(k0, k1, part) reduces the edges [k0, k1) of one
// piece into its partial part[0 : HF]; then merge(r, c0, c1, parts, n) folds hub r's n
// partials (parts[i * HF + c], in piece order) into out[r * HF + c] for c in [c0, c1). Pieces,
// then column blocks of the merge, are shared among the threads dynamically.
template <typename T, typename Piece, typename Merge>
void reduce_hubs(int64_t R, const int64_t* indptr, int64_t HF, Piece&& piece, Merge&& merge) {
  std::vector<int64_t> hubs, first;  // hub rows; first[i] = the first piece of hub i
  std::vector<int64_t> piece_k0;     // each piece's first edge (its last: the next piece's, or the row's end)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t k0 = indptr[r], k1 = indptr[r + 1];
    if (k1 - k0 <= HUB_EDGES) continue;
    hubs.push_back(r);
    first.push_back((int64_t)piece_k0.size());
    for (int64_t k = k0; k < k1; k += HUB_EDGES) piece_k0.push_back(k);
  }
  if (hubs.empty()) return;
  first.push_back((int64_t)piece_k0.size());
  const int64_t n_hubs = (int64_t)hubs.size(), n_pieces = (int64_t)piece_k0.size();
  std::unique_ptr<T[]> part(new T[(size_t)(n_pieces * HF)]);
  T* pt = part.get();
  const bool par = !in_parallel() && max_threads() > 1;
#pragma omp parallel if (par)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < n_pieces; ++p) {
      // the piece's hub: the last i with first[i] <= p
      const int64_t i = (int64_t)(std::upper_bound(first.begin(), first.end(), p) - first.begin()) - 1;
      const int64_t k0 = piece_k0[(size_t)p];
      piece(k0, std::min(k0 + HUB_EDGES, indptr[hubs[(size_t)i] + 1]), pt + p * HF);
    }
    constexpr int64_t CB = 256;
    const int64_t nb = (HF + CB - 1) / CB;
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < n_hubs * nb; ++j) {
      const int64_t i = j / nb, c0 = (j % nb) * CB;
      merge(hubs[(size_t)i], c0, std::min(c0 + CB, HF), pt + first[(size_t)i] * HF,
            first[(size_t)i + 1] - first[(size_t)i]);
    }
  }
}

inline int64_t row_prefetch_distance(int64_t F, int64_t W, int64_t size) {
  return prefetch_distance((F < 8 * W ? F : 8 * W) * size);
}

// o[0 : H*F] = s * ((o if acc_in) + sum over edges [k0, k1)) (one row, or one piece of a hub row);
// kend: how far the prefetch may run past k1 (the end of this thread's range; k1 for a piece).
template <typename T, typename I, bool WEIGHTED>
inline void sum_row(int64_t k0, int64_t k1, const I* col, const int64_t* perm, const T* w, int64_t H, int64_t F,
                    const T* x, T s, bool acc_in, T* out_row, int64_t pd, int64_t kend) {
  constexpr int W = simd<T>::width;
  const int64_t ldx = H * F;
  {
    for (int64_t h = 0; h < H; ++h) {
      const T* xh = x + h * F;
      const T* wh = WEIGHTED ? w + h : nullptr;
      T* o = out_row + h * F;
      // prefetch past this row only from its last vector block of the last head (the next
      // row starts at head 0, feature 0); the other blocks prefetch within the row
      const auto ke = [&](int64_t f_next) { return h + 1 == H && f_next + W > F ? kend : k1; };
      int64_t f = 0;
      for (; f + 8 * W <= F; f += 8 * W) sum_block<T, I, WEIGHTED, 8>(k0, k1, col, perm, wh, H, xh + f, ldx, s, acc_in, o + f, x, pd, ke(f + 8 * W));
      if (f + 4 * W <= F) { sum_block<T, I, WEIGHTED, 4>(k0, k1, col, perm, wh, H, xh + f, ldx, s, acc_in, o + f, x, pd, ke(f + 4 * W)); f += 4 * W; }
      if (f + 2 * W <= F) { sum_block<T, I, WEIGHTED, 2>(k0, k1, col, perm, wh, H, xh + f, ldx, s, acc_in, o + f, x, pd, ke(f + 2 * W)); f += 2 * W; }
      if (f + W <= F) { sum_block<T, I, WEIGHTED, 1>(k0, k1, col, perm, wh, H, xh + f, ldx, s, acc_in, o + f, x, pd, ke(f + W)); f += W; }
      if (f < F) sum_tail<T, I, WEIGHTED>(k0, k1, col, perm, wh, H, xh + f, ldx, s, acc_in, o + f, F - f);
    }
  }
}

// Rows [r0, r1) of pass p (indptr: that pass's CSR), hub rows left out (their pieces are summed apart).
template <typename T, typename I, bool WEIGHTED>
void segment_sum_rows(int64_t r0, int64_t r1, const int64_t* indptr, const Tiles& t, int64_t p, const I* col,
                      const int64_t* perm, const T* w, int64_t H, int64_t F, const T* x, const T* scale, T* out) {
  const int64_t kend = indptr[r1];
  const int64_t pd = row_prefetch_distance(F, simd<T>::width, sizeof(T));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k0 = indptr[r], k1 = indptr[r + 1];
    if (k1 - k0 > HUB_EDGES || t.skip(p, r)) continue;
    const T s = scale && t.last(p, r) ? scale[r] : T(1);
    sum_row<T, I, WEIGHTED>(k0, k1, col, perm, w, H, F, x, s, !t.first(p, r), out + r * H * F, pd, kend);
  }
}

// ---- segment max / min ------------------------------------------------------------------

// NaN propagates (as torch's amax/amin): a NaN message replaces the accumulator and stays.
template <typename V>
inline V pick(V acc, V v, bool is_max) {
  return is_max ? ((v > acc) | (v != v) ? v : acc) : ((v < acc) | (v != v) ? v : acc);
}
template <typename T>
inline T pick1(T acc, T v, bool is_max) {
  return (is_max ? v > acc : v < acc) || v != v ? v : acc;
}

// o[0 : NV*W] = max/min over the edges [k0, k1) (k0 < k1), and over o itself if acc_in.
template <typename T, typename I, bool WEIGHTED, int NV>
inline void maxmin_block(int64_t k0, int64_t k1, const I* col, const int64_t* perm, const T* w, const T* x,
                         int64_t ldx, bool is_max, bool acc_in, T* o, const T* x0, int64_t pd, int64_t kend) {
  constexpr int W = simd<T>::width;
  constexpr int64_t BYTES = (int64_t)NV * W * sizeof(T);
  if (k0 + pd < kend) prefetch_lines<BYTES>((k0 + pd < k1 ? x : x0) + (int64_t)col[k0 + pd] * ldx);
  vec<T> acc[NV];
  {
    const T* xr = x + (int64_t)col[k0] * ldx;
    const T wk = WEIGHTED ? w[edge_id(perm, k0)] : T(1);
    for (int j = 0; j < NV; ++j) acc[j] = WEIGHTED ? vload<T>(xr + j * W) * wk : vload<T>(xr + j * W);
  }
  for (int64_t k = k0 + 1; k < k1; ++k) {
    const int64_t kp = k + pd;
    if (kp < kend) prefetch_lines<BYTES>((kp < k1 ? x : x0) + (int64_t)col[kp] * ldx);
    const T* xr = x + (int64_t)col[k] * ldx;
    if constexpr (WEIGHTED) {
      const vec<T> wk = vbroadcast<T>(w[edge_id(perm, k)]);
      for (int j = 0; j < NV; ++j) acc[j] = pick(acc[j], vload<T>(xr + j * W) * wk, is_max);
    } else {
      for (int j = 0; j < NV; ++j) acc[j] = pick(acc[j], vload<T>(xr + j * W), is_max);
    }
  }
  for (int j = 0; j < NV; ++j) vstore<T>(o + j * W, acc_in ? pick(vload<T>(o + j * W), acc[j], is_max) : acc[j]);
}

// o[0 : F] = max/min over the edges [k0, k1) (k0 < k1: one row, or one piece of a hub row), and
// over o itself if acc_in (the earlier passes' extrema: as if their edges came first).
template <typename T, typename I, bool WEIGHTED>
void maxmin_row(int64_t k0, int64_t k1, const I* col, const int64_t* perm, const T* w, int64_t F, const T* x,
                bool is_max, bool acc_in, T* o, int64_t pd, int64_t kend) {
  constexpr int W = simd<T>::width;
  const auto ke = [&](int64_t f_next) { return f_next + W > F ? kend : k1; };  // as sum_row
  int64_t f = 0;
  for (; f + 8 * W <= F; f += 8 * W) maxmin_block<T, I, WEIGHTED, 8>(k0, k1, col, perm, w, x + f, F, is_max, acc_in, o + f, x, pd, ke(f + 8 * W));
  if (f + 4 * W <= F) { maxmin_block<T, I, WEIGHTED, 4>(k0, k1, col, perm, w, x + f, F, is_max, acc_in, o + f, x, pd, ke(f + 4 * W)); f += 4 * W; }
  if (f + 2 * W <= F) { maxmin_block<T, I, WEIGHTED, 2>(k0, k1, col, perm, w, x + f, F, is_max, acc_in, o + f, x, pd, ke(f + 2 * W)); f += 2 * W; }
  if (f + W <= F) { maxmin_block<T, I, WEIGHTED, 1>(k0, k1, col, perm, w, x + f, F, is_max, acc_in, o + f, x, pd, ke(f + W)); f += W; }
  for (; f < F; ++f) {
    T acc = T(0);
    for (int64_t k = k0; k < k1; ++k) {
      const T wk = WEIGHTED ? w[edge_id(perm, k)] : T(1);
      const T v = WEIGHTED ? x[(int64_t)col[k] * F + f] * wk : x[(int64_t)col[k] * F + f];
      acc = k == k0 ? v : pick1(acc, v, is_max);
    }
    o[f] = acc_in ? pick1(o[f], acc, is_max) : acc;
  }
}

// Rows [r0, r1) of pass p (indptr: that pass's CSR), hub rows left out (their pieces are reduced
// apart); a row without edges gives 0.
template <typename T, typename I, bool WEIGHTED>
void segment_maxmin_rows(int64_t r0, int64_t r1, const int64_t* indptr, const Tiles& t, int64_t p, const I* col,
                         const int64_t* perm, const T* w, int64_t F, const T* x, bool is_max, T* out) {
  const int64_t kend = indptr[r1];
  const int64_t pd = row_prefetch_distance(F, simd<T>::width, sizeof(T));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t k0 = indptr[r], k1 = indptr[r + 1];
    if (k1 - k0 > HUB_EDGES || t.skip(p, r)) continue;
    T* o = out + r * F;
    if (k0 == k1) {
      for (int64_t f = 0; f < F; ++f) o[f] = T(0);
      continue;
    }
    maxmin_row<T, I, WEIGHTED>(k0, k1, col, perm, w, F, x, is_max, !t.first(p, r), o, pd, kend);
  }
}

// <a[0:F], b[0:F]>: two vector accumulators, then the lanes and the tail in a fixed order.
template <typename T>
inline T dot(const T* a, const T* b, int64_t F) {
  constexpr int W = simd<T>::width;
  vec<T> s0 = vec<T>{}, s1 = vec<T>{};
  int64_t f = 0;
  for (; f + 2 * W <= F; f += 2 * W) {
    s0 += vload<T>(a + f) * vload<T>(b + f);
    s1 += vload<T>(a + f + W) * vload<T>(b + f + W);
  }
  if (f + W <= F) { s0 += vload<T>(a + f) * vload<T>(b + f); f += W; }
  s0 += s1;
  T s = T(0);
  for (int i = 0; i < W; ++i) s += s0[i];
  for (; f < F; ++f) s += a[f] * b[f];
  return s;
}

}  // namespace

template <typename T, typename I>
void graph_segment_sum(int64_t R, const int64_t* indptr, int64_t passes, const I* col, const int64_t* perm,
                       const T* w, int64_t H, int64_t F, const T* x, const T* scale, T* out) {
  const Tiles t{indptr, R, passes};
  const int64_t HF = H * F, pd = row_prefetch_distance(F, simd<T>::width, sizeof(T));
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t* ip = indptr + pass * R;
    for_rows(R, ip, H * F + 1, [&](int64_t r0, int64_t r1) {
      if (w) segment_sum_rows<T, I, true>(r0, r1, ip, t, pass, col, perm, w, H, F, x, scale, out);
      else segment_sum_rows<T, I, false>(r0, r1, ip, t, pass, col, perm, w, H, F, x, scale, out);
    });
    // hub rows: their pieces' partial sums, added in piece order, then scaled
    reduce_hubs<T>(
        R, ip, HF,
        [&](int64_t k0, int64_t k1, T* part) {
          if (w) sum_row<T, I, true>(k0, k1, col, perm, w, H, F, x, T(1), false, part, pd, k1);
          else sum_row<T, I, false>(k0, k1, col, perm, w, H, F, x, T(1), false, part, pd, k1);
        },
        [&](int64_t r, int64_t c0, int64_t c1, const T* parts, int64_t n) {
          const T s = scale && t.last(pass, r) ? scale[r] : T(1);
          const bool acc_in = !t.first(pass, r);
          T* o = out + r * HF;
          for (int64_t c = c0; c < c1; ++c) o[c] = acc_in ? o[c] + parts[c] : parts[c];
          for (int64_t p = 1; p < n; ++p)
            for (int64_t c = c0; c < c1; ++c) o[c] += parts[p * HF + c];
          for (int64_t c = c0; c < c1; ++c) o[c] *= s;
        });
  }
}

template <typename T, typename I>
void graph_segment_maxmin(int64_t R, const int64_t* indptr, int64_t passes, const I* col, const int64_t* perm,
                          const T* w, int64_t F, const T* x, bool is_max, T* out) {
  const Tiles t{indptr, R, passes};
  const int64_t pd = row_prefetch_distance(F, simd<T>::width, sizeof(T));
  for (int64_t pass = 0; pass < passes; ++pass) {
    const int64_t* ip = indptr + pass * R;
    for_rows(R, ip, F + 1, [&](int64_t r0, int64_t r1) {
      if (w) segment_maxmin_rows<T, I, true>(r0, r1, ip, t, pass, col, perm, w, F, x, is_max, out);
      else segment_maxmin_rows<T, I, false>(r0, r1, ip, t, pass, col, perm, w, F, x, is_max, out);
    });
    // hub rows: their pieces' partial extrema, merged in piece order (exact, as one pass would be)
    reduce_hubs<T>(
        R, ip, F,
        [&](int64_t k0, int64_t k1, T* part) {
          if (w) maxmin_row<T, I, true>(k0, k1, col, perm, w, F, x, is_max, false, part, pd, k1);
          else maxmin_row<T, I, false>(k0, k1, col, perm, w, F, x, is_max, false, part, pd, k1);
        },
        [&](int64_t r, int64_t c0, int64_t c1, const T* parts, int64_t n) {
          const bool acc_in = !t.first(pass, r);
          T* o = out + r * F;
          for (int64_t c = c0; c < c1; ++c) o[c] = acc_in ? pick1(o[c], parts[c], is_max) : parts[c];
          for (int64_t p = 1; p < n; ++p)
            for (int64_t c = c0; c < c1; ++c) o[c] = pick1(o[c], parts[p * F + c], is_max);
        });
  }
}

template <typename T, typename I>
void graph_edge_dot(int64_t R, const int64_t* indptr, const I* col, const int64_t* perm, int64_t H, int64_t F,
                    const T* a, const T* b, const T* scale, T* out) {
  for_rows(R, indptr, H * F + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T s = scale ? scale[r] : T(1);
      for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) {
        const int64_t e = edge_id(perm, k);
        const T* ar = a + (int64_t)col[k] * H * F;
        for (int64_t h = 0; h < H; ++h) out[e * H + h] = dot<T>(ar + h * F, b + (r * H + h) * F, F) * s;
      }
    }
  });
}

// Max/min backward. Pass 1 (CSR by target, per target v): share[v, f] = g[v, f] / #ties, where
// the ties are the messages w[e] * x[u, f] equal to out[v, f] (0 where there are none). Pass 2
// (transpose, per source u): dx[u, f] = sum_{e: u -> v} [tie] * share[v, f] * w[e], and
// dw[e] = sum_f [tie] * share[v, f] * x[u, f]. The message is recomputed exactly as the forward
// computed it (one product), so the comparison finds the same ties.
template <typename T, typename I>
void graph_maxmin_backward(int64_t R, const int64_t* indptr, const I* col, const int64_t* perm, int64_t N,
                           const int64_t* t_indptr, const I* t_col, const int64_t* t_perm, const T* w, int64_t F,
                           const T* x, const T* out, const T* g, T* dx, T* dw) {
  std::unique_ptr<T[]> share(new T[(size_t)(R * F)]);  // every element written by pass 1
  T* sh = share.get();
  const int64_t row_bytes = F * (int64_t)sizeof(T), pf_bytes = row_bytes < 1024 ? row_bytes : 1024;
  const int64_t pd = prefetch_distance(row_bytes);
  for_rows(R, indptr, F + 1, [&](int64_t r0, int64_t r1) {
    const int64_t kend = indptr[r1];
    for (int64_t r = r0; r < r1; ++r) {
      T* c = sh + r * F;
      const T* o = out + r * F;
      for (int64_t f = 0; f < F; ++f) c[f] = T(0);
      for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) {
        if (k + pd < kend) prefetch_n(x + (int64_t)col[k + pd] * F, pf_bytes);
        const T* xr = x + (int64_t)col[k] * F;
        const T wk = w ? w[edge_id(perm, k)] : T(1);
        if (w) for (int64_t f = 0; f < F; ++f) c[f] += xr[f] * wk == o[f] ? T(1) : T(0);
        else for (int64_t f = 0; f < F; ++f) c[f] += xr[f] == o[f] ? T(1) : T(0);
      }
      const T* gr = g + r * F;
      for (int64_t f = 0; f < F; ++f) c[f] = c[f] > T(0) ? gr[f] / c[f] : T(0);
    }
  });
  for_rows(N, t_indptr, F + 1, [&](int64_t u0, int64_t u1) {
    const int64_t kend = t_indptr[u1];
    for (int64_t u = u0; u < u1; ++u) {
      T* d = dx + u * F;
      const T* xr = x + u * F;
      for (int64_t f = 0; f < F; ++f) d[f] = T(0);
      for (int64_t k = t_indptr[u]; k < t_indptr[u + 1]; ++k) {
        if (k + pd < kend) {  // the targets' out and share rows are gathered
          prefetch_n(out + (int64_t)t_col[k + pd] * F, pf_bytes);
          prefetch_n(sh + (int64_t)t_col[k + pd] * F, pf_bytes);
        }
        const int64_t v = t_col[k], e = edge_id(t_perm, k);
        const T wk = w ? w[e] : T(1);
        const T* o = out + v * F;
        const T* c = sh + v * F;
        if (!dw) {  // no reduction across f: this loop vectorizes
          for (int64_t f = 0; f < F; ++f) d[f] += ((w ? xr[f] * wk : xr[f]) == o[f] ? c[f] : T(0)) * wk;
          continue;
        }
        T s = T(0);
        for (int64_t f = 0; f < F; ++f) {
          const T m = (w ? xr[f] * wk : xr[f]) == o[f] ? c[f] : T(0);
          d[f] += m * wk;
          s += m * xr[f];
        }
        dw[e] = s;
      }
    }
  });
}

template <typename T>
void graph_softmax_forward(int64_t R, const int64_t* indptr, const int64_t* perm, int64_t H, const T* s, T* y) {
  for_rows(R, indptr, 8 * H, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t k0 = indptr[r], k1 = indptr[r + 1];
      for (int64_t h = 0; h < H; ++h) {
        T m = -INFINITY;
        for (int64_t k = k0; k < k1; ++k) m = std::fmax(m, s[edge_id(perm, k) * H + h]);
        T den = T(0);
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t i = edge_id(perm, k) * H + h;
          y[i] = std::exp(s[i] - m);
          den += y[i];
        }
        const T inv = T(1) / den;
        for (int64_t k = k0; k < k1; ++k) y[edge_id(perm, k) * H + h] *= inv;
      }
    }
  });
}

template <typename T>
void graph_softmax_backward(int64_t R, const int64_t* indptr, const int64_t* perm, int64_t H, const T* y,
                            const T* g, T* ds) {
  for_rows(R, indptr, 4 * H, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t k0 = indptr[r], k1 = indptr[r + 1];
      for (int64_t h = 0; h < H; ++h) {
        T d = T(0);
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t i = edge_id(perm, k) * H + h;
          d += y[i] * g[i];
        }
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t i = edge_id(perm, k) * H + h;
          ds[i] = y[i] * (g[i] - d);
        }
      }
    }
  });
}

// Stable counting sort of the edges by key (already validated to lie in [0, G)):
// indptr (G+1) offsets, perm (E) the edge ids in grouped order.
template <typename I>
void graph_group_by(int64_t G, int64_t E, const I* key, int64_t* indptr, int64_t* perm) {
  for (int64_t g = 0; g <= G; ++g) indptr[g] = 0;
  for (int64_t e = 0; e < E; ++e) ++indptr[(int64_t)key[e] + 1];
  for (int64_t g = 0; g < G; ++g) indptr[g + 1] += indptr[g];
  std::vector<int64_t> next(indptr, indptr + G);
  for (int64_t e = 0; e < E; ++e) perm[next[(size_t)key[e]]++] = e;
}

#define DLK_GRAPH_INSTANTIATE(T, I)                                                                            \
  template void graph_segment_sum<T, I>(int64_t, const int64_t*, int64_t, const I*, const int64_t*, const T*, int64_t,  \
                                        int64_t, const T*, const T*, T*);                                      \
  template void graph_segment_maxmin<T, I>(int64_t, const int64_t*, int64_t, const I*, const int64_t*,       \
                                           const T*, int64_t, const T*, bool, T*);                                       \
  template void graph_edge_dot<T, I>(int64_t, const int64_t*, const I*, const int64_t*, int64_t, int64_t,      \
                                     const T*, const T*, const T*, T*);                                        \
  template void graph_maxmin_backward<T, I>(int64_t, const int64_t*, const I*, const int64_t*, int64_t,        \
                                            const int64_t*, const I*, const int64_t*, const T*, int64_t,       \
                                            const T*, const T*, const T*, T*, T*);
DLK_GRAPH_INSTANTIATE(float, int32_t)
DLK_GRAPH_INSTANTIATE(float, int64_t)
DLK_GRAPH_INSTANTIATE(double, int32_t)
DLK_GRAPH_INSTANTIATE(double, int64_t)
#undef DLK_GRAPH_INSTANTIATE
template void graph_softmax_forward<float>(int64_t, const int64_t*, const int64_t*, int64_t, const float*, float*);
template void graph_softmax_forward<double>(int64_t, const int64_t*, const int64_t*, int64_t, const double*, double*);
template void graph_softmax_backward<float>(int64_t, const int64_t*, const int64_t*, int64_t, const float*,
                                            const float*, float*);
template void graph_softmax_backward<double>(int64_t, const int64_t*, const int64_t*, int64_t, const double*,
                                             const double*, double*);
template void graph_group_by<int32_t>(int64_t, int64_t, const int32_t*, int64_t*, int64_t*);
template void graph_group_by<int64_t>(int64_t, int64_t, const int64_t*, int64_t*, int64_t*);

}  // namespace DLK_ISA
}  // namespace dlk
