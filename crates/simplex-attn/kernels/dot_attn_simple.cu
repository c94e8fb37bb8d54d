// Dot-product attention on CUDA cores: the backward's delta pre-pass (every call), and the
// fallback forward and backward for what the tensor-core kernels do not cover (f32 inputs,
// head dims other than D = Dv in {64, 128}, misaligned views). Correct first, simple second,
// fast third.
//
//   forward:  o_i = sum_j softmax_j(scale q_i . k_j) v_j,  lse_i (natural log)
//   delta_i = o_i . dout_i
//   dq_i = scale sum_j dS[i,j] k_j,  dk_j = scale sum_i dS[i,j] q_i,  dv_j = sum_i P[i,j] dout_i,
//   P = exp(scale q . k - lse),  dS = P (dout . v - delta)
// bf16 or f32 inputs and outputs, f32 arithmetic; D, Dv <= W (compiled for W = 32, 64, 128, 256).
// Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs.
//
// One warp per row; 4 warps (128 threads) per block; no block-level synchronisation.
//   forward, dq: a row is (b, i, h); the warp walks the query's keys 32 at a time, one key per
//     lane for the logits (q and dout rows in shared memory, f32), then one key at a time with
//     the lanes across the columns for the value-side sum (lane owns columns lane + 32 c).
//   dkv: a row is (b, j, K/V head); the warp walks the G query heads and the queries that see
//     key j the same way, so the sum over the group is in one thread: deterministic.
// Shared memory (dynamic, src/kernels/smem.rs `SimpleRows`): 4 warps x (1 or 2) rows x W f32,
// 8 KiB at W = 256. Registers: 2 W / 32 accumulators.
#include "dot_attn.cuh"

using namespace dot;
using simplex::from_f32;
using simplex::to_f32;
using simplex::warp_max;
using simplex::warp_row_dot;
using simplex::warp_sum;

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * WARP;

// Copies a row of n values into per-warp shared memory as f32, times `mul`.
template <typename T>
__device__ __forceinline__ void stage_row(float* dst, const T* src, int n, float mul) {
  for (int c = threadIdx.x % WARP; c < n; c += WARP) dst[c] = to_f32(src[c]) * mul;
  __syncwarp();
}

template <typename T>
__device__ __forceinline__ float dot_row(const float* a, const T* b, int n) {
  float acc = 0.0f;
  for (int c = 0; c < n; ++c) acc += a[c] * to_f32(b[c]);
  return acc;
}

template <typename T, int W>
__device__ void fwd_simple(const T* __restrict__ q,  // [B,Nq,Hq,D]
                           const T* __restrict__ k,  // [B,Nk,Hkv,D]
                           const T* __restrict__ v,  // [B,Nk,Hkv,Dv]
                           T* __restrict__ o,        // [B,Nq,Hq,Dv]
                           float* __restrict__ lse,  // [B,Nq,Hq]
                           const DotShape s) {
  constexpr int CL = W / WARP;
  extern __shared__ float smem[];  // [WARPS][W]: this warp's q row
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  float* sq = smem + warp * W;
  const int row = blockIdx.x * WARPS + warp;  // < 2^31: checked by the launch
  if (row >= s.batch * s.seq_q * s.heads_q) return;  // warp-uniform
  const int h = row % s.heads_q, i = (row / s.heads_q) % s.seq_q, b = row / (s.heads_q * s.seq_q);
  const int hk = h / (s.heads_q / s.heads_kv);
  const long long kstride = (long long)s.heads_kv * s.d, vstride = (long long)s.heads_kv * s.dv;
  const T* kb = k + (long long)b * s.seq_k * kstride + (long long)hk * s.d;
  const T* vb = v + (long long)b * s.seq_k * vstride + (long long)hk * s.dv;
  stage_row(sq, q + (long long)row * s.d, s.d, s.scale * LOG2E);

  const Span keys = keys_of(s, i);
  float m = -INFINITY, l = 0.0f, acc[CL] = {};
  for (int j0 = keys.lo; j0 < keys.hi; j0 += WARP) {
    const int j = j0 + lane;
    const bool ok = j < keys.hi;
    const float x = ok ? dot_row(sq, kb + j * kstride, s.d) : -INFINITY;
    const float mnew = fmaxf(m, warp_max(x));  // finite: lane 0 has a key
    const float alpha = fast_exp2(m - mnew);
    const float p = masked_exp2(ok, x - mnew);
    l = l * alpha + warp_sum(p);
    m = mnew;
#pragma unroll
    for (int c = 0; c < CL; ++c) acc[c] *= alpha;
    const int n = min(WARP, keys.hi - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const T* vr = vb + (j0 + jj) * vstride;
#pragma unroll
      for (int c = 0; c < CL; ++c)
        if (lane + WARP * c < s.dv) acc[c] += pj * to_f32(vr[lane + WARP * c]);
    }
  }
#pragma unroll
  for (int c = 0; c < CL; ++c)
    if (lane + WARP * c < s.dv) o[(long long)row * s.dv + lane + WARP * c] = from_f32<T>(acc[c] / l);
  if (lane == 0) lse[row] = (m + log2f(l)) * LN2;
}

template <typename T, int W>
__device__ void dq_simple(const T* __restrict__ q,       // [B,Nq,Hq,D]
                          const T* __restrict__ k,       // [B,Nk,Hkv,D]
                          const T* __restrict__ v,       // [B,Nk,Hkv,Dv]
                          const T* __restrict__ dout,    // [B,Nq,Hq,Dv]
                          const float* __restrict__ lse, // [B,Nq,Hq]
                          const float* __restrict__ dlt, // [B,Nq,Hq]
                          T* __restrict__ dq,            // [B,Nq,Hq,D]
                          const DotShape s) {
  constexpr int CL = W / WARP;
  extern __shared__ float smem[];  // [WARPS][2][W]: this warp's q and dout rows
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  float *sq = smem + 2 * warp * W, *sdo = sq + W;
  const int row = blockIdx.x * WARPS + warp;  // < 2^31: checked by the launch
  if (row >= s.batch * s.seq_q * s.heads_q) return;  // warp-uniform
  const int h = row % s.heads_q, i = (row / s.heads_q) % s.seq_q, b = row / (s.heads_q * s.seq_q);
  const int hk = h / (s.heads_q / s.heads_kv);
  const long long kstride = (long long)s.heads_kv * s.d, vstride = (long long)s.heads_kv * s.dv;
  const T* kb = k + (long long)b * s.seq_k * kstride + (long long)hk * s.d;
  const T* vb = v + (long long)b * s.seq_k * vstride + (long long)hk * s.dv;
  stage_row(sq, q + (long long)row * s.d, s.d, s.scale * LOG2E);
  stage_row(sdo, dout + (long long)row * s.dv, s.dv, 1.0f);
  const float lr = lse[row] * LOG2E, dr = dlt[row];

  const Span keys = keys_of(s, i);
  float acc[CL] = {};
  for (int j0 = keys.lo; j0 < keys.hi; j0 += WARP) {
    const int j = j0 + lane;
    float ds = 0.0f;
    if (j < keys.hi) {
      const float p = fast_exp2(dot_row(sq, kb + j * kstride, s.d) - lr);
      ds = p * (dot_row(sdo, vb + j * vstride, s.dv) - dr);
    }
    const int n = min(WARP, keys.hi - j0);
    for (int jj = 0; jj < n; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      const T* kr = kb + (j0 + jj) * kstride;
#pragma unroll
      for (int c = 0; c < CL; ++c)
        if (lane + WARP * c < s.d) acc[c] += dsj * to_f32(kr[lane + WARP * c]);
    }
  }
#pragma unroll
  for (int c = 0; c < CL; ++c)
    if (lane + WARP * c < s.d) dq[(long long)row * s.d + lane + WARP * c] = from_f32<T>(acc[c] * s.scale);
}

template <typename T, int W>
__device__ void dkv_simple(const T* __restrict__ q,       // [B,Nq,Hq,D]
                           const T* __restrict__ k,       // [B,Nk,Hkv,D]
                           const T* __restrict__ v,       // [B,Nk,Hkv,Dv]
                           const T* __restrict__ dout,    // [B,Nq,Hq,Dv]
                           const float* __restrict__ lse, // [B,Nq,Hq]
                           const float* __restrict__ dlt, // [B,Nq,Hq]
                           T* __restrict__ dk,            // [B,Nk,Hkv,D]
                           T* __restrict__ dv,            // [B,Nk,Hkv,Dv]
                           const DotShape s) {
  constexpr int CL = W / WARP;
  extern __shared__ float smem[];  // [WARPS][2][W]: this warp's k and v rows
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  float *sk = smem + 2 * warp * W, *sv = sk + W;
  const int row = blockIdx.x * WARPS + warp;  // (b, j, hk), < 2^31: checked by the launch
  if (row >= s.batch * s.seq_k * s.heads_kv) return;  // warp-uniform
  const int hk = row % s.heads_kv, j = (row / s.heads_kv) % s.seq_k, b = row / (s.heads_kv * s.seq_k);
  const int G = s.heads_q / s.heads_kv;
  stage_row(sk, k + (long long)row * s.d, s.d, s.scale * LOG2E);
  stage_row(sv, v + (long long)row * s.dv, s.dv, 1.0f);

  const Span qs = queries_of_block(s, j, j + 1);  // exactly the queries that see key j
  float gk[CL] = {}, gv[CL] = {};
  for (int h = hk * G; h < (hk + 1) * G; ++h) {
    for (int i0 = qs.lo; i0 < qs.hi; i0 += WARP) {
      const int i = i0 + lane;
      float p = 0.0f, ds = 0.0f;
      if (i < qs.hi) {
        const long long r = ((long long)b * s.seq_q + i) * s.heads_q + h;
        p = fast_exp2(dot_row(sk, q + r * s.d, s.d) - lse[r] * LOG2E);
        ds = p * (dot_row(sv, dout + r * s.dv, s.dv) - dlt[r]);
      }
      const int n = min(WARP, qs.hi - i0);
      for (int ii = 0; ii < n; ++ii) {
        const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        const long long r = ((long long)b * s.seq_q + i0 + ii) * s.heads_q + h;
#pragma unroll
        for (int c = 0; c < CL; ++c) {
          const int col = lane + WARP * c;
          if (col < s.dv) gv[c] += pi * to_f32(dout[r * s.dv + col]);
          if (col < s.d) gk[c] += dsi * to_f32(q[r * s.d + col]);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < CL; ++c) {
    const int col = lane + WARP * c;
    if (col < s.d) dk[(long long)row * s.d + col] = from_f32<T>(gk[c] * s.scale);
    if (col < s.dv) dv[(long long)row * s.dv + col] = from_f32<T>(gv[c]);
  }
}

}  // namespace

#define DOT_SIMPLE(T, TN, W)                                                                              \
  extern "C" __global__ void __launch_bounds__(THREADS, 4) dot_fwd_simple_##TN##_w##W(                        \
      const T* q, const T* k, const T* v, T* o, float* lse, const DotShape s) {                           \
    fwd_simple<T, W>(q, k, v, o, lse, s);                                                                 \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(THREADS, 4) dot_bwd_dq_simple_##TN##_w##W(                     \
      const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dlt, T* dq,       \
      const DotShape s) {                                                                                 \
    dq_simple<T, W>(q, k, v, dout, lse, dlt, dq, s);                                                      \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(THREADS, 4) dot_bwd_dkv_simple_##TN##_w##W(                    \
      const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dlt, T* dk, T* dv, \
      const DotShape s) {                                                                                 \
    dkv_simple<T, W>(q, k, v, dout, lse, dlt, dk, dv, s);                                                 \
  }

#define DOT_DELTA(T, TN)                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS, 4)                                                   \
      dot_bwd_delta_##TN(const T* o, const T* dout, float* dlt, const DotShape s) {                       \
    warp_row_dot(o, dout, dlt, (int)(blockIdx.x * WARPS + threadIdx.x / WARP),                            \
                 s.batch * s.seq_q * s.heads_q, s.dv);                                                    \
  }

DOT_DELTA(__nv_bfloat16, bf16)
DOT_DELTA(float, f32)
DOT_SIMPLE(__nv_bfloat16, bf16, 32)
DOT_SIMPLE(__nv_bfloat16, bf16, 64)
DOT_SIMPLE(__nv_bfloat16, bf16, 128)
DOT_SIMPLE(__nv_bfloat16, bf16, 256)
DOT_SIMPLE(float, f32, 32)
DOT_SIMPLE(float, f32, 64)
DOT_SIMPLE(float, f32, 128)
DOT_SIMPLE(float, f32, 256)
