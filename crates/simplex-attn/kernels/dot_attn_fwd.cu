// Dot-product attention forward on tensor cores (mma.sync m16n8k16), FlashAttention-2 style.
//
//   S[i,j] = scale * q_i . k_j  (j in the keys of query i),  o_i = sum_j softmax_j(S[i]) v_j,
//   lse_i = log sum_j exp S[i,j]   (natural log, f32)
// bf16 q, k, v, o; f32 accumulation and softmax. D = Dv in {64, 128} (other head dims and f32
// run dot_attn_simple.cu). Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs; when it
// runs, speed: docs/kernels.md.
//
// Grid: x = blocks of BM = 128 queries, y = query head h, z = batch. Block: 4 warps; warp w owns
// queries 32 w .. 32 w + 31 as MT = 2 m16 tiles, so each K/V fragment read from shared memory
// feeds two MMAs. The CTA walks the key tiles of its queries' union range (tiles wholly
// outside are never visited; masks are applied only to tiles not wholly inside every query's
// range). Per key tile of BN keys:
//   S = Q K^T (A = Q by ldmatrix, B = K tile by ldmatrix), scale * log2(e), mask,
//   online softmax in registers (row max over the 4 lanes of a row by two shuffles),
//   O += P V (A = P rounded to bf16 straight from the S accumulators, B = V by ldmatrix.trans).
// Pipeline: K and V tiles double-buffered with cp.async; tile t + 1 loads while tile t computes.
// Tiles (BN) and shared memory (bf16, rows padded by 16 bytes for conflict-free ldmatrix):
//   D = 64:  BN = 64: Q 128 x 72 + 2 x (K, V) 64 x 72 = 54 KiB
// Registers per thread: O MT * D/2 and S MT * BN/2 floats (64 + 64); ptxas -v: 236, no spills:
// two CTAs (8 warps) per SM.
// Compiled for D = 64 only: the forward there (src/kernels/dispatch/dot.rs), beside the wgmma
// backward; at D = 128 the wgmma forward (dot_attn_fwd_wgmma.cu) runs. The mma.sync backward
// kernels and this forward at D = 128 lost to the wgmma ones and were retired
// (docs/history/kernels.md).
#include "dot_attn.cuh"

using namespace dot;

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * WARP;
constexpr int MT = 2;                // m16 tiles per warp
constexpr int BM = WARPS * 16 * MT;  // queries per CTA

template <int D, int BN>
__device__ void fwd(const bf16* __restrict__ q,  // [B,Nq,Hq,D]
                    const bf16* __restrict__ k,  // [B,Nk,Hkv,D]
                    const bf16* __restrict__ v,  // [B,Nk,Hkv,D]
                    bf16* __restrict__ o,        // [B,Nq,Hq,D]
                    float* __restrict__ lse,     // [B,Nq,Hq]
                    const DotShape s) {
  constexpr int STR = D + 8, KS = D / 16, NBS = BN / 8, NBO = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sq = reinterpret_cast<bf16*>(smem_raw);  // [BM][STR]
  bf16* sk = sq + BM * STR;                        // [2][BN][STR]
  bf16* sv = sk + 2 * BN * STR;                    // [2][BN][STR]

  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, t = lane % 4;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / (s.heads_q / s.heads_kv);
  const int i0 = blockIdx.x * BM, i1 = min(i0 + BM, s.seq_q);
  const Span keys = keys_of_block(s, i0, i1);
  const int t0 = keys.lo / BN, t1 = (keys.hi + BN - 1) / BN;
  const long long qstride = (long long)s.heads_q * D, kstride = (long long)s.heads_kv * D;
  const bf16* kg = k + (long long)b * s.seq_k * kstride + (long long)hk * D;
  const bf16* vg = v + (long long)b * s.seq_k * kstride + (long long)hk * D;

  load_rows<BM, D, THREADS>(sq, q + ((long long)b * s.seq_q + i0) * qstride + (long long)h * D, qstride,
                            i1 - i0);
  auto load_kv = [&](int tile, int stage) {
    const int j0 = tile * BN;
    load_rows<BN, D, THREADS>(sk + stage * BN * STR, kg + j0 * kstride, kstride, s.seq_k - j0);
    load_rows<BN, D, THREADS>(sv + stage * BN * STR, vg + j0 * kstride, kstride, s.seq_k - j0);
  };
  load_kv(t0, 0);
  cp_async_commit();

  // This thread's rows: i0 + 32 warp + 16 m + g + 8 r, m < MT, r < 2.
  const int row0 = warp * 16 * MT;
  Span rk[MT][2];
  float mx[MT][2], l[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rk[m][r] = keys_of(s, i0 + row0 + 16 * m + g + 8 * r);
      mx[m][r] = -INFINITY;
      l[m][r] = 0.0f;
    }
  float acc[MT][NBO][4];
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

    float sc[MT][NBS][4];
    zero(sc);
    mma_rows_nk<MT, KS, NBS>(sc, sq, row0, skt, STR);

    const int j0 = tile * BN;
    const bool full = tile_is_full(s, i0, i1, j0, j0 + BN);
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int nb = 0; nb < NBS; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = sc[m][nb][e] * sl2;
          if (!full && !sees(rk[m][e / 2], j0 + nb * 8 + 2 * t + (e & 1))) x = -INFINITY;
          sc[m][nb][e] = x;
        }
    // Online softmax: new max, rescale O and l by 2^(old - new), P = 2^(x - max).
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mnew = mx[m][r];
#pragma unroll
        for (int nb = 0; nb < NBS; ++nb) mnew = fmaxf(mnew, fmaxf(sc[m][nb][2 * r], sc[m][nb][2 * r + 1]));
        mnew = fmaxf(mnew, __shfl_xor_sync(0xffffffffu, mnew, 1));
        mnew = fmaxf(mnew, __shfl_xor_sync(0xffffffffu, mnew, 2));
        const float base = mnew == -INFINITY ? 0.0f : mnew;  // a row with no key yet
        const float alpha = fast_exp2(mx[m][r] - base);
        mx[m][r] = mnew;
        float sum = 0.0f;
#pragma unroll
        for (int nb = 0; nb < NBS; ++nb)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float p = fast_exp2(sc[m][nb][2 * r + c] - base);
            sc[m][nb][2 * r + c] = p;
            sum += p;
          }
        l[m][r] = l[m][r] * alpha + sum;
#pragma unroll
        for (int nb = 0; nb < NBO; ++nb) {
          acc[m][nb][2 * r] *= alpha;
          acc[m][nb][2 * r + 1] *= alpha;
        }
      }
    mma_probs_kn<MT, BN / 16, NBO>(acc, sc, svt, STR);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[m][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int i = i0 + row0 + 16 * m + g + 8 * r;
      if (i < s.seq_q) {
        const long long row = ((long long)b * s.seq_q + i) * s.heads_q + h;
        const float inv = 1.0f / sum;
        bf16* orow = o + row * D;
#pragma unroll
        for (int nb = 0; nb < NBO; ++nb)
          *reinterpret_cast<uint32_t*>(orow + nb * 8 + 2 * t) =
              pack_bf16(acc[m][nb][2 * r] * inv, acc[m][nb][2 * r + 1] * inv);
        if (t == 0) lse[row] = (mx[m][r] + log2f(sum)) * LN2;
      }
    }
}

}  // namespace

#define DOT_FWD(D, BN)                                                                                      \
  extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                  \
      dot_fwd_bf16_d##D(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, const DotShape s) { \
    fwd<D, BN>(q, k, v, o, lse, s);                                                                         \
  }

DOT_FWD(64, 64)
