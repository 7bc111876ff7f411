// kernels.h: the declarations of every C++ kernel, for one instruction set.
//
// No include guard on purpose: bindings.cpp includes this file once per ISA with DLK_ISA
// defined to avx512, avx2 and scalar, which declares dlk::avx512::gemm, dlk::avx2::gemm, ...
// Kernel units include it once, with DLK_ISA given on the command line.
//
// Conventions: plain functions on raw pointers and int64 sizes; arrays are C-contiguous
// unless strides are passed; templates are instantiated for float and double in their unit.
#include <cstdint>

namespace dlk {

#ifndef DLK_GATHER_COLS_DEFINED
#define DLK_GATHER_COLS_DEFINED
// The columns of one B panel read in place from rows at base + rowoff[k] (gemm_gathered_panel):
// vector v's lane t reads row[a[v] + t] where bit t of m1[v] is set, row[b[v] + t] where bit t
// of m2[v] is, and is zero elsewhere (two runs: conv's output positions across a row's end).
struct GatherCols {
  int64_t a[4], b[4];
  uint32_t m1[4], m2[4];
};
#endif

#ifndef DLK_CONV_SHAPE_DEFINED
#define DLK_CONV_SHAPE_DEFINED
// 2-D convolution geometry (see conv.cpp below). Declared once, outside the ISA namespaces,
// so that bindings.cpp can pass the same struct to every instruction set's kernels.
struct ConvShape {
  int64_t N, C, H, W;       // input
  int64_t K, R, S;          // output channels, kernel height and width
  int64_t P, Q;             // output height and width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;  // pad_* = top / left padding
  int64_t groups;
};
#endif

#ifndef DLK_ATTN_SHAPE_DEFINED
#define DLK_ATTN_SHAPE_DEFINED
// Attention geometry and options (attention.cpp); outside the ISA namespaces, like ConvShape.
struct AttnShape {
  int64_t Z, Zk, L, S, E, Ev;
  bool causal;  // top-left aligned: row i sees keys j <= i
  double scale;
  bool dropout;
  uint64_t seed, threshold;  // the generator of ops/attention/common.py
  double dscale;             // 1 / (1 - dropout_p)
};
#endif

namespace DLK_ISA {

// ---- gemm.cpp ---------------------------------------------------------------------------
// C[M,N] (+)= A[M,K] @ B[K,N].
// A's element (i, k) is A[i*rsa + k*csa]; B's (k, j) is B[k*rsb + j*csb] (any strides, so
// transposes are free); C is row-major with leading dimension ldc.
// accumulate=false overwrites C, true adds to it. parallel=true uses the OpenMP threads;
// false runs on the calling thread (for callers already inside a parallel region).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa, const T* B,
          int64_t rsb, int64_t csb, T* C, int64_t ldc, bool accumulate, bool parallel);

// B packed once and reused across many calls (LSTM's recurrent weights, conv's filters).
// gemm_packed_b_size gives the number of T elements the packed copy needs.
template <typename T>
int64_t gemm_packed_b_size(int64_t K, int64_t N);
template <typename T>
void gemm_pack_b(int64_t K, int64_t N, const T* B, int64_t rsb, int64_t csb, T* packed);
template <typename T>
void gemm_prepacked_b(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                      const T* packed_b, T* C, int64_t ldc, bool accumulate, bool parallel);

// Both operands packed by the caller (conv's implicit GEMM: filters packed once per call, the
// columns packed straight from the input). Serial, on the calling thread; the same sequence
// of operations per C element as gemm. gemm_pack_a packs all of A (gemm_packed_a_size
// elements). The B panels: panel p holds columns [p*NR, min(N, p*NR + NR)), NR =
// gemm_panel_width, at panels + p*NR*K as K rows of w elements, w = its width rounded up to
// the vector width, the padding zero.
template <typename T>
int gemm_panel_width();
template <typename T>
int64_t gemm_packed_a_size(int64_t M, int64_t K);
template <typename T>
void gemm_pack_a(int64_t M, int64_t K, const T* A, int64_t rsa, int64_t csa, T* packed);
template <typename T>
void gemm_packed_panels(int64_t M, int64_t N, int64_t K, const T* packed_a, const T* panels,
                        T* C, int64_t ldc, bool accumulate);
// gemm_packed_panels with A not packed but read in place, row-major (row i at A + i*lda).
template <typename T>
void gemm_rowa_panels(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* panels,
                      T* C, int64_t ldc, bool accumulate);
// gemm_packed_panels on one full panel (NR columns) read from rows base + rowoff[k] as g says,
// packed into `panel` (K x NR) by the micro-kernel of the first row tile as it goes, so that
// the packing hides under its FMAs; the other tiles read the packed panel. Bitwise the same as
// packing the panel and calling gemm_packed_panels. False, having done nothing, where this ISA
// has no such kernel (it takes masked loads) or the panel is not full or M < MR.
template <typename T>
bool gemm_gathered_panel(int64_t M, int64_t nr, int64_t K, const T* packed_a, const T* base,
                         const int64_t* rowoff, const GatherCols& g, T* panel, T* C, int64_t ldc,
                         bool accumulate);

// ---- conv.cpp ---------------------------------------------------------------------------
// 2-D convolution, NCHW, cross-correlation as in torch. conv1d runs through it with H = 1.
// x (N, C, H, W), w (K, C/groups, R, S), b (K) or null, y (N, K, P, Q).
using ::dlk::ConvShape;

// Variants share one signature per direction. Backward: any of dx, dw, db may be null
// (not wanted); dw and db are overwritten, never accumulated, and bitwise repeatable
// at a fixed thread count.
template <typename T>
void conv2d_forward_im2col(const ConvShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_im2col(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                            T* db);
template <typename T>
void conv2d_forward_implicit(const ConvShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_implicit(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx,
                              T* dw, T* db);
template <typename T>
void conv2d_forward_depthwise(const ConvShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_depthwise(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx,
                               T* dw, T* db);
template <typename T>
void conv2d_forward_direct(const ConvShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_direct(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx, T* dw,
                            T* db);

// ---- winograd.cpp -----------------------------------------------------------------------
// Winograd F(2x2, 3x3) for 3x3 filters, stride 1, dilation 1, groups 1 (any padding); other
// shapes go to implicit. Backward: dx and dw by winograd too (dw, db bitwise repeatable).
template <typename T>
void conv2d_forward_winograd(const ConvShape& s, const T* x, const T* w, const T* b, T* y);
template <typename T>
void conv2d_backward_winograd(const ConvShape& s, const T* dy, const T* x, const T* w, T* dx,
                              T* dw, T* db);

// ---- lstm.cpp ---------------------------------------------------------------------------
// One LSTM layer, one direction, time-major and C-contiguous: x (T, B, I), h0 (B, P), c0 (B, H),
// w_ih (4H, I), w_hh (4H, P), bias (4H) = b_ih + b_hh or null, w_hr (P, H) or null (P = H),
// lengths (B) or null. Forward writes y (T, B, P), h_n (B, P), c_n (B, H), gates (T, B, 4H)
// activated, cs (T, B, H). Backward writes every gradient (dw_hr only with w_hr); db = dZ's
// column sums (the gradient of b_ih and of b_hh alike). Deterministic.
template <typename T>
void lstm_forward(int64_t Tn, int64_t B, int64_t I, int64_t H, int64_t P, const T* x, const T* h0,
                  const T* c0, const T* w_ih, const T* w_hh, const T* bias, const T* w_hr,
                  const int64_t* lengths, T* y, T* h_n, T* c_n, T* gates, T* cs);
template <typename T>
void lstm_backward(int64_t Tn, int64_t B, int64_t I, int64_t H, int64_t P, const T* dy,
                   const T* dh_n, const T* dc_n, const T* x, const T* h0, const T* c0,
                   const T* w_ih, const T* w_hh, const T* w_hr, const int64_t* lengths,
                   const T* gates, const T* cs, const T* y, T* dx, T* dh0, T* dc0, T* dw_ih,
                   T* dw_hh, T* db, T* dw_hr);

// ---- graph.cpp --------------------------------------------------------------------------
// Sparse aggregation over a CSR with R rows: row r's edges are positions k in
// [indptr[r], indptr[r+1]), col[k] the row of x they read (I = int32_t or int64_t), perm[k]
// the edge id (null: identity) that indexes per-edge arrays. x (N, H, F); w (E, H) or null;
// scale (R) or null; out (R, H, F). Bitwise repeatable; see graph.cpp and ops/graph/common.py.
// graph_segment_sum/maxmin also take a tiled CSR (passes > 1: indptr has passes * R + 1 offsets,
// pass p's rows at indptr + p * R; see Tiles in graph.cpp).
template <typename T, typename I>
void graph_segment_sum(int64_t R, const int64_t* indptr, int64_t passes, const I* col, const int64_t* perm,
                       const T* w, int64_t H, int64_t F, const T* x, const T* scale, T* out);
template <typename T, typename I>
void graph_segment_maxmin(int64_t R, const int64_t* indptr, int64_t passes, const I* col, const int64_t* perm,
                          const T* w, int64_t F, const T* x, bool is_max, T* out);
template <typename T, typename I>
void graph_edge_dot(int64_t R, const int64_t* indptr, const I* col, const int64_t* perm, int64_t H, int64_t F,
                    const T* a, const T* b, const T* scale, T* out);
template <typename T, typename I>
void graph_maxmin_backward(int64_t R, const int64_t* indptr, const I* col, const int64_t* perm, int64_t N,
                           const int64_t* t_indptr, const I* t_col, const int64_t* t_perm, const T* w, int64_t F,
                           const T* x, const T* out, const T* g, T* dx, T* dw);
template <typename T>
void graph_softmax_forward(int64_t R, const int64_t* indptr, const int64_t* perm, int64_t H, const T* s, T* y);
template <typename T>
void graph_softmax_backward(int64_t R, const int64_t* indptr, const int64_t* perm, int64_t H, const T* y,
                            const T* g, T* ds);
template <typename I>
void graph_group_by(int64_t G, int64_t E, const I* key, int64_t* indptr, int64_t* perm);

// ---- attention.cpp ----
// Scaled dot-product attention, flash-style (see attention.cpp). q (Z, L, E), k (Zk, S, E),
// v (Zk, S, Ev), kv_index (Z) in [0, Zk): output head z reads key head kv_index[z]. mask: null or
// an additive mask whose element (z, i, j) is mask[mask_off[z] + i * mrs + j * mcs].
// out (Z, L, Ev), lse (Z, L) (+inf for a fully masked row). Backward: dmask null or (Z, L, S);
// dq, dk, dv are overwritten; bitwise repeatable at any thread count.
using ::dlk::AttnShape;
template <typename T>
void attention_forward(const AttnShape& a, const T* q, const T* k, const T* v,
                       const int64_t* kv_index, const T* mask, const int64_t* mask_off,
                       int64_t mrs, int64_t mcs, T* out, T* lse);
template <typename T>
void attention_backward(const AttnShape& a, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const int64_t* kv_index, const T* mask,
                        const int64_t* mask_off, int64_t mrs, int64_t mcs, T* dq, T* dk, T* dv,
                        T* dmask);

}  // namespace DLK_ISA
}  // namespace dlk
