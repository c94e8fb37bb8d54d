// Dot-product attention backward on Hopper tensor cores (wgmma): dq, and dk, dv (split: two
// kernels, deterministic), or dk, dv and dq's f32 sums in one kernel (fused, D = 128).
//
//   P[i,j] = exp(scale q_i . k_j - lse_i),  dP[i,j] = dout_i . v_j,  dS = P (dP - delta_i),
//   dq_i = scale sum_j dS[i,j] k_j,  dk_j = scale sum_i dS[i,j] q_i,  dv_j = sum_i P[i,j] dout_i
// (delta = rowsum(o * dout), computed by the dq kernel, which also writes it for the dk/dv
// kernel; the sums over i run over the G query heads of a K/V head too). bf16 inputs and
// gradients, f32 accumulation; D = Dv in {64, 128}; any G, causal or bidirectional, sliding
// windows, Nk >= Nq. The split kernels are deterministic: every CTA owns the gradient rows it
// writes and sums in a fixed order (no atomics). Reference: src/dot/reference.rs; tests:
// tests/cuda_dot.rs; when each runs, speed: docs/kernels.md.
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
// mbarrier, which named barriers did not cost) and 28 in the fused kernel.
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
//
// Fused kernel (D = 128, G dividing TQ): the dk/dv kernel with steps aligned to the row space's
// blocks of TQ rows, which also computes dQ = scale dS K per step: each consumer stores dS^T
// (its 64 keys x the step's rows, 128B-swizzled, two buffers) before issuing dV, dK; at a
// named barrier (BAR_DS: both tiles written) it issues its half of dQ (64 rows x 64 columns
// over both consumers' 128 keys: SS wgmma, dS and K read MN-major), waits for all three, and
// each warp stages its 16 rows as f32 and adds them into dq's sums with one TMA bulk add
// (cp.reduce.async.bulk). Five products per step where the split kernels run seven. Before the
// pairs pre-pass (dot_bwd_pairs) and after the rounding pass (dot_bwd_dq_round). Registers:
// the split D = 128 consumer's, the key products' P^T, dS^T fragments then dQ's 32.
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

// FUSED: the kernel also adds dq (dot_bwd_fused_wgmma_bf16_d128): two buffers of both
// consumers' dS^T tiles and the two halves of a step's dQ partial staged as f32 for the TMA's
// bulk add.
template <int D, bool FUSED>
struct DkvSmem {
  static constexpr bool KV_SMEM = D > 64;  // K, V as SS operands (registers at D = 64)
  static constexpr int T = 64 * D * 2;     // one [64 x D] tile
  static constexpr int KV_OFF = 0;         // consumer c: K at 2 c T, V at (2 c + 1) T
  static constexpr int STAGE_OFF = KV_SMEM ? 4 * T : 0;
  static constexpr int STAGE = 2 * T;      // q rows, then dout rows (1024-byte aligned)
  static constexpr int DS_OFF = STAGE_OFF + NS * STAGE;  // FUSED: dS^T [buffer][consumer]
  static constexpr int DS = 64 * TQ * 2;                 // one consumer's [64 keys x TQ rows]
  static constexpr int DQ_OFF = DS_OFF + (FUSED ? 4 * DS : 0);  // FUSED: dQ halves [consumer]
  static constexpr int DQ = TQ * (D / 2) * 4;                   // one half: TQ rows x D/2 f32
  static constexpr int PAIRS_OFF = DQ_OFF + (FUSED ? 2 * DQ : 0);  // per stage: TQ (lse log2 e, delta)
  static constexpr int PAIRS = TQ * 2 * 4;
  static constexpr int BARS = PAIRS_OFF + NS * PAIRS;      // StageRing's 2 NS mbarriers
  static constexpr int BYTES = BARS + 2 * NS * 8 + 1024;   // + alignment slack (src/kernels/table.rs)
};
static_assert(DkvSmem<64, false>::BYTES <= 227 * 1024 && DkvSmem<128, false>::BYTES <= 227 * 1024, "one CTA per SM fits");
static_assert(DkvSmem<128, true>::BYTES <= 227 * 1024, "one CTA per SM fits");

// A work item of the dk/dv kernel: the block of CTA_ROWS keys from key0 of (batch b, K/V head
// kv), and the rows RU that see them, in nsteps steps of TQ rows.
struct KeyItem {
  int key0, b, kv;
  Span RU;
  int nsteps;
};

// The key blocks of the dk/dv kernel (within a group the first block, under a causal mask the
// one seen by the most queries, first). `aligned` (the fused kernel): the steps start at
// multiples of TQ (RU.lo rounded down: its dQ tiles are the row space's blocks of TQ rows) and
// run from the last rows down, so the CTAs working on one (batch, K/V head) add into the same
// few dQ tiles at a time (all start at the group's last rows; each stops at its own first),
// which stay in L2.
struct KeyBlocks {
  int G, nk;
  bool aligned;
  Work work;
  __device__ __forceinline__ KeyBlocks(const DotShape& s, bool aligned_)
      : G(s.heads_q / s.heads_kv),
        nk(s.seq_k),
        aligned(aligned_),
        work((s.seq_k + CTA_ROWS - 1) / CTA_ROWS, s.heads_kv, s.batch, false) {}
  // Key block n of this CTA's walk into `it`, n advanced; false past the last.
  __device__ __forceinline__ bool next(const DotShape& s, int& n, KeyItem& it) const {
    const int w = work.nth(n++);
    if (w < 0) return false;
    int blk;
    work.decode(w, blk, it.kv, it.b);
    it.key0 = blk * CTA_ROWS;
    it.RU = rows_of_keys(s, G, it.key0, min(it.key0 + CTA_ROWS, nk));
    if (aligned) it.RU.lo -= it.RU.lo % TQ;
    it.nsteps = (it.RU.hi - it.RU.lo + TQ - 1) / TQ;
    return true;
  }
  // the first row of step `step` of item `it`
  __device__ __forceinline__ int row0(const KeyItem& it, int step) const {
    return it.RU.lo + (aligned ? it.nsteps - 1 - step : step) * TQ;
  }
};

// The dk/dv producer through the TMA (one thread; G divides TQ): per step the rows r0 .. r0 +
// TQ - 1 of q and dout (G heads x TQ / G queries per box: the row space's order), D/64 boxes
// each, and their (lse log2 e, delta) pairs, one box of the pairs' map. Rows past Nq land as
// zeros; rows past RU.hi are real rows, which every key of the block masks.
template <int D, bool FUSED>
__device__ __forceinline__ void produce_rows_tma(const DotShape& s, const KeyBlocks& kb, uint32_t base,
                                                 const StageRing& ring, const TensorMap& tq, const TensorMap& tdo,
                                                 const TensorMap& tpairs) {
  using L = DkvSmem<D, FUSED>;
  tma_prefetch_map(tq);
  tma_prefetch_map(tdo);
  tma_prefetch_map(tpairs);
  const int G = kb.G;
  int gs = 0, n = 0;
  for (KeyItem it; kb.next(s, n, it);) {
    for (int step = 0; step < it.nsteps; ++step, ++gs) {
      const int st = gs % NS, r0 = kb.row0(it, step);  // r0 % G == 0: RU.lo and TQ are multiples
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
template <int D, bool FUSED>
__device__ __forceinline__ void produce_rows_cp_async(const DotShape& s, const KeyBlocks& kb, uint32_t base,
                                                      const StageRing& ring, const bf16* q, const bf16* dout,
                                                      const float* pairs) {
  using L = DkvSmem<D, FUSED>;
  const int ptid = threadIdx.x;
  int gs = 0, n = 0;
  auto landed = [&](int x) {  // step x's copies of this thread are in
    fence_async_smem();
    mbar_arrive(ring.full(x % NS));
  };
  for (KeyItem it; kb.next(s, n, it);) {
    const RowSpace rs(s, it.b, it.kv);
    for (int step = 0; step < it.nsteps; ++step, ++gs) {
      const int st = gs % NS, r0 = kb.row0(it, step);
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

// Both consumers' dS^T tiles of a step written (the fused kernel's dQ product reads both).
constexpr int BAR_DS = BAR_TURN;
static_assert(offset_walk::BAR_WG + 2 < BAR_DS, "barrier ids overlap");

// The fused kernel's dQ tile of a step (TQ rows from r0, a multiple of TQ) in the f32 buffer
// [B, Hkv, row blocks, 2 halves, TQ x D/2]: each half is the consumer's accumulator as staged,
// warp by warp (float4 x of lane at ((warp 8 + x) 32 + lane) 4; see bwd_dq_round). Returns
// the half's start.
template <int D>
__device__ __forceinline__ float* dq_tile(float* dqacc, const RowSpace& rs, int r0, int half) {
  return dqacc + (((long long)(rs.b * rs.hkv + rs.kv) * rs.row_blocks() + r0 / TQ) * 2 + half) * (TQ * D / 2);
}

// dk, dv (and with FUSED, dq's f32 partial sums into dqacc: dot_bwd_fused_wgmma_bf16_d128).
template <int D, bool FUSED>
__device__ __forceinline__ void bwd_dkv(const bf16* __restrict__ q,      // [B,Nq,Hq,D]
                                        const bf16* __restrict__ k,      // [B,Nk,Hkv,D]
                                        const bf16* __restrict__ v,      // [B,Nk,Hkv,D]
                                        const bf16* __restrict__ dout,   // [B,Nq,Hq,D]
                                        const float* __restrict__ pairs, // [B,Hkv,rows,2]
                                        bf16* __restrict__ dk,           // [B,Nk,Hkv,D]
                                        bf16* __restrict__ dv,           // [B,Nk,Hkv,D]
                                        float* __restrict__ dqacc,       // FUSED: zeroed, dq_tile
                                        const DotShape s, const TensorMap& tq, const TensorMap& tdo,
                                        const TensorMap& tpairs) {
  using L = DkvSmem<D, FUSED>;
  constexpr int KS = D / 16, NA = D / 64;
  static_assert(!FUSED || L::KV_SMEM, "the fused kernel reads both consumers' K tiles");
  uint8_t* sm = aligned_dynamic_smem();
  const uint32_t base = smem_u32(sm);

  const KeyBlocks kb(s, FUSED);
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
      produce_rows_cp_async<D, FUSED>(s, kb, base, ring, q, dout, pairs);
    else if (tid == 0)
      produce_rows_tma<D, FUSED>(s, kb, base, ring, tq, tdo, tpairs);
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
      // read them have been waited for (FUSED: and the other consumer's dQ products, which
      // read this K tile too: both arrive once done with the last item)
      if (FUSED && gs > 0) bar_sync(BAR_DS, 256);
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
      const int st = gs % NS, r0 = kb.row0(it, step);
      // warpgroup-uniform (RW empty: never); FUSED: every step (the dQ product needs both
      // consumers' dS^T, zero where a consumer's keys are not seen)
      const bool busy = FUSED || (r0 < RW.hi && r0 + TQ > RW.lo);
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
        // FUSED: dS^T into this consumer's tile of buffer gs % 2 (line: key, 128-byte swizzled
        // columns: the step's rows), before the key products read dsf
        if constexpr (FUSED) {
          const uint32_t dst = base + L::DS_OFF + (2 * (gs & 1) + c) * L::DS;
#pragma unroll
          for (int nn = 0; nn < 8; ++nn)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              st_shared_u32(dst + sw128(warp * 16 + g + 8 * e, nn) + 4 * t, dsf[nn / 2][2 * (nn % 2) + e]);
          fence_async_smem();
        }
        // dV += P^T dO, dK += dS^T Q (dO, Q read MN-major)
#pragma unroll
        for (int a = 0; a < NA; ++a) {
          reg_fence(gk[a]);
          reg_fence(gv[a]);
        }
        wg_fence();
        offset_walk::key_products<NA>(gk, gv, pf, dsf, qt, dt);
        wg_commit();
        float qacc[FUSED ? 32 : 1];
        if constexpr (FUSED) {
          // dQ[rows of the step, columns 64 c ..] = dS (both consumers' tiles, MN-major A) x
          // K (both consumers' tiles, columns 64 c .., MN-major B), once both dS^T tiles are
          // written
          bar_sync(BAR_DS, 256);
#pragma unroll
          for (int ks = 0; ks < 8; ++ks) {
            const int cc = ks / 4, kk = ks % 4;
            const uint32_t a = base + L::DS_OFF + (2 * (gs & 1) + cc) * L::DS;
            const uint32_t b = base + L::KV_OFF + 2 * cc * L::T + c * (64 * 128);
            wgmma_m64n64k16_ss<1, 1>(qacc, desc_at(desc_lo(a), kk * 2048), desc_at(desc_lo(b), kk * 2048), ks > 0);
          }
          wg_commit();
        }
        wg_wait0();
#pragma unroll
        for (int a = 0; a < NA; ++a) {
          reg_fence(gk[a]);
          reg_fence(gv[a]);
        }
        if constexpr (FUSED) {
          reg_fence(qacc);
          // each warp stages its 16 rows of the half (float4 x of lane at (x 32 + lane) 4
          // floats of the warp's 4 KB, once the warp's last bulk add has read them) and its
          // lane 0 adds them into the step's dQ tile
          constexpr int WARP_DQ = L::DQ / 4;
          const uint32_t stage = base + L::DQ_OFF + c * L::DQ + warp * WARP_DQ;
          if (lane == 0) bulk_wait_read();
          __syncwarp();
#pragma unroll
          for (int x = 0; x < 8; ++x)
            st_shared_v4(stage + (x * 32 + lane) * 16, qacc[4 * x], qacc[4 * x + 1], qacc[4 * x + 2], qacc[4 * x + 3]);
          fence_async_smem();
          __syncwarp();
          if (lane == 0) {
            bulk_reduce_add_f32(dq_tile<D>(dqacc, rs, r0, c) + warp * (WARP_DQ / 4), stage, WARP_DQ);
            bulk_commit();
          }
        }
      }
      ring.release(st);
    }

    // ---- the item's epilogue: dk = scale * gk, dv = gv straight from registers ----
    const float sc[2] = {s.scale, s.scale}, one[2] = {1.0f, 1.0f};
    store_acc_rows<D>(gk, sc, kc, Nk, dk, kv_off);
    store_acc_rows<D>(gv, one, kc, Nk, dv, kv_off);
  }
  if (FUSED && lane == 0) bulk_wait();  // the warp's last bulk adds, before the CTA's shared memory goes
}

// The fused backward's pre-pass: D / 8 threads per row r of the (padded) row space of
// (batch b, K/V head kv), rows in the launch's order (b, kv, r), r < pairs_rows (Nq G padded to
// TQ): the row's D floats of dq's sums zeroed (the sums of (b, kv) are one run of padded x D
// floats, dq_tile), and for r < Nq G, delta = rowsum(o * dout) (eight products a thread, 16-byte
// loads) and the pair (lse log2 e, delta) at RowSpace::pair(r).
template <int D>
__device__ __forceinline__ void bwd_pairs(const bf16* __restrict__ o, const bf16* __restrict__ dout,
                                          const float* __restrict__ lse, float* __restrict__ pairs,
                                          float* __restrict__ dqacc, const DotShape s) {
  constexpr int LANES = D / 8;  // threads of a row
  static_assert(LANES <= 32 && 32 % LANES == 0, "a row's threads are part of one warp");
  const int G = s.heads_q / s.heads_kv, nrows = s.seq_q * G, padded = row_blocks(nrows) * TQ;
  const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / LANES;
  const int l = threadIdx.x % LANES;
  if (w >= (long long)s.batch * s.heads_kv * padded) return;  // whole rows leave together
  const int r = w % padded, kv = (w / padded) % s.heads_kv, b = w / padded / s.heads_kv;
  float4* zero = reinterpret_cast<float4*>(dqacc + w * D) + l * (D / 4 / LANES);
#pragma unroll
  for (int x = 0; x < D / 4 / LANES; ++x) zero[x] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (r >= nrows) return;
  const RowSpace rs(s, b, kv);
  const long long at = rs.row(r, D) + 8 * l;
  const uint4 a = *reinterpret_cast<const uint4*>(o + at), d = *reinterpret_cast<const uint4*>(dout + at);
  const uint32_t av[4] = {a.x, a.y, a.z, a.w}, dv[4] = {d.x, d.y, d.z, d.w};
  float acc = 0.0f;
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    const float2 fa = bf2_float2(av[x]), fd = bf2_float2(dv[x]);
    acc = fmaf(fa.x, fd.x, fmaf(fa.y, fd.y, acc));
  }
  // the row's LANES threads are lanes LANES m .. of the warp, all present
  const unsigned mask = (LANES == 32 ? 0xffffffffu : ((1u << LANES) - 1u)) << (threadIdx.x % 32 / LANES * LANES);
#pragma unroll
  for (int off = LANES / 2; off > 0; off /= 2) acc += __shfl_xor_sync(mask, acc, off);
  if (l == 0) *reinterpret_cast<float2*>(pairs + rs.pair(r)) = make_float2(lse[rs.stat(r)] * LOG2E, acc);
}

// The fused backward's rounding pass: dq = scale * the f32 sums of dq_tile. A tile half is
// staged warp by warp, accumulator warp w's float4 x of lane (g = lane / 4, t = lane % 4)
// holding dQ[row 16 w + g + 8 e][column 64 half + 8 x + 2 t + j] as (e, j) = (0,0), (0,1),
// (1,0), (1,1). One thread per four float4s, those of lanes 4 g .. 4 g + 3 at x (64 bytes in
// a row): the eight columns from 8 x of rows 16 w + g and + 8, stored as 16 bytes each (rows of
// the row space past Nq G skipped). Threads ordered (tile, half, w, x, g), so a warp reads 2 KB
// in a row and writes 64 bytes of each of 16 rows.
template <int D>
__device__ __forceinline__ void bwd_dq_round(const float* __restrict__ dqacc, bf16* __restrict__ dq,
                                             const DotShape s) {
  const int G = s.heads_q / s.heads_kv, nrows = s.seq_q * G, blocks = row_blocks(nrows);
  constexpr int PER_HALF = TQ * D / 2 / 16;  // threads of a tile half (four float4s each)
  const long long id = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= (long long)s.batch * s.heads_kv * blocks * 2 * PER_HALF) return;
  const int i = id % PER_HALF, g = i % 8, x = i / 8 % 8, w = i / 64;
  const long long halves = id / PER_HALF;  // (tile, half)
  const int half = halves % 2;
  const long long tile = halves / 2;
  const int blk = tile % blocks, kv = (tile / blocks) % s.heads_kv, b = tile / blocks / s.heads_kv;
  const float4* src = reinterpret_cast<const float4*>(dqacc) + halves * (PER_HALF * 4) + w * 256 + x * 32 + 4 * g;
  float4 v[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) v[t] = src[t];
  const RowSpace rs(s, b, kv);
  const float sc = s.scale;
  const int r = blk * TQ + 16 * w + g, col = 64 * half + 8 * x;
  if (r < nrows)
    *reinterpret_cast<uint4*>(dq + rs.row(r, D) + col) =
        make_uint4(bf2_pack(sc * v[0].x, sc * v[0].y), bf2_pack(sc * v[1].x, sc * v[1].y),
                   bf2_pack(sc * v[2].x, sc * v[2].y), bf2_pack(sc * v[3].x, sc * v[3].y));
  if (r + 8 < nrows)
    *reinterpret_cast<uint4*>(dq + rs.row(r + 8, D) + col) =
        make_uint4(bf2_pack(sc * v[0].z, sc * v[0].w), bf2_pack(sc * v[1].z, sc * v[1].w),
                   bf2_pack(sc * v[2].z, sc * v[2].w), bf2_pack(sc * v[3].z, sc * v[3].w));
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
    dot_wgmma::bwd_dkv<D, false>(q, k, v, dout, pairs, dk, dv, nullptr, s, tq, tdo, tpairs);                 \
  }

DOT_BWD_WGMMA(64)
DOT_BWD_WGMMA(128)

// The fused backward at D = 128 (G dividing 64): dot_bwd_pairs_bf16_d128 (delta and the rows'
// pairs, dq's f32 sums zeroed; 256 threads, 16 a row), then dot_bwd_fused_wgmma_bf16_d128 (dk,
// dv, and dq's f32 sums added into dqacc), then dot_bwd_dq_round_bf16_d128 (256 threads, one
// per four staged float4s).
extern "C" __global__ void __launch_bounds__(256) dot_bwd_pairs_bf16_d128(const __nv_bfloat16* o,
                                                                         const __nv_bfloat16* dout,
                                                                         const float* lse, float* pairs,
                                                                         float* dqacc, const dot::DotShape s) {
  dot_wgmma::bwd_pairs<128>(o, dout, lse, pairs, dqacc, s);
}
extern "C" __global__ void __launch_bounds__(dot_wgmma::THREADS, 1) dot_bwd_fused_wgmma_bf16_d128(
    const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* dout,
    const float* pairs, __nv_bfloat16* dk, __nv_bfloat16* dv, float* dqacc, const dot::DotShape s,
    const __grid_constant__ simplex::TensorMap tq, const __grid_constant__ simplex::TensorMap tdo,
    const __grid_constant__ simplex::TensorMap tpairs) {
  dot_wgmma::bwd_dkv<128, true>(q, k, v, dout, pairs, dk, dv, dqacc, s, tq, tdo, tpairs);
}
extern "C" __global__ void __launch_bounds__(256) dot_bwd_dq_round_bf16_d128(const float* dqacc,
                                                                            __nv_bfloat16* dq,
                                                                            const dot::DotShape s) {
  dot_wgmma::bwd_dq_round<128>(dqacc, dq, s);
}
