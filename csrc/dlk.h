// dlk.h: what every C++ kernel unit shares.
//
// Each kernel source (gemm.cpp, conv.cpp, ...) is compiled three times by setup.py,
// once per instruction set, with -DDLK_ISA=avx512|avx2|scalar and the matching -m flags.
// Its code lives in namespace dlk::DLK_ISA, so the three copies link side by side and
// bindings.cpp picks one at run time (see isa.h). Nothing here uses -march=native.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef DLK_ISA
#error "compile kernel units with -DDLK_ISA=avx512|avx2|scalar (setup.py does)"
#endif

namespace dlk {

using index_t = int64_t;  // all offset arithmetic is 64-bit

// Everything below depends on the instruction set, so it lives in the ISA's namespace. A
// template in namespace dlk itself would be one copy for all three instruction sets, whichever
// the linker kept: simd<T>::type is mangled by that name, not by its width. (Seen: a call to
// transpose_stage that GCC did not inline, in an AVX-512 unit, ran another unit's copy and left
// the block as it was.)
namespace DLK_ISA {

// Width in bytes of the vector registers this unit is compiled for.
#if defined(__AVX512F__)
constexpr int VBYTES = 64;
#elif defined(__AVX2__)
constexpr int VBYTES = 32;
#else
constexpr int VBYTES = 16;  // SSE2 is part of x86-64; other targets split it as they can
#endif

// GCC/Clang vector extensions: one source, any width. vec<T> holds VBYTES / sizeof(T) lanes;
// arithmetic with a scalar broadcasts it. aligned(sizeof(T)) makes loads and stores unaligned-safe.
template <typename T>
struct simd {
  typedef T type __attribute__((vector_size(VBYTES), aligned(sizeof(T))));
  static constexpr int width = VBYTES / (int)sizeof(T);
};
template <typename T>
using vec = typename simd<T>::type;

template <typename T>
inline vec<T> vload(const T* p) { return *reinterpret_cast<const vec<T>*>(p); }
template <typename T>
inline void vstore(T* p, vec<T> v) { *reinterpret_cast<vec<T>*>(p) = v; }
// A broadcast of one element: the plain set1 (folded into an FMA's memory operand as {1toN}
// where the compiler can). Not `vec<T>{} + x`: under strict IEEE that is a real add per call.
template <typename T>
inline vec<T> vbroadcast(T x) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm512_set1_ps(x);
  else return (vec<T>)_mm512_set1_pd(x);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm256_set1_ps(x);
  else return (vec<T>)_mm256_set1_pd(x);
#elif defined(__SSE2__)
  if constexpr (sizeof(T) == 4) return (vec<T>)_mm_set1_ps(x);
  else return (vec<T>)_mm_set1_pd(x);
#else
  vec<T> v;
  for (int i = 0; i < simd<T>::width; ++i) v[i] = x;
  return v;
#endif
}

// In-register transpose of a W x W block (r[t][u] -> r[u][t]), for gemm's and conv's packing:
// log2(W) stages, stage d swaps the off-diagonal d x d blocks of every 2d x 2d block with a
// two-source shuffle.
template <typename I>
struct ivec_of {
  typedef I type __attribute__((vector_size(VBYTES)));
};
template <typename T>
using ivec = typename ivec_of<typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type>::type;

template <typename T, int D>
inline void transpose_stage(vec<T>* r) {
  constexpr int W = simd<T>::width;
  if constexpr (D < W) {
    ivec<T> mlo, mhi;
#pragma GCC unroll 16
    for (int t = 0; t < W; ++t) {
      const bool first = (t / D) % 2 == 0;
      mlo[t] = first ? t : W + t - D;   // lo[t] = r[i][t]   or r[i+D][t-D]
      mhi[t] = first ? t + D : W + t;   // hi[t] = r[i][t+D] or r[i+D][t]
    }
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) {
      if (i & D) continue;
      const vec<T> a = r[i], b = r[i + D];
      r[i] = __builtin_shuffle(a, b, mlo);
      r[i + D] = __builtin_shuffle(a, b, mhi);
    }
    transpose_stage<T, 2 * D>(r);
  }
}

template <typename T>
inline void transpose(vec<T>* r) {
  transpose_stage<T, 1>(r);
}

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

// Scratch kept by a thread from call to call (freshly allocated, large buffers come from mmap and
// page-fault on every call) is freed once it holds more than SCRATCH_KEEP bytes, so that a huge
// one-off call does not pin its memory for the life of the thread.
constexpr size_t SCRATCH_KEEP = 16u << 20;

template <typename V>
size_t held(const V& v) {
  return v.capacity() * sizeof(typename V::value_type);
}

// Scratch reused from call to call: v grown to at least n elements (and 1), its data. Growing
// keeps what it held.
template <typename T>
inline T* grow(std::vector<T>& v, int64_t n) {
  const size_t need = (size_t)std::max<int64_t>(n, 1);
  if (v.size() < need) v.resize(need);
  return v.data();
}

}  // namespace DLK_ISA
}  // namespace dlk
