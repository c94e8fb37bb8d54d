// The steps the CUDA-core 2-simplicial kernels share (simplicial_fwd.cu, simplicial_bwd_dq.cu,
// simplicial_bwd_dkv.cu): staging rows into shared memory as f32, a row's windows, and the two
// warp-level products of the j loop (a block's rows and their union windows: `cta_rows`,
// common.cuh).
//
// Rows: r = i * G + h of one batch and K/V head (query-major, so a block of consecutive rows is
// the G heads of one query, or several whole queries when G is small). A warp owns HI rows; lane
// `lane` owns the keys lane + 32 ki of a key tile and the columns lane + 32 c of a row.
#pragma once

#include "common.cuh"

namespace simplex {

// The row-block layout of the forward and dq kernels: 8 warps of HI = 2 rows (RB = 16 rows per
// block), window-2 keys in shared tiles of TK = 64 (KI = 2 per lane in the logit step).
namespace row_block {
constexpr int WARPS = 8;
constexpr int THREADS = WARPS * WARP;
constexpr int HI = 2;           // rows per warp
constexpr int RB = WARPS * HI;  // rows per block
constexpr int TK = 64;          // window-2 keys per shared-memory tile
constexpr int KI = TK / WARP;   // keys per lane in the logit step
}  // namespace row_block

// dst[r * stride + c] = src[row_off(r) * width + c] * mul for r < count, c < width, as f32; rows
// at or past `valid` are zero. All THREADS threads of the block take part.
template <int THREADS, typename T, typename RowOff>
__device__ __forceinline__ void stage_rows(float* dst, int stride, const T* __restrict__ src, int count,
                                           int valid, int width, RowOff row_off, float mul) {
  for (int idx = threadIdx.x; idx < count * width; idx += THREADS) {
    const int r = idx / width, c = idx - r * width;
    dst[r * stride + c] = r < valid ? to_f32(src[row_off(r) * width + c]) * mul : 0.0f;
  }
}

// The windows of row r (query r / G) and whether the row exists (r < row_end; a row past the
// end gets query 0's windows and is never active).
struct RowWindows {
  bool valid;
  Range j, k;  // window 1 (keys j), window 2 (keys k)
};
__device__ __forceinline__ RowWindows row_windows(int r, int row_end, int G, const Shape& s) {
  const bool valid = r < row_end;
  const int i = valid ? r / G : 0;
  return {valid, window(i, s.w1, s.seq, s.causal), window(i, s.w2, s.seq, s.causal)};
}

// Whether the row pairs key j of window 1 with some key of the tile [kt, kt + nk) of window 2.
__device__ __forceinline__ bool pairs_in_tile(const RowWindows& w, int j, int kt, int nk) {
  return w.valid && j >= w.j.lo && j < w.j.hi && w.k.lo < kt + nk && w.k.hi > kt;
}

// acc[h][ki] += sum_{l < len} a[h * len + l] * tile[(lane + 32 ki) * stride + l]: HI shared rows
// of length len against the lane's keys of a shared tile (the logits, or dP against a V tile).
template <int HI, int KI>
__device__ __forceinline__ void rows_dot_keys(float (&acc)[HI][KI], const float* a, int len,
                                              const float* tile, int stride, int lane) {
  for (int l = 0; l < len; ++l) {
    float kv[KI];
#pragma unroll
    for (int ki = 0; ki < KI; ++ki) kv[ki] = tile[(lane + WARP * ki) * stride + l];
#pragma unroll
    for (int hh = 0; hh < HI; ++hh) {
      const float x = a[hh * len + l];
#pragma unroll
      for (int ki = 0; ki < KI; ++ki) acc[hh][ki] = fmaf(x, kv[ki], acc[hh][ki]);
    }
  }
}

// t[h][c] = sum_{kk < nk} w[h * TK + kk] * tile[kk * stride + lane + 32 c] for the lane's columns
// (columns at or past `width` give 0): HI shared weight rows (P or dS) times a shared tile.
template <int HI, int C, int TK>
__device__ __forceinline__ void weigh_tile(float (&t)[HI][C], const float* w, int nk, const float* tile,
                                           int stride, int width, int lane) {
#pragma unroll
  for (int hh = 0; hh < HI; ++hh)
#pragma unroll
    for (int c = 0; c < C; ++c) t[hh][c] = 0.0f;
  for (int kk = 0; kk < nk; ++kk) {
    float tv[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = lane + WARP * c;
      tv[c] = col < width ? tile[kk * stride + col] : 0.0f;
    }
#pragma unroll
    for (int hh = 0; hh < HI; ++hh) {
      const float p = w[hh * TK + kk];
#pragma unroll
      for (int c = 0; c < C; ++c) t[hh][c] = fmaf(p, tv[c], t[hh][c]);
    }
  }
}

// dst[l] = a[l] * b[l] for l < n, the lanes across l.
template <typename T>
__device__ __forceinline__ void warp_mul_row(float* dst, const float* a, const T* __restrict__ b, int n,
                                             int lane) {
  for (int l = lane; l < n; l += WARP) dst[l] = a[l] * to_f32(b[l]);
}

}  // namespace simplex
