// LSTM on the GPU (one layer, one direction): forward and backward through time.
// Ops: lstm lstm_cell
// Variants:
//   steps: x W_ihᵀ for all steps as one GEMM, then per step h W_hhᵀ (GEMM) + one fused gate kernel; backward per step likewise, weight gradients as single GEMMs
//   persistent: forward recurrence in one kernel: each block keeps its units' rows of W_hh in shared memory for all T steps, a software grid barrier between steps
//
// Layouts (time-major, contiguous; ops/lstm/reference.py): x (T, B, I), h0 (B, P), c0 (B, H),
// w_ih (4H, I), w_hh (4H, P), b (4H,) (= b_ih + b_hh) or none, w_hr (P, H) or none (P = H),
// lengths (B,) int64 or none. Gate order i, f, g, o. Saved per step: gates (T, B, 4H) activated
// and c (T, B, H), in acc_t (float for float/bf16/half; the backward needs them precisely);
// y (T, B, P) in T. The running state h, c is kept in acc_t between steps (never rounded to T).
// Sequence b runs steps t < len[b]; past its end its state is held and its output is 0.
#include "common.cuh"

__device__ __forceinline__ float dk_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dk_tanh(double v) { return tanh(v); }
template <class A> __device__ __forceinline__ A sigmoid(A v) { return A(1) / (A(1) + dk_exp(-v)); }
__device__ __forceinline__ bool running(const i64* len, int b, int t) { return !len || t < len[b]; }

template <class X> __device__ __forceinline__ acc_t<X> ld(const X* p) { return (acc_t<X>)dk_load(p); }
template <class X> __device__ __forceinline__ void st(X* p, acc_t<X> v) { dk_store(p, v); }

// C[m, n] = sum_k A[m*sam + k*sak] * B[k*sbk + n*sbn] (+ bias[n]): any strides, so one kernel
// serves x W_ihᵀ, h W_hhᵀ, dz W_hh, dzᵀ x, ... 256 threads, a 64x64 tile of C, 4x4 outputs per
// thread (ty = t/16 rows, tx = t%16 columns), tiles of 16 along k through shared memory in
// float (double for double). Deterministic: every C element is one thread's sum in k order.
template <class TA, class TB, class TC>
__global__ void __launch_bounds__(256) lstm_gemm(i64 M, i64 N, i64 K, const TA* A, i64 sam, i64 sak, const TB* B,
                                                  i64 sbk, i64 sbn, TC* C, i64 ldc, const TB* bias) {
  typedef acc_t<TC> R;
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ R As[BK][BM + 4];
  __shared__ R Bs[BK][BN + 4];
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const i64 m0 = (i64)blockIdx.x * BM, n0 = (i64)blockIdx.y * BN;
  R acc[4][4] = {};
  for (i64 k0 = 0; k0 < K; k0 += BK) {
    for (int e = t; e < BM * BK; e += 256) {
      const int kl = sak == 1 ? e % BK : e / BM, ml = sak == 1 ? e / BK : e % BM;  // read along A's fast dim
      const i64 m = m0 + ml, k = k0 + kl;
      As[kl][ml] = (m < M && k < K) ? (R)ld(A + m * sam + k * sak) : R(0);
      const int kb = sbn == 1 ? e / BN : e % BK, nb = sbn == 1 ? e % BN : e / BK;
      const i64 n = n0 + nb, k2 = k0 + kb;
      Bs[kb][nb] = (n < N && k2 < K) ? (R)ld(B + k2 * sbk + n * sbn) : R(0);
    }
    __syncthreads();
#pragma unroll
    for (int kl = 0; kl < BK; ++kl) {
      R a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kl][ty * 4 + i], b[i] = Bs[kl][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const i64 m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < M && n < N) st(C + m * ldc + n, acc[i][j] + (bias ? (R)ld(bias + n) : R(0)));
    }
}

// h[b, p] = h0[b, p] (the running state in acc_t); one thread per element.
template <class T>
__global__ void lstm_init_state(const T* src, acc_t<T>* dst, i64 n) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x < n) dst[x] = ld(src + x);
}

// dst[x] = src[x] rounded to T (final states, gradients); one thread per element.
template <class T>
__global__ void lstm_store(const acc_t<T>* src, T* dst, i64 n) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x < n) st(dst + x, src[x]);
}

// One forward step's gates, fused: thread (b, j) (x = b*H + j) reads z = xw[t] + zr (the two
// GEMMs' results), activates the four gates, updates c (held past the sequence's end) and
// produces m = o*tanh(c). Without projection m is the new h: h and y[t] are written here;
// with projection m goes to mbuf and lstm_fwd_proj finishes the step.
template <class T>
__global__ void lstm_fwd_gates(int t, int B, int H, const acc_t<T>* xw, const acc_t<T>* zr, acc_t<T>* c,
                               acc_t<T>* h, acc_t<T>* mbuf, acc_t<T>* gates, acc_t<T>* cs, T* y, const i64* len) {
  typedef acc_t<T> A;
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= (i64)B * H) return;
  const int b = (int)(x / H), j = (int)(x % H);
  const A* zx = xw + ((i64)t * B + b) * 4 * H;
  const A* zh = zr + (i64)b * 4 * H;
  const A ig = sigmoid(zx[j] + zh[j]), fg = sigmoid(zx[H + j] + zh[H + j]);
  const A gg = dk_tanh(zx[2 * H + j] + zh[2 * H + j]), og = sigmoid(zx[3 * H + j] + zh[3 * H + j]);
  const A cn = fg * c[x] + ig * gg, m = og * dk_tanh(cn);
  const bool run = running(len, b, t);
  A* gt = gates + ((i64)t * B + b) * 4 * H;
  gt[j] = ig, gt[H + j] = fg, gt[2 * H + j] = gg, gt[3 * H + j] = og;
  if (run) c[x] = cn;
  cs[(i64)t * B * H + x] = c[x];
  if (mbuf) {
    mbuf[x] = m;
  } else {
    if (run) h[x] = m;
    st(y + (i64)t * B * H + x, run ? m : A(0));
  }
}

// Projection step's end: thread (b, p): h = hp (= m W_hrᵀ) where sequence b runs, y[t] likewise (0 past its end).
template <class T>
__global__ void lstm_fwd_proj(int t, int B, int P, const acc_t<T>* hp, acc_t<T>* h, T* y, const i64* len) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= (i64)B * P) return;
  const bool run = running(len, (int)(x / P), t);
  if (run) h[x] = hp[x];
  st(y + (i64)t * B * P + x, run ? hp[x] : acc_t<T>(0));
}

// Loads that skip L1 (ld.global.cg): h written by other blocks since this block last read the
// same address must come from L2, not from a stale L1 line.
__device__ __forceinline__ float ld_cg(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ double ld_cg(const double* p) {
  double v;
  asm volatile("ld.global.cg.f64 %0, [%1];" : "=d"(v) : "l"(p));
  return v;
}

// Grid-wide barrier for lstm_persistent: a monotonic counter; the k-th barrier waits for it to
// reach k * gridDim.x. ASSUMES every block of the grid is resident at once (the glue launches at
// most one block per SM and checks the block fits one SM), else it would wait forever.
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned k) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's writes (h, y, ...) visible before it arrives
    atomicAdd(counter, 1u);
    while (atomicAdd(counter, 0u) < k * gridDim.x) {
    }
    __threadfence();
  }
  __syncthreads();
}

// persistent forward (no projection, P = H): block x owns hidden units [x*U, x*U + U) and keeps
// their 4U rows of W_hh in shared memory (row stride H + pad) for all T steps. Per step: thread
// o < B*4U computes z[b, gate, u] = xw[t] + h_{t-1}[b] . W_hh[gate*H + j] (h from the global
// double buffer hbuf[t % 2], acc_t, read past L1), then thread (b, u) applies the gates exactly as
// lstm_fwd_gates, writes h_t into hbuf[(t+1) % 2], and all blocks meet at the grid barrier.
// c of its units stays in shared memory. 256 threads.
template <class T>
__global__ void __launch_bounds__(256)
    lstm_persistent(int T_, int B, int H, int U, const acc_t<T>* xw, const T* w_hh, acc_t<T>* hbuf, acc_t<T>* cst,
                    acc_t<T>* gates, acc_t<T>* cs, T* y, const i64* len, unsigned* counter) {
  typedef acc_t<T> A;
  constexpr int PAD = sizeof(T) == 2 ? 2 : 1;  // odd word stride between rows: no bank conflicts
  extern __shared__ __align__(16) unsigned char smem[];
  const int ldw = H + PAD;
  T* W = (T*)smem;  // [4U][ldw]
  A* zs = (A*)(smem + (((i64)4 * U * ldw * sizeof(T) + 15) / 16) * 16);  // [B][4U]
  A* cl = zs + (i64)B * 4 * U;  // [B][U]
  const int j0 = blockIdx.x * U, nu = min(U, H - j0);
  for (i64 e = threadIdx.x; e < (i64)4 * U * H; e += blockDim.x) {  // this block's rows of W_hh
    const int r = (int)(e / H), p = (int)(e % H), gate = r / U, u = r % U;
    if (u < nu) W[(i64)r * ldw + p] = w_hh[((i64)gate * H + j0 + u) * H + p];
  }
  for (int e = threadIdx.x; e < B * U; e += blockDim.x) {
    const int b = e / U, u = e % U;
    if (u < nu) cl[e] = cst[(i64)b * H + j0 + u];
  }
  __syncthreads();
  for (int t = 0; t < T_; ++t) {
    const A* hp = hbuf + (i64)(t & 1) * B * H;
    A* hn = hbuf + (i64)((t + 1) & 1) * B * H;
    for (int o = threadIdx.x; o < B * 4 * U; o += blockDim.x) {
      const int b = o / (4 * U), r = o % (4 * U), gate = r / U, u = r % U;
      if (u >= nu) continue;
      A acc = xw[((i64)t * B + b) * 4 * H + (i64)gate * H + j0 + u];
      const A* hb = hp + (i64)b * H;
      const T* wr = W + (i64)r * ldw;
      for (int p = 0; p < H; ++p) acc += ld_cg(hb + p) * ld(wr + p);
      zs[o] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < B * U; e += blockDim.x) {
      const int b = e / U, u = e % U, j = j0 + u;
      if (u >= nu) continue;
      const A* z = zs + (i64)b * 4 * U;
      const A ig = sigmoid(z[u]), fg = sigmoid(z[U + u]), gg = dk_tanh(z[2 * U + u]), og = sigmoid(z[3 * U + u]);
      const A cn = fg * cl[e] + ig * gg, m = og * dk_tanh(cn);
      const bool run = running(len, b, t);
      A* gt = gates + ((i64)t * B + b) * 4 * H;
      gt[j] = ig, gt[H + j] = fg, gt[2 * H + j] = gg, gt[3 * H + j] = og;
      if (run) cl[e] = cn;
      cs[((i64)t * B + b) * H + j] = cl[e];
      hn[(i64)b * H + j] = run ? m : ld_cg(hp + (i64)b * H + j);
      st(y + ((i64)t * B + b) * H + j, run ? m : A(0));
    }
    grid_barrier(counter, (unsigned)(t + 1));  // h_t complete everywhere before step t+1 reads it
  }
  for (int e = threadIdx.x; e < B * U; e += blockDim.x) {
    const int b = e / U, u = e % U;
    if (u < nu) cst[(i64)b * H + j0 + u] = cl[e];
  }
}

// ---- backward ------------------------------------------------------------------------------
// Start of backward step t, thread (b, p): dh carries in the gradient from step t+1 (or dh_n);
// DH[t] = dy[t] + dh where sequence b runs, else 0 (its outputs past the end are constants).
template <class T>
__global__ void lstm_bwd_dh(int t, int B, int P, const T* dy, const acc_t<T>* dh, acc_t<T>* DH, const i64* len) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= (i64)B * P) return;
  DH[(i64)t * B * P + x] = running(len, (int)(x / P), t) ? ld(dy + (i64)t * B * P + x) + dh[x] : acc_t<T>(0);
}

// Backward gates of step t, fused: thread (b, j) with dm = dL/dm (DH[t] without projection,
// DH[t] W_hr with it): dc_t = dc + dm*o*(1 - tanh²c) where running, then dz = the four gate
// pre-activation gradients into DZ[t], dc carried to step t-1 (= dc_t*f where running, else
// unchanged), and M[t] = o*tanh(c) when mout is given (for dW_hr = DHᵀ M).
template <class T>
__global__ void lstm_bwd_gates(int t, int B, int H, const acc_t<T>* dm, const acc_t<T>* gates, const acc_t<T>* cs,
                               const T* c0, acc_t<T>* dc, acc_t<T>* DZ, acc_t<T>* mout, const i64* len) {
  typedef acc_t<T> A;
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= (i64)B * H) return;
  const int b = (int)(x / H), j = (int)(x % H);
  const A* gt = gates + ((i64)t * B + b) * 4 * H;
  const A ig = gt[j], fg = gt[H + j], gg = gt[2 * H + j], og = gt[3 * H + j];
  const A c = cs[(i64)t * B * H + x], cp = t > 0 ? cs[(i64)(t - 1) * B * H + x] : ld(c0 + x), tc = dk_tanh(c);
  const bool run = running(len, b, t);
  const A d = dm[x];
  const A dct = run ? dc[x] + d * og * (A(1) - tc * tc) : A(0);
  A* dz = DZ + ((i64)t * B + b) * 4 * H;
  dz[j] = dct * gg * ig * (A(1) - ig);
  dz[H + j] = dct * cp * fg * (A(1) - fg);
  dz[2 * H + j] = dct * ig * (A(1) - gg * gg);
  dz[3 * H + j] = (run ? d * tc : A(0)) * og * (A(1) - og);
  if (run) dc[x] = dct * fg;
  if (mout) mout[(i64)t * B * H + x] = og * tc;
}

// End of backward step t, thread (b, p): dh = dz_t W_hh (the GEMM's tmp) where sequence b ran, else unchanged.
template <class T>
__global__ void lstm_bwd_carry(int t, int B, int P, const acc_t<T>* tmp, acc_t<T>* dh, const i64* len) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x < (i64)B * P && running(len, (int)(x / P), t)) dh[x] = tmp[x];
}

// db[n] = sum over the T*B rows of DZ[:, n], in row order; one thread per column.
template <class T>
__global__ void lstm_colsum(const acc_t<T>* DZ, i64 rows, int N, T* db) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  acc_t<T> v = 0;
  for (i64 r = 0; r < rows; ++r) v += DZ[r * N + n];
  st(db + n, v);
}

// Every instantiation the loader asks for through name_expressions, spelled out for the
// offline compile check (.ci/nvcc_check.sh defines DLK_INSTANTIATE_ALL); NVRTC never sees it.
#ifdef DLK_INSTANTIATE_ALL
#define DLK_LSTM_GEMM(TA, TB, TC)                                                                       \
  template __global__ void lstm_gemm<TA, TB, TC>(i64, i64, i64, const TA*, i64, i64, const TB*, i64, i64, \
                                                 TC*, i64, const TB*);
#define DLK_LSTM_GEMM16(T) \
  DLK_LSTM_GEMM(T, T, float) DLK_LSTM_GEMM(float, T, float) DLK_LSTM_GEMM(float, T, T) DLK_LSTM_GEMM(float, float, T)
#define DLK_LSTM(T)                                                                                       \
  template __global__ void lstm_init_state<T>(const T*, acc_t<T>*, i64);                                 \
  template __global__ void lstm_store<T>(const acc_t<T>*, T*, i64);                                      \
  template __global__ void lstm_fwd_gates<T>(int, int, int, const acc_t<T>*, const acc_t<T>*, acc_t<T>*,  \
                                             acc_t<T>*, acc_t<T>*, acc_t<T>*, acc_t<T>*, T*, const i64*); \
  template __global__ void lstm_fwd_proj<T>(int, int, int, const acc_t<T>*, acc_t<T>*, T*, const i64*);   \
  template __global__ void lstm_persistent<T>(int, int, int, int, const acc_t<T>*, const T*, acc_t<T>*,   \
                                              acc_t<T>*, acc_t<T>*, acc_t<T>*, T*, const i64*, unsigned*); \
  template __global__ void lstm_bwd_dh<T>(int, int, int, const T*, const acc_t<T>*, acc_t<T>*, const i64*); \
  template __global__ void lstm_bwd_gates<T>(int, int, int, const acc_t<T>*, const acc_t<T>*,            \
                                             const acc_t<T>*, const T*, acc_t<T>*, acc_t<T>*, acc_t<T>*,  \
                                             const i64*);                                                 \
  template __global__ void lstm_bwd_carry<T>(int, int, int, const acc_t<T>*, acc_t<T>*, const i64*);      \
  template __global__ void lstm_colsum<T>(const acc_t<T>*, i64, int, T*);
DLK_LSTM_GEMM(float, float, float)
DLK_LSTM_GEMM(double, double, double)
DLK_LSTM_GEMM16(dk_bf16)
DLK_LSTM_GEMM16(dk_half)
DLK_LSTM(float)
DLK_LSTM(double)
DLK_LSTM(dk_bf16)
DLK_LSTM(dk_half)
#endif
