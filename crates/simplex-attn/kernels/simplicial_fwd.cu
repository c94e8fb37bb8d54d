// 2-simplicial attention forward, the correct baseline (CUDA cores, f32 accumulation).
//
//   S[r,j,k] = scale * sum_l q[r,l] k1[j,l] k2[k,l]           r = (query i, query head h)
//   o[r]     = sum_{j,k} softmax_{(j,k)}(S[r])[j,k] * v1[j] ∘ v2[k],   lse[r] = log sum exp S[r]
// over j in window 1 and k in window 2 of query i (common.cuh `window`, as src/spec.rs).
// Reference: src/reference.rs; tests: tests/cuda_vs_oracle.rs; speed: docs/kernels.md.
//
// Grid: x = row blocks of RB = 16 consecutive rows (query-major: i * G + h, so a block is 16
// heads of one query when G >= 16, or several whole queries packed when G < 16), y = K/V head,
// z = batch. Block: 8 warps; warp w owns rows 2w, 2w+1 (online-softmax state and the Dv
// accumulators in registers: lane owns columns lane + 32*ci, ci < CI).
// Schedule: for each TK = 64-key tile of the block's union window 2 (k2, v2 staged in shared
// memory as f32), for each j of the union window 1: x = q ∘ k1[j] (per warp, smem),
// logits x·k2 (lane = key), online softmax, acc = alpha * acc + v1[j] ∘ (p @ v2_tile).
// Pairs outside a row's own windows are masked, so packing queries costs only masked work.
// Shared memory (f32): k2 TK*(D|1) + v2 TK*Dv + q RB*D + x RB*D + p RB*TK
//   = 84 KiB at D = Dv = 128, 164 KiB at 256 (dynamic; the launch raises the limit).
// Registers 107-122, no spills. The launch puts the larger window in window 2 (tiled).
// Shared-memory bound: about one shared-memory load per FMA.
#include "core_rows.cuh"

using namespace simplex;

namespace {

using namespace row_block;  // WARPS, THREADS, HI, RB, TK, KI

// CI: Dv <= 32 * CI (the accumulator columns per lane).
template <typename T, int CI>
__device__ void fwd(const T* __restrict__ q,   // [B,N,Hq,D]
                    const T* __restrict__ k1,  // [B,N,Hkv,D]
                    const T* __restrict__ k2,  // [B,N,Hkv,D]
                    const T* __restrict__ v1,  // [B,N,Hkv,Dv]
                    const T* __restrict__ v2,  // [B,N,Hkv,Dv]
                    T* __restrict__ o,         // [B,N,Hq,Dv]
                    float* __restrict__ lse,   // [B,N,Hq]
                    const Shape s) {
  extern __shared__ float smem[];
  const int D = s.d, Dv = s.dv, N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv;
  const int G = Hq / Hkv;
  const int KS = D | 1;  // odd row stride: lanes reading one column of k2 hit distinct banks
  const int b = blockIdx.z, hkv = blockIdx.y;
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  const CtaRows cr = cta_rows(s, G, RB);  // the block's rows and their union windows
  const int row0 = cr.row0, row_end = min(row0 + RB, cr.nrows);

  float* k2s = smem;              // [TK][KS]
  float* v2s = k2s + TK * KS;     // [TK][Dv]
  float* qs = v2s + TK * Dv;      // [RB][D], scaled by scale * log2(e)
  float* xs = qs + RB * D;        // [RB][D], q ∘ k1[j]
  float* ps = xs + RB * D;        // [RB][TK], probabilities of the current (tile, j)

  auto q_row = [&](int r) -> long long {  // row r -> offset of q[b, i, hkv*G + h, 0]
    return ((long long)(b * N + r / G) * Hq + hkv * G + r % G);
  };
  auto kv_off = [&](int pos) -> long long { return (long long)(b * N + pos) * Hkv + hkv; };

  stage_rows<THREADS>(qs, D, q, RB, row_end - row0, D, [&](int rb) { return q_row(row0 + rb); },
                      s.scale * LOG2E);

  RowWindows rw[HI];
  float m[HI], lpart[HI], acc[HI][CI];
#pragma unroll
  for (int hh = 0; hh < HI; ++hh) {
    rw[hh] = row_windows(row0 + warp * HI + hh, row_end, G, s);
    m[hh] = -INFINITY;
    lpart[hh] = 0.0f;
#pragma unroll
    for (int ci = 0; ci < CI; ++ci) acc[hh][ci] = 0.0f;
  }

  for (int kt = cr.KU.lo; kt < cr.KU.hi; kt += TK) {
    const int nk = min(TK, cr.KU.hi - kt);
    __syncthreads();  // the previous tile is consumed (first pass: qs is staged)
    auto key_off = [&](int kk) { return kv_off(kt + kk); };
    stage_rows<THREADS>(k2s, KS, k2, TK, nk, D, key_off, 1.0f);
    stage_rows<THREADS>(v2s, Dv, v2, TK, nk, Dv, key_off, 1.0f);
    __syncthreads();

    for (int j = cr.JU.lo; j < cr.JU.hi; ++j) {
      bool act[HI];
      bool any = false;
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        act[hh] = pairs_in_tile(rw[hh], j, kt, nk);
        any |= act[hh];
      }
      if (!any) continue;  // warp-uniform: row metadata is the same in every lane
      const T* k1j = k1 + kv_off(j) * D;
      __syncwarp();  // the previous j's readers of xs and ps are done
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        const int rb = warp * HI + hh;
        if (act[hh]) warp_mul_row(xs + rb * D, qs + rb * D, k1j, D, lane);
      }
      __syncwarp();

      float sc[HI][KI];
#pragma unroll
      for (int hh = 0; hh < HI; ++hh)
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) sc[hh][ki] = 0.0f;
      rows_dot_keys<HI, KI>(sc, xs + warp * HI * D, D, k2s, KS, lane);

      float alpha[HI];
#pragma unroll
      for (int hh = 0; hh < HI; ++hh) {
        alpha[hh] = 1.0f;
        if (!act[hh]) continue;
        float tmax = -INFINITY;
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) {
          const int k = kt + lane + WARP * ki;
          if (!(k >= rw[hh].k.lo && k < rw[hh].k.hi)) sc[hh][ki] = -INFINITY;
          tmax = fmaxf(tmax, sc[hh][ki]);
        }
        tmax = warp_max(tmax);  // finite: the tile meets this row's window 2
        const float m_new = fmaxf(m[hh], tmax);
        alpha[hh] = exp2_diff(m[hh], m_new);
        float psum = 0.0f;
#pragma unroll
        for (int ki = 0; ki < KI; ++ki) {
          const float p = exp2_diff(sc[hh][ki], m_new);
          ps[(warp * HI + hh) * TK + lane + WARP * ki] = p;
          psum += p;
        }
        lpart[hh] = lpart[hh] * alpha[hh] + psum;
        m[hh] = m_new;
      }
      __syncwarp();

      float t[HI][CI];
      weigh_tile<HI, CI, TK>(t, ps + warp * HI * TK, nk, v2s, Dv, Dv, lane);
      const T* v1j = v1 + kv_off(j) * Dv;
#pragma unroll
      for (int ci = 0; ci < CI; ++ci) {
        const int c = lane + WARP * ci;
        const float v1c = c < Dv ? to_f32(v1j[c]) : 0.0f;
#pragma unroll
        for (int hh = 0; hh < HI; ++hh)
          if (act[hh]) acc[hh][ci] = fmaf(acc[hh][ci], alpha[hh], v1c * t[hh][ci]);
      }
    }
  }

#pragma unroll
  for (int hh = 0; hh < HI; ++hh) {
    if (!rw[hh].valid) continue;  // warp-uniform
    const int r = row0 + warp * HI + hh;
    const float l = warp_sum(lpart[hh]);
    const float inv = 1.0f / l;
    const long long off = q_row(r);
#pragma unroll
    for (int ci = 0; ci < CI; ++ci) {
      const int c = lane + WARP * ci;
      if (c < Dv) o[off * Dv + c] = from_f32<T>(acc[hh][ci] * inv);
    }
    if (lane == 0) lse[off] = (m[hh] + log2f(l)) * LN2;
  }
}

}  // namespace

// Symbols: simplicial_fwd_<dtype>_dv<max Dv>; src/kernels/dispatch picks one.
#define SIMPLICIAL_FWD(NAME, T, CI)                                                          \
  extern "C" __global__ void __launch_bounds__(THREADS, 2)                                   \
      NAME(const T* q, const T* k1, const T* k2, const T* v1, const T* v2, T* o, float* lse, \
           const Shape s) {                                                                  \
    fwd<T, CI>(q, k1, k2, v1, v2, o, lse, s);                                                \
  }

SIMPLICIAL_FWD(simplicial_fwd_f32_dv32, float, 1)
SIMPLICIAL_FWD(simplicial_fwd_f32_dv64, float, 2)
SIMPLICIAL_FWD(simplicial_fwd_f32_dv128, float, 4)
SIMPLICIAL_FWD(simplicial_fwd_f32_dv256, float, 8)
SIMPLICIAL_FWD(simplicial_fwd_bf16_dv32, __nv_bfloat16, 1)
SIMPLICIAL_FWD(simplicial_fwd_bf16_dv64, __nv_bfloat16, 2)
SIMPLICIAL_FWD(simplicial_fwd_bf16_dv128, __nv_bfloat16, 4)
SIMPLICIAL_FWD(simplicial_fwd_bf16_dv256, __nv_bfloat16, 8)
