// 2-simplicial attention backward, key side: dk and dv of ONE key/value set (correct baseline).
//
// Written for the set (k2, v2, window w2) that a block owns; the other set (k1, v1, w1) is the
// partner it streams over:
//   dk2[k] = scale * sum_{r,j} dS[r,j,k] * (q[r] ∘ k1[j])
//   dv2[k] =         sum_{r,j} P[r,j,k]  * (dout[r] ∘ v1[j])
// with P = exp(S - lse), dS = P * (dP - delta) as in simplicial_bwd_dq.cu. The layer is
// symmetric in the two sets, so src/cuda/backward.rs launches it twice: once as written
// (dk2, dv2) and once with (k1, v1, w1) and (k2, v2, w2) exchanged (dk1, dv1).
// Reference: src/reference.rs; tests: tests/cuda_vs_oracle.rs.
//
// Grid: x = tiles of KB = 32 owned keys, y = K/V head, z = batch. Block: 8 warps.
// The streamed "rows" are the triples (query i, head h, partner key j) with the tile in the
// window of i and j in the window of i, enumerated flat over i in the queries that see the tile,
// h < G, j - window(i).lo < the widest partner window; batches of RS = 32 rows.
// Per batch: decode rows (threads < RS) -> x = scale * q ∘ k1[j], y = dout ∘ v1[j] in smem
// -> logits and dP for RS x KB (warp = 4 rows, lane = key) -> P, dS in smem
// -> accumulate (warp = 4 owned keys, lane = columns lane + 32*c, c < C, in registers).
// Shared memory (f32): k2 KB*(D|1) + v2 KB*(Dv|1) + x RS*D + y RS*Dv + P, dS 2*RS*(KB+1)
//   = 73 KiB at D = Dv = 128, 137 KiB at 256. Registers 116-166, no spills.
// Deterministic: every block owns its keys, no atomics. When it runs, speed: docs/kernels.md.
#include "core_rows.cuh"

using namespace simplex;

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * WARP;
constexpr int KB = 32;             // owned keys per block (one per lane in the logit step)
constexpr int RS = 32;             // streamed rows per batch
constexpr int KPW = KB / WARPS;    // owned keys per warp in the accumulation step
constexpr int RPW = RS / WARPS;    // streamed rows per warp in the logit step
constexpr int PS = KB + 1;         // row stride of the P and dS tiles

// C: max(D, Dv) <= 32 * C.
template <typename T, int C>
__device__ void dkv(const T* __restrict__ q,        // [B,N,Hq,D]
                    const T* __restrict__ k1,       // [B,N,Hkv,D]   partner keys
                    const T* __restrict__ k2,       // [B,N,Hkv,D]   owned keys
                    const T* __restrict__ v1,       // [B,N,Hkv,Dv]  partner values
                    const T* __restrict__ v2,       // [B,N,Hkv,Dv]  owned values
                    const T* __restrict__ dout,     // [B,N,Hq,Dv]
                    const float* __restrict__ lse,  // [B,N,Hq]
                    const float* __restrict__ dlt,  // [B,N,Hq]
                    T* __restrict__ dk2,            // [B,N,Hkv,D]
                    T* __restrict__ dv2,            // [B,N,Hkv,Dv]
                    const Shape s) {
  extern __shared__ float smem[];
  const int D = s.d, Dv = s.dv, N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv;
  const int G = Hq / Hkv;
  const int KS = D | 1, VS = Dv | 1;
  const int b = blockIdx.z, hkv = blockIdx.y;
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
  const int k0 = blockIdx.x * KB;
  const int nk = min(KB, N - k0);

  float* k2s = smem;              // [KB][KS]
  float* v2s = k2s + KB * KS;     // [KB][VS]
  float* xs = v2s + KB * VS;      // [RS][D]
  float* ys = xs + RS * D;        // [RS][Dv]
  float* pss = ys + RS * Dv;      // [RS][PS]
  float* dss = pss + RS * PS;     // [RS][PS]
  float* rlse = dss + RS * PS;    // [RS] lse of the row, log2 units
  float* rdl = rlse + RS;         // [RS] delta of the row
  // 8-byte aligned: every region above is a multiple of 32 floats.
  long long* rq = reinterpret_cast<long long*>(rdl + RS);  // [RS] q row, -1: none
  int* rj = reinterpret_cast<int*>(rq + RS);                         // [RS] partner key j
  int* rklo = rj + RS;                                               // [RS] window 2 of i
  int* rkhi = rklo + RS;

  auto kv_row = [&](int pos) -> long long { return (long long)(b * N + pos) * Hkv + hkv; };

  auto key_row = [&](int kk) { return kv_row(k0 + kk); };
  stage_rows<THREADS>(k2s, KS, k2, KB, nk, D, key_row, 1.0f);
  stage_rows<THREADS>(v2s, VS, v2, KB, nk, Dv, key_row, 1.0f);

  // Queries that see a key of the tile through window 2, and the widest window 1.
  const int i_lo = seen_by(k0, s.w2, N, s.causal).lo;
  const int i_hi = seen_by(k0 + nk - 1, s.w2, N, s.causal).hi;
  const int wmax = s.causal ? s.w1 : min(2 * s.w1 - 1, N);
  const long long per_i = (long long)G * wmax;
  const long long total = (long long)(i_hi - i_lo) * per_i;

  float dk[KPW][C], dv[KPW][C];
#pragma unroll
  for (int a = 0; a < KPW; ++a)
#pragma unroll
    for (int c = 0; c < C; ++c) dk[a][c] = dv[a][c] = 0.0f;

  for (long long t0 = 0; t0 < total; t0 += RS) {
    __syncthreads();  // the previous batch is consumed (first pass: the tile is staged)
    bool live = false;
    if (threadIdx.x < RS) {
      const long long t = t0 + threadIdx.x;
      long long row = -1;
      int j = 0;
      Range kr = {0, 0};
      if (t < total) {
        const int i = i_lo + (int)(t / per_i);
        const long long rem = t % per_i;
        const int h = (int)(rem / wmax), jj = (int)(rem % wmax);
        const Range jr = window(i, s.w1, N, s.causal);
        kr = window(i, s.w2, N, s.causal);
        j = jr.lo + jj;
        if (j < jr.hi && kr.lo < k0 + nk && kr.hi > k0) row = (long long)(b * N + i) * Hq + hkv * G + h;
      }
      live = row >= 0;
      rq[threadIdx.x] = row;
      rj[threadIdx.x] = j;
      rklo[threadIdx.x] = kr.lo;
      rkhi[threadIdx.x] = kr.hi;
      rlse[threadIdx.x] = live ? lse[row] * LOG2E : 0.0f;
      rdl[threadIdx.x] = live ? dlt[row] : 0.0f;
    }
    if (!__syncthreads_or(live)) continue;  // block-uniform: no row of this batch meets the tile

    for (int idx = threadIdx.x; idx < RS * D; idx += THREADS) {
      const int rs = idx / D, l = idx - rs * D;
      const long long row = rq[rs];
      xs[idx] = row >= 0 ? to_f32(q[row * D + l]) * to_f32(k1[kv_row(rj[rs]) * D + l]) * s.scale : 0.0f;
    }
    for (int idx = threadIdx.x; idx < RS * Dv; idx += THREADS) {
      const int rs = idx / Dv, c = idx - rs * Dv;
      const long long row = rq[rs];
      ys[idx] = row >= 0 ? to_f32(dout[row * Dv + c]) * to_f32(v1[kv_row(rj[rs]) * Dv + c]) : 0.0f;
    }
    __syncthreads();

    // Logits and dP: warp rows warp*RPW + m, lane = owned key.
    float sc[RPW], dp[RPW];
#pragma unroll
    for (int m = 0; m < RPW; ++m) sc[m] = dp[m] = 0.0f;
    for (int l = 0; l < D; ++l) {
      const float kv = k2s[lane * KS + l];
#pragma unroll
      for (int m = 0; m < RPW; ++m) sc[m] = fmaf(xs[(warp * RPW + m) * D + l], kv, sc[m]);
    }
    for (int c = 0; c < Dv; ++c) {
      const float vv = v2s[lane * VS + c];
#pragma unroll
      for (int m = 0; m < RPW; ++m) dp[m] = fmaf(ys[(warp * RPW + m) * Dv + c], vv, dp[m]);
    }
#pragma unroll
    for (int m = 0; m < RPW; ++m) {
      const int rs = warp * RPW + m, k = k0 + lane;
      const bool ok = rq[rs] >= 0 && lane < nk && k >= rklo[rs] && k < rkhi[rs];
      const float p = ok ? exp2f(sc[m] * LOG2E - rlse[rs]) : 0.0f;
      pss[rs * PS + lane] = p;
      dss[rs * PS + lane] = p * (dp[m] - rdl[rs]);
    }
    __syncthreads();

    // Accumulate: warp owns keys warp*KPW + a, lane owns columns lane + 32*c.
    for (int rs = 0; rs < RS; ++rs) {
      float xv[C], yv[C];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int col = lane + WARP * c;
        xv[c] = col < D ? xs[rs * D + col] : 0.0f;
        yv[c] = col < Dv ? ys[rs * Dv + col] : 0.0f;
      }
#pragma unroll
      for (int a = 0; a < KPW; ++a) {
        const float p = pss[rs * PS + warp * KPW + a], ds = dss[rs * PS + warp * KPW + a];
#pragma unroll
        for (int c = 0; c < C; ++c) {
          dk[a][c] = fmaf(ds, xv[c], dk[a][c]);
          dv[a][c] = fmaf(p, yv[c], dv[a][c]);
        }
      }
    }
  }

#pragma unroll
  for (int a = 0; a < KPW; ++a) {
    const int kk = warp * KPW + a;
    if (kk >= nk) continue;
    const long long kr = kv_row(k0 + kk);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int col = lane + WARP * c;
      if (col < D) dk2[kr * D + col] = from_f32<T>(dk[a][c]);
      if (col < Dv) dv2[kr * Dv + col] = from_f32<T>(dv[a][c]);
    }
  }
}

}  // namespace

// Symbols: simplicial_bwd_dkv_<dtype>_d<max(D, Dv)>; src/kernels/dispatch picks one.
#define SIMPLICIAL_DKV(NAME, T, C)                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                                     \
      NAME(const T* q, const T* k1, const T* k2, const T* v1, const T* v2, const T* dout,      \
           const float* lse, const float* dlt, T* dk2, T* dv2, const Shape s) {                \
    dkv<T, C>(q, k1, k2, v1, v2, dout, lse, dlt, dk2, dv2, s);                                 \
  }

SIMPLICIAL_DKV(simplicial_bwd_dkv_f32_d32, float, 1)
SIMPLICIAL_DKV(simplicial_bwd_dkv_f32_d64, float, 2)
SIMPLICIAL_DKV(simplicial_bwd_dkv_f32_d128, float, 4)
SIMPLICIAL_DKV(simplicial_bwd_dkv_f32_d256, float, 8)
SIMPLICIAL_DKV(simplicial_bwd_dkv_bf16_d32, __nv_bfloat16, 1)
SIMPLICIAL_DKV(simplicial_bwd_dkv_bf16_d64, __nv_bfloat16, 2)
SIMPLICIAL_DKV(simplicial_bwd_dkv_bf16_d128, __nv_bfloat16, 4)
SIMPLICIAL_DKV(simplicial_bwd_dkv_bf16_d256, __nv_bfloat16, 8)
