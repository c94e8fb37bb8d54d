// 2-simplicial attention forward on Hopper tensor cores (wgmma), bf16 in, f32 accumulation.
//
//   S[r,j,k] = scale * sum_l q[r,l] k1[j,l] k2[k,l]        r = (query i, head h): the CTA's rows
//   o[r]     = sum_{j,k} softmax_{(j,k)}(S[r]) v1[j] ∘ v2[k],   lse[r] = log sum exp S[r]
// in the kernel's orientation: window 1 (k1, v1) is the SMALL window, walked one j at a time;
// window 2 (k2, v2) the large one, in tensor-core tiles of TK keys (the launcher swaps the two
// key/value sets when needed; the layer is symmetric in them). Reference: src/reference.rs;
// tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs; when it runs, speed: docs/kernels.md.
//
// Rows. For one (batch, K/V head), rows r = i * G + h (G = Hq / Hkv query heads per K/V head)
// in blocks of ROWS = 64 = wgmma M: 64 heads of one query when G = 64, both halves of a query
// when G = 128, 64 / G whole queries when G < 64. Each row keeps its own windows (masking);
// the CTA walks the union windows of its first and last query.
// Grid: x = row blocks, y = K/V head, z = batch. Block: two warpgroups, in one of two layouts.
// Specialized (64 rows per CTA; for G < 8 where the offset walk of simplicial_fwd_offsets.cu does
// not fit its window-1 rows in shared memory):
//   WG0 "logits": A_j = Q ∘ k1_j in registers (bf16x2 products), S = A_j @ K2_tile^T by wgmma
//     (B = K2 tile, 128B-swizzled smem), mask, online softmax per row in registers (exp2,
//     scale*log2e applied in f32), P (bf16) and the rescale factors alpha to smem.
//   WG1 "values": O^T[c, h] += (V2_tile^T ∘ v1_j)[c, k] @ P^T[k, h] by wgmma, with A = V2^T
//     from registers (ldmatrix.trans once per tile, scaled by v1_j per row c: bf16x2 products)
//     and B = P from smem; alpha rescales its accumulator columns first. Folding v1_j into the A
//     operand this way avoids a second accumulator for (P_j @ V2) ∘ v1_j.
// Ping-pong (PP; 128 rows per CTA; for G >= 8 where the offset walk does not fit): each
//   warpgroup runs both the logits and the values steps above for its own 64 rows, with its own
//   P buffer; the two meet only at the tile barriers, so one's softmax overlaps the other's
//   products (no FULL/EMPTY).
// Schedule per key tile: both warpgroups walk all j of window 1; P is double-buffered and
// handed over with named barriers (FULL/EMPTY per buffer), so WG0's softmax of j+1 overlaps
// WG1's product of j. The next K2/V2 tile is fetched by cp.async during the current one.
// Shared memory (D = Dv = 128): K2 tiles 2 x 16 KB, V2 tiles 2 x 17 KB (rows padded by 16 B:
// ldmatrix without bank conflicts), P 2 x 8 KB, window-1 rows (k1, v1) 2 x 32 KB (JC = 128 rows;
// longer windows are restaged per tile), alpha/l 1.5 KB: about 150 KB, one CTA per SM.
// TJ window-1 positions per hand-over (compiled: 2): one softmax update, one barrier pair and
// one rescale per TJ positions.
// Registers (ptxas, D = 128): TJ = 2: 255 with 32 bytes of spills. WG0 holds
// Q (32) + A_j (32 TJ) + S (32 TJ); WG1 O^T (64) + V^T (32) + scaled V^T (32 TJ).
// Hand-overs whose pairs are all inside the windows (every one at the anchor shapes) skip the
// masking and fold the scale into the exp's FMA.
// Registers (ping-pong, D = 128, TJ = 1): 254, no spills; TJ = 2 spills, so PP runs TJ = 1.
#include "offset_walk.cuh"

using namespace simplex;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int ROWS = 64;      // CTA rows (query, head) = wgmma M of the logits
constexpr int TK = 64;        // window-2 keys per tile = wgmma N of the logits, K of the values
constexpr int JC = 128;       // window-1 rows staged in shared memory at once
constexpr int THREADS = 256;  // two warpgroups
constexpr int BAR_FULL = 1;   // + buffer: P[buffer] written (WG0 arrives, WG1 waits)
constexpr int BAR_EMPTY = 3;  // + buffer: P[buffer] consumed (WG1 arrives, WG0 waits)
constexpr int BAR_WG1 = 5;    // WG1 alone (epilogue staging)
constexpr int BAR_PP = 6;     // + warpgroup: one warpgroup alone (ping-pong layout)


// Shared-memory carve-up for head dim D (= Dv) and TJ window-1 positions per hand-over, from
// a 1024-byte aligned base.
template <int D, int TJ>
struct Smem {
  static constexpr int KT = TK * D * 2;          // one K2 tile: D/64 swizzled atoms of TK x 128 B
  static constexpr int PA = ROWS * TK * 2;       // one P atom (one j): 64 x 128 B
  static constexpr int PT = TJ * PA;             // one P hand-over: TJ atoms
  static constexpr int VROW = D + 8;             // padded V2 row, elements
  static constexpr int VT = TK * VROW * 2;       // one V2 tile
  static constexpr int JR = JC * D * 2;          // window-1 rows of k1 (or v1)
  static constexpr int K_OFF = 0;
  static constexpr int P_OFF = K_OFF + 2 * KT;
  static constexpr int V_OFF = P_OFF + 2 * PT;
  static constexpr int J1_OFF = V_OFF + 2 * VT;
  static constexpr int JV_OFF = J1_OFF + JR;
  static constexpr int ALPHA_OFF = JV_OFF + JR;  // float [2][ROWS]
  static constexpr int L_OFF = ALPHA_OFF + 2 * ROWS * 4;  // float [2][ROWS]
  static constexpr int BYTES = L_OFF + 2 * ROWS * 4 + 1024;  // + alignment slack
};

template <int D, int TJ, bool PP>
__device__ __forceinline__ void fwd_wgmma(const bf16* __restrict__ q,   // [B,N,Hq,D]
                                          const bf16* __restrict__ k1,  // [B,N,Hkv,D] small window
                                          const bf16* __restrict__ k2,  // [B,N,Hkv,D] large window
                                          const bf16* __restrict__ v1,  // [B,N,Hkv,D]
                                          const bf16* __restrict__ v2,  // [B,N,Hkv,D]
                                          bf16* __restrict__ o,         // [B,N,Hq,D]
                                          float* __restrict__ lse,      // [B,N,Hq]
                                          const Shape s) {
  using L = Smem<D, TJ>;
  constexpr int KS = D / 16;  // k-steps of the logits product
  uint8_t* sm = aligned_dynamic_smem();
  float* alpha_s = reinterpret_cast<float*>(sm + L::ALPHA_OFF);
  float* l_s = reinterpret_cast<float*>(sm + L::L_OFF);
  const bf16* j1_s = reinterpret_cast<const bf16*>(sm + L::J1_OFF);
  const bf16* jv_s = reinterpret_cast<const bf16*>(sm + L::JV_OFF);

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  constexpr int CTA_ROWS = PP ? 2 * ROWS : ROWS;  // PP: one 64-row block per warpgroup
  const auto [row0, nrows, JU, KU] = cta_rows(s, G, CTA_ROWS);
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto q_off = [&](int r) { return hr.row(r) * D; };

  // cooperative loads (all 256 threads)
  auto load_tile = [&](int k0, int buf) {
    const uint32_t ks = smem_u32(sm + L::K_OFF + buf * L::KT);
    const uint32_t vs = smem_u32(sm + L::V_OFF + buf * L::VT);
    for (int c = tid; c < TK * D / 8; c += THREADS) {
      const int kk = c / (D / 8), c16 = c % (D / 8);
      const int pos = k0 + kk;
      const bool ok = pos < KU.hi;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      cp_async16(ks + (c16 / 8) * (TK * 128) + sw128(kk, c16 % 8), k2 + src, ok);
      cp_async16(vs + kk * L::VROW * 2 + c16 * 16, v2 + src, ok);
    }
  };
  auto load_j = [&](int j0) {
    const uint32_t a = smem_u32(sm + L::J1_OFF), v = smem_u32(sm + L::JV_OFF);
    for (int c = tid; c < JC * D / 8; c += THREADS) {
      const int jj = c / (D / 8), c16 = c % (D / 8);
      const int pos = j0 + jj;
      const bool ok = pos < JU.hi;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      cp_async16(a + jj * D * 2 + c16 * 16, k1 + src, ok);
      cp_async16(v + jj * D * 2 + c16 * 16, v1 + src, ok);
    }
  };

  const int nkt = (KU.hi - KU.lo + TK - 1) / TK;
  const int njc = (JU.hi - JU.lo + JC - 1) / JC;
  load_j(JU.lo);
  load_tile(KU.lo, 0);
  cp_async_commit();

  const float sl2 = s.scale * LOG2E;

  // Both warpgroups walk the same (key tile, window-1 chunk, hand-over) sequence with the same
  // block-wide barriers; each runs its own copy of the walk (so each keeps only its own state
  // in registers): on_tile(buf, k0) once a tile has landed, on_step(buf, k0, j0, jj, jn, pb)
  // for each hand-over of TJ window-1 positions. Returns the number of hand-overs.
  auto walk = [&](auto&& on_tile, auto&& on_step) -> int {
    int uses = 0;
    for (int kt = 0; kt < nkt; ++kt) {
      const int buf = kt & 1, k0 = KU.lo + kt * TK;
      cp_async_wait_all();
      fence_async_smem();
      __syncthreads();
      if (kt + 1 < nkt) {
        load_tile(k0 + TK, buf ^ 1);
        cp_async_commit();
      }
      on_tile(buf);
      for (int jc = 0; jc < njc; ++jc) {
        const int j0 = JU.lo + jc * JC;
        if (njc > 1 && (kt > 0 || jc > 0)) {  // restage window-1 rows (long windows only)
          __syncthreads();
          load_j(j0);
          cp_async_commit();
          cp_async_wait_all();
          __syncthreads();
        }
        const int jn = min(JC, JU.hi - j0);
        for (int jj = 0; jj < jn; jj += TJ, ++uses) on_step(buf, k0, j0, jj, jn, uses & 1, uses);
      }
    }
    return uses;
  };

  // ---- the pieces both layouts use ----
  // Per-row state of the logits side for rows rbase + 16 warp + g (+8): Q fragments, windows,
  // online-softmax statistics.
  struct RowSide {
    uint32_t qf[KS][4];
    float m_row[2], l_row[2];
    Range jr[2], kr[2];
    bool row_ok[2];
  };
  auto row_side = [&](RowSide& rs, int rbase) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = rbase + warp * 16 + g + 8 * e;
      rs.row_ok[e] = r < nrows;
      const int i = rs.row_ok[e] ? r / G : 0;
      rs.jr[e] = rs.row_ok[e] ? window(i, s.w1, N, s.causal) : Range{0, 0};
      rs.kr[e] = window(i, s.w2, N, s.causal);
      rs.m_row[e] = -INFINITY;
      rs.l_row[e] = 0.0f;
    }
    offset_walk::load_row_fragments<KS>(rs.qf, q, q_off, rbase, nrows);
  };
  // S = (Q ∘ k1_j) @ K2_tile^T for the TJ positions j = j0 + jj + u (zero past the chunk's
  // end), waited for.
  auto logits = [&](float (&sacc)[TJ][32], const RowSide& rs, int buf, int jj, int jn) {
    uint32_t af[TJ][KS][4];
#pragma unroll
    for (int u = 0; u < TJ; ++u) {
      const bool in = jj + u < jn;
      const bf16* k1j = j1_s + min(jj + u, JC - 1) * D;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint32_t lo = in ? *reinterpret_cast<const uint32_t*>(k1j + 16 * ks + 2 * t) : 0u;
        const uint32_t hi = in ? *reinterpret_cast<const uint32_t*>(k1j + 16 * ks + 2 * t + 8) : 0u;
        af[u][ks][0] = bf2_mul(rs.qf[ks][0], lo);
        af[u][ks][1] = bf2_mul(rs.qf[ks][1], lo);
        af[u][ks][2] = bf2_mul(rs.qf[ks][2], hi);
        af[u][ks][3] = bf2_mul(rs.qf[ks][3], hi);
      }
    }
    const uint32_t kbase = smem_u32(sm + L::K_OFF + buf * L::KT);
    wg_fence();
#pragma unroll
    for (int u = 0; u < TJ; ++u)
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
        wgmma_m64n64k16_rs(sacc[u], af[u][ks], desc_sw128(kbase + (ks / 4) * (TK * 128) + (ks % 4) * 32), ks > 0);
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int u = 0; u < TJ; ++u) reg_fence(sacc[u]);
  };
  // Masks and turns S into P (bf16 values in f32) with the online softmax (base 2) of rows
  // g (e = 0) and g + 8 (e = 1); alpha: the factor the row's earlier output is rescaled by.
  // Where every (row, j, key) of the warp's hand-over is inside the windows (all of it at the
  // anchor shapes) the masking is skipped: a warp-uniform branch; then, with a positive scale,
  // the logits stay unscaled, the max is taken on them and scaled once, and the scale goes into
  // the exp's FMA (f = sl2; else f = 1).
  auto softmax = [&](float (&sacc)[TJ][32], RowSide& rs, float (&alpha)[2], int k0, int j0, int jj, int jn) {
    bool inside = jj + TJ <= jn;
#pragma unroll
    for (int e = 0; e < 2; ++e)
      inside = inside && j0 + jj >= rs.jr[e].lo && j0 + jj + TJ <= rs.jr[e].hi && k0 >= rs.kr[e].lo &&
               k0 + TK <= rs.kr[e].hi;
    const bool fold = __all_sync(0xffffffffu, inside) && sl2 > 0.0f;
    offset_walk::online_softmax<TJ>(sacc, fold, sl2, t, [&](int u, int e, int col) {
      const int j = j0 + jj + u, key = k0 + col;
      return jj + u < jn && j >= rs.jr[e].lo && j < rs.jr[e].hi && key >= rs.kr[e].lo && key < rs.kr[e].hi;
    }, rs.m_row, rs.l_row, alpha);
  };
  // P (bf16, swizzled [row][key] atoms) and alpha of the warp's rows to smem.
  auto store_p = [&](uint8_t* ps, float* alpha_dst, const float (&sacc)[TJ][32], const float (&alpha)[2]) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int rr = warp * 16 + g + 8 * e;
#pragma unroll
      for (int u = 0; u < TJ; ++u)
#pragma unroll
        for (int n = 0; n < 8; ++n)
          *reinterpret_cast<uint32_t*>(ps + u * L::PA + sw128(rr, n) + 4 * t) =
              bf2_pack(sacc[u][4 * n + 2 * e], sacc[u][4 * n + 2 * e + 1]);
      if (t == 0) alpha_dst[rr] = alpha[e];
    }
  };
  // The values side: O^T[c, h] accumulators for c in [64 mt, 64 mt + 64), and V2^T fragments of
  // the current tile (loaded by on_tile).
  struct ValueSide {
    float acc[D / 64][32];
    uint32_t vf[D / 64][TK / 16][4];
  };
  auto value_tile = [&](ValueSide& vs, int buf) {
    const uint32_t vbase = smem_u32(sm + L::V_OFF + buf * L::VT);
    const int mat = lane / 8, rr = lane % 8;
#pragma unroll
    for (int mt = 0; mt < D / 64; ++mt)
#pragma unroll
      for (int st = 0; st < TK / 16; ++st) {
        const int krow = 16 * st + (mat / 2) * 8 + rr;
        const int ccol = 64 * mt + 16 * warp + (mat % 2) * 8;
        ldsm_x4_t(vs.vf[mt][st], vbase + krow * L::VROW * 2 + ccol * 2);
      }
  };
  // O^T = alpha ∘ O^T + (V2_tile^T ∘ v1_j) @ P^T for the hand-over's TJ positions, waited for.
  auto values = [&](ValueSide& vs, const uint8_t* ps, const float* al, int jj, int jn) {
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const float2 a2 = *reinterpret_cast<const float2*>(al + 8 * n + 2 * t);
#pragma unroll
      for (int mt = 0; mt < D / 64; ++mt) {
        vs.acc[mt][4 * n + 0] *= a2.x;
        vs.acc[mt][4 * n + 1] *= a2.y;
        vs.acc[mt][4 * n + 2] *= a2.x;
        vs.acc[mt][4 * n + 3] *= a2.y;
      }
    }
    const uint32_t pbase = smem_u32(ps);
    uint32_t va[TJ][D / 64][TK / 16][4];
#pragma unroll
    for (int u = 0; u < TJ; ++u) {
      const bool in = jj + u < jn;
      const bf16* v1j = jv_s + min(jj + u, JC - 1) * D;
#pragma unroll
      for (int mt = 0; mt < D / 64; ++mt) {
        const uint32_t s0 = in ? bf2_splat(v1j[64 * mt + 16 * warp + g]) : 0u;
        const uint32_t s1 = in ? bf2_splat(v1j[64 * mt + 16 * warp + g + 8]) : 0u;
#pragma unroll
        for (int st = 0; st < TK / 16; ++st) {
          va[u][mt][st][0] = bf2_mul(vs.vf[mt][st][0], s0);
          va[u][mt][st][1] = bf2_mul(vs.vf[mt][st][1], s1);
          va[u][mt][st][2] = bf2_mul(vs.vf[mt][st][2], s0);
          va[u][mt][st][3] = bf2_mul(vs.vf[mt][st][3], s1);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < D / 64; ++mt) reg_fence(vs.acc[mt]);
    wg_fence();
#pragma unroll
    for (int u = 0; u < TJ; ++u)
#pragma unroll
      for (int mt = 0; mt < D / 64; ++mt)
#pragma unroll
        for (int st = 0; st < TK / 16; ++st)
          wgmma_m64n64k16_rs(vs.acc[mt], va[u][mt][st], desc_sw128(pbase + u * L::PA + st * 32), 1);
    wg_commit();
    wg_wait0();
#pragma unroll
    for (int mt = 0; mt < D / 64; ++mt) reg_fence(vs.acc[mt]);
  };
  // lse of the rows and l to smem; then (after a barrier) O[h, c] = O^T[c, h] / l[h], staged
  // through shared memory (the K tiles' space; rows rbase..) for coalesced stores.
  auto finish_rows = [&](const RowSide& rs, float* l_dst, int rbase) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int rr = warp * 16 + g + 8 * e, r = rbase + rr;
      if (t == 0) l_dst[rr] = rs.l_row[e];
      if (t == 0 && rs.row_ok[e])
        lse[(long long)(b * N + r / G) * Hq + kv * G + r % G] = (rs.m_row[e] + log2f(rs.l_row[e])) * LN2;
    }
  };
  auto store_o = [&](const ValueSide& vs, const float* l_src, int rbase, int bar, int first_tid) {
    bf16* stage = reinterpret_cast<bf16*>(sm + L::K_OFF) + (rbase - row0) * D;  // [64][D]
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int h = 8 * n + 2 * t + c;
        const float inv = 1.0f / l_src[h];
#pragma unroll
        for (int mt = 0; mt < D / 64; ++mt)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            stage[h * D + 64 * mt + 16 * warp + g + 8 * e] = __float2bfloat16_rn(vs.acc[mt][4 * n + 2 * e + c] * inv);
      }
    bar_sync(bar, 128);
    for (int c = tid - first_tid; c < ROWS * D / 8; c += 128) {
      const int rr = c / (D / 8), c16 = c % (D / 8), r = rbase + rr;
      if (r < nrows)
        *reinterpret_cast<uint4*>(o + q_off(r) + c16 * 8) = *reinterpret_cast<const uint4*>(stage + rr * D + c16 * 8);
    }
  };

  if constexpr (PP) {
    // Ping-pong: warpgroup w owns rows row0 + 64 w .. + 63 and runs logits, softmax and values
    // for them; the two warpgroups share the tiles and window-1 rows and meet only at the
    // walk's tile barriers, so one's softmax overlaps the other's products.
    const int rbase = row0 + ROWS * wg;
    const int bar = BAR_PP + wg;
    uint8_t* ps = sm + L::P_OFF + wg * L::PT;
    float* al = alpha_s + wg * ROWS;
    RowSide rs;
    ValueSide vs;
    row_side(rs, rbase);
#pragma unroll
    for (int mt = 0; mt < D / 64; ++mt)
#pragma unroll
      for (int x = 0; x < 32; ++x) vs.acc[mt][x] = 0.0f;
    // the union of this warpgroup's windows (warpgroup-uniform: skips whole hand-overs)
    const bool any_rows = rbase < nrows;
    const int iw0 = min(rbase, nrows - 1) / G, iw1 = (min(rbase + ROWS, nrows) - 1) / G;
    const Range JW = {window(iw0, s.w1, N, s.causal).lo, window(iw1, s.w1, N, s.causal).hi};
    const Range KW = {window(iw0, s.w2, N, s.causal).lo, window(iw1, s.w2, N, s.causal).hi};
    int done = 0;  // hand-overs run (P and alpha are reused: wait for the previous values product)
    walk([&](int buf) { value_tile(vs, buf); }, [&](int buf, int k0, int j0, int jj, int jn, int, int) {
      const int jlo = j0 + jj, jhi = j0 + min(jj + TJ, jn);
      if (!any_rows || jhi <= JW.lo || jlo >= JW.hi || k0 + TK <= KW.lo || k0 >= KW.hi) return;
      float sacc[TJ][32], alpha[2];
      logits(sacc, rs, buf, jj, jn);
      softmax(sacc, rs, alpha, k0, j0, jj, jn);
      if (done++ > 0) bar_sync(bar, 128);  // every warp's previous values product is done
      store_p(ps, al, sacc, alpha);
      fence_async_smem();
      bar_sync(bar, 128);  // P and alpha of all four warps written
      values(vs, ps, al, jj, jn);
    });
    __syncthreads();  // every warpgroup is done with the tiles (stage space)
    finish_rows(rs, l_s + wg * ROWS, rbase);
    bar_sync(bar, 128);
    store_o(vs, l_s + wg * ROWS, rbase, bar, 128 * wg);
  } else if (wg == 0) {
    RowSide rs;
    row_side(rs, row0);
    const int uses = walk([&](int) {}, [&](int buf, int k0, int j0, int jj, int jn, int pb, int use) {
      float sacc[TJ][32], alpha[2];
      logits(sacc, rs, buf, jj, jn);
      softmax(sacc, rs, alpha, k0, j0, jj, jn);
      if (use >= 2) bar_sync(BAR_EMPTY + pb, THREADS);  // WG1 done with this buffer
      store_p(sm + L::P_OFF + pb * L::PT, alpha_s + pb * ROWS, sacc, alpha);
      fence_async_smem();
      bar_arrive(BAR_FULL + pb, THREADS);
    });
    // Balance the EMPTY barriers: WG1 arrived once per hand-over, WG0 waited for all but the
    // last use of each buffer.
    for (int pb = 0; pb < 2; ++pb)
      if (uses > pb) bar_sync(BAR_EMPTY + pb, THREADS);
    finish_rows(rs, l_s, row0);
    __syncthreads();
  } else {
    ValueSide vs;
#pragma unroll
    for (int mt = 0; mt < D / 64; ++mt)
#pragma unroll
      for (int x = 0; x < 32; ++x) vs.acc[mt][x] = 0.0f;
    walk([&](int buf) { value_tile(vs, buf); }, [&](int, int, int, int jj, int jn, int pb, int) {
      bar_sync(BAR_FULL + pb, THREADS);
      values(vs, sm + L::P_OFF + pb * L::PT, alpha_s + pb * ROWS, jj, jn);
      bar_arrive(BAR_EMPTY + pb, THREADS);
    });
    __syncthreads();  // WG0 has written l
    store_o(vs, l_s, row0, BAR_WG1, 128);
  }
}

}  // namespace

// simplicial_fwd_wgmma_tj2_bf16_d{D}: two window-1 positions per hand-over between the
// warpgroups (one softmax update, one barrier pair, one rescale per two positions);
// simplicial_fwd_wgmma_pp_tj1_bf16_d{D}: the ping-pong layout (128 rows per CTA, each
// warpgroup the whole computation for its 64, one position per step).
#define SIMPLICIAL_FWD_WGMMA(NAME, TJ, PING_PONG, D)                                           \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME(                             \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, bf16* o, \
      float* lse, const Shape s) {                                                            \
    fwd_wgmma<D, TJ, PING_PONG>(q, k1, k2, v1, v2, o, lse, s);                                \
  }

SIMPLICIAL_FWD_WGMMA(simplicial_fwd_wgmma_tj2_bf16_d64, 2, false, 64)
SIMPLICIAL_FWD_WGMMA(simplicial_fwd_wgmma_tj2_bf16_d128, 2, false, 128)
SIMPLICIAL_FWD_WGMMA(simplicial_fwd_wgmma_pp_tj1_bf16_d64, 1, true, 64)
SIMPLICIAL_FWD_WGMMA(simplicial_fwd_wgmma_pp_tj1_bf16_d128, 1, true, 128)
