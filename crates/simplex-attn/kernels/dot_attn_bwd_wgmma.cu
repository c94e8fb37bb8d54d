// Dot-product attention backward on Hopper tensor cores (wgmma): dq, and dk, dv.
//
//   P[i,j] = exp(scale q_i . k_j - lse_i),  dP[i,j] = dout_i . v_j,  dS = P (dP - delta_i),
//   dq_i = scale sum_j dS[i,j] k_j,  dk_j = scale sum_i dS[i,j] q_i,  dv_j = sum_i P[i,j] dout_i
// (delta = rowsum(o * dout), computed by the dq kernel, which also writes it for the dk/dv
// kernel; the sums over i run over the G query heads of a K/V head too). bf16 inputs and
// gradients, f32 accumulation; D = Dv in {64, 128}; any G, causal or bidirectional, sliding
// windows, Nk >= Nq. Deterministic: every CTA owns the gradient rows it writes and sums in a
// fixed order (no atomics). Reference: src/dot/reference.rs; tests: tests/cuda_dot.rs; when it
// runs, speed: docs/kernels.md.
//
// Both kernels: persistent (one CTA per SM, work blocks in the snake order of
// dot_attn_wgmma.cuh), 384 threads: a producer warpgroup (setmaxnreg 40) loading into a ring
// of NS = 3 stages that runs on across a CTA's blocks (StageRing: one thread issuing TMA
// loads; the dk/dv kernel's 128 threads with cp.async where G does not divide TQ) and two
// consumer warpgroups (setmaxnreg 232). Each consumer runs its products in its own step
// (issue, wait, elementwise, issue, wait); the two drift apart, so one's elementwise work
// overlaps the other's products. Results are stored straight from registers at the end of a
// block. ptxas: no spills, but 32 bytes at D = 128 in the dk/dv kernel (its item prologue and
// epilogue, and one reload per step after the products' wait: the EMPTY arrival's
// mbarrier, which named barriers did not cost).
//
// dq kernel: a block is 128 rows r = i G + hh of a (batch, K/V head) (the last block first),
// 64 per consumer, Q and dO loaded into registers as wgmma A fragments, lse per row and delta =
// rowsum(o * dout) (from o loaded the same way, summed over the row's four threads) in
// registers, and written with lse log2 e as the row's pair for the dk/dv kernel ([B, Hkv, rows
// padded to TQ, 2], the row space's order). Per key tile of TKQ = 64 keys (K and V staged by
// the producer, 128B-swizzled):
//   S = Q K^T, dP = dO V^T       RS wgmma m64n64k16, K, V K-major
//   P = 2^(S scale log2 e - lse log2 e), dS = P (dP - delta)   (masked only where a row of
//                                the warp does not see the whole tile)
//   dQ += dS K                   RS, dS from the accumulators as A, K read MN-major
// Shared memory: NS x (K, V) 64 x D tiles: 48 KB (D = 64), 96 KB (D = 128), and the mbarriers.
// Registers (D = 128): Q 32 + dO 32 + dQ 64 + S 32 + dP 32 + dS 16.
//
// dk/dv kernel: a block is 128 keys of one K/V head (the first block first), 64 per consumer;
// the producer stages the rows that see them in steps of TQ = 64 rows (q and dout swizzled,
// their (lse log2 e, delta) pairs); where G divides TQ a step's rows are G heads x TQ / G
// queries, one TMA box of each map:
//   S^T = K Q^T, dP^T = V dO^T   D = 64: RS, K and V of the consumer's keys as A fragments;
//                                D = 128: SS, K and V in the consumer's own shared tiles
//   P^T, dS^T                    (masked only where a key of the warp is not seen by every
//                                row of the step: each key's rows are one range [rlo, rhi))
//   dV += P^T dO, dK += dS^T Q   RS, A from the accumulators, dO and Q read MN-major
// Shared memory: D = 64: NS x (Q, dO) 64 x 64 tiles + pairs: 49.5 KB; D = 128: the
// consumers' K, V 64 KB + NS x (Q, dO) 64 x 128 + pairs: 161.5 KB; and the mbarriers.
// Registers (D = 128): dK 64 + dV 64 + S^T 32 + dP^T 32 + P^T, dS^T fragments 32.
#include <type_traits>

#include "dot_attn_wgmma.cuh"

namespace dot_wgmma {
namespace {

constexpr int TKQ = 64;  // keys per tile of the dq kernel (the dk/dv kernel's steps: TQ rows)

static_assert(RingSmem<TKQ, 64>::BYTES <= 227 * 1024 && RingSmem<TKQ, 128>::BYTES <= 227 * 1024, "one CTA per SM fits");

template <int D>
__device__ __forceinline__ void bwd_dq(const bf16* __restrict__ q,      // [B,Nq,Hq,D]
                                       const bf16* __restrict__ k,      // [B,Nk,Hkv,D]
                                       const bf16* __restrict__ v,      // [B,Nk,Hkv,D]
                                       const bf16* __restrict__ dout,   // [B,Nq,Hq,D]
                                       const bf16* __restrict__ o,      // [B,Nq,Hq,D]
                                       const float* __restrict__ lse,   // [B,Nq,Hq]
                                       float* __restrict__ pairs,       // [B,Hkv,rows,2], written
                                       bf16* __restrict__ dq,           // [B,Nq,Hq,D]
                                       const DotShape s, const TensorMap& tk, const TensorMap& tv) {
  using L = RingSmem<TKQ, D>;
  constexpr int KS = D / 16, NA = D / 64;
  uint8_t* sm = aligned_dynamic_smem();
  const uint32_t base = smem_u32(sm);

  const RowBlocks rb(s);
  const int G = rb.G, nrows = rb.nrows;
  const StageRing ring{base + L::BARS};
  if (!consumer_warpgroup<TKQ, D>(s, rb, base, ring, tk, tv)) return;  // the producer

  // ---------------- consumers ----------------
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  const int c = wg - 1;
  const float sl2 = s.scale * LOG2E;
  int gs = 0;  // steps consumed (the ring's stream)
  int n = 0;
  for (RowItem it; rb.next<TKQ>(s, n, it);) {
    const RowSpace rs(s, it.b, it.kv);
    const int rbase = it.row0 + ROWS * c;
    const bool any_rows = rbase < nrows;
    auto q_off = [&](int r) -> long long { return rs.row(r, D); };
    // this thread's rows rbase + 16 warp + g + 8 e: keys (empty past the rows), lse log2 e
    Span kr[2];
    float lr[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = rbase + warp * 16 + g + 8 * e;
      const bool ok = r < nrows;
      kr[e] = ok ? dot::keys_of(s, r / G) : Span{0, 0};
      lr[e] = ok ? lse[rs.stat(r)] * LOG2E : 0.0f;
    }
    const Span KW = any_rows ? keys_of_rows(s, G, rbase, min(rbase + ROWS, nrows)) : Span{0, 0};
    uint32_t qf[KS][4], df[KS][4];
    offset_walk::load_row_fragments<KS>(qf, q, q_off, rbase, nrows);
    offset_walk::load_row_fragments<KS>(df, dout, q_off, rbase, nrows);
    // delta = rowsum(o * dout) of the thread's rows (the four threads of a row hold a quarter of
    // its columns each), kept for dS and written with lse log2 e for the dk/dv kernel
    float dr[2] = {0.0f, 0.0f};
    {
      uint32_t of[KS][4];
      offset_walk::load_row_fragments<KS>(of, o, q_off, rbase, nrows);
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 a = bf2_float2(of[ks][i]), d = bf2_float2(df[ks][i]);
          dr[i & 1] = fmaf(a.x, d.x, fmaf(a.y, d.y, dr[i & 1]));
        }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        dr[e] += __shfl_xor_sync(0xffffffffu, dr[e], 1);
        dr[e] += __shfl_xor_sync(0xffffffffu, dr[e], 2);
        const int r = rbase + warp * 16 + g + 8 * e;
        if (t == 0 && r < nrows) *reinterpret_cast<float2*>(pairs + rs.pair(r)) = make_float2(lr[e], dr[e]);
      }
    }
    float acc[NA][32];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

    for (int step = 0; step < it.nkt; ++step, ++gs) {
      const int st = gs % NS, k0 = it.KU.lo + step * TKQ;
      const uint32_t kt = base + st * L::STAGE, vt = kt + L::KT;
      const bool busy = any_rows && k0 < KW.hi && k0 + TKQ > KW.lo;  // warpgroup-uniform
      ring.wait_full(gs);                                             // tile `step` landed
      if (busy) {
        float sacc[32], dpacc[32];
        wg_fence();
        offset_walk::wgmma_a_tt<KS, TKQ>(sacc, qf, kt);
        offset_walk::wgmma_a_tt<KS, TKQ>(dpacc, df, vt);
        wg_commit();
        wg_wait0();
        reg_fence(sacc);
        reg_fence(dpacc);
        const bool inside = k0 >= kr[0].lo && k0 + TKQ <= kr[0].hi && k0 >= kr[1].lo && k0 + TKQ <= kr[1].hi;
        // dS as the A fragments of the 4 k-steps over the tile's keys (nn / 2: k-step, nn % 2:
        // half); the masked copy of the loop only where a row of the warp misses a key of the tile
        uint32_t dsf[TKQ / 16][4];
        auto dscores = [&](auto masked) {
          constexpr bool MASKED = decltype(masked)::value;
#pragma unroll
          for (int nn = 0; nn < 8; ++nn) {
            float ds[4];
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const int e = x / 2, key = k0 + 8 * nn + 2 * t + x % 2;
              const float y = fmaf(sacc[4 * nn + x], sl2, -lr[e]);
              const float p = MASKED ? masked_exp2(key >= kr[e].lo && key < kr[e].hi, y) : fast_exp2(y);
              ds[x] = p * (dpacc[4 * nn + x] - dr[e]);
            }
            dsf[nn / 2][2 * (nn % 2) + 0] = bf2_pack(ds[0], ds[1]);
            dsf[nn / 2][2 * (nn % 2) + 1] = bf2_pack(ds[2], ds[3]);
          }
        };
        if (__all_sync(0xffffffffu, inside))
          dscores(std::false_type{});
        else
          dscores(std::true_type{});
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        wg_fence();
        offset_walk::wgmma_a_t<NA, TKQ>(acc, dsf, kt, true);
        wg_commit();
        wg_wait0();
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
      }
      ring.release(st);
    }

    // ---- the item's epilogue: dq = scale * acc straight from registers ----
    const float sc[2] = {s.scale, s.scale};
    store_acc_rows<D>(acc, sc, rbase, nrows, dq, q_off);
  }
}

template <int D>
struct DkvSmem {
  static constexpr bool KV_SMEM = D > 64;  // K, V as SS operands (registers at D = 64)
  static constexpr int T = 64 * D * 2;     // one [64 x D] tile
  static constexpr int KV_OFF = 0;         // consumer c: K at 2 c T, V at (2 c + 1) T
  static constexpr int STAGE_OFF = KV_SMEM ? 4 * T : 0;
  static constexpr int STAGE = 2 * T;      // q rows, then dout rows (1024-byte aligned)
  static constexpr int PAIRS_OFF = STAGE_OFF + NS * STAGE;  // per stage: TQ (lse log2 e, delta) pairs
  static constexpr int PAIRS = TQ * 2 * 4;
  static constexpr int BARS = PAIRS_OFF + NS * PAIRS;      // StageRing's 2 NS mbarriers
  static constexpr int BYTES = BARS + 2 * NS * 8 + 1024;   // + alignment slack (src/kernels/table.rs)
};
static_assert(DkvSmem<64>::BYTES <= 227 * 1024 && DkvSmem<128>::BYTES <= 227 * 1024, "one CTA per SM fits");

// A work item of the dk/dv kernel: the block of CTA_ROWS keys from key0 of (batch b, K/V head
// kv), and the rows RU that see them, in nsteps steps of TQ rows.
struct KeyItem {
  int key0, b, kv;
  Span RU;
  int nsteps;
};

// The key blocks of the dk/dv kernel (within a group the first block, under a causal mask the
// one seen by the most queries, first).
struct KeyBlocks {
  int G, nk;
  Work work;
  __device__ __forceinline__ explicit KeyBlocks(const DotShape& s)
      : G(s.heads_q / s.heads_kv), nk(s.seq_k), work((s.seq_k + CTA_ROWS - 1) / CTA_ROWS, s.heads_kv, s.batch, false) {}
  // Key block n of this CTA's walk into `it`, n advanced; false past the last.
  __device__ __forceinline__ bool next(const DotShape& s, int& n, KeyItem& it) const {
    const int w = work.nth(n++);
    if (w < 0) return false;
    int blk;
    work.decode(w, blk, it.kv, it.b);
    it.key0 = blk * CTA_ROWS;
    it.RU = rows_of_keys(s, G, it.key0, min(it.key0 + CTA_ROWS, nk));
    it.nsteps = (it.RU.hi - it.RU.lo + TQ - 1) / TQ;
    return true;
  }
};

// The dk/dv producer through the TMA (one thread; G divides TQ): per step the rows r0 .. r0 +
// TQ - 1 of q and dout (G heads x TQ / G queries per box: the row space's order), D/64 boxes
// each, and their (lse log2 e, delta) pairs, one box of the pairs' map. Rows past Nq land as
// zeros; rows past RU.hi are real rows, which every key of the block masks.
template <int D>
__device__ __forceinline__ void produce_rows_tma(const DotShape& s, const KeyBlocks& kb, uint32_t base,
                                                 const StageRing& ring, const TensorMap& tq, const TensorMap& tdo,
                                                 const TensorMap& tpairs) {
  using L = DkvSmem<D>;
  tma_prefetch_map(tq);
  tma_prefetch_map(tdo);
  tma_prefetch_map(tpairs);
  const int G = kb.G;
  int gs = 0, n = 0;
  for (KeyItem it; kb.next(s, n, it);) {
    for (int step = 0; step < it.nsteps; ++step, ++gs) {
      const int st = gs % NS, r0 = it.RU.lo + step * TQ;  // r0 % G == 0: RU.lo and TQ are multiples
      const uint32_t qt = base + L::STAGE_OFF + st * L::STAGE, full = ring.full(st);
      ring.wait_empty(gs);
      mbar_arrive_expect_tx(full, L::STAGE + L::PAIRS);
#pragma unroll
      for (int a = 0; a < D / 64; ++a) {
        tma_load_4d(qt + a * TQ * 128, tq, 64 * a, it.kv * G, r0 / G, it.b, full);
        tma_load_4d(qt + L::T + a * TQ * 128, tdo, 64 * a, it.kv * G, r0 / G, it.b, full);
      }
      tma_load_3d(base + L::PAIRS_OFF + st * L::PAIRS, tpairs, 2 * r0, it.kv, it.b, full);
    }
  }
}

// The dk/dv producer through cp.async (the 128 threads of warpgroup 0; any G): the same tiles
// gathered row by row, zero past RU.hi. Step gs's copies are issued once its stage is free; the
// FULL arrival for step gs - 1 follows, once this thread's copies of it have landed (each
// thread waits for its own, fences them for the async proxy and arrives: the stage is full
// when all 128 have).
template <int D>
__device__ __forceinline__ void produce_rows_cp_async(const DotShape& s, const KeyBlocks& kb, uint32_t base,
                                                      const StageRing& ring, const bf16* q, const bf16* dout,
                                                      const float* pairs) {
  using L = DkvSmem<D>;
  const int ptid = threadIdx.x;
  int gs = 0, n = 0;
  auto landed = [&](int x) {  // step x's copies of this thread are in
    fence_async_smem();
    mbar_arrive(ring.full(x % NS));
  };
  for (KeyItem it; kb.next(s, n, it);) {
    const RowSpace rs(s, it.b, it.kv);
    for (int step = 0; step < it.nsteps; ++step, ++gs) {
      const int st = gs % NS, r0 = it.RU.lo + step * TQ;
      const uint32_t qt = base + L::STAGE_OFF + st * L::STAGE;
      ring.wait_empty(gs);
#pragma unroll 2
      for (int x = 0; x < TQ * D / 8 / PTHREADS; ++x) {
        const int ch = ptid + x * PTHREADS;
        const int rr = ch / (D / 8), c16 = ch % (D / 8), r = r0 + rr;
        const bool ok = r < it.RU.hi;
        const long long src = ok ? rs.row(r, D) + c16 * 8 : 0;
        const uint32_t at = sw128_tile(TQ, rr, c16 * 8);
        cp_async16(qt + at, q + src, ok);
        cp_async16(qt + L::T + at, dout + src, ok);
      }
      // the pairs: one float per thread (2 TQ of them), zero past RU.hi
      const bool ok = r0 + ptid / 2 < it.RU.hi;
      const long long src = ok ? rs.pair(r0) + ptid : 0;
      cp_async4(base + L::PAIRS_OFF + st * L::PAIRS + ptid * 4, pairs + src, ok);
      cp_async_commit();
      if (gs >= 1) {
        cp_async_wait_group<1>();
        landed(gs - 1);
      }
    }
  }
  cp_async_wait_group<0>();
  if (gs >= 1) landed(gs - 1);
}

template <int D>
__device__ __forceinline__ void bwd_dkv(const bf16* __restrict__ q,      // [B,Nq,Hq,D]
                                        const bf16* __restrict__ k,      // [B,Nk,Hkv,D]
                                        const bf16* __restrict__ v,      // [B,Nk,Hkv,D]
                                        const bf16* __restrict__ dout,   // [B,Nq,Hq,D]
                                        const float* __restrict__ pairs, // [B,Hkv,rows,2]
                                        bf16* __restrict__ dk,           // [B,Nk,Hkv,D]
                                        bf16* __restrict__ dv,           // [B,Nk,Hkv,D]
                                        const DotShape s, const TensorMap& tq, const TensorMap& tdo,
                                        const TensorMap& tpairs) {
  using L = DkvSmem<D>;
  constexpr int KS = D / 16, NA = D / 64;
  uint8_t* sm = aligned_dynamic_smem();
  const uint32_t base = smem_u32(sm);

  const KeyBlocks kb(s);
  const int G = kb.G, Nk = s.seq_k;
  const bool tma = TQ % G == 0;  // src/kernels/tma.rs: dkv_row_box
  const StageRing ring{base + L::BARS};
  if (threadIdx.x == 0) ring.init(tma ? 1 : PTHREADS);
  __syncthreads();
  const int tid = threadIdx.x, wg = tid / 128;

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS) : "memory");
    if (!tma)
      produce_rows_cp_async<D>(s, kb, base, ring, q, dout, pairs);
    else if (tid == 0)
      produce_rows_tma<D>(s, kb, base, ring, tq, tdo, tpairs);
    return;
  }

  // ---------------- consumers ----------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS) : "memory");
  const int c = wg - 1, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const float sl2 = s.scale * LOG2E;
  const uint32_t kbase = base + L::KV_OFF + 2 * c * L::T, vbase = kbase + L::T;  // KV_SMEM only
  int gs = 0;  // steps consumed (the ring's stream)
  int n = 0;
  for (KeyItem it; kb.next(s, n, it);) {
    const RowSpace rs(s, it.b, it.kv);
    auto kv_off = [&](int j) -> long long { return rs.key(j, D); };
    const int kc = it.key0 + ROWS * c;  // this consumer's keys kc .. kc + 63
    const bool any_keys = kc < Nk;
    // the rows that see this thread's keys kc + 16 warp + g + 8 e (empty past Nk), and those
    // that see any of the consumer's keys
    Span rk[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = kc + warp * 16 + g + 8 * e;
      rk[e] = j < Nk ? rows_of_keys(s, G, j, j + 1) : Span{0, 0};
    }
    const Span RW = any_keys ? rows_of_keys(s, G, kc, min(kc + ROWS, Nk)) : Span{0, 0};
    uint32_t kf[L::KV_SMEM ? 1 : KS][4], vf[L::KV_SMEM ? 1 : KS][4];  // !KV_SMEM only
    if constexpr (L::KV_SMEM) {
      // this consumer's K, V rows (zero past Nk) into its own tiles; its earlier products that
      // read them have been waited for
      if (it.nsteps > 0) {
#pragma unroll 2
        for (int x = 0; x < ROWS * D / 8 / 128; ++x) {
          const int ch = tid % 128 + x * 128;
          const int kk = ch / (D / 8), c16 = ch % (D / 8), pos = kc + kk;
          const bool ok = pos < Nk;
          const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
          const uint32_t at = sw128_tile(ROWS, kk, c16 * 8);
          cp_async16(kbase + at, k + src, ok);
          cp_async16(vbase + at, v + src, ok);
        }
        cp_async_commit();
        cp_async_wait_group<0>();
        fence_async_smem();
        bar_sync(offset_walk::BAR_WG + wg, 128);
      }
    } else {
      offset_walk::load_row_fragments<KS>(kf, k, kv_off, kc, Nk);
      offset_walk::load_row_fragments<KS>(vf, v, kv_off, kc, Nk);
    }
    float gk[NA][32], gv[NA][32];
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int x = 0; x < 32; ++x) gk[a][x] = gv[a][x] = 0.0f;

    for (int step = 0; step < it.nsteps; ++step, ++gs) {
      const int st = gs % NS, r0 = it.RU.lo + step * TQ;
      const bool busy = r0 < RW.hi && r0 + TQ > RW.lo;  // warpgroup-uniform (RW empty: never)
      ring.wait_full(gs);                                // the step's rows landed
      if (busy) {
        const uint32_t qt = base + L::STAGE_OFF + st * L::STAGE, dt = qt + L::T;
        const float* ls = reinterpret_cast<const float*>(sm + L::PAIRS_OFF + st * L::PAIRS);
        // S^T = K Q^T, dP^T = V dO^T (rows: the consumer's keys; columns: the step's rows)
        float sacc[32], dpacc[32];
        wg_fence();
        if constexpr (L::KV_SMEM) {
          offset_walk::wgmma_ss_tt<KS>(sacc, kbase, qt);
          offset_walk::wgmma_ss_tt<KS>(dpacc, vbase, dt);
        } else {
          offset_walk::wgmma_a_tt<KS, TQ>(sacc, kf, qt);
          offset_walk::wgmma_a_tt<KS, TQ>(dpacc, vf, dt);
        }
        wg_commit();
        wg_wait0();
        reg_fence(sacc);
        reg_fence(dpacc);
        // P^T, dS^T: row (key) e, column (row of the step) 8 nn + 2 t + cc
        const bool inside = r0 >= rk[0].lo && r0 + TQ <= rk[0].hi && r0 >= rk[1].lo && r0 + TQ <= rk[1].hi;
        uint32_t pf[TQ / 16][4], dsf[TQ / 16][4];
        // Two copies of the loop, chosen per warp: the masked one only where a row of the step
        // misses a key of the warp. (With one loop and `ok = full || ...`, ptxas computes the 64
        // comparisons of every step before issuing its products.)
        auto probs = [&](auto masked) {
          constexpr bool MASKED = decltype(masked)::value;
#pragma unroll
          for (int nn = 0; nn < 8; ++nn) {
            // (lse log2 e, delta) of the rows 8 nn + 2 t and 8 nn + 2 t + 1
            const float4 ld = *reinterpret_cast<const float4*>(ls + 2 * (8 * nn + 2 * t));
            float pv[4], dsv[4];
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const int e = x / 2, cc = x % 2, r = r0 + 8 * nn + 2 * t + cc;
              const float y = fmaf(sacc[4 * nn + x], sl2, -(cc ? ld.z : ld.x));
              pv[x] = MASKED ? masked_exp2(r >= rk[e].lo && r < rk[e].hi, y) : fast_exp2(y);
              dsv[x] = pv[x] * (dpacc[4 * nn + x] - (cc ? ld.w : ld.y));
            }
            offset_walk::pack_p_ds(pf, dsf, nn, pv, dsv);
          }
        };
        if (__all_sync(0xffffffffu, inside))
          probs(std::false_type{});
        else
          probs(std::true_type{});
        // dV += P^T dO, dK += dS^T Q (dO, Q read MN-major)
#pragma unroll
        for (int a = 0; a < NA; ++a) {
          reg_fence(gk[a]);
          reg_fence(gv[a]);
        }
        wg_fence();
        offset_walk::key_products<NA>(gk, gv, pf, dsf, qt, dt);
        wg_commit();
        wg_wait0();
#pragma unroll
        for (int a = 0; a < NA; ++a) {
          reg_fence(gk[a]);
          reg_fence(gv[a]);
        }
      }
      ring.release(st);
    }

    // ---- the item's epilogue: dk = scale * gk, dv = gv straight from registers ----
    const float sc[2] = {s.scale, s.scale}, one[2] = {1.0f, 1.0f};
    store_acc_rows<D>(gk, sc, kc, Nk, dk, kv_off);
    store_acc_rows<D>(gv, one, kc, Nk, dv, kv_off);
  }
}

}  // namespace
}  // namespace dot_wgmma

// dot_bwd_dq_wgmma_bf16_d{D}, dot_bwd_dkv_wgmma_bf16_d{D}: D = Dv = 64 or 128; 384 threads,
// persistent; 128 rows (dq) or keys (dk/dv) per work block. The dq kernel also computes delta =
// rowsum(o * dout) and writes it for the dk/dv kernel, which runs after it.
#define DOT_BWD_WGMMA(D)                                                                                     \
  extern "C" __global__ void __launch_bounds__(dot_wgmma::THREADS, 1) dot_bwd_dq_wgmma_bf16_d##D(             \
      const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,    \
      const __nv_bfloat16* o, const float* lse, float* pairs, __nv_bfloat16* dq, const dot::DotShape s,      \
      const __grid_constant__ simplex::TensorMap tk, const __grid_constant__ simplex::TensorMap tv) {        \
    dot_wgmma::bwd_dq<D>(q, k, v, dout, o, lse, pairs, dq, s, tk, tv);                                       \
  }                                                                                                          \
  extern "C" __global__ void __launch_bounds__(dot_wgmma::THREADS, 1) dot_bwd_dkv_wgmma_bf16_d##D(            \
      const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,    \
      const float* pairs, __nv_bfloat16* dk, __nv_bfloat16* dv, const dot::DotShape s,                       \
      const __grid_constant__ simplex::TensorMap tq, const __grid_constant__ simplex::TensorMap tdo,         \
      const __grid_constant__ simplex::TensorMap tpairs) {                                                   \
    dot_wgmma::bwd_dkv<D>(q, k, v, dout, pairs, dk, dv, s, tq, tdo, tpairs);                                 \
  }

DOT_BWD_WGMMA(64)
DOT_BWD_WGMMA(128)
