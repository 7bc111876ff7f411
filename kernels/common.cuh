// Shared device helpers for kernels/*.cu. The loader (python/dlkernels/_cuda.py) pastes this
// file in place of `#include "common.cuh"`, so NVRTC needs no include path at all.
//
// No system or CUDA headers on purpose: CuPy compiles through NVRTC, where cuda_fp16.h and
// especially cuda_bf16.h are found only if the CUDA toolkit headers are installed and on
// CuPy's include path (pip wheels of CuPy ship cuda_fp16.h but not cuda_bf16.h; some
// cuda_bf16.h versions also pull in <cstdint>, which NVRTC lacks). So the 16-bit types are
// plain 2-byte structs here, converted with one PTX instruction each (cvt), and tensor-core
// math is inline PTX mma.sync on packed 32-bit registers.
//
// Types:  dk_half (IEEE float16), dk_bf16 (bfloat16), float, double.
// Math:   every load widens to acc_t<T> (float for the 16-bit types and float, double for
//         double); sums run in acc_t; stores round once, to nearest even.
#ifndef DLK_COMMON_CUH
#define DLK_COMMON_CUH

typedef long long i64;
typedef unsigned long long u64;

struct __align__(2) dk_half { unsigned short bits; };
struct __align__(2) dk_bf16 { unsigned short bits; };

template <class T> struct acc_type { typedef float type; };
template <> struct acc_type<double> { typedef double type; };
template <class T> using acc_t = typename acc_type<T>::type;

// ---- loads: widen to the accumulator type ----
__device__ __forceinline__ float dk_load(const float* p) { return *p; }
__device__ __forceinline__ double dk_load(const double* p) { return *p; }
__device__ __forceinline__ float dk_half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ float dk_bf16_to_float(unsigned short h) {
  return __uint_as_float(((unsigned)h) << 16);  // bf16 is the top half of a float32
}
__device__ __forceinline__ float dk_load(const dk_half* p) { return dk_half_to_float(p->bits); }
__device__ __forceinline__ float dk_load(const dk_bf16* p) { return dk_bf16_to_float(p->bits); }

// ---- stores: round once from the accumulator ----
__device__ __forceinline__ void dk_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void dk_store(double* p, double v) { *p = v; }
__device__ __forceinline__ unsigned short dk_float_to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ unsigned short dk_float_to_bf16(float f) {
  // round to nearest even by bit arithmetic (works on every arch; NaN stays NaN)
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
__device__ __forceinline__ void dk_store(dk_half* p, float v) { p->bits = dk_float_to_half(v); }
__device__ __forceinline__ void dk_store(dk_bf16* p, float v) { p->bits = dk_float_to_bf16(v); }

// ---- raw 16-bit access (tensor-core tiles move bits, not values) ----
template <class T> __device__ __forceinline__ unsigned short dk_bits(const T* p) { return p->bits; }

// ---- reductions ----
// Sum over a warp in a fixed butterfly order: every lane gets the same, run-to-run identical.
template <class A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024), fixed order.
// `scratch` holds 32 values; the result is valid in every thread.
template <class A> __device__ __forceinline__ A block_sum(A v, A* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : A(0);
  return warp_sum(v);
}

// ---- tensor cores: D = A(16x16) * B(16x8) + D, float accumulators (sm_80+) ----
// Fragments (PTX ISA, mma.m16n8k16 with .f16/.bf16): g = lane / 4, t = lane % 4;
//   a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..]  a[2] = A[g][2t+8..]  a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]  b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]  d[2..3] = D[g+8][2t..2t+1]
// Each 32-bit register packs two consecutive-k 16-bit values, the lower k in the low half.
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b, dk_half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b, dk_bf16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Ceil division in 64 bits.
__device__ __forceinline__ i64 cdiv(i64 a, i64 b) { return (a + b - 1) / b; }

// v rounded to T and widened back: what a value stored in T and read again compares as.
__device__ __forceinline__ float dk_round(float v, float) { return v; }
__device__ __forceinline__ double dk_round(double v, double) { return v; }
__device__ __forceinline__ float dk_round(float v, dk_half) { return dk_half_to_float(dk_float_to_half(v)); }
__device__ __forceinline__ float dk_round(float v, dk_bf16) { return dk_bf16_to_float(dk_float_to_bf16(v)); }

// +infinity and exp in the accumulator type, without math.h (NVRTC has no system headers).
template <class A> __device__ __forceinline__ A dk_inf();
template <> __device__ __forceinline__ float dk_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double dk_inf<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ float dk_exp(float v) { return expf(v); }
__device__ __forceinline__ double dk_exp(double v) { return exp(v); }

#endif  // DLK_COMMON_CUH
