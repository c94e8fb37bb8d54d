// Dot-product attention backward, key side, on tensor cores (mma.sync m16n8k16): dk and dv.
//
//   P[i,j] = exp(scale q_i . k_j - lse_i),  dP[i,j] = dout_i . v_j,  dS = P (dP - delta_i),
//   dv_j   = sum_{h in group, i} P[i,j] dout_i,   dk_j = scale sum_{h in group, i} dS[i,j] q_i
// bf16 inputs, dk and dv; f32 accumulation; D = Dv in {64, 128}. Deterministic: each CTA owns
// BN keys of one K/V head and sums over the G query heads of its group and all their query
// tiles in a fixed order (no atomics). Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs;
// speed: docs/kernels.md.
//
// Grid: x = blocks of BN = 128 keys, y = K/V head, z = batch. Block: 8 warps of 16 keys (one m16
// tile each, keys as the M dimension: the transposed products). K and V of the block stay in
// shared memory; the CTA walks (head of the group, query tile of BQ queries) over the queries
// that see its keys, masks only on tiles not wholly inside the ranges:
//   S^T = K Q^T, dP^T = V dO^T (A = K, V by ldmatrix; B = Q, dO tiles by ldmatrix),
//   P^T = 2^(S^T scale log2(e) - lse log2(e)), dS^T = P^T (dP^T - delta) in registers,
//   dV += P^T dO, dK += dS^T Q (A from the accumulators in bf16, B by ldmatrix.trans).
// Pipeline: Q, dO, lse and delta tiles double-buffered with cp.async (tile t + 1 loads while
// tile t computes).
// Tiles and shared memory (bf16 rows padded by 16 bytes):
//   D = 64:  BQ = 64: K, V 128 x 72 + 2 x (Q, dO) 64 x 72 + lse, delta = 73 KiB
//   D = 128: BQ = 32: K, V 128 x 136 + 2 x (Q, dO) 32 x 136 + lse, delta = 103 KiB
// One CTA (8 warps) per SM.
// Registers per thread: dK, dV D/2 each + S^T, dP^T BQ/2 each floats; ptxas -v: 210 (D = 64),
// 240 (D = 128), no spills.
// Runs only for DotTensorCores::MmaSync (side-by-side measurements): the wgmma backward,
// dot_attn_bwd_wgmma.cu, is faster at both measured shapes (docs/kernels.md).
#include "dot_attn.cuh"

using namespace dot;

namespace {

constexpr int WARPS = 8;         // 8 warps share each Q/dO tile: half the loads per MMA of 4
constexpr int THREADS = WARPS * WARP;
constexpr int BN = WARPS * 16;  // keys per CTA

template <int D, int BQ>
__device__ void dkv_kernel(const bf16* __restrict__ q,     // [B,Nq,Hq,D]
                           const bf16* __restrict__ k,     // [B,Nk,Hkv,D]
                           const bf16* __restrict__ v,     // [B,Nk,Hkv,D]
                           const bf16* __restrict__ dout,  // [B,Nq,Hq,D]
                           const float* __restrict__ lse,  // [B,Nq,Hq]
                           const float* __restrict__ dlt,  // [B,Nq,Hq]
                           bf16* __restrict__ dk,          // [B,Nk,Hkv,D]
                           bf16* __restrict__ dv,          // [B,Nk,Hkv,D]
                           const DotShape s) {
  constexpr int STR = D + 8, KS = D / 16, NBQ = BQ / 8, NBD = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sk = reinterpret_cast<bf16*>(smem_raw);      // [BN][STR]
  bf16* sv = sk + BN * STR;                            // [BN][STR]
  bf16* sq = sv + BN * STR;                            // [2][BQ][STR]
  bf16* sdo = sq + 2 * BQ * STR;                       // [2][BQ][STR]
  float* sl = reinterpret_cast<float*>(sdo + 2 * BQ * STR);  // [2][BQ] lse
  float* sd = sl + 2 * BQ;                                   // [2][BQ] delta

  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
  const int b = blockIdx.z, hk = blockIdx.y, G = s.heads_q / s.heads_kv;
  const int j0 = blockIdx.x * BN, j1 = min(j0 + BN, s.seq_k);
  const Span qs = queries_of_block(s, j0, j1);
  const int tq0 = qs.lo / BQ, ntq = qs.hi > qs.lo ? (qs.hi + BQ - 1) / BQ - tq0 : 0;
  const int total = G * ntq;  // (head, query tile) steps
  const long long qstride = (long long)s.heads_q * D, kstride = (long long)s.heads_kv * D;
  const long long koff = ((long long)b * s.seq_k + j0) * kstride + (long long)hk * D;

  load_rows<BN, D, THREADS>(sk, k + koff, kstride, j1 - j0);
  load_rows<BN, D, THREADS>(sv, v + koff, kstride, j1 - j0);
  auto load_q = [&](int step, int stage) {
    const int h = hk * G + step / ntq, iq0 = (tq0 + step % ntq) * BQ;
    const long long off = ((long long)b * s.seq_q + iq0) * qstride + (long long)h * D;
    load_rows<BQ, D, THREADS>(sq + stage * BQ * STR, q + off, qstride, s.seq_q - iq0);
    load_rows<BQ, D, THREADS>(sdo + stage * BQ * STR, dout + off, qstride, s.seq_q - iq0);
    // Past Nq, Q, dO, lse and delta are zero-filled: P = 1 there, but dO = 0 and dS = 0, so
    // those columns add nothing.
    for (int c = threadIdx.x; c < BQ; c += THREADS) {
      const bool ok = iq0 + c < s.seq_q;
      const long long row = ((long long)b * s.seq_q + (ok ? iq0 + c : 0)) * s.heads_q + h;
      cp_async4(sl + stage * BQ + c, lse + row, ok);
      cp_async4(sd + stage * BQ + c, dlt + row, ok);
    }
  };
  if (total > 0) load_q(0, 0);
  cp_async_commit();

  const int row0 = warp * 16;  // this thread's keys: j0 + row0 + g + 8 r
  float gk[1][NBD][4], gv[1][NBD][4];
  zero(gk);
  zero(gv);
  const float sl2 = s.scale * LOG2E;

  for (int step = 0; step < total; ++step) {
    const int stage = step & 1;
    if (step + 1 < total) load_q(step + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* sqt = sq + stage * BQ * STR;
    const bf16* sdot = sdo + stage * BQ * STR;
    const float* slt = sl + stage * BQ;
    const float* sdt = sd + stage * BQ;

    float sc[1][NBQ][4], dp[1][NBQ][4];
    zero(sc);
    zero(dp);
    mma_rows_nk<1, KS, NBQ>(sc, sk, row0, sqt, STR);
    mma_rows_nk<1, KS, NBQ>(dp, sv, row0, sdot, STR);

    const int iq0 = (tq0 + step % ntq) * BQ, iq1 = min(iq0 + BQ, s.seq_q);
    const bool full = tile_is_full(s, iq0, iq1, j0, j0 + BN);
#pragma unroll
    for (int nb = 0; nb < NBQ; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nb * 8 + 2 * t + (e & 1);  // query column
        float p = fast_exp2(sc[0][nb][e] * sl2 - slt[c] * LOG2E);
        if (!full && !sees(keys_of(s, iq0 + c), j0 + row0 + g + 8 * (e / 2))) p = 0.0f;
        sc[0][nb][e] = p;                     // P^T
        dp[0][nb][e] = p * (dp[0][nb][e] - sdt[c]);  // dS^T
      }
    mma_probs_kn<1, BQ / 16, NBD>(gv, sc, sdot, STR);
    mma_probs_kn<1, BQ / 16, NBD>(gk, dp, sqt, STR);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = j0 + row0 + g + 8 * r;
    if (j < s.seq_k) {
      const long long off = (((long long)b * s.seq_k + j) * s.heads_kv + hk) * D;
#pragma unroll
      for (int nb = 0; nb < NBD; ++nb) {
        *reinterpret_cast<uint32_t*>(dk + off + nb * 8 + 2 * t) =
            pack_bf16(gk[0][nb][2 * r] * s.scale, gk[0][nb][2 * r + 1] * s.scale);
        *reinterpret_cast<uint32_t*>(dv + off + nb * 8 + 2 * t) = pack_bf16(gv[0][nb][2 * r], gv[0][nb][2 * r + 1]);
      }
    }
  }
}

}  // namespace

#define DOT_DKV(D, BQ)                                                                                      \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                  \
      dot_bwd_dkv_bf16_d##D(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, \
                            const float* dlt, bf16* dk, bf16* dv, const DotShape s) {                       \
    dkv_kernel<D, BQ>(q, k, v, dout, lse, dlt, dk, dv, s);                                                  \
  }

DOT_DKV(64, 64)
DOT_DKV(128, 32)
