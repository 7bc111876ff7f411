// Graph aggregation on the GPU: the six CSR primitives of ops/graph/common.py, as kernels.
// Ops: aggregate scatter sddmm edge_softmax
// Variants:
//   csr: segment reduce by target (GE-SpMM): 4 features per thread, up to 4 warps on one row for wide F, hub rows cut in 256-edge chunks summed in order; warp per edge/row for dots and softmax
//
// CSR by target: indptr (R+1,) int64; col (E,) sources, int32 or int64 (template I); perm
// (E,) int64 CSR position -> user edge id, or none (use_perm = 0). All offsets in 64 bits.
// Dense rows: x (N, H, F), out (R, H, F); per-edge arrays (E, H) in user edge order.
// No atomics anywhere: every output element is summed by one thread (or one warp with the
// fixed butterfly of warp_sum) in CSR order, so results are bitwise repeatable.
#include "common.cuh"

constexpr int VEC = 4;  // features per thread, strided by blockDim.x (coalesced)

// sum: one work item = (row, [k0, k1)) with `slot` -1 (write out[row] directly) or a partial
// slot (a chunk of a hub row, summed later by graph_segment_merge_cuda). Thread (tx, ty) of
// block (bx, by, h): item bx*blockDim.y + ty, features blockIdx.y*blockDim.x*VEC + tx + j*blockDim.x.
//   out[r, h, f] = rscale[r] * sum_k w[perm[k], h] * cscale[col[k]] * x[col[k], h, f]
template <class T, class I>
__global__ void graph_segment_sum_cuda(const i64* work, i64 n_work, const I* col, const i64* perm,
                                       int use_perm, const T* w, const acc_t<T>* rscale,
                                       const acc_t<T>* cscale, const T* x, T* out, acc_t<T>* part, int H,
                                       int F) {
  typedef acc_t<T> A;
  const i64 item = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  if (item >= n_work) return;
  const int h = blockIdx.z, f0 = blockIdx.y * blockDim.x * VEC + threadIdx.x;
  const i64 r = work[4 * item], k0 = work[4 * item + 1], k1 = work[4 * item + 2], slot = work[4 * item + 3];
  A acc[VEC] = {};
  for (i64 k = k0; k < k1; ++k) {
    const i64 u = (i64)col[k];
    A wk = w ? (A)dk_load(w + (use_perm ? perm[k] : k) * H + h) : A(1);
    if (cscale) wk *= cscale[u];
    const T* xr = x + (u * H + h) * F;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int f = f0 + j * blockDim.x;
      if (f < F) acc[j] += wk * (A)dk_load(xr + f);
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int f = f0 + j * blockDim.x;
    if (f >= F) continue;
    if (slot < 0)
      dk_store(out + (r * H + h) * F + f, rscale ? acc[j] * rscale[r] : acc[j]);
    else
      part[(slot * H + h) * F + f] = acc[j];
  }
}

// Hub rows: out[r, h, f] = rscale[r] * sum over the row's chunk partials, in chunk order.
// One thread per (hub, h, f); hub i owns partial slots hub_slots[i] .. hub_slots[i+1]-1.
template <class T>
__global__ void graph_segment_merge_cuda(const i64* hubs, const i64* hub_slots, i64 n_hubs,
                                         const acc_t<T>* rscale, const acc_t<T>* part, T* out, int H, int F) {
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x, HF = (i64)H * F;
  if (i >= n_hubs * HF) return;
  const i64 hub = i / HF, hf = i - hub * HF, r = hubs[hub];
  acc_t<T> v = 0;
  for (i64 s = hub_slots[hub]; s < hub_slots[hub + 1]; ++s) v += part[s * HF + hf];
  dk_store(out + r * HF + hf, rscale ? v * rscale[r] : v);
}

// max/min: thread (row, f) as in segment_sum (H = 1, no chunks: the row's messages in order).
// out[r, f] = max (min) over k of w[perm[k]] * x[col[k], f]; NaN wins; an empty row gives 0.
template <class T, class I, int IS_MAX>
__global__ void graph_segment_maxmin_cuda(const i64* indptr, i64 R, const I* col, const i64* perm, int use_perm,
                                          const T* w, const T* x, T* out, int F) {
  typedef acc_t<T> A;
  const i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y;
  if (r >= R) return;
  const int f0 = blockIdx.y * blockDim.x * VEC + threadIdx.x;
  const i64 k0 = indptr[r], k1 = indptr[r + 1];
  A best[VEC] = {};
  for (i64 k = k0; k < k1; ++k) {
    const i64 u = (i64)col[k];
    const A wk = w ? (A)dk_load(w + (use_perm ? perm[k] : k)) : A(1);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int f = f0 + j * blockDim.x;
      if (f >= F) continue;
      const A v = wk * (A)dk_load(x + u * F + f);
      if (k == k0 || v != v || (IS_MAX ? v > best[j] : v < best[j])) best[j] = v;
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int f = f0 + j * blockDim.x;
    if (f < F) dk_store(out + r * F + f, best[j]);
  }
}

// max/min backward, step 1: share[r, f] = g[r, f] / (number of messages equal to out[r, f]),
// 0 for an empty row. A message equals out when it rounds to the same T value.
template <class T, class I>
__global__ void graph_maxmin_share_cuda(const i64* indptr, i64 R, const I* col, const i64* perm, int use_perm,
                                        const T* w, const T* x, const T* out, const T* g, acc_t<T>* share, int F) {
  typedef acc_t<T> A;
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= R * F) return;
  const i64 r = i / F;
  const int f = (int)(i - r * F);
  const A o = dk_load(out + i);
  A ties = 0;
  for (i64 k = indptr[r]; k < indptr[r + 1]; ++k) {
    const A wk = w ? (A)dk_load(w + (use_perm ? perm[k] : k)) : A(1);
    ties += dk_round(wk * (A)dk_load(x + (i64)col[k] * F + f), T()) == o ? A(1) : A(0);
  }
  share[i] = ties > 0 ? (A)dk_load(g + i) / ties : A(0);
}

// step 2, over the transpose (rows = sources u, t_col = targets v, t_perm -> edge id):
//   dx[u, f] = sum_k [msg == out[v, f]] * share[v, f] * w[e]      one thread per (u, f)
template <class T, class I>
__global__ void graph_maxmin_dx_cuda(const i64* t_indptr, i64 N, const I* t_col, const i64* t_perm, int use_perm,
                                     const T* w, const T* x, const T* out, const acc_t<T>* share, T* dx, int F) {
  typedef acc_t<T> A;
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  const i64 u = i / F;
  const int f = (int)(i - u * F);
  const A xu = dk_load(x + i);
  A acc = 0;
  for (i64 k = t_indptr[u]; k < t_indptr[u + 1]; ++k) {
    const i64 v = (i64)t_col[k];
    const A wk = w ? (A)dk_load(w + (use_perm ? t_perm[k] : k)) : A(1);
    if (dk_round(wk * xu, T()) == (A)dk_load(out + v * F + f)) acc += share[v * F + f] * wk;
  }
  dk_store(dx + i, acc);
}

// step 3 (only with edge weights): dw[e] = sum_f [msg == out[v, f]] * share[v, f] * x[u, f].
// One warp per target row; lanes over f, warp_sum per edge.
template <class T, class I>
__global__ void graph_maxmin_dw_cuda(const i64* indptr, i64 R, const I* col, const i64* perm, int use_perm,
                                     const T* w, const T* x, const T* out, const acc_t<T>* share, T* dw, int F) {
  typedef acc_t<T> A;
  const i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= R) return;
  for (i64 k = indptr[r]; k < indptr[r + 1]; ++k) {
    const i64 u = (i64)col[k], e = use_perm ? perm[k] : k;
    const A wk = dk_load(w + e);
    A s = 0;
    for (int f = lane; f < F; f += 32) {
      const A xu = dk_load(x + u * F + f);
      if (dk_round(wk * xu, T()) == (A)dk_load(out + r * F + f)) s += share[r * F + f] * xu;
    }
    s = warp_sum(s);
    if (lane == 0) dk_store(dw + e, s);
  }
}

// sddmm / dw of sum: out[perm[k], h] = rscale[r] * <a[col[k], h, :], b[r, h, :]>.
// One warp per (row r, head h) = global warp id r*H + h; lanes over F, warp_sum per edge.
template <class T, class I>
__global__ void graph_edge_dot_cuda(const i64* indptr, i64 R, const I* col, const i64* perm, int use_perm,
                                    const T* a, const T* b, const acc_t<T>* rscale, T* out, int H, int F) {
  typedef acc_t<T> A;
  const i64 gw = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (gw >= R * H) return;
  const i64 r = gw / H;
  const int h = (int)(gw - r * H);
  const T* br = b + (r * H + h) * F;
  for (i64 k = indptr[r]; k < indptr[r + 1]; ++k) {
    const T* ar = a + ((i64)col[k] * H + h) * F;
    A s = 0;
    for (int f = lane; f < F; f += 32) s += (A)dk_load(ar + f) * dk_load(br + f);
    s = warp_sum(s);
    if (lane == 0) dk_store(out + (use_perm ? perm[k] : k) * H + h, rscale ? s * rscale[r] : s);
  }
}

// edge_softmax forward: one warp per (row r, head h); lanes stride the row's edges.
// y[e, h] = exp(s[e, h] - m) / sum exp(s - m), m the row's max (a fixed-order max and sum).
template <class T>
__global__ void graph_softmax_forward_cuda(const i64* indptr, i64 R, const i64* perm, int use_perm, const T* s,
                                           T* y, int H) {
  typedef acc_t<T> A;
  const i64 gw = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (gw >= R * H) return;
  const i64 r = gw / H, k0 = indptr[r], k1 = indptr[r + 1];
  const int h = (int)(gw - r * H);
  A m = -dk_inf<A>();
  for (i64 k = k0 + lane; k < k1; k += 32) {
    const A v = dk_load(s + (use_perm ? perm[k] : k) * H + h);
    m = v > m || v != v ? v : m;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const A other = __shfl_xor_sync(0xffffffffu, m, o);
    m = other > m || other != other ? other : m;
  }
  A den = 0;
  for (i64 k = k0 + lane; k < k1; k += 32) den += dk_exp((A)dk_load(s + (use_perm ? perm[k] : k) * H + h) - m);
  den = warp_sum(den);
  for (i64 k = k0 + lane; k < k1; k += 32) {
    const i64 e = (use_perm ? perm[k] : k) * H + h;
    dk_store(y + e, dk_exp((A)dk_load(s + e) - m) / den);
  }
}

// edge_softmax backward: ds[e, h] = y[e, h] * (g[e, h] - sum over the row of y * g).
template <class T>
__global__ void graph_softmax_backward_cuda(const i64* indptr, i64 R, const i64* perm, int use_perm, const T* y,
                                            const T* g, T* ds, int H) {
  typedef acc_t<T> A;
  const i64 gw = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (gw >= R * H) return;
  const i64 r = gw / H, k0 = indptr[r], k1 = indptr[r + 1];
  const int h = (int)(gw - r * H);
  A dot = 0;
  for (i64 k = k0 + lane; k < k1; k += 32) {
    const i64 e = (use_perm ? perm[k] : k) * H + h;
    dot += (A)dk_load(y + e) * dk_load(g + e);
  }
  dot = warp_sum(dot);
  for (i64 k = k0 + lane; k < k1; k += 32) {
    const i64 e = (use_perm ? perm[k] : k) * H + h;
    const A ye = dk_load(y + e);
    dk_store(ds + e, ye * ((A)dk_load(g + e) - dot));
  }
}

// Every instantiation the loader asks for, for the offline compile check (DLK_INSTANTIATE_ALL).
#ifdef DLK_INSTANTIATE_ALL
#define DLK_GRAPH_TI(T, I)                                                                              \
  template __global__ void graph_segment_sum_cuda<T, I>(const i64*, i64, const I*, const i64*, int,       \
                                                        const T*, const acc_t<T>*, const acc_t<T>*,       \
                                                        const T*, T*, acc_t<T>*, int, int);               \
  template __global__ void graph_segment_maxmin_cuda<T, I, 0>(const i64*, i64, const I*, const i64*, int, \
                                                              const T*, const T*, T*, int);               \
  template __global__ void graph_segment_maxmin_cuda<T, I, 1>(const i64*, i64, const I*, const i64*, int, \
                                                              const T*, const T*, T*, int);               \
  template __global__ void graph_maxmin_share_cuda<T, I>(const i64*, i64, const I*, const i64*, int,      \
                                                         const T*, const T*, const T*, const T*,          \
                                                         acc_t<T>*, int);                                 \
  template __global__ void graph_maxmin_dx_cuda<T, I>(const i64*, i64, const I*, const i64*, int,         \
                                                      const T*, const T*, const T*, const acc_t<T>*, T*,  \
                                                      int);                                               \
  template __global__ void graph_maxmin_dw_cuda<T, I>(const i64*, i64, const I*, const i64*, int,         \
                                                      const T*, const T*, const T*, const acc_t<T>*, T*,  \
                                                      int);                                               \
  template __global__ void graph_edge_dot_cuda<T, I>(const i64*, i64, const I*, const i64*, int, const T*, \
                                                     const T*, const acc_t<T>*, T*, int, int);
#define DLK_GRAPH_T(T)                                                                                   \
  DLK_GRAPH_TI(T, int)                                                                                   \
  DLK_GRAPH_TI(T, long long)                                                                             \
  template __global__ void graph_segment_merge_cuda<T>(const i64*, const i64*, i64, const acc_t<T>*,      \
                                                       const acc_t<T>*, T*, int, int);                    \
  template __global__ void graph_softmax_forward_cuda<T>(const i64*, i64, const i64*, int, const T*, T*,  \
                                                         int);                                            \
  template __global__ void graph_softmax_backward_cuda<T>(const i64*, i64, const i64*, int, const T*,     \
                                                          const T*, T*, int);
DLK_GRAPH_T(float)
DLK_GRAPH_T(double)
DLK_GRAPH_T(dk_half)
DLK_GRAPH_T(dk_bf16)
#endif
