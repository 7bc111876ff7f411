// Scaled dot-product attention on the GPU, FlashAttention-2 style: forward and backward.
// Ops: scaled_dot_product_attention
// Variants:
//   flash: tiles on CUDA cores, any dtype, head dims <= 256; backward dK/dV per key block, then dQ in its own pass (no atomics)
//   mma: forward on tensor cores (mma.sync m16n8k16), float16/bfloat16, 4 warps x 16 query rows, P kept in registers
//   decode: forward for L <= 4 rows: the keys split across blocks, partial (max, sum, acc) per split merged in split order
//   atomic: backward opt-in: one pass over key blocks, dQ added by atomicAdd into a float buffer (not bitwise repeatable)
//
// Layouts (contiguous, as ops/attention/__init__.py hands them over): q (Z, L, E), k (Zk, S, E),
// v (Zk, S, Ev), kv_index (Z,) int64: output head z reads key head kv_index[z]. out (Z, L, Ev);
// lse (Z, L) in acc_t (float for float/half/bf16, double for double), +inf for a fully masked row.
// The mask is the op's Mask: element (z, i, j) at mask[moff[z] + i*mrs + j*mcs] (strides 0 where
// it broadcasts), a bool mask already turned into 0 / -inf. Causal: row i sees keys j <= i.
// Dropout: the counter-based SplitMix64 of ops/attention/common.py on ctr = (z*L + i)*S + j, so the
// mask is bit-identical to the CPU's; kept probabilities are scaled by dscale = 1 / (1 - p).
// Softmax statistics and every sum run in acc_t; a row whose keys are all masked gives 0, lse +inf.
#include "common.cuh"

struct Attn {
  int Z, L, S, E, Ev;
  const i64* moff;
  i64 mrs, mcs;
  int causal;
  double scale;
  int dropout;
  u64 seed, thr;
  double dscale;
};

// The scalar arguments every attention kernel takes after its pointers (mask typed T).
#define ATTN_ARGS_OF(T)                                                                            \
  int Z, int L, int S, int E, int Ev, const T *mask, const i64 *moff, i64 mrs, i64 mcs, int causal, \
      double scale, int dropout, u64 seed, u64 thr, double dscale
#define ATTN_ARGS ATTN_ARGS_OF(T)
#define ATTN_MAKE const Attn at = {Z, L, S, E, Ev, moff, mrs, mcs, causal, scale, dropout, seed, thr, dscale}

__device__ __forceinline__ float dk_log(float v) { return logf(v); }
__device__ __forceinline__ double dk_log(double v) { return log(v); }
template <class A> __device__ __forceinline__ A amax(A a, A b) { return a > b ? a : b; }
__device__ __forceinline__ i64 imin(i64 a, i64 b) { return a < b ? a : b; }

// The additive bias of score (z, i, j): -inf past the causal diagonal or past the keys, else the
// mask entry (0 without a mask).
template <class T>
__device__ __forceinline__ acc_t<T> score_bias(const Attn& a, const T* mask, int z, i64 i, i64 j) {
  typedef acc_t<T> A;
  if (j >= a.S || (a.causal && j > i)) return -dk_inf<A>();
  if (mask) return (A)dk_load(mask + a.moff[z] + i * a.mrs + j * a.mcs);
  return A(0);
}

// Dropout factor of element (z, i, j): dscale where kept, 0 where dropped (ops/attention/common.py).
template <class A> __device__ __forceinline__ A drop_factor(const Attn& a, int z, i64 i, i64 j) {
  const u64 ctr = ((u64)z * (u64)a.L + (u64)i) * (u64)a.S + (u64)j;
  u64 x = a.seed + (ctr + 1ull) * 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x = x ^ (x >> 31);
  return (x >> 40) >= a.thr ? (A)a.dscale : A(0);
}

// exp(s - m) with exp(-inf) = 0 and a fully masked running max (m = -inf) giving 0, never NaN.
template <class A> __device__ __forceinline__ A exp_sub(A s, A m) {
  return m == -dk_inf<A>() ? A(0) : dk_exp(s - m);
}

// Max and sum over the G consecutive lanes of a group (G = 4 or 8, inside one warp), fixed order.
template <int G, class A> __device__ __forceinline__ A group_max(A v) {
  for (int o = 1; o < G; o <<= 1) v = amax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int G, class A> __device__ __forceinline__ A group_sum(A v) {
  for (int o = 1; o < G; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Copies rows [r0, r0 + rows) of a (n, width) array into smem[row * ld + col] in acc_t, zeros
// past row n (every thread of the block takes a share; the caller syncs).
template <class T>
__device__ __forceinline__ void load_tile(acc_t<T>* s, int ld, const T* src, i64 r0, int rows, i64 n, int width) {
  for (int e = threadIdx.x; e < rows * width; e += blockDim.x) {
    const int r = e / width, c = e - r * width;
    s[r * ld + c] = r0 + r < n ? (acc_t<T>)dk_load(src + (r0 + r) * width + c) : acc_t<T>(0);
  }
}

// Tile sizes of the CUDA-core kernels: 32 x 32 (16 x 16 for double, to fit shared memory), 128
// threads; a row (or key) is owned by a group of G = 128 / BN consecutive lanes.
template <class T> struct Tiles { static constexpr int B = 32; };
template <> struct Tiles<double> { static constexpr int B = 16; };

// ================================ forward, CUDA cores ======================================
// flash forward: block (x, z) = query rows x*BM.. of head z, 128 threads; thread t owns row
// r = t / G and, in its group (G lanes, one warp), keys c = t%G + G*jj of each tile and output
// columns f = t%G + G*jj (EV / G accumulators; Ev <= EV). Online softmax per row in acc_t.
// Shared (acc_t): Q (BM x E+1), the current K or V tile (BN x max(E,Ev)+1), P (BM x BN+1).
template <class T, int EV>
__global__ void __launch_bounds__(128)
    attn_fwd_flash(const T* q, const T* k, const T* v, const i64* kv_index, T* out, acc_t<T>* lse, ATTN_ARGS) {
  ATTN_MAKE;
  typedef acc_t<T> A;
  constexpr int BM = Tiles<T>::B, BN = Tiles<T>::B, G = 128 / BN, NJ = BN / G;
  extern __shared__ __align__(16) unsigned char smem[];
  const int ldq = E + 1, ldkv = (E > Ev ? E : Ev) + 1, ldp = BN + 1;
  A* Qs = (A*)smem;
  A* KV = Qs + BM * ldq;
  A* Ps = KV + BN * ldkv;
  const int z = blockIdx.y, t = threadIdx.x, r = t / G, g = t % G;
  const i64 i0 = (i64)blockIdx.x * BM, i = i0 + r, zk = kv_index[z];
  const i64 iend = imin(i0 + BM, L), send = causal ? imin(S, iend) : S;  // keys this block sees
  load_tile(Qs, ldq, q + (i64)z * L * E, i0, BM, L, E);
  A m = -dk_inf<A>(), l = 0, o[EV / G] = {};
  for (i64 j0 = 0; j0 < send; j0 += BN) {
    __syncthreads();  // Q loaded; the previous V tile fully read
    load_tile(KV, ldkv, k + zk * S * E, j0, BN, S, E);
    __syncthreads();
    A s[NJ], mt = -dk_inf<A>();
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) {
      const int c = g + G * jj;
      A acc = 0;
      for (int e = 0; e < E; ++e) acc += Qs[r * ldq + e] * KV[c * ldkv + e];
      s[jj] = i < L ? acc * (A)scale + score_bias(at, mask, z, i, j0 + c) : -dk_inf<A>();
      mt = amax(mt, s[jj]);
    }
    const A mnew = amax(m, group_max<G>(mt));
    const A alpha = exp_sub(m, mnew);
    A ps = 0;
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) {
      const int c = g + G * jj;
      A p = exp_sub(s[jj], mnew);
      ps += p;
      if (dropout && p != A(0)) p *= drop_factor<A>(at, z, i, j0 + c);
      Ps[r * ldp + c] = p;
    }
    l = l * alpha + group_sum<G>(ps);
    m = mnew;
#pragma unroll
    for (int jj = 0; jj < EV / G; ++jj) o[jj] *= alpha;
    __syncthreads();  // K fully read before V overwrites it
    load_tile(KV, ldkv, v + zk * S * Ev, j0, BN, S, Ev);
    __syncthreads();
    for (int c = 0; c < BN; ++c) {
      const A p = Ps[r * ldp + c];
#pragma unroll
      for (int jj = 0; jj < EV / G; ++jj) {
        const int f = g + G * jj;
        if (f < Ev) o[jj] += p * KV[c * ldkv + f];
      }
    }
  }
  if (i >= L) return;
  const A inv = l == A(0) ? A(0) : A(1) / l;
#pragma unroll
  for (int jj = 0; jj < EV / G; ++jj) {
    const int f = g + G * jj;
    if (f < Ev) dk_store(out + ((i64)z * L + i) * Ev + f, o[jj] * inv);
  }
  if (g == 0) lse[(i64)z * L + i] = l == A(0) ? dk_inf<A>() : m + dk_log(l);
}

// ================================ forward, tensor cores =====================================
__device__ __forceinline__ unsigned short f2bits(float v, dk_half) { return dk_float_to_half(v); }
__device__ __forceinline__ unsigned short f2bits(float v, dk_bf16) { return dk_float_to_bf16(v); }
template <class T> __device__ __forceinline__ unsigned pack2(float lo, float hi) {
  return (unsigned)f2bits(lo, T()) | ((unsigned)f2bits(hi, T()) << 16);
}

// Copies rows [r0, r0 + rows) x cols [0, width) of a (n, width) 16-bit array as bits into
// s[row * ld + col], zeros past row n and in the padding columns [width, D). TRANS: s[col * ld + row].
template <class T, bool TRANS>
__device__ __forceinline__ void load_bits(unsigned short* s, int ld, const T* src, i64 r0, int rows, i64 n,
                                          int width, int D) {
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, c = e - r * D;
    const unsigned short b = (r0 + r < n && c < width) ? dk_bits(src + (r0 + r) * width + c) : (unsigned short)0;
    if (TRANS) s[c * ld + r] = b;
    else s[r * ld + c] = b;
  }
}

// mma forward (T = dk_half or dk_bf16): block (x, z) = 64 query rows of head z; 4 warps, warp w
// owns rows 16w..16w+15; lane (gr = lane/4, tq = lane%4) holds rows gr and gr+8 of them.
// D = E and Ev padded with zeros to a multiple of 32 (D <= 256); key tiles of BN (64, 32 for D > 128).
// S = Q Kᵀ (mma, k over E), online softmax on the fragments (row max/sum across the 4 lanes of a
// quad), then P -> 16-bit A fragments straight from the S registers (FlashAttention-2: P never
// touches shared memory) and O += P V (mma, k over keys). Scores are kept in log2 units.
// Shared (16-bit bits): Q (64 x D+8), K (BN x D+8), V transposed (D x BN+8) so B fragments are
// two consecutive keys. The +8 padding staggers rows across banks.
template <class T, int D>
__global__ void __launch_bounds__(128)
    attn_fwd_mma(const T* q, const T* k, const T* v, const i64* kv_index, T* out, float* lse, ATTN_ARGS) {
  ATTN_MAKE;
  constexpr int BM = 64, BN = D > 128 ? 32 : 64, LD = D + 8, LDV = BN + 8, NT = BN / 8, OT = D / 8;
  constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned short* Qs = (unsigned short*)smem;
  unsigned short* Ks = Qs + BM * LD;
  unsigned short* Vt = Ks + BN * LD;
  const int z = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5, gr = lane >> 2, tq = lane & 3;
  const i64 i0 = (i64)blockIdx.x * BM, zk = kv_index[z];
  const i64 iend = imin(i0 + BM, L), send = causal ? imin(S, iend) : S;
  const i64 row[2] = {i0 + 16 * w + gr, i0 + 16 * w + gr + 8};
  const float sc = (float)scale * LOG2E, NINF = -dk_inf<float>();
  load_bits<T, false>(Qs, LD, q + (i64)z * L * E, i0, BM, L, E, D);
  float m[2] = {NINF, NINF}, l[2] = {0.f, 0.f}, o[OT][4] = {};
  for (i64 j0 = 0; j0 < send; j0 += BN) {
    __syncthreads();  // the previous tile's K and V fully read (and Q loaded)
    load_bits<T, false>(Ks, LD, k + zk * S * E, j0, BN, S, E, D);
    load_bits<T, true>(Vt, LDV, v + zk * S * Ev, j0, BN, S, Ev, D);
    __syncthreads();
    float s[NT][4] = {};
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {  // S = Q Kᵀ over E, 16 at a time
      if (kc * 16 >= E) break;
      const unsigned short* qa = Qs + (16 * w + gr) * LD + 16 * kc + 2 * tq;
      const unsigned a[4] = {*(const unsigned*)qa, *(const unsigned*)(qa + 8 * LD), *(const unsigned*)(qa + 8),
                             *(const unsigned*)(qa + 8 * LD + 8)};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const unsigned short* kb = Ks + (8 * nt + gr) * LD + 16 * kc + 2 * tq;
        const unsigned b[2] = {*(const unsigned*)kb, *(const unsigned*)(kb + 8)};
        mma_16816(s[nt], a, b, T());
      }
    }
    float mt[2] = {NINF, NINF};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // element e: row row[e/2], key j0 + 8nt + 2tq + e%2
        const i64 i = row[e >> 1], j = j0 + 8 * nt + 2 * tq + (e & 1);
        s[nt][e] = i < L ? s[nt][e] * sc + LOG2E * score_bias(at, mask, z, i, j) : NINF;
        mt[e >> 1] = amax(mt[e >> 1], s[nt][e]);
      }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float mnew = amax(m[h], group_max<4>(mt[h]));
      alpha[h] = mnew == NINF ? 1.f : exp2f(m[h] - mnew);
      m[h] = mnew;
      l[h] *= alpha[h];  // this lane's partial row sum; the quad's partials are added at the end
    }
#pragma unroll
    for (int nt = 0; nt < OT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[nt][e] *= alpha[e >> 1];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float mh = m[e >> 1];
        float p = mh == NINF ? 0.f : exp2f(s[nt][e] - mh);
        l[e >> 1] += p;
        if (dropout && p != 0.f) p *= drop_factor<float>(at, z, row[e >> 1], j0 + 8 * nt + 2 * tq + (e & 1));
        s[nt][e] = p;
      }
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {  // O += P V over this tile's keys, 16 at a time
      const unsigned a[4] = {pack2<T>(s[2 * kc][0], s[2 * kc][1]), pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                             pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                             pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
      for (int nt = 0; nt < OT; ++nt) {
        if (nt * 8 >= Ev) break;
        const unsigned short* vb = Vt + (8 * nt + gr) * LDV + 16 * kc + 2 * tq;
        const unsigned b[2] = {*(const unsigned*)vb, *(const unsigned*)(vb + 8)};
        mma_16816(o[nt], a, b, T());
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float lh = group_sum<4>(l[h]), inv = lh == 0.f ? 0.f : 1.f / lh;
    const i64 i = row[h];
    if (i >= L) continue;
#pragma unroll
    for (int nt = 0; nt < OT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int f = 8 * nt + 2 * tq + e;
        if (f < Ev) dk_store(out + ((i64)z * L + i) * Ev + f, o[nt][2 * h + e] * inv);
      }
    if (tq == 0) lse[(i64)z * L + i] = lh == 0.f ? dk_inf<float>() : (m[h] + log2f(lh)) * LN2;
  }
}

// ================================ forward, decoding (split-K) ===============================
// decode: block (row zi = z*L + i, split sp) of 128 threads takes keys [sp*chunk, +chunk) of one
// query row. Warp w takes keys j0+w, j0+w+4, ...: its lanes split the dot product over E
// (warp_sum, fixed order) and keep output columns f = lane + 32*jj (DM / 32 of them) with a
// per-warp online softmax; the 4 warps then merge in warp order into the split's partial
// part[(zi*splits + sp)*(Ev+2) + ...] = (max, sum, acc[0..Ev)), merged by attn_decode_combine.
template <class T, int DM>
__global__ void __launch_bounds__(128) attn_fwd_decode(const T* q, const T* k, const T* v, const i64* kv_index,
                                                       acc_t<T>* part, int chunk, int splits, ATTN_ARGS) {
  ATTN_MAKE;
  typedef acc_t<T> A;
  __shared__ A qs[DM], wm[4], wl[4], wacc[4][DM];
  const int sp = blockIdx.y, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const i64 zi = blockIdx.x, z = zi / L, i = zi - z * L, zk = kv_index[z];
  for (int e = threadIdx.x; e < E; e += 128) qs[e] = (A)dk_load(q + zi * E + e);
  __syncthreads();
  const i64 send = causal ? imin(S, i + 1) : S, j0 = (i64)sp * chunk, j1 = imin(j0 + chunk, send);
  A m = -dk_inf<A>(), l = 0, o[DM / 32] = {};
  for (i64 j = j0 + w; j < j1; j += 4) {
    A dot = 0;
    for (int e = lane; e < E; e += 32) dot += qs[e] * (A)dk_load(k + (zk * S + j) * E + e);
    const A s = warp_sum(dot) * (A)scale + score_bias(at, mask, (int)z, i, j);
    const A mnew = amax(m, s), alpha = exp_sub(m, mnew);
    A p = exp_sub(s, mnew);
    l = l * alpha + p;
    m = mnew;
    if (dropout && p != A(0)) p *= drop_factor<A>(at, (int)z, i, j);
#pragma unroll
    for (int jj = 0; jj < DM / 32; ++jj) {
      const int f = lane + 32 * jj;
      o[jj] = o[jj] * alpha + (f < Ev ? p * (A)dk_load(v + (zk * S + j) * Ev + f) : A(0));
    }
  }
  if (lane == 0) wm[w] = m, wl[w] = l;
#pragma unroll
  for (int jj = 0; jj < DM / 32; ++jj) wacc[w][lane + 32 * jj] = o[jj];
  __syncthreads();
  A M = -dk_inf<A>();
  for (int x = 0; x < 4; ++x) M = amax(M, wm[x]);
  A* dst = part + (zi * splits + sp) * (i64)(Ev + 2);
  if (threadIdx.x == 0) {
    A L_ = 0;
    for (int x = 0; x < 4; ++x) L_ += wl[x] * exp_sub(wm[x], M);
    dst[0] = M, dst[1] = L_;
  }
  for (int f = threadIdx.x; f < Ev; f += 128) {
    A acc = 0;
    for (int x = 0; x < 4; ++x) acc += wacc[x][f] * exp_sub(wm[x], M);
    dst[2 + f] = acc;
  }
}

// Merges the splits of row zi = blockIdx.x in split order: M = max m_s, l = sum l_s e^(m_s - M),
// out[f] = sum acc_s[f] e^(m_s - M) / l (0 for a fully masked row); lse = M + log l. Thread: column f.
template <class T>
__global__ void attn_decode_combine(const acc_t<T>* part, int splits, int Ev, T* out, acc_t<T>* lse) {
  typedef acc_t<T> A;
  const i64 zi = blockIdx.x;
  const A* p = part + zi * splits * (i64)(Ev + 2);
  A M = -dk_inf<A>(), l = 0;
  for (int s = 0; s < splits; ++s) M = amax(M, p[s * (i64)(Ev + 2)]);
  for (int s = 0; s < splits; ++s) l += p[s * (i64)(Ev + 2) + 1] * exp_sub(p[s * (i64)(Ev + 2)], M);
  const A inv = l == A(0) ? A(0) : A(1) / l;
  for (int f = threadIdx.x; f < Ev; f += blockDim.x) {
    A acc = 0;
    for (int s = 0; s < splits; ++s) acc += p[s * (i64)(Ev + 2) + 2 + f] * exp_sub(p[s * (i64)(Ev + 2)], M);
    dk_store(out + zi * Ev + f, acc * inv);
  }
  if (threadIdx.x == 0) lse[zi] = l == A(0) ? dk_inf<A>() : M + dk_log(l);
}

// ================================ backward ==================================================
// D[zi] = rowsum(dO * O) for row zi: one warp per row (4 rows per 128-thread block), fixed order.
template <class T>
__global__ void attn_bwd_rowdot(const T* dout, const T* out, acc_t<T>* Drow, i64 rows, int Ev) {
  const i64 zi = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
  if (zi >= rows) return;
  acc_t<T> v = 0;
  for (int f = threadIdx.x & 31; f < Ev; f += 32) v += (acc_t<T>)dk_load(dout + zi * Ev + f) * dk_load(out + zi * Ev + f);
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) Drow[zi] = v;
}

// The recomputed probability and score gradient of element (z, i, j), given s = q_i . k_j:
// p = exp(scale*s + bias - lse_i), dp = dO_i . v_j, pd = p * drop, ds = p * (dp * drop - D_i).
template <class A, class T>
__device__ __forceinline__ void p_and_ds(const Attn& a, const T* mask, int z, i64 i, i64 j, A s, A dp, A lse_i,
                                         A D_i, A& pd, A& ds) {
  const A bias = score_bias(a, mask, z, i, j);
  const A p = (i >= a.L || lse_i == dk_inf<A>()) ? A(0) : exp_sub(s * (A)a.scale + bias, lse_i);
  const A drop = (a.dropout && p != A(0)) ? drop_factor<A>(a, z, i, j) : A(1);
  pd = p * drop;
  ds = p * (dp * drop - D_i);
}

// flash backward, pass 1: dK and dV of key block x (BN keys) of key head zk = blockIdx.y, summed
// over the output heads reading zk (zlist[zptr[zk] .. zptr[zk+1]), in that order) and their query
// blocks (in order): no other block writes these rows, so no atomics. Thread t owns key c = t / G
// and, in its group, query rows r = t%G + G*jj and dK/dV columns t%G + G*jj (DM / G each).
// dmask (if not null) gets dS; with ATOMIC, dQ's share of this block is atomicAdd-ed into dq_acc.
// Shared (acc_t): K, V (BN rows), Q, dO (BM rows), P~ and dS (BM x BN+1), lse and D (BM).
template <class T, int DM, bool ATOMIC>
__global__ void __launch_bounds__(128)
    attn_bwd_dkdv(const T* dout, const T* q, const T* k, const T* v, const acc_t<T>* lse, const acc_t<T>* Drow,
                  const i64* zptr, const i64* zlist, T* dk, T* dv, T* dmask, acc_t<T>* dq_acc, ATTN_ARGS) {
  ATTN_MAKE;
  typedef acc_t<T> A;
  constexpr int BM = Tiles<T>::B, BN = Tiles<T>::B, G = 128 / BN, NJ = BM / G, NC = DM / G;
  extern __shared__ __align__(16) unsigned char smem[];
  const int ldk = E + 1, ldv = Ev + 1, ldp = BN + 1;
  A* Ks = (A*)smem;
  A* Vs = Ks + BN * ldk;
  A* Qs = Vs + BN * ldv;
  A* dOs = Qs + BM * ldk;
  A* Pt = dOs + BM * ldv;
  A* dS = Pt + BM * ldp;
  A* ls = dS + BM * ldp;
  A* Ds = ls + BM;
  const int t = threadIdx.x, c = t / G, g = t % G;
  const i64 zk = blockIdx.y, j0 = (i64)blockIdx.x * BN, j = j0 + c;
  load_tile(Ks, ldk, k + zk * S * E, j0, BN, S, E);
  load_tile(Vs, ldv, v + zk * S * Ev, j0, BN, S, Ev);
  A dka[NC] = {}, dva[NC] = {};
  for (i64 zz = zptr[zk]; zz < zptr[zk + 1]; ++zz) {
    const int z = (int)zlist[zz];
    for (i64 i0 = causal ? (j0 / BM) * BM : 0; i0 < L; i0 += BM) {  // causal: rows i >= j0 only
      __syncthreads();  // the previous block's tiles fully read
      load_tile(Qs, ldk, q + (i64)z * L * E, i0, BM, L, E);
      load_tile(dOs, ldv, dout + (i64)z * L * Ev, i0, BM, L, Ev);
      for (int r = t; r < BM; r += 128) {
        ls[r] = i0 + r < L ? lse[(i64)z * L + i0 + r] : dk_inf<A>();
        Ds[r] = i0 + r < L ? Drow[(i64)z * L + i0 + r] : A(0);
      }
      __syncthreads();
#pragma unroll
      for (int jj = 0; jj < NJ; ++jj) {
        const int r = g + G * jj;
        A s = 0, dp = 0;
        for (int e = 0; e < E; ++e) s += Qs[r * ldk + e] * Ks[c * ldk + e];
        for (int f = 0; f < Ev; ++f) dp += dOs[r * ldv + f] * Vs[c * ldv + f];
        A pd, ds;
        p_and_ds(at, mask, z, i0 + r, j, s, dp, ls[r], Ds[r], pd, ds);
        Pt[r * ldp + c] = pd;
        dS[r * ldp + c] = ds;
        if (dmask && i0 + r < L && j < S) dk_store(dmask + ((i64)z * L + i0 + r) * S + j, ds);
      }
      if (ATOMIC) __syncthreads();  // dQ below reads every key's dS
      else __syncwarp();            // key c's column was written by its own group
      for (int r = 0; r < BM; ++r) {
        const A pd = Pt[r * ldp + c], ds = dS[r * ldp + c] * (A)scale;
#pragma unroll
        for (int jj = 0; jj < NC; ++jj) {
          const int col = g + G * jj;
          if (col < Ev) dva[jj] += pd * dOs[r * ldv + col];
          if (col < E) dka[jj] += ds * Qs[r * ldk + col];
        }
      }
      if (ATOMIC) {  // dQ[r, e] += scale * sum_c dS[r, c] K[c, e]: thread owns row t/G, columns t%G + G*jj
        const int r = t / G;
        if (i0 + r < L)
          for (int e = g; e < E; e += G) {
            A acc = 0;
            for (int cc = 0; cc < BN; ++cc) acc += dS[r * ldp + cc] * Ks[cc * ldk + e];
            atomicAdd(dq_acc + ((i64)z * L + i0 + r) * E + e, acc * (A)scale);
          }
      }
    }
  }
  if (j >= S) return;
#pragma unroll
  for (int jj = 0; jj < NC; ++jj) {
    const int col = g + G * jj;
    if (col < Ev) dk_store(dv + (zk * S + j) * Ev + col, dva[jj]);
    if (col < E) dk_store(dk + (zk * S + j) * E + col, dka[jj]);
  }
}

// flash backward, pass 2: dQ of query block x (BM rows) of head z = blockIdx.y, summed over the
// key blocks in order (causal: only those at or left of the diagonal). Thread t owns row
// r = t / G and, in its group, keys c = t%G + G*jj and dQ columns t%G + G*jj (DM / G each).
// Shared (acc_t): Q, dO (BM rows), K, V (BN rows), dS (BM x BN+1).
template <class T, int DM>
__global__ void __launch_bounds__(128)
    attn_bwd_dq(const T* dout, const T* q, const T* k, const T* v, const acc_t<T>* lse, const acc_t<T>* Drow,
                const i64* kv_index, T* dq, ATTN_ARGS) {
  ATTN_MAKE;
  typedef acc_t<T> A;
  constexpr int BM = Tiles<T>::B, BN = Tiles<T>::B, G = 128 / BN, NJ = BN / G, NC = DM / G;
  extern __shared__ __align__(16) unsigned char smem[];
  const int ldk = E + 1, ldv = Ev + 1, ldp = BN + 1;
  A* Qs = (A*)smem;
  A* dOs = Qs + BM * ldk;
  A* Ks = dOs + BM * ldv;
  A* Vs = Ks + BN * ldk;
  A* dS = Vs + BN * ldv;
  const int z = blockIdx.y, t = threadIdx.x, r = t / G, g = t % G;
  const i64 i0 = (i64)blockIdx.x * BM, i = i0 + r, zk = kv_index[z];
  const i64 send = causal ? imin(S, imin(i0 + BM, L)) : S;
  load_tile(Qs, ldk, q + (i64)z * L * E, i0, BM, L, E);
  load_tile(dOs, ldv, dout + (i64)z * L * Ev, i0, BM, L, Ev);
  const A lse_i = i < L ? lse[(i64)z * L + i] : dk_inf<A>(), D_i = i < L ? Drow[(i64)z * L + i] : A(0);
  A dqa[NC] = {};
  for (i64 j0 = 0; j0 < send; j0 += BN) {
    __syncthreads();
    load_tile(Ks, ldk, k + zk * S * E, j0, BN, S, E);
    load_tile(Vs, ldv, v + zk * S * Ev, j0, BN, S, Ev);
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) {
      const int c = g + G * jj;
      A s = 0, dp = 0;
      for (int e = 0; e < E; ++e) s += Qs[r * ldk + e] * Ks[c * ldk + e];
      for (int f = 0; f < Ev; ++f) dp += dOs[r * ldv + f] * Vs[c * ldv + f];
      A pd, ds;
      p_and_ds(at, mask, z, i, j0 + c, s, dp, lse_i, D_i, pd, ds);
      dS[r * ldp + c] = ds * (A)scale;
    }
    __syncwarp();  // row r's dS was written by its own group
    for (int c = 0; c < BN; ++c) {
      const A ds = dS[r * ldp + c];
#pragma unroll
      for (int jj = 0; jj < NC; ++jj) {
        const int e = g + G * jj;
        if (e < E) dqa[jj] += ds * Ks[c * ldk + e];
      }
    }
  }
  if (i >= L) return;
#pragma unroll
  for (int jj = 0; jj < NC; ++jj) {
    const int e = g + G * jj;
    if (e < E) dk_store(dq + ((i64)z * L + i) * E + e, dqa[jj]);
  }
}

// dst[n] = src[n] rounded to T (the atomic path's dQ accumulator). One thread per element.
template <class T>
__global__ void attn_cast(const acc_t<T>* src, T* dst, i64 n) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x < n) dk_store(dst + x, src[x]);
}

// Every instantiation the loader asks for through name_expressions, spelled out for the
// offline compile check (.ci/nvcc_check.sh defines DLK_INSTANTIATE_ALL); NVRTC never sees it.
#ifdef DLK_INSTANTIATE_ALL
#define DLK_ATTN_FLASH(T, DM)                                                                           \
  template __global__ void attn_fwd_flash<T, DM>(const T*, const T*, const T*, const i64*, T*, acc_t<T>*, \
                                                 ATTN_ARGS_OF(T));                                             \
  template __global__ void attn_fwd_decode<T, DM>(const T*, const T*, const T*, const i64*, acc_t<T>*,    \
                                                  int, int, ATTN_ARGS_OF(T));                                  \
  template __global__ void attn_bwd_dkdv<T, DM, false>(const T*, const T*, const T*, const T*,            \
                                                       const acc_t<T>*, const acc_t<T>*, const i64*,      \
                                                       const i64*, T*, T*, T*, acc_t<T>*, ATTN_ARGS_OF(T));     \
  template __global__ void attn_bwd_dkdv<T, DM, true>(const T*, const T*, const T*, const T*,             \
                                                      const acc_t<T>*, const acc_t<T>*, const i64*,       \
                                                      const i64*, T*, T*, T*, acc_t<T>*, ATTN_ARGS_OF(T));      \
  template __global__ void attn_bwd_dq<T, DM>(const T*, const T*, const T*, const T*, const acc_t<T>*,    \
                                              const acc_t<T>*, const i64*, T*, ATTN_ARGS_OF(T));
#define DLK_ATTN_TYPE(T)                                                                                \
  DLK_ATTN_FLASH(T, 64)                                                                                 \
  DLK_ATTN_FLASH(T, 128)                                                                                \
  DLK_ATTN_FLASH(T, 256)                                                                                \
  template __global__ void attn_decode_combine<T>(const acc_t<T>*, int, int, T*, acc_t<T>*);            \
  template __global__ void attn_bwd_rowdot<T>(const T*, const T*, acc_t<T>*, i64, int);                  \
  template __global__ void attn_cast<T>(const acc_t<T>*, T*, i64);
#define DLK_ATTN_MMA(T, D) \
  template __global__ void attn_fwd_mma<T, D>(const T*, const T*, const T*, const i64*, T*, float*, ATTN_ARGS_OF(T));
#define DLK_ATTN_MMA_ALL(T)                                                                              \
  DLK_ATTN_MMA(T, 32) DLK_ATTN_MMA(T, 64) DLK_ATTN_MMA(T, 96) DLK_ATTN_MMA(T, 128) DLK_ATTN_MMA(T, 160)   \
  DLK_ATTN_MMA(T, 192) DLK_ATTN_MMA(T, 224) DLK_ATTN_MMA(T, 256)
DLK_ATTN_TYPE(float)
DLK_ATTN_TYPE(double)
DLK_ATTN_TYPE(dk_half)
DLK_ATTN_TYPE(dk_bf16)
DLK_ATTN_MMA_ALL(dk_half)
DLK_ATTN_MMA_ALL(dk_bf16)
#endif
