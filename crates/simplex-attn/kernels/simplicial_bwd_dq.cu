// 2-simplicial attention backward, query side: the pre-pass delta and dq (correct baseline).
//
//   delta[r]  = sum_c o[r,c] dout[r,c]
//   P[r,j,k]  = exp(S[r,j,k] - lse[r]),   dP[r,j,k] = sum_c dout[r,c] v1[j,c] v2[k,c]
//   dS        = P * (dP - delta[r])
//   dq[r]     = scale * sum_j k1[j] ∘ (sum_k dS[r,j,k] k2[k])
// (spec section 3). Reference: src/reference.rs; tests: tests/cuda_vs_oracle.rs.
//
// delta: one warp per row r = (b, i, h); 8 rows per 256-thread block.
// dq: the forward's layout (simplicial_fwd.cu): grid x = blocks of RB = 16 rows (query-major,
// queries packed when G < 16), y = K/V head, z = batch; 8 warps, 2 rows each; lane owns dq
// columns lane + 32*cl, cl < CL. Schedule: for each TK = 64-key tile of window 2 (k2, v2 in
// shared memory), for each j of window 1: x = q ∘ k1[j], y = dout ∘ v1[j] (per warp),
// logits x·k2 and dP = y·v2 (lane = key), dS, t = dS @ k2_tile, dq += k1[j] ∘ t.
// Shared memory (f32): k2 TK*(D|1) + v2 TK*(Dv|1) + q, x RB*D + dout, y RB*Dv + dS RB*TK
//   = 100 KiB at D = Dv = 128, 196 KiB at 256. Registers 109-128, no spills.
// Deterministic (no atomics). The launch puts the larger window in window 2 (tiled).
// When it runs, speed: docs/kernels.md.
#include "common.cuh"

using namespace simplex;

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * WARP;
constexpr int HI = 2;           // rows per warp
constexpr int RB = WARPS * HI;  // rows per block
constexpr int TK = 64;          // window-2 keys per shared-memory tile
constexpr int KI = TK / WARP;   // keys per lane in the logit step

template <typename T>
__device__ void delta(const T* __restrict__ o,     // [B,N,Hq,Dv]
                      const T* __restrict__ dout,  // [B,N,Hq,Dv]
                      float* __restrict__ dlt,     // [B,N,Hq]
                      const Shape s) {
  const long long rows = (long long)s.batch * s.seq * s.heads_q;
  const long long r = (long long)blockIdx.x * WARPS + threadIdx.x / WARP;
  const int lane = threadIdx.x % WARP;
  if (r >= rows) return;  // warp-uniform
  float acc = 0.0f;
  for (int c = lane; c < s.dv; c += WARP) acc += to_f32(o[r * s.dv + c]) * to_f32(dout[r * s.dv + c]);
  acc = warp_sum(acc);
  if (lane == 0) dlt[r] = acc;
}

// CL: D <= 32 * CL (the dq columns per lane).
template <typename T, int CL>
__device__ void dq_kernel(const T* __restrict__ q,        // [B,N,Hq,D]
                          const T* __restrict__ k1,       // [B,N,Hkv,D]
                          const T* __restrict__ k2,       // [B,N,Hkv,D]
                          const T* __restrict__ v1,       // [B,N,Hkv,Dv]
                          const T* __restrict__ v2,       // [B,N,Hkv,Dv]
                          const T* __restrict__ dout,     // [B,N,Hq,Dv]
                          const float* __restrict__ lse,  // [B,N,Hq]
                          const float* __restrict__ dlt,  // [B,N,Hq]
                          T* __restrict__ dq,             // [B,N,Hq,D]
                          const Shape s) {
  extern __shared__ float smem[];
  const int D = s.d, Dv = s.dv, N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv;
  const int G = Hq / Hkv;
  const int KS = D | 1, VS = Dv | 1;  // odd strides: conflict-free column reads
  const int b = blockIdx.z, hkv = blockIdx.y;
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  const int row0 = blockIdx.x * RB;
  const int row_end = min(row0 + RB, N * G);

  float* k2s = smem;            // [TK][KS]
  float* v2s = k2s + TK * KS;   // [TK][VS]
  float* qs = v2s + TK * VS;    // [RB][D], scaled by scale * log2(e)
  float* xs = qs + RB * D;      // [RB][D], q ∘ k1[j]
  float* dos = xs + RB * D;     // [RB][Dv]
  float* ys = dos + RB * Dv;    // [RB][Dv], dout ∘ v1[j]
  float* dss = ys + RB * Dv;    // [RB][TK], dS of the current (tile, j)

  auto q_row = [&](int r) -> long long { return (long long)(b * N + r / G) * Hq + hkv * G + r % G; };
  auto kv_row = [&](int pos) -> long long { return (long long)(b * N + pos) * Hkv + hkv; };

  for (int idx = threadIdx.x; idx < RB * D; idx += THREADS) {
    const int rb = idx / D, l = idx - rb * D, r = row0 + rb;
    qs[idx] = r < row_end ? to_f32(q[q_row(r) * D + l]) * (s.scale * LOG2E) : 0.0f;
  }
  for (int idx = threadIdx.x; idx < RB * Dv; idx += THREADS) {
    const int rb = idx / Dv, c = idx - rb * Dv, r = row0 + rb;
    dos[idx] = r < row_end ? to_f32(dout[q_row(r) * Dv + c]) : 0.0f;
  }

  const int i_first = row0 / G, i_last = (row_end - 1) / G;
  const int j_lo = window(i_first, s.w1, N, s.causal).lo, j_hi = window(i_last, s.w1, N, s.causal).hi;
  const int k_lo = window(i_first, s.w2, N, s.causal).lo, k_hi = window(i_last, s.w2, N, s.causal).hi;

  bool valid[HI];
  Range jr[HI], kr[HI];
  float lse2[HI], dl[HI], acc[HI][CL];
#pragma unroll
  for (int hh = 0; hh < HI; ++hh) {
    const int r = row0 + warp * HI + hh;
    valid[hh] = r < row_end;
    const int i = valid[hh] ? r / G : 0;
    jr[hh] = window(i, s.w1, N, s.causal);
    kr[hh] = window(i, s.w2, N, s.causal);
    lse2[hh] = valid[hh] ? lse[q_row(r)] * LOG2E : 0.0f;
    dl[hh] = valid[hh] ? dlt[q_row(r)] : 0.0f;
#pragma unroll
    for (int cl = 0; cl < CL; ++cl) acc[hh][cl] = 0.0f;
  }

  for (int kt = k_lo; kt < k_hi; kt += TK) {
    const int nk = min(TK, k_hi - kt);
    __syncthreads();  // the previous tile is consumed (first pass: q, dout are staged)
    for (int idx = threadIdx.x; idx < TK * D; idx += THREADS) {
      const int kk = idx / D, l = idx - kk * D;
      k2s[kk * KS + l] = kk < nk ? to_f32(k2[kv_row(kt + kk) * D + l]) : 0.0f;
    }
    for (int idx = threadIdx.x; idx < TK * Dv; idx += THREADS) {
      const int kk = idx / Dv, c = idx - kk * Dv;
      v2s[kk * VS + c] = kk < nk ? to_f32(v2[kv_row(kt + kk) * Dv + c]) : 0.0f;
    }
    __syncthreads();

    for (int j = j_lo; j < j_hi; ++j) {
      bool act[HI];
      bool any = false;
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        act[hh] = valid[hh] && j >= jr[hh].lo && j < jr[hh].hi && kr[hh].lo < kt + nk && kr[hh].hi > kt;
        any |= act[hh];
      }
      if (!any) continue;  // warp-uniform
      const T* k1j = k1 + kv_row(j) * D;
      const T* v1j = v1 + kv_row(j) * Dv;
      __syncwarp();
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        const int rb = warp * HI + hh;
        if (!act[hh]) continue;
        for (int l = lane; l < D; l += WARP) xs[rb * D + l] = qs[rb * D + l] * to_f32(k1j[l]);
        for (int c = lane; c < Dv; c += WARP) ys[rb * Dv + c] = dos[rb * Dv + c] * to_f32(v1j[c]);
      }
      __syncwarp();

      float sc[HI][KI], dp[HI][KI];
#pragma unroll
      for (int hh = 0; hh < HI; ++hh)
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) sc[hh][ki] = dp[hh][ki] = 0.0f;
      for (int l = 0; l < D; ++l) {
        float kv[KI];
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) kv[ki] = k2s[(lane + WARP * ki) * KS + l];
#pragma unroll
        for (int hh = 0; hh < HI; ++hh) {
          const float x = xs[(warp * HI + hh) * D + l];
#pragma unroll
          for (int ki = 0; ki < KI; ++ki) sc[hh][ki] = fmaf(x, kv[ki], sc[hh][ki]);
        }
      }
      for (int c = 0; c < Dv; ++c) {
        float vv[KI];
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) vv[ki] = v2s[(lane + WARP * ki) * VS + c];
#pragma unroll
        for (int hh = 0; hh < HI; ++hh) {
          const float y = ys[(warp * HI + hh) * Dv + c];
#pragma unroll
          for (int ki = 0; ki < KI; ++ki) dp[hh][ki] = fmaf(y, vv[ki], dp[hh][ki]);
        }
      }
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        if (!act[hh]) continue;
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) {
          const int k = kt + lane + WARP * ki;
          const bool ok = k >= kr[hh].lo && k < kr[hh].hi;
          const float p = ok ? exp2f(sc[hh][ki] - lse2[hh]) : 0.0f;
          dss[(warp * HI + hh) * TK + lane + WARP * ki] = p * (dp[hh][ki] - dl[hh]);
        }
      }
      __syncwarp();

      float t[HI][CL];
#pragma unroll
      for (int hh = 0; hh < HI; ++hh)
#pragma unroll
        for (int cl = 0; cl < CL; ++cl) t[hh][cl] = 0.0f;
      for (int kk = 0; kk < nk; ++kk) {
        float kv[CL];
#pragma unroll
        for (int cl = 0; cl < CL; ++cl) {
          const int l = lane + WARP * cl;
          kv[cl] = l < D ? k2s[kk * KS + l] : 0.0f;
        }
#pragma unroll
        for (int hh = 0; hh < HI; ++hh) {
          const float ds = dss[(warp * HI + hh) * TK + kk];
#pragma unroll
          for (int cl = 0; cl < CL; ++cl) t[hh][cl] = fmaf(ds, kv[cl], t[hh][cl]);
        }
      }
#pragma unroll
      for (int cl = 0; cl < CL; ++cl) {
        const int l = lane + WARP * cl;
        const float k1l = l < D ? to_f32(k1j[l]) : 0.0f;
#pragma unroll
        for (int hh = 0; hh < HI; ++hh)
          if (act[hh]) acc[hh][cl] = fmaf(k1l, t[hh][cl], acc[hh][cl]);
      }
    }
  }

#pragma unroll
  for (int hh = 0; hh < HI; ++hh) {
    if (!valid[hh]) continue;
    const long long off = q_row(row0 + warp * HI + hh) * D;
#pragma unroll
    for (int cl = 0; cl < CL; ++cl) {
      const int l = lane + WARP * cl;
      if (l < D) dq[off + l] = from_f32<T>(acc[hh][cl] * s.scale);
    }
  }
}

}  // namespace

// Symbols: simplicial_bwd_delta_<dtype>, simplicial_bwd_dq_<dtype>_d<max D>;
// src/kernels/dispatch picks them (src/kernels/table.rs lists them).
#define SIMPLICIAL_DELTA(NAME, T)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) NAME(const T* o, const T* dout,     \
                                                             float* dlt, const Shape s) {  \
    delta<T>(o, dout, dlt, s);                                                              \
  }
#define SIMPLICIAL_DQ(NAME, T, CL)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS, 2)                                   \
      NAME(const T* q, const T* k1, const T* k2, const T* v1, const T* v2, const T* dout,    \
           const float* lse, const float* dlt, T* dq, const Shape s) {                       \
    dq_kernel<T, CL>(q, k1, k2, v1, v2, dout, lse, dlt, dq, s);                              \
  }

SIMPLICIAL_DELTA(simplicial_bwd_delta_f32, float)
SIMPLICIAL_DELTA(simplicial_bwd_delta_bf16, __nv_bfloat16)
SIMPLICIAL_DQ(simplicial_bwd_dq_f32_d32, float, 1)
SIMPLICIAL_DQ(simplicial_bwd_dq_f32_d64, float, 2)
SIMPLICIAL_DQ(simplicial_bwd_dq_f32_d128, float, 4)
SIMPLICIAL_DQ(simplicial_bwd_dq_f32_d256, float, 8)
SIMPLICIAL_DQ(simplicial_bwd_dq_bf16_d32, __nv_bfloat16, 1)
SIMPLICIAL_DQ(simplicial_bwd_dq_bf16_d64, __nv_bfloat16, 2)
SIMPLICIAL_DQ(simplicial_bwd_dq_bf16_d128, __nv_bfloat16, 4)
SIMPLICIAL_DQ(simplicial_bwd_dq_bf16_d256, __nv_bfloat16, 8)
