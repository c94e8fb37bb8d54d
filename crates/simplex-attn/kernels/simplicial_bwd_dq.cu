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
//   = 100 KiB at D = Dv = 128, 196 KiB at 256. Registers 116-128, no spills.
// Deterministic (no atomics). The launch puts the larger window in window 2 (tiled).
// When it runs, speed: docs/kernels.md.
#include "core_rows.cuh"

using namespace simplex;

namespace {

using namespace row_block;  // WARPS, THREADS, HI, RB, TK, KI

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
  const CtaRows cr = cta_rows(s, G, RB);  // the block's rows and their union windows
  const int row0 = cr.row0, row_end = min(row0 + RB, cr.nrows);

  float* k2s = smem;            // [TK][KS]
  float* v2s = k2s + TK * KS;   // [TK][VS]
  float* qs = v2s + TK * VS;    // [RB][D], scaled by scale * log2(e)
  float* xs = qs + RB * D;      // [RB][D], q ∘ k1[j]
  float* dos = xs + RB * D;     // [RB][Dv]
  float* ys = dos + RB * Dv;    // [RB][Dv], dout ∘ v1[j]
  float* dss = ys + RB * Dv;    // [RB][TK], dS of the current (tile, j)

  auto q_row = [&](int r) -> long long { return (long long)(b * N + r / G) * Hq + hkv * G + r % G; };
  auto kv_row = [&](int pos) -> long long { return (long long)(b * N + pos) * Hkv + hkv; };

  auto q_row_of = [&](int rb) { return q_row(row0 + rb); };
  stage_rows<THREADS>(qs, D, q, RB, row_end - row0, D, q_row_of, s.scale * LOG2E);
  stage_rows<THREADS>(dos, Dv, dout, RB, row_end - row0, Dv, q_row_of, 1.0f);

  RowWindows rw[HI];
  float lse2[HI], dl[HI], acc[HI][CL];
#pragma unroll
  for (int hh = 0; hh < HI; ++hh) {
    const int r = row0 + warp * HI + hh;
    rw[hh] = row_windows(r, row_end, G, s);
    lse2[hh] = rw[hh].valid ? lse[q_row(r)] * LOG2E : 0.0f;
    dl[hh] = rw[hh].valid ? dlt[q_row(r)] : 0.0f;
#pragma unroll
    for (int cl = 0; cl < CL; ++cl) acc[hh][cl] = 0.0f;
  }

  for (int kt = cr.KU.lo; kt < cr.KU.hi; kt += TK) {
    const int nk = min(TK, cr.KU.hi - kt);
    __syncthreads();  // the previous tile is consumed (first pass: q, dout are staged)
    auto key_row = [&](int kk) { return kv_row(kt + kk); };
    stage_rows<THREADS>(k2s, KS, k2, TK, nk, D, key_row, 1.0f);
    stage_rows<THREADS>(v2s, VS, v2, TK, nk, Dv, key_row, 1.0f);
    __syncthreads();

    for (int j = cr.JU.lo; j < cr.JU.hi; ++j) {
      bool act[HI];
      bool any = false;
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        act[hh] = pairs_in_tile(rw[hh], j, kt, nk);
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
        warp_mul_row(xs + rb * D, qs + rb * D, k1j, D, lane);
        warp_mul_row(ys + rb * Dv, dos + rb * Dv, v1j, Dv, lane);
      }
      __syncwarp();

      float sc[HI][KI], dp[HI][KI];
#pragma unroll
      for (int hh = 0; hh < HI; ++hh)
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) sc[hh][ki] = dp[hh][ki] = 0.0f;
      rows_dot_keys<HI, KI>(sc, xs + warp * HI * D, D, k2s, KS, lane);
      rows_dot_keys<HI, KI>(dp, ys + warp * HI * Dv, Dv, v2s, VS, lane);
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        if (!act[hh]) continue;
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) {
          const int k = kt + lane + WARP * ki;
          const bool ok = k >= rw[hh].k.lo && k < rw[hh].k.hi;
          const float p = ok ? exp2f(sc[hh][ki] - lse2[hh]) : 0.0f;
          dss[(warp * HI + hh) * TK + lane + WARP * ki] = p * (dp[hh][ki] - dl[hh]);
        }
      }
      __syncwarp();

      float t[HI][CL];
      weigh_tile<HI, CL, TK>(t, dss + warp * HI * TK, nk, k2s, KS, D, lane);
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
    if (!rw[hh].valid) continue;
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
    warp_row_dot(o, dout, dlt, (long long)blockIdx.x * WARPS + threadIdx.x / WARP,             \
                 (long long)s.batch * s.seq * s.heads_q, s.dv);                            \
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
