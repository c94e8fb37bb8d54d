// Shared pieces of the 2-simplicial attention kernels: the launch shape, windows, conversions.
//
// Shapes (as in src/spec.rs): q [B,N,Hq,D], k1 k2 [B,N,Hkv,D], v1 v2 [B,N,Hkv,Dv],
// o [B,N,Hq,Dv], lse [B,N,Hq] (f32, natural log). Query head h reads K/V head h / G, G = Hq/Hkv.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

namespace simplex {

constexpr int WARP = 32;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Mirrored field by field by `KernelShape` in src/cuda/shape.rs (#[repr(C)], all 4-byte fields).
struct Shape {
  int batch, seq, heads_q, heads_kv, d, dv;
  int causal;  // 1: i-w < j <= i; 0: |i-j| < w
  int w1, w2;  // windows clamped to [1, seq], as spec.rs `Windows`
  float scale; // softmax scale (1/sqrt(D) by default)
};

// Half-open range [lo, hi) of the keys that query i sees through a window of width w
// (spec.rs `Windows::range`).
struct Range {
  int lo, hi;
};
__device__ __forceinline__ Range window(int i, int w, int n, int causal) {
  if (causal) return {max(i + 1 - w, 0), i + 1};
  return {max(i - (w - 1), 0), min(i + w, n)};
}
// The queries that see key k through a window of width w (the inverse of `window`).
__device__ __forceinline__ Range seen_by(int k, int w, int n, int causal) {
  if (causal) return {k, min(k + w, n)};
  return {max(k - (w - 1), 0), min(k + w, n)};
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = WARP / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Element offsets in the [B, N, H, *] tensors of the block's (batch b = blockIdx.z, K/V head
// kv = blockIdx.y): key position pos of k1, k2, v1, v2 ([B,N,Hkv,width]); row r = i G + hh
// (query i, query head kv G + hh) of q, o, dout ([B,N,Hq,width]) and of lse, delta ([B,N,Hq]).
struct HeadRows {
  int b, kv, N, Hq, Hkv, G;
  __device__ __forceinline__ explicit HeadRows(const Shape& s)
      : b(blockIdx.z), kv(blockIdx.y), N(s.seq), Hq(s.heads_q), Hkv(s.heads_kv), G(s.heads_q / s.heads_kv) {}
  __device__ __forceinline__ long long key(int pos, int width) const {
    return ((long long)(b * N + pos) * Hkv + kv) * width;
  }
  __device__ __forceinline__ long long row(int r) const { return (long long)(b * N + r / G) * Hq + kv * G + r % G; }
};

// A thread's place in a CTA of 128-thread warpgroups: its warpgroup, its warp in that
// warpgroup, its lane, and the lane's row group g = lane / 4 and column pair t = lane % 4 in the
// mma / wgmma fragments. `const auto [tid, wg, warp, lane, g, t] = thread_place();`
struct ThreadPlace {
  int tid, wg, warp, lane, g, t;
};
__device__ __forceinline__ ThreadPlace thread_place() {
  const int tid = threadIdx.x, lane = tid % 32;
  return {tid, tid / 128, (tid % 128) / 32, lane, lane / 4, lane % 4};
}

// The rows a CTA of a (non-persistent) row-block kernel takes (the forwards, the CUDA-core dq):
// rows [row0, row0 + cta_rows) of the [N G] row space of its (batch, K/V head) (row r is query r / G; blockIdx.x counts the row
// blocks), nrows = N G, and the unions JU, KU of those queries' windows 1 and 2.
struct CtaRows {
  int row0, nrows;
  Range JU, KU;
};
__device__ __forceinline__ CtaRows cta_rows(const Shape& s, int G, int cta_rows) {
  const int N = s.seq;
  CtaRows c;
  c.row0 = blockIdx.x * cta_rows;
  c.nrows = N * G;
  const int row_last = min(c.row0 + cta_rows, c.nrows) - 1;
  const int i_first = c.row0 / G, i_last = row_last / G;
  c.JU = {window(i_first, s.w1, N, s.causal).lo, window(i_last, s.w1, N, s.causal).hi};
  c.KU = {window(i_first, s.w2, N, s.causal).lo, window(i_last, s.w2, N, s.causal).hi};
  return c;
}

// out[r] = sum_{c < n} a[r * n + c] * b[r * n + c] for the calling warp's row r, r < rows (the
// backward's delta = o . dout, one warp per row).
// I: the row index type (int where the launch checks rows < 2^31).
template <typename T, typename I>
__device__ __forceinline__ void warp_row_dot(const T* __restrict__ a, const T* __restrict__ b,
                                             float* __restrict__ out, I r, I rows, int n) {
  if (r >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % WARP;
  float acc = 0.0f;
  for (int c = lane; c < n; c += WARP) acc += to_f32(a[(long long)r * n + c]) * to_f32(b[(long long)r * n + c]);
  acc = warp_sum(acc);
  if (lane == 0) out[r] = acc;
}

// 2^x (approximate, flushes denormals); -inf gives +0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// keep ? 2^x : 0 without a branch: 2^x is computed for every x (ex2 has no side effects, and
// whatever it gives for a dropped x is discarded) and then selected. Written as `keep ?
// fast_exp2(x) : 0` the compiler branches around each exponential (it does not speculate inline
// asm), two branches per element, and cannot stream a fragment's exponentials.
__device__ __forceinline__ float masked_exp2(bool keep, float x) {
  const float y = fast_exp2(x);
  return keep ? y : 0.0f;
}

// exp2 that maps -inf to 0 without a NaN when both arguments are -inf.
__device__ __forceinline__ float exp2_diff(float a, float b) {
  return a == -INFINITY ? 0.0f : exp2f(a - b);
}

}  // namespace simplex
