// Dot-product attention forward on Hopper tensor cores (wgmma), FlashAttention-3 style.
//
//   S[i,j] = scale * q_i . k_j  (j in the keys of query i),  o_i = sum_j softmax_j(S[i]) v_j,
//   lse_i = log sum_j exp S[i,j]   (natural log, f32)
// bf16 q, k, v, o; f32 accumulation and softmax; D = Dv = 128 (the template also builds D = 64,
// dropped: see the kernel's entry below); any G = Hq / Hkv, causal or bidirectional, sliding
// windows, Nk >= Nq. Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs; when it runs,
// speed: docs/kernels.md.
//
// Work: blocks of 128 rows of a (batch, K/V head)'s row space r = i G + hh (the G heads of a
// K/V head share its tiles), the last block first (it sees the most keys under a causal mask).
// Grid: persistent, one CTA per SM taking blocks in the snake order of dot_attn_wgmma.cuh; the
// producer's ring runs on across a CTA's blocks, so the next block's tiles load while this one
// computes. Block: 384 threads:
//   WG0 producer (setmaxnreg 40): one thread loads the key tiles, TK = 128 keys of K and of V
//     (128B-swizzled, D/64 atoms of 128 rows), with the TMA into a ring of NS = 3 stages
//     (KvRing: FULL / EMPTY mbarriers; the tensor maps of k and v come as kernel parameters).
//   WG1, WG2 consumers (setmaxnreg 232), 64 rows each, Q loaded into registers as wgmma A
//     fragments per block. Per key tile, FlashAttention-3's schedule (as
//     simplicial_fwd_producer.cu): in this consumer's turn (the two alternate through TURN
//     barriers, so one's products run while the other's softmax does) issue S = Q K_tile^T (two
//     m64n64k16 halves, RS) and the values product of the previous tile, O += P_prev V_prev (RS,
//     V MN-major); wait for S, mask (skipped where every row of the warp sees the whole tile),
//     online softmax (exp2, the scale folded into the exp's FMA); wait for the values product,
//     release its stage, O *= alpha, keep P (the accumulator layout of m64n64 is the A layout
//     of the k16 steps) in registers for the next turn. O / l and lse are stored straight from
//     registers at the end of a block.
// A consumer whose rows see none of a tile issues only its pending values product there.
// Shared memory: NS x (K, V) tiles of 128 x D bf16: 192 KB (D = 128), and the ring's mbarriers.
// Registers (consumer, D = 128): Q 32 + O 64 + S 64 + P 32; ptxas: no spills at 40 / 232 (at
// 56 / 224 the D = 128 consumers spill 192 bytes).
#include "dot_attn_wgmma.cuh"

namespace dot_wgmma {
namespace {

constexpr int TK = 128;  // keys per tile

static_assert(RingSmem<TK, 64>::BYTES <= 227 * 1024 && RingSmem<TK, 128>::BYTES <= 227 * 1024, "one CTA per SM fits");

template <int D>
__device__ __forceinline__ void fwd(const bf16* __restrict__ q,  // [B,Nq,Hq,D]
                                    const bf16* __restrict__ k,  // [B,Nk,Hkv,D]
                                    const bf16* __restrict__ v,  // [B,Nk,Hkv,D]
                                    bf16* __restrict__ o,        // [B,Nq,Hq,D]
                                    float* __restrict__ lse,     // [B,Nq,Hq]
                                    const DotShape s, const TensorMap& tk, const TensorMap& tv) {
  using L = RingSmem<TK, D>;
  constexpr int KS = D / 16;  // k-steps of the logits
  constexpr int NA = D / 64;  // 64-column blocks of O
  const uint32_t base = aligned_dynamic_smem_u32();

  const RowBlocks rb(s);
  const int G = rb.G, nrows = rb.nrows;
  const KvRing ring{base + L::BARS};
  if (!consumer_warpgroup<TK, D>(s, rb, base, ring, tk, tv)) return;  // the producer

  // ---------------- consumers ----------------
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  const int c = wg - 1;
  const float sl2 = s.scale * LOG2E;
  if (c == 1) bar_arrive(BAR_TURN + 0, 2 * 128);  // consumer 0 takes the first turn
  int gs = 0;  // steps consumed (the ring's stream)
  int n = 0;
  for (RowItem it; rb.next<TK>(s, n, it);) {
    const RowSpace rs(s, it.b, it.kv);
    const int rbase = it.row0 + ROWS * c;
    const bool any_rows = rbase < nrows;
    auto q_off = [&](int r) -> long long { return rs.row(r, D); };
    // this thread's rows rbase + 16 warp + g + 8 e: their keys (empty past the rows)
    Span kr[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = rbase + warp * 16 + g + 8 * e;
      kr[e] = r < nrows ? dot::keys_of(s, r / G) : Span{0, 0};
    }
    // the union of this warpgroup's keys (warpgroup-uniform: skips whole tiles)
    const Span KW = any_rows ? keys_of_rows(s, G, rbase, min(rbase + ROWS, nrows)) : Span{0, 0};
    uint32_t qf[KS][4];
    offset_walk::load_row_fragments<KS>(qf, q, q_off, rbase, nrows);
    float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
    float acc[NA][32];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

    bool pend = false;  // a values product of an earlier tile waits to be issued (P in pf)
    int pend_st = 0;    // its stage
    uint32_t pf[2][4][4];
    for (int step = 0; step < it.nkt; ++step, ++gs) {
      const int st = gs % NS, k0 = it.KU.lo + step * TK;
      const uint32_t kt = base + st * L::STAGE;
      const bool busy = any_rows && k0 < KW.hi && k0 + TK > KW.lo;  // warpgroup-uniform
      ring.wait_full(gs);                                            // tile `step` landed
      // Every path issues and retires its products inside its branch (ptxas serializes wgmma
      // in flight across a branch it cannot prove uniform), so a missing pending product runs
      // on P = 0 instead of being left out.
      if (!pend) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int x = 0; x < 4; ++x) pf[h][x][0] = pf[h][x][1] = pf[h][x][2] = pf[h][x][3] = 0u;
        pend_st = st;
      }
      const uint32_t vp = base + pend_st * L::STAGE + L::KT;
      if (!busy) {  // the pending values product alone, in turn
        bar_sync(BAR_TURN + c, 2 * 128);
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        wg_fence();
        offset_walk::wgmma_a_t<NA, TK>(acc, pf[0], vp, true);
        offset_walk::wgmma_a_t<NA, TK>(acc, pf[1], vp + 64 * 128, true);
        wg_commit();
        bar_arrive(BAR_TURN + (1 - c), 2 * 128);
        wg_wait0();
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        if (pend) ring.release(pend_st);
        ring.release(st);
        pend = false;
        continue;
      }
      // this consumer's turn: S = Q K_tile^T (keys k0 .. k0 + 63, k0 + 64 .. k0 + 127), then
      // O += P @ V of the pending tile
      float sacc[2][32];
      bar_sync(BAR_TURN + c, 2 * 128);
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      wg_fence();
      offset_walk::wgmma_a_tt<KS, TK>(sacc[0], qf, kt);
      offset_walk::wgmma_a_tt<KS, TK>(sacc[1], qf, kt + 64 * 128);
      wg_commit();
      offset_walk::wgmma_a_t<NA, TK>(acc, pf[0], vp, true);
      offset_walk::wgmma_a_t<NA, TK>(acc, pf[1], vp + 64 * 128, true);
      wg_commit();
      bar_arrive(BAR_TURN + (1 - c), 2 * 128);
      wg_wait1();  // S
      reg_fence(sacc[0]);
      reg_fence(sacc[1]);
      // mask and online softmax (base 2) of rows g (e = 0) and g + 8 (e = 1)
      float alpha[2];
      softmax_tile(sacc, k0, kr, sl2, t, m_row, l_row, alpha);
      wg_wait0();  // the pending values product: its stage is free
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      if (pend) ring.release(pend_st);
      offset_walk::rescale_rows(acc, alpha);
      offset_walk::pack_probs(sacc, pf);
      pend = true;
      pend_st = st;
    }
    if (pend) {  // the item's last values product
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      wg_fence();
      const uint32_t vp = base + pend_st * L::STAGE + L::KT;
      offset_walk::wgmma_a_t<NA, TK>(acc, pf[0], vp, true);
      offset_walk::wgmma_a_t<NA, TK>(acc, pf[1], vp + 64 * 128, true);
      wg_commit();
      wg_wait0();
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      ring.release(pend_st);
    }

    store_output_rows<D>(acc, m_row, l_row, rbase, nrows, rs, o, lse, q_off);
  }
  if (c == 0) bar_sync(BAR_TURN + 0, 2 * 128);  // balance the last turn's hand-back
}

}  // namespace
}  // namespace dot_wgmma

// dot_fwd_wgmma_bf16_d{D}: D = Dv; 384 threads, 128 rows per work block; same arguments as
// dot_fwd_bf16_d{D} (dot_attn_fwd.cu). Built for D = 128 only: at D = 64 the mma.sync forward
// of dot_attn_fwd.cu measured faster (LM layer, docs/kernels.md), and DOT_FWD_WGMMA(64) was
// dropped.
#define DOT_FWD_WGMMA(D)                                                                                    \
  extern "C" __global__ void __launch_bounds__(dot_wgmma::THREADS, 1) dot_fwd_wgmma_bf16_d##D(               \
      const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* o, float* lse, \
      const dot::DotShape s, const __grid_constant__ simplex::TensorMap tk,                                 \
      const __grid_constant__ simplex::TensorMap tv) {                                                      \
    dot_wgmma::fwd<D>(q, k, v, o, lse, s, tk, tv);                                                          \
  }

DOT_FWD_WGMMA(128)
