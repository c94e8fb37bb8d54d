// Dot-product attention backward, query side, on tensor cores (mma.sync m16n8k16): dq.
//
//   P[i,j] = exp(scale q_i . k_j - lse_i),  dP[i,j] = dout_i . v_j,  dS = P (dP - delta_i),
//   dq_i   = scale sum_j dS[i,j] k_j        (delta = rowsum(o * dout): dot_attn_simple.cu)
// bf16 inputs and dq, f32 accumulation; D = Dv in {64, 128}. Deterministic: each CTA owns its
// dq rows (the key side is dot_attn_bwd_dkv.cu). Reference: src/dot/reference.rs; tests:
// tests/cuda_dot.rs; speed: docs/kernels.md.
//
// Grid: x = blocks of BM = 128 queries (last block first), y = query head, z = batch. Block: 8
// warps of 16 queries (one m16 tile each). Per key tile of BN = 64 keys (only tiles that meet
// the queries' ranges; masks only on tiles not wholly inside them):
//   S = Q K^T and dP = dO V^T (A = Q, dO by ldmatrix; B = K, V tiles by ldmatrix),
//   P = 2^(S scale log2(e) - lse log2(e)), dS = P (dP - delta) in registers,
//   dQ += dS K (A = dS rounded to bf16 from the accumulators, B = K tile by ldmatrix.trans).
// Pipeline: K and V tiles double-buffered with cp.async.
// Shared memory: Q, dO 128 x (D + 8) + 2 x (K, V) 64 x (D + 8) bf16 = 72 KiB (D = 64),
// 136 KiB (D = 128): one CTA (8 warps) per SM. Registers: dQ D/2 + S 32 + dP 32 floats per
// thread; ptxas -v: 208 (D = 64), 238 (D = 128), no spills.
// Runs only for DotTensorCores::MmaSync (side-by-side measurements): the wgmma backward,
// dot_attn_bwd_wgmma.cu, is faster at both measured shapes (docs/kernels.md).
#include "dot_attn.cuh"

using namespace dot;

namespace {

constexpr int WARPS = 8;         // 8 warps share each K/V tile: half the loads per MMA of 4
constexpr int THREADS = WARPS * WARP;
constexpr int BM = WARPS * 16;  // queries per CTA
constexpr int BN = 64;          // keys per tile

template <int D>
__device__ void dq_kernel(const bf16* __restrict__ q,      // [B,Nq,Hq,D]
                          const bf16* __restrict__ k,      // [B,Nk,Hkv,D]
                          const bf16* __restrict__ v,      // [B,Nk,Hkv,D]
                          const bf16* __restrict__ dout,   // [B,Nq,Hq,D]
                          const float* __restrict__ lse,   // [B,Nq,Hq]
                          const float* __restrict__ dlt,   // [B,Nq,Hq]
                          bf16* __restrict__ dq,           // [B,Nq,Hq,D]
                          const DotShape s) {
  constexpr int STR = D + 8, KS = D / 16, NBS = BN / 8, NBD = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [BM][STR]
  bf16* sdo = sq + BM * STR;                       // [BM][STR]
  bf16* sk = sdo + BM * STR;                       // [2][BN][STR]
  bf16* sv = sk + 2 * BN * STR;                    // [2][BN][STR]

  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (s.heads_q / s.heads_kv);
  // The last query blocks see the most keys (causal): start them first.
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BM, i1 = min(i0 + BM, s.seq_q);
  const Span keys = keys_of_block(s, i0, i1);
  const int t0 = keys.lo / BN, t1 = (keys.hi + BN - 1) / BN;
  const long long qstride = (long long)s.heads_q * D, kstride = (long long)s.heads_kv * D;
  const long long qoff = ((long long)b * s.seq_q + i0) * qstride + (long long)h * D;
  const bf16* kg = k + (long long)b * s.seq_k * kstride + (long long)hk * D;
  const bf16* vg = v + (long long)b * s.seq_k * kstride + (long long)hk * D;

  load_rows<BM, D, THREADS>(sq, q + qoff, qstride, i1 - i0);
  load_rows<BM, D, THREADS>(sdo, dout + qoff, qstride, i1 - i0);
  auto load_kv = [&](int tile, int stage) {
    const int j0 = tile * BN;
    load_rows<BN, D, THREADS>(sk + stage * BN * STR, kg + j0 * kstride, kstride, s.seq_k - j0);
    load_rows<BN, D, THREADS>(sv + stage * BN * STR, vg + j0 * kstride, kstride, s.seq_k - j0);
  };
  load_kv(t0, 0);
  cp_async_commit();

  // This thread's rows i0 + 16 warp + g + 8 r: key ranges, lse * log2(e) (+inf past Nq, so
  // P = 0 there) and delta.
  const int row0 = warp * 16;
  Span rk[2];
  float lr[2], dr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = i0 + row0 + g + 8 * r;
    rk[r] = keys_of(s, i);
    const long long row = ((long long)b * s.seq_q + i) * s.heads_q + h;
    lr[r] = i < s.seq_q ? lse[row] * LOG2E : INFINITY;
    dr[r] = i < s.seq_q ? dlt[row] : 0.0f;
  }
  float acc[1][NBD][4];
  zero(acc);
  const float sl2 = s.scale * LOG2E;

  for (int tile = t0; tile < t1; ++tile) {
    const int stage = (tile - t0) & 1;
    if (tile + 1 < t1) load_kv(tile + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* skt = sk + stage * BN * STR;
    const bf16* svt = sv + stage * BN * STR;

    float sc[1][NBS][4], dp[1][NBS][4];
    zero(sc);
    zero(dp);
    mma_rows_nk<1, KS, NBS>(sc, sq, row0, skt, STR);
    mma_rows_nk<1, KS, NBS>(dp, sdo, row0, svt, STR);

    const int j0 = tile * BN;
    const bool full = tile_is_full(s, i0, i1, j0, j0 + BN);
#pragma unroll
    for (int nb = 0; nb < NBS; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        float p = fast_exp2(sc[0][nb][e] * sl2 - lr[r]);
        if (!full && !sees(rk[r], j0 + nb * 8 + 2 * t + (e & 1))) p = 0.0f;
        sc[0][nb][e] = p * (dp[0][nb][e] - dr[r]);  // dS
      }
    mma_probs_kn<1, BN / 16, NBD>(acc, sc, skt, STR);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = i0 + row0 + g + 8 * r;
    if (i < s.seq_q) {
      bf16* dqrow = dq + (((long long)b * s.seq_q + i) * s.heads_q + h) * D;
#pragma unroll
      for (int nb = 0; nb < NBD; ++nb)
        *reinterpret_cast<uint32_t*>(dqrow + nb * 8 + 2 * t) =
            pack_bf16(acc[0][nb][2 * r] * s.scale, acc[0][nb][2 * r + 1] * s.scale);
    }
  }
}

}  // namespace

#define DOT_DQ(D)                                                                                         \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                \
      dot_bwd_dq_bf16_d##D(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, \
                           const float* dlt, bf16* dq, const DotShape s) {                                \
    dq_kernel<D>(q, k, v, dout, lse, dlt, dq, s);                                                         \
  }

DOT_DQ(64)
DOT_DQ(128)
