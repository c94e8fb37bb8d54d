// Dot-product attention forward on Hopper tensor cores (wgmma) at D = 64: one warpgroup per CTA,
// four CTAs per SM.
//
//   S[i,j] = scale * q_i . k_j  (j in the keys of query i),  o_i = sum_j softmax_j(S[i]) v_j,
//   lse_i = log sum_j exp S[i,j]   (natural log, f32)
// bf16 q, k, v, o; f32 accumulation and softmax; D = Dv = 64; any G = Hq / Hkv, causal or
// bidirectional, sliding windows, Nk >= Nq. Reference: src/dot/reference.rs; tests:
// tests/cuda_dot.rs; when it runs, speed: docs/kernels.md.
//
// Work: blocks of BM = 64 rows of a (batch, K/V head)'s row space r = i G + hh (the G heads of a
// K/V head share its tiles; dot_attn_wgmma.cuh). Grid: (row blocks, Hkv, B), the last block of a
// group first (under a causal mask it sees the most keys, and a CTA that starts late sets the
// kernel's end). Block: one warpgroup of 128 threads and no producer: four CTAs share an SM,
// so one's softmax runs while another's products do. Per key tile of TK = 64 keys:
//   all threads: cp.async of the next tile's K and V (128B-swizzled, as the persistent kernels'
//     producer loads them) into the other of two stages; wait for this tile's, fence for the
//     async proxy, barrier
//   S = Q K_tile^T      one m64n64k16 SS chain (Q staged with the first tile, K K-major)
//   mask (only where a row of the warp misses a key of the tile), online softmax (exp2, the
//     scale folded into the exp's FMA), O *= alpha, P rounded to bf16 A fragments in registers
//   O += P V_tile       RS, V read MN-major; then a barrier frees the stage for the load after
//     the next
// lse and O / l are stored straight from registers at the end.
// Shared memory: 2 stages x (K, V) tiles of 64 x 64 bf16 + Q 64 x 64: 40 KB (+ alignment), 4
// CTAs per SM. Registers: O 32 + S 32 + P 16 (S and P overlap in time), Q read from shared
// memory; 109, no spills.
// Measured slower at the LM layer (CUPTI kernel time, H100, 2026-12-07; docs/history/kernels.md):
// key tiles of 128 at three CTAs per SM (146.6 against 142.8 us); two warpgroups (128 rows) per
// CTA sharing the K, V tiles, two CTAs per SM (153.7 against 142.1); Q in registers with RS
// logits, two or three stages (158.8 / 158.0 against 142.3); tile t's logits issued together
// with tile t - 1's values product (FlashAttention-3's overlap); the mma.sync forward this
// replaced and the persistent producer/consumer wgmma forward. At D = 128 this kernel (two CTAs
// per SM, 141 registers) ran 10% slower than the persistent forward of dot_attn_fwd_wgmma.cu
// (1625 against 1478 us).
#include "dot_attn_wgmma.cuh"

namespace dot_wgmma {
namespace {

constexpr int BM = 64;           // rows per CTA = wgmma M
constexpr int TKF = 64;          // keys per tile
constexpr int HALVES = TKF / 64; // m64n64 logit blocks per tile
constexpr int WG_THREADS = 128;  // one warpgroup
constexpr int CTAS_PER_SM = 4;

template <int D>
struct FwdSmem {
  static constexpr int KT = TKF * D * 2;           // one K (or V) tile
  static constexpr int STAGE = 2 * KT;             // K, then V
  static constexpr int Q_OFF = 2 * STAGE;          // the block's Q rows, [BM x D]
  static constexpr int BYTES = Q_OFF + BM * D * 2 + 1024;  // + alignment slack (src/kernels/table.rs)
};
static_assert(CTAS_PER_SM * FwdSmem<64>::BYTES <= 227 * 1024, "four CTAs per SM fit");
static_assert(WG_THREADS == PTHREADS, "load_kv spreads a tile over 128 threads");

template <int D>
__device__ __forceinline__ void fwd_warpgroup(const bf16* __restrict__ q,  // [B,Nq,Hq,D]
                                              const bf16* __restrict__ k,  // [B,Nk,Hkv,D]
                                              const bf16* __restrict__ v,  // [B,Nk,Hkv,D]
                                              bf16* __restrict__ o,        // [B,Nq,Hq,D]
                                              float* __restrict__ lse,     // [B,Nq,Hq]
                                              const DotShape s) {
  using L = FwdSmem<D>;
  constexpr int KS = D / 16;  // k-steps of the logits
  constexpr int NA = D / 64;  // 64-column blocks of O
  const uint32_t base = aligned_dynamic_smem_u32();
  const auto [tid, wg, warp, lane, g, t] = thread_place();

  const int G = s.heads_q / s.heads_kv, nrows = s.seq_q * G;
  const RowSpace rs(s, blockIdx.z, blockIdx.y);
  const int rbase = (gridDim.x - 1 - blockIdx.x) * BM;  // the last block first
  auto q_off = [&](int r) -> long long { return rs.row(r, D); };
  const Span KU = keys_of_rows(s, G, rbase, min(rbase + BM, nrows));
  const int nkt = (KU.hi - KU.lo + TKF - 1) / TKF;
  const long long kstride = (long long)s.heads_kv * D, kbase = rs.key(0, D);
  auto load_tile = [&](int step) {
    const uint32_t kt = base + (step & 1) * L::STAGE;
    load_kv<TKF, D>(kt, kt + L::KT, k, v, kbase, kstride, KU.lo + step * TKF, KU.hi);
    cp_async_commit();
  };
  // Q (swizzled as an A tile of D/64 atoms of 64 rows; zero past the rows) with the first tile
  const uint32_t qs = base + L::Q_OFF;
#pragma unroll
  for (int x = 0; x < BM * D / 8 / WG_THREADS; ++x) {
    const int ch = tid + x * WG_THREADS, rr = ch / (D / 8), c16 = ch % (D / 8), r = rbase + rr;
    cp_async16(qs + sw128_tile(BM, rr, c16 * 8), q + (r < nrows ? q_off(r) + c16 * 8 : 0), r < nrows);
  }
  load_tile(0);

  // this thread's rows rbase + 16 warp + g + 8 e: their keys (empty past the rows)
  Span kr[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    kr[e] = r < nrows ? dot::keys_of(s, r / G) : Span{0, 0};
  }
  const float sl2 = s.scale * LOG2E;
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
  float acc[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

  for (int step = 0; step < nkt; ++step) {
    if (step + 1 < nkt) {
      load_tile(step + 1);  // into the stage the last step's barrier freed
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    fence_async_smem();
    __syncthreads();  // tile `step` landed for every thread
    const int k0 = KU.lo + step * TKF;
    const uint32_t kt = base + (step & 1) * L::STAGE, vt = kt + L::KT;

    // S = Q K_tile^T: keys k0 + 64 h .. k0 + 64 h + 63 into sacc[h]
    float sacc[HALVES][32];
    wg_fence();
#pragma unroll
    for (int h = 0; h < HALVES; ++h) offset_walk::wgmma_ss_tt<KS>(sacc[h], qs, kt + h * 64 * 128);
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int h = 0; h < HALVES; ++h) reg_fence(sacc[h]);

    // mask and online softmax (base 2) of rows g and g + 8, O *= alpha, P as bf16 A fragments
    float alpha[2];
    softmax_tile(sacc, k0, kr, sl2, t, m_row, l_row, alpha);
    offset_walk::rescale_rows(acc, alpha);
    uint32_t pf[HALVES][4][4];
    offset_walk::pack_probs(sacc, pf);

    // O += P V_tile
#pragma unroll
    for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
    wg_fence();
#pragma unroll
    for (int h = 0; h < HALVES; ++h) offset_walk::wgmma_a_t<NA, TKF>(acc, pf[h], vt + h * 64 * 128, true);
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
    __syncthreads();  // every warp is done with this stage: the next step's load may refill it
  }

  store_output_rows<D>(acc, m_row, l_row, rbase, nrows, rs, o, lse, q_off);
}

}  // namespace
}  // namespace dot_wgmma

// dot_fwd_bf16_d64: 128 threads, BM = 64 rows of a (batch, K/V head) per CTA, grid (row blocks,
// Hkv, B); same arguments as the other dot-product forwards.
extern "C" __global__ void __launch_bounds__(dot_wgmma::WG_THREADS, dot_wgmma::CTAS_PER_SM)
    dot_fwd_bf16_d64(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o,
                     float* lse, const dot::DotShape s) {
  dot_wgmma::fwd_warpgroup<64>(q, k, v, o, lse, s);
}
