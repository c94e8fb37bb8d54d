// Dot-product attention forward on Hopper tensor cores (wgmma), FlashAttention-3 style.
//
//   S[i,j] = scale * q_i . k_j  (j in the keys of query i),  o_i = sum_j softmax_j(S[i]) v_j,
//   lse_i = log sum_j exp S[i,j]   (natural log, f32)
// bf16 q, k, v, o; f32 accumulation and softmax; D = Dv = 128 (the D = 64 forward is
// dot_attn_fwd.cu); any G = Hq / Hkv, causal or bidirectional, sliding windows, Nk >= Nq.
// Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs; when it runs, speed:
// docs/kernels.md.
//
// Work: blocks of 128 rows of a (batch, K/V head)'s row space r = i G + hh (the G heads of a
// K/V head share its tiles), the last block first (it sees the most keys under a causal mask).
// Grid: persistent, one CTA per SM taking blocks in the snake order of dot_attn_wgmma.cuh; the
// producer's ring runs on across a CTA's blocks, so the next block's tiles load while this one
// computes. Block: 384 threads:
//   WG0 producer (setmaxnreg 40): one thread loads the key tiles, TK = 128 keys of K and of V
//     (128B-swizzled, D/64 atoms of 128 rows), with the TMA into a ring of NS = 3 stages
//     (StageRing: FULL / EMPTY mbarriers; the tensor maps of k and v come as kernel parameters),
//     and each block's Q tile (128 rows, D/64 atoms), one box of q's map per atom (G heads x
//     128 / G positions), right after the block's first K / V stage: the consumers release the
//     tile once their last logits product has read it, so the next block's Q lands while they
//     finish this one (QTile: its own FULL / EMPTY mbarriers). Where G does not divide 128 a
//     block's rows are no box of q's map: each consumer copies its 64 rows with cp.async at the
//     block's start instead.
//   WG1, WG2 consumers (setmaxnreg 232), 64 rows each. Per key tile, FlashAttention-3's schedule
//     (as simplicial_fwd_producer.cu): in this consumer's turn (the two alternate through TURN
//     barriers, so one's products run while the other's softmax does) issue S = Q K_tile^T (an
//     m64n128k16 chain, both operands in shared memory) and the values product of the previous
//     tile, O += P_prev V_prev (m64n128k16, P from registers, V MN-major); wait for S, mask
//     (skipped where every row of the warp sees the whole tile), online softmax (exp2, the scale
//     folded into the exp's FMA, the thread's own partial row sums); wait for the values
//     product, release its stage, O *= alpha, keep P (the accumulator layout is the A layout of
//     the k16 steps) in registers for the next turn. The quad's row sums are added, and O / l
//     and lse stored straight from registers, at the end of a block.
// A consumer whose rows see none of a tile issues only its pending values product there.
// Shared memory: NS x (K, V) tiles of 128 x D bf16 (192 KB at D = 128), the Q tile (32 KB), the
// mbarriers: 230,464 bytes with the alignment slack.
// Registers (consumer, D = 128): O 64 + S 64 + P 32; ptxas: no spills at 40 / 232.
#include "dot_attn_wgmma.cuh"

namespace dot_wgmma {
namespace {

constexpr int TK = 128;  // keys per tile

// Shared memory: the ring (RingSmem's stages), the Q tile of CTA_ROWS x D, then the ring's
// and the Q tile's mbarriers.
template <int D>
struct WgmmaFwdSmem {
  static constexpr int Q = RingSmem<TK, D>::BARS;  // the Q tile (1024-aligned)
  static constexpr int Q_BYTES = CTA_ROWS * D * 2;
  static constexpr int BARS = Q + Q_BYTES;  // StageRing's 2 NS, then QTile's 2
  static constexpr int BYTES = BARS + (2 * NS + 2) * 8 + 1024;  // + alignment slack (src/kernels/table.rs)
};
static_assert(WgmmaFwdSmem<128>::Q % 1024 == 0, "the Q tile's swizzle atoms start 1024-aligned");
static_assert(WgmmaFwdSmem<128>::BYTES <= 227 * 1024, "one CTA per SM fits");

// A block's Q tile: rows row0 .. row0 + 127 of the row space, D/64 128B-swizzled atoms of 128
// rows (consumer c's rows from 64 c). With `tma` (G divides CTA_ROWS) the producer loads it
// whole through q's map (box: 64 columns x G heads x CTA_ROWS / G positions, so the box's rows
// are the row space's) onto FULL, and the eight consumer warps release it on EMPTY; without,
// each consumer copies its own rows (acquire) and the barriers are unused.
template <int D>
struct QTile {
  uint32_t tile, bars;  // bars: FULL, then EMPTY
  const TensorMap* map;
  int G;
  bool tma;
  __device__ __forceinline__ uint32_t full() const { return bars; }
  __device__ __forceinline__ uint32_t empty() const { return bars + 8; }
  __device__ __forceinline__ void init() const {
    mbar_init(full(), 1);
    mbar_init(empty(), StageRing::CONSUMER_WARPS);
  }
  // the producer thread: item it, the CTA's j-th, once the tile is free
  __device__ __forceinline__ void load(const RowItem& it, int j) const {
    if (!tma) return;
    mbar_wait(empty(), (j & 1) ^ 1);
    mbar_arrive_expect_tx(full(), WgmmaFwdSmem<D>::Q_BYTES);
#pragma unroll
    for (int a = 0; a < D / 64; ++a)
      tma_load_4d(tile + a * CTA_ROWS * 128, *map, 64 * a, it.kv * G, it.row0 / G, it.b, full());
  }
  // a consumer warpgroup at the start of the CTA's j-th item (rows rbase .. rbase + 63, the
  // tile's from lrow0): the tile holds its rows
  __device__ __forceinline__ void acquire(int j, const bf16* q, const RowSpace& rs, int rbase, int lrow0,
                                          int nrows) const {
    if (tma) {
      mbar_wait(full(), j & 1);
      return;
    }
    constexpr int CHUNKS = ROWS * D / 8;  // 16-byte pieces of the warpgroup's rows
    const int tid = threadIdx.x % 128;
#pragma unroll
    for (int x = 0; x < CHUNKS / 128; ++x) {
      const int c = tid + 128 * x, rr = c / (D / 8), c16 = c % (D / 8), r = rbase + rr;
      const bool ok = r < nrows;
      cp_async16(tile + sw128_tile(CTA_ROWS, lrow0 + rr, 8 * c16), q + (ok ? rs.row(r, D) + 8 * c16 : 0), ok);
    }
    cp_async_wait_all();
    fence_async_smem();  // the copies, seen by the wgmma's reads
    bar_sync(offset_walk::BAR_WG + threadIdx.x / 128, 128);
  }
  // a consumer warp (all lanes), past the wait of its last logits product of the item
  __device__ __forceinline__ void release() const {
    if (tma && threadIdx.x % 32 == 0) mbar_arrive(empty());
  }
};

// S (64 rows x the tile's 128 keys) = Q K_tile^T, issued: one m64n128k16 chain over the D/16
// k-steps, Q's rows at shared address qa (atoms CTA_ROWS * 128 bytes apart), K's at kt (TK * 128
// apart) (sacc[0]: keys 0..63, sacc[1]: keys 64..127, the halves of the m64n128 accumulator).
template <int KS>
__device__ __forceinline__ void logits_tile(float (&sacc)[2][32], uint32_t qa, uint32_t kt) {
  float(&s128)[64] = *reinterpret_cast<float(*)[64]>(&sacc[0][0]);
  const uint32_t alo = desc_lo(qa), blo = desc_lo(kt);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
    wgmma_m64n128k16_ss(s128, desc_at(alo, (ks / 4) * (CTA_ROWS * 128) + (ks % 4) * 32),
                        desc_at(blo, (ks / 4) * (TK * 128) + (ks % 4) * 32), ks > 0);
}

// O (64 rows x 128 columns) += P V_tile, issued: eight k16 steps over the tile's keys (pf[h][x]:
// keys 64 h + 16 x ..), V read MN-major, its two 64-column atoms TK * 128 bytes apart.
__device__ __forceinline__ void values_tile(float (&acc)[2][32], const uint32_t (&pf)[2][4][4], uint32_t vt) {
  float(&o128)[64] = *reinterpret_cast<float(*)[64]>(&acc[0][0]);
  const uint32_t lo = desc_lo_mn(vt, TK * 128);
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) wgmma_m64n128k16_rs<1>(o128, pf[ks / 4][ks % 4], desc_at(lo, ks * 2048), 1);
}

// The online softmax of one tile of 128 keys from k0 (as softmax_tile, dot_attn_wgmma.cuh, with
// the row max and sum each over four independent chains, and l_row the thread's own partial
// sum: add the quad's with quad_row_sums before the epilogue). Masks only where a row of the
// warp misses a key of the tile; alpha: what O's rows are to be rescaled by.
__device__ __forceinline__ void softmax_tile_partial(float (&sacc)[2][32], int k0, const Span (&kr)[2], float sl2,
                                                     int t, float (&m_row)[2], float (&l_row)[2], float (&alpha)[2]) {
  const bool inside = k0 >= kr[0].lo && k0 + TK <= kr[0].hi && k0 >= kr[1].lo && k0 + TK <= kr[1].hi;
  const bool fold = __all_sync(0xffffffffu, inside) && sl2 > 0.0f;
  const float f = fold ? sl2 : 1.0f;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (!fold) {
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int key = k0 + 64 * u + 8 * n + 2 * t + c;
            float& x = sacc[u][4 * n + 2 * e + c];
            x = key >= kr[e].lo && key < kr[e].hi ? x * sl2 : -INFINITY;
          }
    }
    float m4[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) m4[(n % 2) * 2 + c] = fmaxf(m4[(n % 2) * 2 + c], sacc[u][4 * n + 2 * e + c]);
    const float mx = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
    const float m_use = offset_walk::running_max_step(mx, fold, sl2, m_row[e], alpha[e]);
    float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float p = fast_exp2(fmaf(sacc[u][4 * n + 2 * e + c], f, -m_use));
          sacc[u][4 * n + 2 * e + c] = p;
          s4[(n % 2) * 2 + c] += p;
        }
    l_row[e] = l_row[e] * alpha[e] + ((s4[0] + s4[1]) + (s4[2] + s4[3]));
  }
}

// The row sums of the quad (the four threads of a row) from their partial sums.
__device__ __forceinline__ void quad_row_sums(float (&l_row)[2]) {
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    l_row[e] += __shfl_xor_sync(0xffffffffu, l_row[e], 1);
    l_row[e] += __shfl_xor_sync(0xffffffffu, l_row[e], 2);
  }
}

// P = 0: the A fragments of a values product that adds nothing (the first tile's turn, which
// has no pending tile, runs one on P = 0 instead of branching around it).
__device__ __forceinline__ void zero_probs(uint32_t (&pf)[2][4][4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int x = 0; x < 4; ++x) pf[h][x][0] = pf[h][x][1] = pf[h][x][2] = pf[h][x][3] = 0u;
}

template <int D>
__device__ __forceinline__ void fwd(const bf16* __restrict__ q,  // [B,Nq,Hq,D]
                                    const bf16* __restrict__ k,  // [B,Nk,Hkv,D]
                                    const bf16* __restrict__ v,  // [B,Nk,Hkv,D]
                                    bf16* __restrict__ o,        // [B,Nq,Hq,D]
                                    float* __restrict__ lse,     // [B,Nq,Hq]
                                    const DotShape s, const TensorMap& tk, const TensorMap& tv,
                                    const TensorMap& tq) {
  static_assert(D == 128, "the values product is one m64n128 chain");
  using L = RingSmem<TK, D>;
  constexpr int KS = D / 16;  // k-steps of the logits
  constexpr int NA = D / 64;  // 64-column blocks of O
  const uint32_t base = aligned_dynamic_smem_u32();

  const RowBlocks rb(s);
  const int G = rb.G, nrows = rb.nrows;
  const StageRing ring{base + WgmmaFwdSmem<D>::BARS};
  const QTile<D> qt{base + WgmmaFwdSmem<D>::Q, base + WgmmaFwdSmem<D>::BARS + 2 * NS * 8, &tq, G, CTA_ROWS % G == 0};
  if (!consumer_warpgroup<TK, D>(s, rb, base, ring, tk, tv, qt)) return;  // the producer

  // ---------------- consumers ----------------
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  const int c = wg - 1;
  const float sl2 = s.scale * LOG2E;
  if (c == 1) bar_arrive(BAR_TURN + 0, 2 * 128);  // consumer 0 takes the first turn
  int gs = 0;  // steps consumed (the ring's stream)
  int n = 0;
  for (RowItem it; rb.next<TK>(s, n, it);) {
    const int j = n - 1;  // the item's place in this CTA's walk
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
    qt.acquire(j, q, rs, rbase, ROWS * c, nrows);
    const uint32_t qa = qt.tile + ROWS * c * 128;  // this consumer's rows of the Q tile
    bool q_held = true;                            // Q not yet released (QTile::release)
    float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
    float acc[NA][32];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

    bool pend = false;  // a values product of an earlier tile waits to be issued (P in pf)
    int pend_st = 0;    // its stage
    uint32_t pf[2][4][4];
    zero_probs(pf);
    for (int step = 0; step < it.nkt; ++step, ++gs) {
      const int st = gs % NS, k0 = it.KU.lo + step * TK;
      const uint32_t kt = base + st * L::STAGE;
      const bool busy = any_rows && k0 < KW.hi && k0 + TK > KW.lo;  // warpgroup-uniform
      ring.wait_full(gs);                                            // tile `step` landed
      // Every path issues and retires its products inside its branch (ptxas serializes wgmma
      // in flight across a branch it cannot prove uniform), so a missing pending product runs
      // on P = 0 (pf is zero whenever nothing is pending) on this tile's V.
      if (!pend) pend_st = st;
      const uint32_t vp = base + pend_st * L::STAGE + L::KT;
      if (!busy) {  // the pending values product alone, in turn
        bar_sync(BAR_TURN + c, 2 * 128);
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        wg_fence();
        values_tile(acc, pf, vp);
        wg_commit();
        bar_arrive(BAR_TURN + (1 - c), 2 * 128);
        wg_wait0();
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        if (pend) ring.release(pend_st);
        ring.release(st);
        pend = false;
        zero_probs(pf);
        continue;
      }
      // this consumer's turn: S = Q K_tile^T (keys k0 .. k0 + 127), then O += P @ V of the
      // pending tile
      float sacc[2][32];
      bar_sync(BAR_TURN + c, 2 * 128);
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      wg_fence();
      logits_tile<KS>(sacc, qa, kt);
      wg_commit();
      values_tile(acc, pf, vp);
      wg_commit();
      bar_arrive(BAR_TURN + (1 - c), 2 * 128);
      wg_wait1();  // S
      reg_fence(sacc[0]);
      reg_fence(sacc[1]);
      if (q_held && k0 + TK >= KW.hi) {  // the item's last logits product has read Q
        qt.release();
        q_held = false;
      }
      // mask and online softmax (base 2) of rows g (e = 0) and g + 8 (e = 1)
      float alpha[2];
      softmax_tile_partial(sacc, k0, kr, sl2, t, m_row, l_row, alpha);
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
      values_tile(acc, pf, base + pend_st * L::STAGE + L::KT);
      wg_commit();
      wg_wait0();
#pragma unroll
      for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      ring.release(pend_st);
    }

    if (q_held) qt.release();
    quad_row_sums(l_row);
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
      const __grid_constant__ simplex::TensorMap tv, const __grid_constant__ simplex::TensorMap tq) {      \
    dot_wgmma::fwd<D>(q, k, v, o, lse, s, tk, tv, tq);                                                      \
  }

DOT_FWD_WGMMA(128)
