// 2-simplicial attention forward on Hopper tensor cores with a producer warpgroup: bf16 in,
// f32 accumulation, f32 lse. For many query heads per K/V head (the anchors: G = 64, 128).
//
//   S[r,j,k] = scale * sum_l q[r,l] k1[j,l] k2[k,l]        r = (query i, head h): the CTA's rows
//   o[r]     = sum_{j,k} softmax_{(j,k)}(S[r]) v1[j] ∘ v2[k],   lse[r] = log sum exp S[r]
// Orientation and rows as in simplicial_fwd_wgmma.cu: window 1 (k1, v1) is the small window,
// walked one position j at a time and shared by all rows of a step; window 2 (k2, v2) the large
// one, in tiles of TK = 64 keys; rows r = i * G + h, 64 per warpgroup, each with its own windows.
//
// What differs from the ping-pong layout of simplicial_fwd_wgmma.cu. There the values product
// is O^T += (V2_tile^T ∘ v1_j) @ P^T: P goes through shared memory (stores, a fence and two
// warpgroup barriers per step) and the N of that product is the 64 rows. Here v1_j is folded
// into the B operand instead:
//   O += P @ (V2_tile ∘ v1_j)        P straight from the logits accumulator (A registers),
//                                    V'_j = V2_tile ∘ v1_j built in shared memory, MN-major
// so P never leaves registers, O is a plain [rows x D] accumulator rescaled in place, and the
// operand V'_j (the same for both consumer warpgroups: they walk the same (tile, j) steps) is
// built by a third warpgroup.
//
// Warpgroups (384 threads, one CTA per SM):
//   WG0 producer (setmaxnreg 72): cp.async of the K2 / V2 tiles (2 buffers) and the window-1
//     rows; per step builds V'_j = V2_tile ∘ v1_j (16-byte chunks, bf16x2 products) into a ring
//     of NV buffers, then arrives on each consumer's FULL[step % NV]; before reusing a buffer
//     it waits on EMPTY[...] for both consumers to be done with it.
//   WG1, WG2 consumers (setmaxnreg 216), 64 rows each, per step s (FlashAttention-3's schedule):
//     A_j = Q ∘ k1_j in registers (Q fragments held for the whole walk), wait FULL; in this
//     consumer's turn (the two alternate through TURN barriers, so one's products run while
//     the other's softmax does) issue S = A_j @ K2_tile^T and the values product of step s-1,
//     O += P_{s-1} @ V'_{s-1} (RS wgmma, V' as transposed B); wait for S, mask (skipped where
//     the warp's rows are inside their windows), online softmax (exp2, scale folded into the
//     FMA); wait for the values product, arrive EMPTY for its buffer, O *= alpha, keep P_s in
//     registers for the next turn.
// A consumer outside the union of its rows' windows for a step issues only the pending values
// product in its turn.
// Key tiles: each consumer walks 64-key tiles of its own window 2; the CTA stages 64 + the larger
// shift rows per tile (at most TKA = 72) and consumer c reads rows shift_c .. shift_c + 63 (its window's start minus the
// union's, up to 8: at G = 64 the second query's window starts one key later, and without the
// shift the CTA would walk a ninth tile for one key of 513). The wgmma descriptors simply start
// shift_c rows into the swizzled tile (the swizzle follows the shared-memory address).
// Shared memory (D = 128): K2 tiles 2 x 18 KB, V2 tiles 2 x 18 KB, V' NV = 3 x 18 KB, window-1
// rows of k1 and v1 2 x 32 KB (JC = 128 rows; longer windows are restaged with two block-wide
// barriers): 191 KB.
// Registers (consumer, D = 128): Q 32 + O 64 + S 32 + P 16 (+ A 32 while the logits run).
// Key and value head dims may differ (template D, DV): the instantiation D = 128, DV = 64 runs
// the determinant lift (keys of 2 Dv columns) with the values unpadded: V2, V' tiles and v1
// rows of 64 columns, O 32 registers, a values product of half the logits' width. With D = DV
// the loads keep their one loop over K2 and V2 chunks (the same SASS as before the split).
// FOLD (the determinant instantiation): k1_j is folded into the keys instead of the queries,
//   S = Q @ (K2_tile ∘ k1_j)^T           K'_j built by the producer beside V'_j (same ring slot)
// so the consumers run the logits on their Q fragments as they are (no A_j: 32 registers and
// 48 instructions fewer per consumer and step; one K'_j serves both consumers), and only the
// producer reads the staged K2 / V2 tiles, so it loads tile kt + 1 as soon as tile kt has
// landed. Shared memory 184 KB (K' NV x 18 KB more). The trilinear D = 128
// instantiation does not fold: with K' its 190 KB need window-1 chunks of 64 rows to fit, and
// it measured 1-3% slower (docs/history/kernels.md).
// setmaxnreg 72 (producer) / 216 (consumers), chosen by compiling splits from 24/240 to
// 88/208: the consumers spill at 208 (32 B), the producer below 72 (174 B at 24, 46 at 56;
// at 72 none once its load loops are unrolled by 2 instead of 4).
// Chosen automatically for G >= 64, and G >= 16 at D = 128 (and D = 128, Dv = 64).
// Reference: src/reference.rs; tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs; speed:
// docs/kernels.md.
#include "offset_walk.cuh"

using namespace simplex;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int ROWS = 64;       // rows per consumer warpgroup = wgmma M
constexpr int CTA_ROWS = 128;  // two consumers
constexpr int TK = 64;         // window-2 keys per tile and consumer
constexpr int SHIFT_MAX = 8;   // a consumer's keys start up to this many rows into the CTA's tile
constexpr int TKA = TK + SHIFT_MAX;  // rows of a staged tile
constexpr int JC = 128;        // window-1 rows staged at once
constexpr int NV = 3;          // V'_j buffers
constexpr int THREADS = 384;   // producer + two consumers
constexpr int PTHREADS = 128;  // producer threads
// setmaxnreg: the launch gives every thread 168 registers (65536 / 384, rounded down to 8), and
// the consumers can only take what the producer gives back (an excess blocks setmaxnreg.inc
// for ever).
constexpr int PRODUCER_REGS = 72, CONSUMER_REGS = 216;
static_assert(PRODUCER_REGS + 2 * CONSUMER_REGS <= 3 * 168, "the launch's registers");
// Named barriers. FULL is one per consumer and buffer (producer arrives, that consumer waits:
// 256 threads), so the consumers never wait for each other there; EMPTY one per buffer (both
// consumers arrive, the producer waits: 384).
constexpr int BAR_FULL = 4;               // + NV * consumer + buffer: V'[buffer] built
constexpr int BAR_EMPTY = 4 + 2 * NV;     // + buffer: V'[buffer] consumed
constexpr int BAR_PRODUCER = 4 + 3 * NV;  // the producer warpgroup alone
constexpr int BAR_TURN = BAR_PRODUCER + 1;  // + consumer: its turn to issue products
constexpr int FULL_THREADS = PTHREADS + 128;
// ids 1 + warpgroup (2, 3): store_rows_bf16's per-warpgroup barrier (offset_walk.cuh)
static_assert(offset_walk::BAR_WG + 2 < BAR_FULL, "barrier ids overlap");
static_assert(BAR_TURN + 1 < 16, "16 named barriers");

// Shared-memory carve-up for key head dim D and value head dim DV, from a 1024-byte aligned
// base. Tiles are D/64 (K2) or DV/64 (V2, V') 128B-swizzled atoms of TKA x 128 B (sw128_tile
// with TKA rows).
template <int D, int DV, bool FOLD>
struct Smem {
  static constexpr int KT = TKA * D * 2;   // one K2 tile
  static constexpr int VT = TKA * DV * 2;  // one V2 or V' tile
  static constexpr int JR = JC * D * 2;    // window-1 rows of k1, unpadded
  static constexpr int JRV = JC * DV * 2;  // window-1 rows of v1
  static constexpr int K_OFF = 0;          // 2 K2 tiles
  static constexpr int V_OFF = 2 * KT;     // 2 V2 tiles
  static constexpr int VP_OFF = V_OFF + 2 * VT;  // NV V' tiles
  static constexpr int KP_OFF = VP_OFF + NV * VT;  // NV K' tiles (FOLD only)
  static constexpr int J1_OFF = KP_OFF + (FOLD ? NV * KT : 0);
  static constexpr int JV_OFF = J1_OFF + JR;
  static constexpr int BYTES = JV_OFF + JRV + 1024;  // + alignment slack (src/kernels/table.rs)
};
static_assert(Smem<128, 128, false>::BYTES <= 227 * 1024 && Smem<128, 64, true>::BYTES <= 227 * 1024, "one CTA per SM fits the shared memory");

// A head dim as a type, for the producer's load lambdas (one per operand width).
template <int W>
struct Width {
  static constexpr int value = W;
};

// The keys of consumer c (rows row0 + 64 c ..): the unions `jw`, `kw` of its rows' windows 1
// and 2, and the row of the CTA's tiles where its own 64-key tiles start. The CTA's tiles start at the union
// of both consumers' windows, KU.lo; at G = 64 (one query per consumer) the second consumer's
// window starts one key later, and tiles of its own keys keep it from walking a ninth tile
// for one key of 513. Shifts past SHIFT_MAX (G < 8) fall back to 0 (the masking covers them).
struct ConsumerKeys {
  Range jw, kw;
  int shift;
};
__device__ __forceinline__ ConsumerKeys consumer_keys(int c, int row0, int nrows, int G, int ku_lo, const Shape& s) {
  const int rb = row0 + 64 * c;
  if (rb >= nrows) return {{0, 0}, {ku_lo, ku_lo}, 0};
  const int i0 = rb / G, i1 = (min(rb + 64, nrows) - 1) / G;
  const Range jw = {window(i0, s.w1, s.seq, s.causal).lo, window(i1, s.w1, s.seq, s.causal).hi};
  const Range kw = {window(i0, s.w2, s.seq, s.causal).lo, window(i1, s.w2, s.seq, s.causal).hi};
  const int shift = kw.lo - ku_lo <= SHIFT_MAX ? kw.lo - ku_lo : 0;
  return {jw, kw, shift};
}

template <int D, int DV, bool FOLD>
__device__ __forceinline__ void fwd_producer(const bf16* __restrict__ q,   // [B,N,Hq,D]
                                             const bf16* __restrict__ k1,  // [B,N,Hkv,D] small window
                                             const bf16* __restrict__ k2,  // [B,N,Hkv,D] large window
                                             const bf16* __restrict__ v1,  // [B,N,Hkv,DV]
                                             const bf16* __restrict__ v2,  // [B,N,Hkv,DV]
                                             bf16* __restrict__ o,         // [B,N,Hq,DV]
                                             float* __restrict__ lse,      // [B,N,Hq]
                                             const Shape s) {
  using L = Smem<D, DV, FOLD>;
  constexpr int KS = D / 16;   // k-steps of the logits
  constexpr int NA = DV / 64;  // 64-column blocks of O
  uint8_t* sm = aligned_dynamic_smem();

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const auto [row0, nrows, JU, KU] = cta_rows(s, G, CTA_ROWS);
  const int tid = threadIdx.x, wg = tid / 128;
  // key tiles: enough for the consumer whose keys reach furthest past its own first tile row;
  // rows staged per tile: 64 and the larger shift
  int nkt = 0, tile_rows = TK;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const ConsumerKeys ck = consumer_keys(c, row0, nrows, G, KU.lo, s);
    nkt = max(nkt, (ck.kw.hi - KU.lo - ck.shift + TK - 1) / TK);
    tile_rows = max(tile_rows, TK + ck.shift);
  }
  const int njc = (JU.hi - JU.lo + JC - 1) / JC;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto v_off = [&](int pos) { return hr.key(pos, DV); };

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS) : "memory");
    const int ptid = tid;
    // cp.async of rows first .. first + rows - 1 of x (W columns; row p at x + offset(p), zeros
    // from row hi on) to shared memory at dst: as a swizzled tile (TKA rows per atom), or as
    // unpadded rows
    auto load_rows = [&](auto width, bool swizzled, uint32_t dst, const bf16* x, auto offset, int first, int rows,
                         int hi) {
      constexpr int W = decltype(width)::value;
#pragma unroll 2
      for (int c = ptid; c < rows * W / 8; c += PTHREADS) {
        const int r = c / (W / 8), c16 = c % (W / 8);
        const int pos = first + r;
        const bool ok = pos < hi;
        const uint32_t at = swizzled ? sw128_tile(TKA, r, c16 * 8) : r * W * 2 + c16 * 16;
        cp_async16(dst + at, x + (ok ? offset(pos) + c16 * 8 : 0), ok);
      }
    };
    auto load_tile = [&](int k0, int buf) {
      const uint32_t ks = smem_u32(sm + L::K_OFF + buf * L::KT), vs = smem_u32(sm + L::V_OFF + buf * L::VT);
      if constexpr (D == DV) {  // one loop: K2 and V2 chunks share their tile address
#pragma unroll 2
        for (int c = ptid; c < tile_rows * D / 8; c += PTHREADS) {
          const int kk = c / (D / 8), c16 = c % (D / 8);
          const int pos = k0 + kk;
          const bool ok = pos < KU.hi;
          const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
          const uint32_t at = sw128_tile(TKA, kk, c16 * 8);
          cp_async16(ks + at, k2 + src, ok);
          cp_async16(vs + at, v2 + src, ok);
        }
      } else {
        load_rows(Width<D>{}, true, ks, k2, kv_off, k0, tile_rows, KU.hi);
        load_rows(Width<DV>{}, true, vs, v2, v_off, k0, tile_rows, KU.hi);
      }
    };
    auto load_j = [&](int j0) {
      const uint32_t a = smem_u32(sm + L::J1_OFF), v = smem_u32(sm + L::JV_OFF);
      if constexpr (D == DV) {
#pragma unroll 2
        for (int c = ptid; c < JC * D / 8; c += PTHREADS) {
          const int jj = c / (D / 8), c16 = c % (D / 8);
          const int pos = j0 + jj;
          const bool ok = pos < JU.hi;
          const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
          cp_async16(a + jj * D * 2 + c16 * 16, k1 + src, ok);
          cp_async16(v + jj * D * 2 + c16 * 16, v1 + src, ok);
        }
      } else {
        load_rows(Width<D>{}, false, a, k1, kv_off, j0, JC, JU.hi);
        load_rows(Width<DV>{}, false, v, v1, v_off, j0, JC, JU.hi);
      }
    };
    int consumed = 0;  // steps whose EMPTY the producer has waited for
    auto wait_consumed = [&](int n) {
      for (; consumed < n; ++consumed) bar_sync(BAR_EMPTY + consumed % NV, THREADS);
    };
    // dst = tile ∘ row: a staged tile (W columns, swizzled, tile_rows rows) times one window-1
    // row, in this thread's 16-byte chunks: column chunk ptid % (W / 8), rows ptid / (W / 8)
    // every PTHREADS / (W / 8)
    auto fold_row = [&](auto width, uint8_t* dst, const uint8_t* tile, const uint8_t* row) {
      constexpr int W = decltype(width)::value;
      constexpr int CPR = W / 8;                                   // chunks per row
      constexpr int RSTEP = PTHREADS / CPR;                        // rows between a thread's chunks
      constexpr int NCH = (TKA * CPR + PTHREADS - 1) / PTHREADS;  // chunks per thread (the last maybe none)
      const int c16 = ptid % CPR, r0 = ptid / CPR;
      const uint4 m = *reinterpret_cast<const uint4*>(row + c16 * 16);
#pragma unroll
      for (int x = 0; x < NCH; ++x) {
        if (r0 + x * RSTEP >= tile_rows) break;
        const uint32_t at = sw128_tile(TKA, r0 + x * RSTEP, c16 * 8);
        uint4 v = *reinterpret_cast<const uint4*>(tile + at);
        v.x = bf2_mul(v.x, m.x);
        v.y = bf2_mul(v.y, m.y);
        v.z = bf2_mul(v.z, m.z);
        v.w = bf2_mul(v.w, m.w);
        *reinterpret_cast<uint4*>(dst + at) = v;
      }
    };

    load_j(JU.lo);
    load_tile(KU.lo, 0);
    cp_async_commit();
    int step = 0;
    for (int kt = 0; kt < nkt; ++kt) {
      const int buf = kt & 1;
      cp_async_wait_all();
      fence_async_smem();
      bar_sync(BAR_PRODUCER, PTHREADS);  // tile kt (and the first rows) landed for every thread
      const int s0 = step;
      bool pending = kt + 1 < nkt;  // the next tile's load, issued once tile kt - 1 is consumed
      if (FOLD && pending) {  // only the producer reads the staged tiles: buffer buf ^ 1 is free
        load_tile(KU.lo + (kt + 1) * TK, buf ^ 1);
        cp_async_commit();
        pending = false;
      }
      const uint8_t* ksrc = sm + L::K_OFF + buf * L::KT;
      const uint8_t* vsrc = sm + L::V_OFF + buf * L::VT;
      for (int jc = 0; jc < njc; ++jc) {
        const int j0 = JU.lo + jc * JC;
        if (njc > 1 && (kt > 0 || jc > 0)) {  // restage window-1 rows (long windows only)
          __syncthreads();                    // everyone is done with the old rows
          load_j(j0);
          cp_async_commit();
          cp_async_wait_all();
          fence_async_smem();
          __syncthreads();
        }
        const int jn = min(JC, JU.hi - j0);
        for (int jj = 0; jj < jn; ++jj, ++step) {
          wait_consumed(step - NV + 1);
          // V'_j = V2_tile ∘ v1_j (and K'_j = K2_tile ∘ k1_j)
          fold_row(Width<DV>{}, sm + L::VP_OFF + (step % NV) * L::VT, vsrc, sm + L::JV_OFF + jj * DV * 2);
          if constexpr (FOLD)
            fold_row(Width<D>{}, sm + L::KP_OFF + (step % NV) * L::KT, ksrc, sm + L::J1_OFF + jj * D * 2);
          fence_async_smem();
          bar_arrive(BAR_FULL + step % NV, FULL_THREADS);
          bar_arrive(BAR_FULL + NV + step % NV, FULL_THREADS);
          if (pending && (step + 1 - s0 >= NV || (jc == njc - 1 && jj == jn - 1))) {
            wait_consumed(s0);  // the consumers are done with tile kt - 1 (its buffer)
            load_tile(KU.lo + (kt + 1) * TK, buf ^ 1);
            cp_async_commit();
            pending = false;
          }
        }
      }
    }
    wait_consumed(step);  // balance the EMPTY barriers
    __syncthreads();      // the consumers' epilogue reuses the tile space
    return;
  }

  // ---------------- consumers ----------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS) : "memory");
  const int warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int rbase = row0 + ROWS * (wg - 1);
  auto q_off = [&](int r) { return hr.row(r) * D; };
  auto o_off = [&](int r) { return hr.row(r) * DV; };
  const bf16* j1_s = reinterpret_cast<const bf16*>(sm + L::J1_OFF);

  // this thread's rows rbase + 16 warp + g + 8 e: windows, Q fragments, softmax statistics
  const offset_walk::RowWindows rw = offset_walk::row_windows(rbase, nrows, G, s);
  const Range(&jr)[2] = rw.jr;
  const Range(&kr)[2] = rw.kr;
  const bool(&row_ok)[2] = rw.ok;
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
  uint32_t qf[KS][4];
  offset_walk::load_row_fragments<KS>(qf, q, q_off, rbase, nrows);
  float acc[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

  // the union of this warpgroup's windows (warpgroup-uniform: skips whole steps)
  const bool any_rows = rbase < nrows;
  const ConsumerKeys ck = consumer_keys(wg - 1, row0, nrows, G, KU.lo, s);
  const Range JW = ck.jw, KW = ck.kw;
  const float sl2 = s.scale * LOG2E;

  // Schedule (FlashAttention-3's): a consumer issues S of step s and the values product of its
  // previous step back to back, in its turn (the two consumers alternate through the TURN
  // barriers, so one's products run while the other's softmax does), then waits for S only,
  // runs the softmax, and waits for the values product before rescaling O for step s.
  const int c = wg - 1;
  if (c == 1) bar_arrive(BAR_TURN + 0, 2 * ROWS * 2);  // consumer 0 takes the first turn
  bool pend = false;  // a values product of an earlier step waits to be issued (P in pf)
  int pend_vb = 0;    // its V' buffer
  uint32_t pf[TK / 16][4];
  int step = 0;
  for (int kt = 0; kt < nkt; ++kt) {
    // this consumer's keys of the tile: k0 .. k0 + TK - 1, rows shift .. of the staged tile
    const int buf = kt & 1, k0 = KU.lo + kt * TK + ck.shift;
    const uint32_t kbase = smem_u32(sm + L::K_OFF + buf * L::KT) + ck.shift * 128;
    const bool tile_seen = any_rows && k0 + TK > KW.lo && k0 < KW.hi;
    // this tile's keys inside both rows' window 2 (per thread; made warp-uniform below)
    const bool keys_in = k0 >= kr[0].lo && k0 + TK <= kr[0].hi && k0 >= kr[1].lo && k0 + TK <= kr[1].hi;
    for (int jc = 0; jc < njc; ++jc) {
      const int j0 = JU.lo + jc * JC;
      if (njc > 1 && (kt > 0 || jc > 0)) {  // the producer restages the window-1 rows
        __syncthreads();
        __syncthreads();
      }
      const int jn = min(JC, JU.hi - j0);
      for (int jj = 0; jj < jn; ++jj, ++step) {
        const int j = j0 + jj, vb = step % NV;
        const bool work = tile_seen && j >= JW.lo && j < JW.hi;  // warpgroup-uniform
        // A_j = Q ∘ k1_j
        uint32_t af[KS][4];
        if (!FOLD && work) {
          const bf16* k1j = j1_s + jj * D;
#pragma unroll
          for (int ks = 0; ks < KS; ++ks) {
            const uint32_t lo = *reinterpret_cast<const uint32_t*>(k1j + 16 * ks + 2 * t);
            const uint32_t hi = *reinterpret_cast<const uint32_t*>(k1j + 16 * ks + 2 * t + 8);
            af[ks][0] = bf2_mul(qf[ks][0], lo);
            af[ks][1] = bf2_mul(qf[ks][1], lo);
            af[ks][2] = bf2_mul(qf[ks][2], hi);
            af[ks][3] = bf2_mul(qf[ks][3], hi);
          }
        }
        bar_sync(BAR_FULL + NV * c + vb, FULL_THREADS);  // V'_j built; tile kt landed
        // Every path below issues and retires its products inside the branch (ptxas serializes
        // wgmma in flight across a branch it cannot prove uniform), so a missing pending step
        // runs its values product on P = 0 (O += 0) instead of being left out.
        if (!pend) {
#pragma unroll
          for (int st = 0; st < TK / 16; ++st) pf[st][0] = pf[st][1] = pf[st][2] = pf[st][3] = 0u;
          pend_vb = vb;
        }
        const uint32_t vp = smem_u32(sm + L::VP_OFF + pend_vb * L::VT) + ck.shift * 128;
        if (!work) {  // nothing of this step: the pending values product alone, in turn
          bar_sync(BAR_TURN + c, 2 * ROWS * 2);
#pragma unroll
          for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
          wg_fence();
          offset_walk::wgmma_a_t<NA, TKA>(acc, pf, vp, true);
          wg_commit();
          bar_arrive(BAR_TURN + (1 - c), 2 * ROWS * 2);
          wg_wait0();
#pragma unroll
          for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
          if (pend) bar_arrive(BAR_EMPTY + pend_vb, THREADS);
          bar_arrive(BAR_EMPTY + vb, THREADS);
          pend = false;
          continue;
        }
        // this consumer's turn: S = A_j @ K2_tile^T, then O += P @ V' of the pending step
        float sacc[1][32];  // one logit tile (online_softmax takes TO tiles)
        bar_sync(BAR_TURN + c, 2 * ROWS * 2);
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        wg_fence();
        if constexpr (FOLD)  // S = Q @ K'_j^T
          offset_walk::wgmma_a_tt<KS, TKA>(sacc[0], qf, smem_u32(sm + L::KP_OFF + vb * L::KT) + ck.shift * 128);
        else
          offset_walk::wgmma_a_tt<KS, TKA>(sacc[0], af, kbase);
        wg_commit();
        offset_walk::wgmma_a_t<NA, TKA>(acc, pf, vp, true);
        wg_commit();
        bar_arrive(BAR_TURN + (1 - c), 2 * ROWS * 2);
        wg_wait1();  // S
        reg_fence(sacc[0]);
        // mask and online softmax (base 2) of rows g (e = 0) and g + 8 (e = 1)
        float alpha[2];
        {
          const bool inside = keys_in && j >= jr[0].lo && j < jr[0].hi && j >= jr[1].lo && j < jr[1].hi;
          const bool fold = __all_sync(0xffffffffu, inside) && sl2 > 0.0f;
          offset_walk::online_softmax<1>(sacc, fold, sl2, t, [=](int, int e, int col) {
            const int key = k0 + col;
            return j >= jr[e].lo && j < jr[e].hi && key >= kr[e].lo && key < kr[e].hi;
          }, m_row, l_row, alpha);
        }
        wg_wait0();  // the pending values product: its V' buffer is free
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
        if (pend) bar_arrive(BAR_EMPTY + pend_vb, THREADS);
        // O = alpha O now; P (its accumulator layout is the A layout of the k16 steps) waits
        // for the next turn
        offset_walk::rescale_rows(acc, alpha);
        offset_walk::pack_probs(sacc[0], pf);
        pend = true;
        pend_vb = vb;
      }
    }
  }
  if (pend) {  // the last values product
#pragma unroll
    for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
    wg_fence();
    offset_walk::wgmma_a_t<NA, TKA>(acc, pf, smem_u32(sm + L::VP_OFF + pend_vb * L::VT) + ck.shift * 128, true);
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int a = 0; a < NA; ++a) reg_fence(acc[a]);
    bar_arrive(BAR_EMPTY + pend_vb, THREADS);
  }
  if (c == 0) bar_sync(BAR_TURN + 0, 2 * ROWS * 2);  // balance the last turn's hand-back

  // ---- epilogue: lse, O / l staged through the tile space for coalesced stores ----
  __syncthreads();  // the producer and both consumers are done with the tiles
  float inv[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    if (t == 0 && row_ok[e])
      lse[(long long)(b * N + r / G) * Hq + kv * G + r % G] = (m_row[e] + log2f(l_row[e])) * LN2;
    inv[e] = 1.0f / l_row[e];
  }
  offset_walk::store_rows_bf16<DV>(sm, acc, inv, rbase, nrows, o, o_off);
}

}  // namespace

// simplicial_fwd_producer_bf16_{NAME}: key head dim D, value head dim DV (d64: D = Dv = 64; d128:
// D = Dv = 128; d128_dv64: D = 128, Dv = 64, the determinant lift's shape); 384 threads, 128 rows
// per CTA.
#define SIMPLICIAL_FWD_PRODUCER(NAME, D, DV, FOLD)                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_fwd_producer_bf16_##NAME(           \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, bf16* o, float* lse, \
      const Shape s) {                                                                                    \
    fwd_producer<D, DV, FOLD>(q, k1, k2, v1, v2, o, lse, s);                                                 \
  }

SIMPLICIAL_FWD_PRODUCER(d64, 64, 64, false)
SIMPLICIAL_FWD_PRODUCER(d128, 128, 128, false)
SIMPLICIAL_FWD_PRODUCER(d128_dv64, 128, 64, true)
