// Convolution on the GPU: conv2d (conv1d runs as conv2d with H = 1), forward and backward.
// Ops: conv2d
// Variants:
//   igemm: implicit GEMM on CUDA cores, 64x64x16 tiles, 4x4 outputs per thread, any dtype; dw split-K + fixed-order sum
//   mma: implicit GEMM on tensor cores (mma.sync m16n8k16), float16/bfloat16 only, float32 accumulators
//   depthwise: groups == C: one thread per output (forward, dx), one block per weight tap (dw)
//   atomic: igemm, but dw's split-K partials meet by atomicAdd (faster on small K*C, not bitwise repeatable; opt-in)
//
// Layouts (all contiguous): x (N, C, H, W), w (K, C/G, R, S), y/dy (N, K, P, Q).
// The three products are one GEMM engine with three gathers (no im2col buffer):
//   FWD:   y[n,k,p,q]  = sum over (c,r,s)    x[n, c, p*sh-pt+r*dh, q*sw-pl+s*dw] w[k,c,r,s]
//          M = N*P*Q,  Ngemm = K/G,  Kred = C/G*R*S
//   DGRAD: dx[n,c,h,w] = sum over (k,r,s)    dy[n, k, (h+pt-r*dh)/sh, (w+pl-s*dw)/sw] w[k,c,r,s]
//          (only where the division is exact and in range)   M = N*H*W, Ngemm = C/G, Kred = K/G*R*S
//   WGRAD: dw[k,c,r,s] = sum over (n,p,q)    dy[n,k,p,q] x[n, c, p*sh-pt+r*dh, q*sw-pl+s*dw]
//          M = K/G, Ngemm = C/G*R*S, Kred = N*P*Q: split along Kred (grid.z), partials to a
//          workspace (splits, K, C/G*R*S) in acc_t, then summed in split order (deterministic).
// grid = (ceil(M/BM), ceil(Ngemm/BN), G * splits); index arithmetic in 64 bits.
#include "common.cuh"

enum { FWD = 0, DGRAD = 1, WGRAD = 2, WGRAD_ATOMIC = 3 };

struct Conv {
  int N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, G, Cg, Kg, RS;
};

#define CONV_ARGS                                                                                   \
  int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int pt, int pl, \
      int dh, int dw, int G
#define CONV_MAKE \
  const Conv cv = {N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, G, C / G, K / G, R * S}

template <int MODE> struct Gemm {
  i64 M, Ng, Kr;
};
template <int MODE> __device__ __forceinline__ Gemm<MODE> gemm_dims(const Conv& c) {
  if (MODE == FWD) return {(i64)c.N * c.P * c.Q, c.Kg, (i64)c.Cg * c.RS};
  if (MODE == DGRAD) return {(i64)c.N * c.H * c.W, c.Cg, (i64)c.Kg * c.RS};
  return {c.Kg, (i64)c.Cg * c.RS, (i64)c.N * c.P * c.Q};
}

// Element index of A(m, kk) in its source array, or -1 where the operand is 0 (padding,
// a stride that skips this pixel, or past the tile's end).
template <int MODE> __device__ __forceinline__ i64 a_index(const Conv& c, const Gemm<MODE>& d, int g,
                                                           i64 m, i64 kk) {
  if (m >= d.M || kk >= d.Kr) return -1;
  if (MODE == FWD) {  // x[n, g*Cg + ci, h, w]
    const i64 PQ = (i64)c.P * c.Q, n = m / PQ, pq = m - n * PQ;
    const int p = (int)(pq / c.Q), q = (int)(pq - (i64)p * c.Q);
    const int ci = (int)(kk / c.RS), rs = (int)(kk - (i64)ci * c.RS), r = rs / c.S, s = rs - r * c.S;
    const int h = p * c.sh - c.pt + r * c.dh, w = q * c.sw - c.pl + s * c.dw;
    if (h < 0 || h >= c.H || w < 0 || w >= c.W) return -1;
    return ((n * c.C + (i64)g * c.Cg + ci) * c.H + h) * c.W + w;
  } else if (MODE == DGRAD) {  // dy[n, g*Kg + kl, p, q]
    const i64 HW = (i64)c.H * c.W, n = m / HW, hw = m - n * HW;
    const int h = (int)(hw / c.W), w = (int)(hw - (i64)h * c.W);
    const int kl = (int)(kk / c.RS), rs = (int)(kk - (i64)kl * c.RS), r = rs / c.S, s = rs - r * c.S;
    const int hp = h + c.pt - r * c.dh, wq = w + c.pl - s * c.dw;
    if (hp < 0 || wq < 0 || hp % c.sh || wq % c.sw) return -1;
    const int p = hp / c.sh, q = wq / c.sw;
    if (p >= c.P || q >= c.Q) return -1;
    return ((n * c.K + (i64)g * c.Kg + kl) * c.P + p) * c.Q + q;
  } else {  // dy[n, g*Kg + m, p, q]
    const i64 PQ = (i64)c.P * c.Q, n = kk / PQ, pq = kk - n * PQ;
    return (n * c.K + (i64)g * c.Kg + m) * PQ + pq;
  }
}

// Element index of B(kk, n) in its source array, or -1 where it is 0.
template <int MODE> __device__ __forceinline__ i64 b_index(const Conv& c, const Gemm<MODE>& d, int g,
                                                           i64 kk, i64 n) {
  if (n >= d.Ng || kk >= d.Kr) return -1;
  if (MODE == FWD) {  // w[g*Kg + n, kk]
    return ((i64)g * c.Kg + n) * d.Kr + kk;
  } else if (MODE == DGRAD) {  // w[g*Kg + kl, n, r, s]
    const int kl = (int)(kk / c.RS), rs = (int)(kk - (i64)kl * c.RS);
    return (((i64)g * c.Kg + kl) * c.Cg + n) * c.RS + rs;
  } else {  // x[b, g*Cg + ci, h, w], kk = (b, p, q), n = (ci, r, s)
    const i64 PQ = (i64)c.P * c.Q, b = kk / PQ, pq = kk - b * PQ;
    const int p = (int)(pq / c.Q), q = (int)(pq - (i64)p * c.Q);
    const int ci = (int)(n / c.RS), rs = (int)(n - (i64)ci * c.RS), r = rs / c.S, s = rs - r * c.S;
    const int h = p * c.sh - c.pt + r * c.dh, w = q * c.sw - c.pl + s * c.dw;
    if (h < 0 || h >= c.H || w < 0 || w >= c.W) return -1;
    return ((b * c.C + (i64)g * c.Cg + ci) * c.H + h) * c.W + w;
  }
}

// Writes C(m, n) = v: y (+ bias), dx, or split `z`'s dw partial (plain or atomic).
template <class T, int MODE>
__device__ __forceinline__ void epilogue(const Conv& c, const Gemm<MODE>& d, int g, int z, i64 m, i64 n,
                                         acc_t<T> v, const T* bias, int has_bias, T* out, acc_t<T>* ws) {
  if (m >= d.M || n >= d.Ng) return;
  if (MODE == FWD) {
    const i64 PQ = (i64)c.P * c.Q, b = m / PQ, pq = m - b * PQ, k = (i64)g * c.Kg + n;
    if (has_bias) v += dk_load(bias + k);
    dk_store(out + (b * c.K + k) * PQ + pq, v);
  } else if (MODE == DGRAD) {
    const i64 HW = (i64)c.H * c.W, b = m / HW, hw = m - b * HW;
    dk_store(out + (b * c.C + (i64)g * c.Cg + n) * HW + hw, v);
  } else if (MODE == WGRAD) {
    ws[((i64)z * c.K + (i64)g * c.Kg + m) * d.Ng + n] = v;
  } else {
    atomicAdd(ws + ((i64)g * c.Kg + m) * d.Ng + n, v);
  }
}

// The Kred range of split z: whole BK-tiles, so every split but the last is full.
template <int BK>
__device__ __forceinline__ void split_range(i64 Kr, int splits, int z, i64& k0, i64& k1) {
  const i64 chunk = cdiv(cdiv(Kr, splits), BK) * BK;
  k0 = z * chunk;
  k1 = k0 + chunk < Kr ? k0 + chunk : Kr;
}

// igemm: 256 threads, a 64x64 tile of C, 4x4 per thread (ty = t/16 picks rows, tx = t%16
// columns); A and B tiles of 16 along Kred go through shared memory in acc_t.
template <class T, int MODE>
__global__ void __launch_bounds__(256) conv2d_cuda_igemm(const T* asrc, const T* bsrc, const T* bias,
                                                          int has_bias, T* out, acc_t<T>* ws, int splits,
                                                          CONV_ARGS) {
  CONV_MAKE;
  typedef acc_t<T> A;
  constexpr int BM = 64, BN = 64, BK = 16;
  constexpr bool A_K_FAST = MODE >= WGRAD;  // dy is contiguous along (p, q) = Kred there
  __shared__ A As[BK][BM + 4];
  __shared__ A Bs[BK][BN + 4];
  const Gemm<MODE> d = gemm_dims<MODE>(cv);
  const int g = blockIdx.z % G, z = blockIdx.z / G, t = threadIdx.x, tx = t % 16, ty = t / 16;
  const i64 m0 = (i64)blockIdx.x * BM, n0 = (i64)blockIdx.y * BN;
  i64 k0, k1;
  split_range<BK>(d.Kr, splits, z, k0, k1);
  A acc[4][4] = {};
  for (i64 kb = k0; kb < k1; kb += BK) {
    for (int i = 0; i < BM * BK / 256; ++i) {
      const int e = t + i * 256;
      const int ml = A_K_FAST ? e / BK : e % BM, kl = A_K_FAST ? e % BK : e / BM;
      const i64 kk = kb + kl < k1 ? kb + kl : d.Kr;  // past this split's end reads as 0
      const i64 ai = a_index<MODE>(cv, d, g, m0 + ml, kk);
      As[kl][ml] = ai < 0 ? A(0) : (A)dk_load(asrc + ai);
      const int nl = e / BK, kl2 = e % BK;
      const i64 kk2 = kb + kl2 < k1 ? kb + kl2 : d.Kr;
      const i64 bi = b_index<MODE>(cv, d, g, kk2, n0 + nl);
      Bs[kl2][nl] = bi < 0 ? A(0) : (A)dk_load(bsrc + bi);
    }
    __syncthreads();
#pragma unroll
    for (int kl = 0; kl < BK; ++kl) {
      A a[4], b[4];
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
    for (int j = 0; j < 4; ++j)
      epilogue<T, MODE>(cv, d, g, z, m0 + ty * 4 + i, n0 + tx * 4 + j, acc[i][j], bias, has_bias, out, ws);
}

// mma: 128 threads = 4 warps in 2x2, each a 32x32 piece of the 64x64 tile as 2x4 mma
// m16n8k16 tiles; A as [m][k] and B as [n][k] 16-bit bits in shared memory (k pairs packed
// in one 32-bit register, as the fragments want), 32 along Kred per step. T: dk_half, dk_bf16.
template <class T, int MODE>
__global__ void __launch_bounds__(128) conv2d_cuda_mma(const T* asrc, const T* bsrc, const T* bias,
                                                        int has_bias, T* out, float* ws, int splits,
                                                        CONV_ARGS) {
  CONV_MAKE;
  constexpr int BM = 64, BN = 64, BK = 32, LD = BK + 8;  // +8: rows start on different banks
  constexpr bool A_K_FAST = MODE >= WGRAD;
  __shared__ __align__(16) unsigned short As[BM][LD];
  __shared__ __align__(16) unsigned short Bs[BN][LD];
  const Gemm<MODE> d = gemm_dims<MODE>(cv);
  const int g = blockIdx.z % G, z = blockIdx.z / G, t = threadIdx.x;
  const int lane = t & 31, warp = t >> 5, wm = warp >> 1, wn = warp & 1, gi = lane >> 2, ti = lane & 3;
  const i64 m0 = (i64)blockIdx.x * BM, n0 = (i64)blockIdx.y * BN;
  i64 k0, k1;
  split_range<BK>(d.Kr, splits, z, k0, k1);
  float acc[2][4][4] = {};
  for (i64 kb = k0; kb < k1; kb += BK) {
    for (int i = 0; i < BM * BK / 128; ++i) {
      const int e = t + i * 128;
      const int ml = A_K_FAST ? e / BK : e % BM, kl = A_K_FAST ? e % BK : e / BM;
      const i64 kk = kb + kl < k1 ? kb + kl : d.Kr;
      const i64 ai = a_index<MODE>(cv, d, g, m0 + ml, kk);
      As[ml][kl] = ai < 0 ? (unsigned short)0 : dk_bits(asrc + ai);
      const int nl = e / BK, kl2 = e % BK;
      const i64 kk2 = kb + kl2 < k1 ? kb + kl2 : d.Kr;
      const i64 bi = b_index<MODE>(cv, d, g, kk2, n0 + nl);
      Bs[nl][kl2] = bi < 0 ? (unsigned short)0 : dk_bits(bsrc + bi);
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      unsigned a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int r0 = wm * 32 + mi * 16 + gi, c0 = ks + 2 * ti;
        a[mi][0] = *(const unsigned*)&As[r0][c0];
        a[mi][1] = *(const unsigned*)&As[r0 + 8][c0];
        a[mi][2] = *(const unsigned*)&As[r0][c0 + 8];
        a[mi][3] = *(const unsigned*)&As[r0 + 8][c0 + 8];
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int r0 = wn * 32 + ni * 8 + gi, c0 = ks + 2 * ti;
        b[ni][0] = *(const unsigned*)&Bs[r0][c0];
        b[ni][1] = *(const unsigned*)&Bs[r0][c0 + 8];
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], a[mi], b[ni], T());
    }
    __syncthreads();
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i64 m = m0 + wm * 32 + mi * 16 + gi + (e >= 2 ? 8 : 0);
        const i64 n = n0 + wn * 32 + ni * 8 + 2 * ti + (e & 1);
        epilogue<T, MODE>(cv, d, g, z, m, n, acc[mi][ni][e], bias, has_bias, out, ws);
      }
}

// dw[i] = sum over splits s (in order) of ws[s][i], rounded once to T. One thread per element.
template <class T>
__global__ void conv2d_wgrad_reduce_cuda(const acc_t<T>* ws, T* dw, i64 size, int splits) {
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= size) return;
  acc_t<T> v = 0;
  for (int s = 0; s < splits; ++s) v += ws[(i64)s * size + i];
  dk_store(dw + i, v);
}

// db[k] = sum over (n, p, q) of dy[n, k, p, q]: one block per k, each thread a fixed strided
// slice, then a fixed-order block sum (deterministic).
template <class T>
__global__ void __launch_bounds__(256) conv2d_bias_grad_cuda(const T* dy, T* db, int N, int K, i64 PQ) {
  __shared__ acc_t<T> scratch[32];
  const int k = blockIdx.x;
  acc_t<T> v = 0;
  for (int n = 0; n < N; ++n) {
    const T* row = dy + ((i64)n * K + k) * PQ;
    for (i64 i = threadIdx.x; i < PQ; i += blockDim.x) v += dk_load(row + i);
  }
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) dk_store(db + k, v);
}

// depthwise forward: groups == C, K = C * mult; one thread per y element (q fastest).
template <class T>
__global__ void conv2d_forward_cuda_depthwise(const T* x, const T* w, const T* bias, int has_bias, T* y,
                                              CONV_ARGS) {
  CONV_MAKE;
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x, PQ = (i64)cv.P * cv.Q;
  if (i >= (i64)cv.N * cv.K * PQ) return;
  const i64 nk = i / PQ;
  const int pq = (int)(i - nk * PQ), p = pq / cv.Q, q = pq - p * cv.Q, k = (int)(nk % cv.K);
  const i64 n = nk / cv.K;
  const T* xc = x + (n * cv.C + k / cv.Kg) * cv.H * cv.W;
  const T* wk = w + (i64)k * cv.RS;
  acc_t<T> v = has_bias ? (acc_t<T>)dk_load(bias + k) : acc_t<T>(0);
  for (int r = 0; r < cv.R; ++r) {
    const int h = p * cv.sh - cv.pt + r * cv.dh;
    if (h < 0 || h >= cv.H) continue;
    for (int s = 0; s < cv.S; ++s) {
      const int ww = q * cv.sw - cv.pl + s * cv.dw;
      if (ww >= 0 && ww < cv.W) v += (acc_t<T>)dk_load(xc + (i64)h * cv.W + ww) * dk_load(wk + r * cv.S + s);
    }
  }
  dk_store(y + i, v);
}

// depthwise dx: one thread per dx element; sums its channel's mult outputs over the taps
// that reach it (exact stride division only).
template <class T>
__global__ void conv2d_dgrad_cuda_depthwise(const T* dy, const T* w, T* dx, CONV_ARGS) {
  CONV_MAKE;
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x, HW = (i64)cv.H * cv.W;
  if (i >= (i64)cv.N * cv.C * HW) return;
  const i64 nc = i / HW;
  const int hw = (int)(i - nc * HW), h = hw / cv.W, x = hw - h * cv.W, c = (int)(nc % cv.C);
  const i64 n = nc / cv.C;
  acc_t<T> v = 0;
  for (int j = 0; j < cv.Kg; ++j) {
    const int k = c * cv.Kg + j;
    const T* dyk = dy + (n * cv.K + k) * cv.P * cv.Q;
    for (int r = 0; r < cv.R; ++r) {
      const int hp = h + cv.pt - r * cv.dh;
      if (hp < 0 || hp % cv.sh || hp / cv.sh >= cv.P) continue;
      for (int s = 0; s < cv.S; ++s) {
        const int wq = x + cv.pl - s * cv.dw;
        if (wq < 0 || wq % cv.sw || wq / cv.sw >= cv.Q) continue;
        v += (acc_t<T>)dk_load(dyk + (i64)(hp / cv.sh) * cv.Q + wq / cv.sw) * dk_load(w + (i64)k * cv.RS + r * cv.S + s);
      }
    }
  }
  dk_store(dx + i, v);
}

// depthwise dw: one block (256 threads) per (k, r, s) tap, a fixed-order sum over (n, p, q).
template <class T>
__global__ void __launch_bounds__(256) conv2d_wgrad_cuda_depthwise(const T* dy, const T* x, T* dwt, CONV_ARGS) {
  CONV_MAKE;
  __shared__ acc_t<T> scratch[32];
  const int k = blockIdx.x / cv.RS, rs = blockIdx.x % cv.RS, r = rs / cv.S, s = rs % cv.S, c = k / cv.Kg;
  const i64 PQ = (i64)cv.P * cv.Q;
  acc_t<T> v = 0;
  for (int n = 0; n < cv.N; ++n) {
    const T* dyk = dy + ((i64)n * cv.K + k) * PQ;
    const T* xc = x + ((i64)n * cv.C + c) * cv.H * cv.W;
    for (i64 pq = threadIdx.x; pq < PQ; pq += blockDim.x) {
      const int p = (int)(pq / cv.Q), q = (int)(pq - (i64)p * cv.Q);
      const int h = p * cv.sh - cv.pt + r * cv.dh, ww = q * cv.sw - cv.pl + s * cv.dw;
      if (h >= 0 && h < cv.H && ww >= 0 && ww < cv.W)
        v += (acc_t<T>)dk_load(dyk + pq) * dk_load(xc + (i64)h * cv.W + ww);
    }
  }
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) dk_store(dwt + blockIdx.x, v);
}

// Every instantiation the loader asks for through name_expressions, spelled out for the
// offline compile check (.ci/nvcc_check.sh defines DLK_INSTANTIATE_ALL); NVRTC never sees it.
#ifdef DLK_INSTANTIATE_ALL
#define DLK_CONV_SIMT(T)                                                                              \
  template __global__ void conv2d_cuda_igemm<T, FWD>(const T*, const T*, const T*, int, T*, acc_t<T>*, \
                                                     int, CONV_ARGS);                                  \
  template __global__ void conv2d_cuda_igemm<T, DGRAD>(const T*, const T*, const T*, int, T*,          \
                                                       acc_t<T>*, int, CONV_ARGS);                     \
  template __global__ void conv2d_cuda_igemm<T, WGRAD>(const T*, const T*, const T*, int, T*,          \
                                                       acc_t<T>*, int, CONV_ARGS);                     \
  template __global__ void conv2d_cuda_igemm<T, WGRAD_ATOMIC>(const T*, const T*, const T*, int, T*,   \
                                                              acc_t<T>*, int, CONV_ARGS);              \
  template __global__ void conv2d_wgrad_reduce_cuda<T>(const acc_t<T>*, T*, i64, int);                 \
  template __global__ void conv2d_bias_grad_cuda<T>(const T*, T*, int, int, i64);                      \
  template __global__ void conv2d_forward_cuda_depthwise<T>(const T*, const T*, const T*, int, T*,     \
                                                            CONV_ARGS);                                \
  template __global__ void conv2d_dgrad_cuda_depthwise<T>(const T*, const T*, T*, CONV_ARGS);          \
  template __global__ void conv2d_wgrad_cuda_depthwise<T>(const T*, const T*, T*, CONV_ARGS);
#define DLK_CONV_MMA(T)                                                                               \
  template __global__ void conv2d_cuda_mma<T, FWD>(const T*, const T*, const T*, int, T*, float*, int, \
                                                   CONV_ARGS);                                         \
  template __global__ void conv2d_cuda_mma<T, DGRAD>(const T*, const T*, const T*, int, T*, float*,    \
                                                     int, CONV_ARGS);                                  \
  template __global__ void conv2d_cuda_mma<T, WGRAD>(const T*, const T*, const T*, int, T*, float*,    \
                                                     int, CONV_ARGS);                                  \
  template __global__ void conv2d_cuda_mma<T, WGRAD_ATOMIC>(const T*, const T*, const T*, int, T*,     \
                                                            float*, int, CONV_ARGS);
DLK_CONV_SIMT(float)
DLK_CONV_SIMT(double)
DLK_CONV_SIMT(dk_half)
DLK_CONV_SIMT(dk_bf16)
DLK_CONV_MMA(dk_half)
DLK_CONV_MMA(dk_bf16)
#endif
