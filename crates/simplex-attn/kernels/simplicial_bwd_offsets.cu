// 2-simplicial attention backward on Hopper tensor cores for few query heads per K/V head: the
// offset walk of simplicial_fwd_offsets.cu applied to the backward. bf16 in, f32 accumulation.
// Three kernels: a q pass (dq) and a k1 pass (dk1, dv1; window 1, the small window), which
// together replace the q kernel of simplicial_bwd_mma.cu / simplicial_bwd_wgmma.cu, and a k2
// pass (dk2, dv2; window 2) replacing their k kernel (further below). Which run is chosen in
// src/backward_plan.rs (`OffsetsBackward`): as measured, the k2 pass for G <= 16; the q side
// is slower than the mma.sync q kernel and runs only when asked for.
//
// With P = exp(S - lse), dS = scale P ∘ (dP - delta), dP[r,j,k] = dout_r · (v1_j ∘ v2_k):
//   dq_r  = sum_{j,k} dS[r,j,k] k1_j ∘ k2_k
//   dk1_j = sum_{r,k} dS[r,j,k] q_r ∘ k2_k,     dv1_j = sum_{r,k} P[r,j,k] dout_r ∘ v2_k
// A step is one window-2 tile (TK = 64 keys) and one window-1 offset o: each row pairs with
// one partner, and both gradients are a per-row product of two 64-wide matrix products:
//   A  = x ∘ y[partner],  B = u ∘ w[partner]      (x, u: the row's own; y, w: the partner's)
//   S  = A @ K2_tile^T,   dP = B @ V2_tile^T      wgmma, A registers, B K-major swizzled smem
//   P, dS in registers (masked where a pair is outside the windows; a warp-uniform branch
//   skips the masking where all are inside)
//   X  = dS @ K2_tile,    Y  = P @ V2_tile         wgmma, A = P / dS straight from the
//                                                  accumulators, B MN-major (transposed B)
// Two passes of one template, `KEYS`:
//   q pass (KEYS = false), simplicial_bwd_offsets_q_bf16_d{D}: rows r = (query i, head h),
//     x = q_r, u = dout_r; partner j = i + o with y = k1_j, w = v1_j.   dq_r += X ∘ k1_j.
//   k1 pass (KEYS = true), simplicial_bwd_offsets_k1_bf16_d{D}: rows r = (key j, head h),
//     x = k1_j, u = v1_j; partner (i = j - o, h) with y = q, w = dout, its lse and delta.
//     dk1 += X ∘ q_i, dv1 += Y ∘ dout_i in registers; at the end each row's sums are added
//     over the heads h into the f32 dk1, dv1 buffers (atomics: a key's heads may straddle two
//     blocks when G does not divide 128). Window-2 ranges follow the partner query.
// Layout: 128 rows per CTA, two warpgroups of 64 rows, no hand-over (as in the forward); the
// next K2/V2 tile is fetched by cp.async during the current one. The partners' rows (and, in
// the k1 pass, their lse and delta) are staged once per CTA, padded by 16 B per row.
// Shared memory (D = 64, G = 1, windows (32, 512)): tiles 32 KB + partner rows 2 x 160 x 144 B.
// Registers (D = 64): the k1 pass holds x, u (32), dk1, dv1 (64), S, dP (64), X, Y (64);
// ptxas: q pass 241, k1 pass 255 + 48 B spill, k2 pass 254.
// Measured (H200, LM layer B=32 N=1024 H=8 D=64 (512, 32)): q pass 7.8-8.0 ms + k1 pass 10.3
// (mma.sync q kernel: 17.1); k2 pass 7.7 (mma.sync k kernel: 15.8). kernels/NOTES.md v7.
// Reference: src/reference.rs; tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs; notes:
// kernels/NOTES.md (v7).
#include "offset_walk.cuh"

using namespace simplex;
using namespace simplex::offset_walk;
typedef __nv_bfloat16 bf16;

namespace {

template <int D, bool KEYS>
__device__ __forceinline__ void bwd_offsets(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                            const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                            const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                            const float* __restrict__ lse, const float* __restrict__ dlt,
                                            bf16* __restrict__ dq, float* __restrict__ dk1,
                                            float* __restrict__ dv1, const Shape s) {
  constexpr int KS = D / 16;      // k-steps of the logits
  constexpr int NA = D / 64;      // 64-column blocks of X, Y
  constexpr int KT = TK * D * 2;  // one K2 (or V2) tile: NA swizzled atoms of TK x 128 B
  constexpr int JS = D + 8;       // padded partner row, elements
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sm = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int row0 = blockIdx.x * CTA_ROWS, nrows = N * G;
  const int row_last = min(row0 + CTA_ROWS, nrows) - 1;
  const int p_first = row0 / G, p_last = row_last / G;  // the CTA's own positions
  // partner positions: window-1 keys of the queries (q pass), queries of the keys (k1 pass)
  const Range PU = KEYS ? Range{seen_by(p_first, s.w1, N, s.causal).lo, seen_by(p_last, s.w1, N, s.causal).hi}
                        : Range{window(p_first, s.w1, N, s.causal).lo, window(p_last, s.w1, N, s.causal).hi};
  const int pcap = partner_positions(s);
  const int prow = KEYS ? G : 1;  // staged rows per partner position (the k1 pass: every head)
  const bf16* y_s = reinterpret_cast<const bf16*>(sm + 4 * KT);
  const bf16* w_s = y_s + pcap * prow * JS;
  float* lse_s = reinterpret_cast<float*>(sm + 4 * KT + 2 * pcap * prow * JS * 2);  // k1 pass only
  float* dlt_s = lse_s + pcap * prow;
  // queries whose window-2 keys the CTA needs
  const Range QU = KEYS ? PU : Range{p_first, p_last + 1};
  const Range KU = {window(QU.lo, s.w2, N, s.causal).lo, window(QU.hi - 1, s.w2, N, s.causal).hi};
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  auto kv_off = [&](int pos) -> long long { return ((long long)(b * N + pos) * Hkv + kv) * D; };
  auto q_row = [&](int i, int h) -> long long { return (long long)(b * N + i) * Hq + kv * G + h; };

  auto load_tile = [&](int k0, int buf) {
    load_kv_tile<D>(sm, buf, k0, KU.hi, k2, v2, kv_off(0), (long long)Hkv * D);
  };
  {  // partner rows (zero past the union)
    const uint32_t ya = smem_u32(y_s), wa = smem_u32(w_s);
    for (int c = tid; c < pcap * prow * D / 8; c += THREADS) {
      const int pr = c / (D / 8), c16 = c % (D / 8);
      const int pos = PU.lo + pr / prow;
      const bool ok = pos < PU.hi;
      const long long src = ok ? (KEYS ? q_row(pos, pr % prow) * D : kv_off(pos)) + c16 * 8 : 0;
      cp_async16(ya + (pr * JS + c16 * 8) * 2, (KEYS ? q : k1) + src, ok);
      cp_async16(wa + (pr * JS + c16 * 8) * 2, (KEYS ? dout : v1) + src, ok);
    }
    if constexpr (KEYS) {
      for (int pr = tid; pr < pcap * prow; pr += THREADS) {
        const int pos = PU.lo + pr / prow;
        const bool ok = pos < PU.hi;
        lse_s[pr] = ok ? lse[q_row(pos, pr % prow)] * LOG2E : 0.0f;
        dlt_s[pr] = ok ? dlt[q_row(pos, pr % prow)] : 0.0f;
      }
    }
  }
  load_tile(KU.lo, 0);
  cp_async_commit();

  // ---- this warpgroup's rows: rbase + 16 warp + g + 8 e ----
  const int rbase = row0 + ROWS * wg;
  int pos[2], head[2];
  bool row_ok[2];
  float lse2[2] = {0.0f, 0.0f}, delta[2] = {0.0f, 0.0f};  // q pass: the row's own
  uint32_t xf[KS][4], uf[KS][4];                          // x, u of the rows (A layout)
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    row_ok[e] = r < nrows;
    pos[e] = row_ok[e] ? r / G : 0;
    head[e] = r % G;
    if (!KEYS && row_ok[e]) {
      lse2[e] = lse[q_row(pos[e], head[e])] * LOG2E;
      delta[e] = dlt[q_row(pos[e], head[e])];
    }
  }
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int e = x & 1, col = 16 * ks + 2 * t + 8 * (x >> 1);
      const long long off = KEYS ? kv_off(pos[e]) + col : q_row(pos[e], head[e]) * D + col;
      xf[ks][x] = row_ok[e] ? *reinterpret_cast<const uint32_t*>((KEYS ? k1 : q) + off) : 0u;
      uf[ks][x] = row_ok[e] ? *reinterpret_cast<const uint32_t*>((KEYS ? v1 : dout) + off) : 0u;
    }
  // gradient accumulators: [0] = dq (q pass) or dk1, [1] = dv1 (k1 pass only)
  constexpr int NG = KEYS ? 2 : 1;
  float acc[NG][NA][32];
#pragma unroll
  for (int u = 0; u < NG; ++u)
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int x = 0; x < 32; ++x) acc[u][a][x] = 0.0f;

  // this warpgroup's own positions [ow0, ow1] and the offsets that keep a partner inside the
  // sequence: q pass j = i + o, k1 pass i = j - o
  const bool any_rows = rbase < nrows;
  const int ow0 = min(rbase, nrows - 1) / G, ow1 = (min(rbase + ROWS, nrows) - 1) / G;
  const int o_lo = 1 - s.w1, o_hi = s.causal ? 0 : s.w1 - 1;
  const int oa = KEYS ? max(o_lo, ow0 - (N - 1)) : max(o_lo, -ow1);
  const int ob = KEYS ? min(o_hi, ow1) : min(o_hi, N - 1 - ow0);
  const float sl2 = s.scale * LOG2E;
  const int nkt = (KU.hi - KU.lo + TK - 1) / TK;

  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1, k0 = KU.lo + kt * TK;
    begin_tile(kt, nkt, k0, load_tile);
    if (!any_rows) continue;
    const uint32_t kbase = smem_u32(sm + buf * KT), vbase = smem_u32(sm + (2 + buf) * KT);
    for (int off = oa; off <= ob; ++off) {
      // the warpgroup's queries at this offset, and whether their window-2 keys meet the tile
      const int qa = KEYS ? max(ow0 - off, 0) : ow0, qb = KEYS ? min(ow1 - off, N - 1) : ow1;
      if (qa > qb || k0 >= window(qb, s.w2, N, s.causal).hi || k0 + TK <= window(qa, s.w2, N, s.causal).lo)
        continue;
      // each row's partner: validity, staged row, and (k1 pass) its lse and delta
      bool pok[2];
      Range kr[2];
      const bf16* yr[2];
      const bf16* wr[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int p = KEYS ? pos[e] - off : pos[e] + off;  // partner position
        const int i = KEYS ? p : pos[e], j = KEYS ? pos[e] : p;
        const Range jw = window(min(max(i, 0), N - 1), s.w1, N, s.causal);
        pok[e] = row_ok[e] && i >= 0 && i < N && j >= jw.lo && j < jw.hi;
        kr[e] = window(min(max(i, 0), N - 1), s.w2, N, s.causal);
        const int pr = min(max(p - PU.lo, 0), pcap - 1) * prow + (KEYS ? head[e] : 0);
        yr[e] = y_s + pr * JS;
        wr[e] = w_s + pr * JS;
        if (KEYS) {
          lse2[e] = lse_s[pr];
          delta[e] = dlt_s[pr];
        }
      }
      // S = (x ∘ y) @ K2_tile^T, dP = (u ∘ w) @ V2_tile^T
      float sacc[32], dpacc[32];
      {
        uint32_t af[KS][4], bf[KS][4];
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          const int col = 16 * ks + 2 * t;
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int e = x & 1, c = col + 8 * (x >> 1);
            af[ks][x] = bf2_mul(xf[ks][x], *reinterpret_cast<const uint32_t*>(yr[e] + c));
            bf[ks][x] = bf2_mul(uf[ks][x], *reinterpret_cast<const uint32_t*>(wr[e] + c));
          }
        }
        wg_fence();
        wgmma_a_tt<KS>(sacc, af, kbase);
        wgmma_a_tt<KS>(dpacc, bf, vbase);
        wg_commit();
        wg_wait0();
        reg_fence(sacc);
        reg_fence(dpacc);
      }
      // P = exp2(S scale log2e - lse log2e), dS = scale P (dP - delta), as bf16 A fragments
      bool inside = pok[0] && pok[1];
#pragma unroll
      for (int e = 0; e < 2; ++e) inside = inside && k0 >= kr[e].lo && k0 + TK <= kr[e].hi;
      const bool all_in = __all_sync(0xffffffffu, inside);
      uint32_t pf[TK / 16][4], dsf[TK / 16][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        float pv[4], dv[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const int e = x / 2, key = k0 + 8 * n + 2 * t + x % 2;
          const bool ok = all_in || (pok[e] && key >= kr[e].lo && key < kr[e].hi);
          pv[x] = ok ? fast_exp2(fmaf(sacc[4 * n + x], sl2, -lse2[e])) : 0.0f;
          dv[x] = s.scale * pv[x] * (dpacc[4 * n + x] - delta[e]);
        }
        // accumulator (n, x) -> A fragment of k-step n / 2: registers 2 (n % 2) + (0: row g, 1: g + 8)
        pf[n / 2][2 * (n % 2) + 0] = bf2_pack(pv[0], pv[1]);
        pf[n / 2][2 * (n % 2) + 1] = bf2_pack(pv[2], pv[3]);
        dsf[n / 2][2 * (n % 2) + 0] = bf2_pack(dv[0], dv[1]);
        dsf[n / 2][2 * (n % 2) + 1] = bf2_pack(dv[2], dv[3]);
      }
      // X = dS @ K2_tile, Y = P @ V2_tile (k1 pass)
      float xacc[NG][NA][32];
      wg_fence();
      wgmma_a_t<NA>(xacc[0], dsf, kbase, false);
      if constexpr (KEYS) wgmma_a_t<NA>(xacc[NG - 1], pf, vbase, false);
      wg_commit();
      wg_wait0();
#pragma unroll
      for (int u = 0; u < NG; ++u)
#pragma unroll
        for (int a = 0; a < NA; ++a) reg_fence(xacc[u][a]);
      // q pass: dq += X ∘ k1_j; k1 pass: dk1 += X ∘ q_i, dv1 += Y ∘ dout_i
      fma_rows<NA>(acc[0], xacc[0], yr, t);
      if constexpr (KEYS) fma_rows<NA>(acc[1], xacc[1], wr, t);
    }
  }

  // ---- epilogue ----
  __syncthreads();  // both warpgroups are done with the tiles
  if constexpr (!KEYS) {
    // dq (bf16) staged through the tile space for coalesced stores
    const float one[2] = {1.0f, 1.0f};
    store_rows_bf16<D>(sm, acc[0], one, rbase, nrows, dq, [&](int r) { return q_row(r / G, r % G) * D; });
  } else {
    // dk1, dv1: rows summed over the heads of each key in f32 (the tile space, [2][128][D]),
    // then added into the f32 buffers
    float* stage = reinterpret_cast<float*>(sm);
    const int rows_here = row_last - row0 + 1;
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int rr = ROWS * wg + warp * 16 + g + 8 * e;
#pragma unroll
        for (int a = 0; a < NA; ++a)
#pragma unroll
          for (int n = 0; n < 8; ++n)
            *reinterpret_cast<float2*>(stage + (u * CTA_ROWS + rr) * D + 64 * a + 8 * n + 2 * t) =
                make_float2(acc[u][a][4 * n + 2 * e], acc[u][a][4 * n + 2 * e + 1]);
      }
    __syncthreads();
    const int npos = p_last - p_first + 1;
    for (int c = tid; c < 2 * npos * D; c += THREADS) {
      const int u = c / (npos * D), pc = c % (npos * D), p = p_first + pc / D, col = pc % D;
      float sum = 0.0f;
      for (int h = 0; h < G; ++h) {
        const int rr = p * G + h - row0;
        if (rr >= 0 && rr < rows_here) sum += stage[(u * CTA_ROWS + rr) * D + col];
      }
      atomicAdd((u == 0 ? dk1 : dv1) + kv_off(p) + col, sum);
    }
  }
}

// k2 pass: dk2, dv2 for 64 window-2 keys per warpgroup (128 per CTA), FA2's arrangement with
// the offset walk on the other side: steps of (query tile of 64 rows, window-1 offset o), every
// row of a step pairing with its own window-1 key j_r = i_r + o, so
//   A_o = Q ∘ K1[j_r], B_o = dout ∘ V1[j_r]   built per step into 128B-swizzled smem [row][D]
//   S^T = K2 @ A_o^T, dP^T = V2 @ B_o^T       wgmma, A = the warpgroup's own k2 / v2 rows
//                                              (registers, loaded once), B = A_o / B_o K-major
//   P^T, dS^T (masked per (key, row) where the step is not wholly inside the windows)
//   dv2 += P^T @ B_o, dk2 += dS^T @ A_o        wgmma, A = P^T / dS^T from the accumulators,
//                                              B = B_o / A_o MN-major (transposed B)
// The query tile's q, dout, lse, delta and window-1 rows are staged once per tile by all
// threads (cp.async, double-buffered); each warpgroup builds its own A_o, B_o (double-buffered,
// so building step s + 1 overlaps the products of step s) and meets the other only at the
// query-tile barriers. dk2, dv2 sum over every (query, head) row: no atomics, deterministic.
// The masking runs only in steps not wholly inside the windows (a warpgroup-uniform branch);
// a first version that decided per element (integer divisions by G in the hot loop) took
// 20.2 ms at the LM layer, this one 7.7.
// A compile-time flag for generic lambdas (`if constexpr (decltype(f)::value)`).
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

template <int D>
struct K2Layout {
  static constexpr int JS = D + 8;                 // padded staged row, elements
  static constexpr int AB = ROWS * D * 2;          // one A_o (or B_o): swizzled [64][D]
  static constexpr int OWN = 4 * AB;               // per warpgroup: 2 buffers x (A_o, B_o)
  static constexpr int QR = ROWS * JS * 2;         // a tile's q (or dout) rows
};

template <int D>
__device__ __forceinline__ void bwd_offsets_k2(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                               const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                               const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                               const float* __restrict__ lse, const float* __restrict__ dlt,
                                               bf16* __restrict__ dk2, bf16* __restrict__ dv2, const Shape s) {
  using L = K2Layout<D>;
  constexpr int KS = D / 16;
  constexpr int NA = D / 64;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sm = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int jcap = partner_positions(s, ROWS);  // window-1 rows one query tile stages
  // per staging buffer: q rows, dout rows, k1 rows, v1 rows, lse * log2e, delta
  const int STAGE = 2 * L::QR + 2 * jcap * L::JS * 2 + 2 * ROWS * 4;
  uint8_t* own_base = sm;                      // 2 warpgroups x OWN
  uint8_t* stage_base = sm + 2 * L::OWN;       // 2 buffers x STAGE

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int key0 = blockIdx.x * CTA_ROWS;
  const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128, warp = wtid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  auto kv_off = [&](int pos) -> long long { return ((long long)(b * N + pos) * Hkv + kv) * D; };
  auto q_row = [&](int i, int h) -> long long { return (long long)(b * N + i) * Hq + kv * G + h; };

  // query rows r = i G + h of the CTA: the queries that see any of its keys through window 2
  const int klast = min(key0 + CTA_ROWS, N) - 1;
  const int r_lo = seen_by(key0, s.w2, N, s.causal).lo * G, r_hi = seen_by(klast, s.w2, N, s.causal).hi * G;
  const int ntiles = (r_hi - r_lo + ROWS - 1) / ROWS;
  const int o_lo = 1 - s.w1, o_hi = s.causal ? 0 : s.w1 - 1;

  auto stage_ptr = [&](int buf) { return stage_base + buf * STAGE; };
  // stages query tile `tile` (rows r_lo + 64 tile ..) into buffer `buf`: all threads
  auto load_tile = [&](int tile, int buf) {
    uint8_t* st = stage_ptr(buf);
    const uint32_t qs = smem_u32(st), ds = smem_u32(st + L::QR);
    const uint32_t ks = smem_u32(st + 2 * L::QR), vs = smem_u32(st + 2 * L::QR + jcap * L::JS * 2);
    float* ls = reinterpret_cast<float*>(st + 2 * L::QR + 2 * jcap * L::JS * 2);
    const int rt = r_lo + tile * ROWS;
    const int ia = rt / G, ib = min(rt + ROWS, N * G) / G;  // queries ia .. ib (inclusive, clipped)
    const int jlo = max(ia + o_lo, 0);
    for (int c = tid; c < ROWS * D / 8; c += THREADS) {
      const int rr = c / (D / 8), c16 = c % (D / 8), r = rt + rr;
      const bool ok = r < N * G;
      const long long src = ok ? q_row(r / G, r % G) * D + c16 * 8 : 0;
      cp_async16(qs + (rr * L::JS + c16 * 8) * 2, q + src, ok);
      cp_async16(ds + (rr * L::JS + c16 * 8) * 2, dout + src, ok);
    }
    for (int c = tid; c < jcap * D / 8; c += THREADS) {
      const int jj = c / (D / 8), c16 = c % (D / 8), pos = jlo + jj;
      const bool ok = pos < N && pos <= min(ib, N - 1) + o_hi;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      cp_async16(ks + (jj * L::JS + c16 * 8) * 2, k1 + src, ok);
      cp_async16(vs + (jj * L::JS + c16 * 8) * 2, v1 + src, ok);
    }
    for (int rr = tid; rr < ROWS; rr += THREADS) {
      const int r = rt + rr;
      const bool ok = r < N * G;
      ls[rr] = ok ? lse[q_row(r / G, r % G)] * LOG2E : 0.0f;
      ls[ROWS + rr] = ok ? dlt[q_row(r / G, r % G)] : 0.0f;
    }
  };
  if (ntiles > 0) load_tile(0, 0);
  cp_async_commit();

  // ---- this warpgroup's keys kb + 16 warp + g + 8 e: own k2, v2 rows as A fragments ----
  const int kb = key0 + ROWS * wg;
  int key[2];
  uint32_t kf[KS][4], vf[KS][4];
#pragma unroll
  for (int e = 0; e < 2; ++e) key[e] = kb + warp * 16 + g + 8 * e;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int e = x & 1, col = 16 * ks + 2 * t + 8 * (x >> 1);
      const bool ok = key[e] < N;
      kf[ks][x] = ok ? *reinterpret_cast<const uint32_t*>(k2 + kv_off(key[e]) + col) : 0u;
      vf[ks][x] = ok ? *reinterpret_cast<const uint32_t*>(v2 + kv_off(key[e]) + col) : 0u;
    }
  float dk[NA][32], dv[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) dk[a][x] = dv[a][x] = 0.0f;
  // the rows (queries) that see this warpgroup's keys
  const bool any_keys = kb < N;
  const int kw1 = min(kb + ROWS, N) - 1;
  const int wr_lo = seen_by(min(kb, N - 1), s.w2, N, s.causal).lo * G;
  const int wr_hi = seen_by(kw1, s.w2, N, s.causal).hi * G;
  const float sl2 = s.scale * LOG2E;
  uint8_t* own = own_base + wg * L::OWN;
  int step = 0;  // this warpgroup's A_o / B_o buffer parity

  for (int tile = 0; tile < ntiles; ++tile) {
    const int buf = tile & 1, rt = r_lo + tile * ROWS;
    cp_async_wait_all();
    __syncthreads();
    if (tile + 1 < ntiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_commit();
    }
    if (!any_keys || rt + ROWS <= wr_lo || rt >= wr_hi) continue;
    const uint8_t* st = stage_ptr(buf);
    const bf16* q_s = reinterpret_cast<const bf16*>(st);
    const bf16* d_s = reinterpret_cast<const bf16*>(st + L::QR);
    const bf16* k1_s = reinterpret_cast<const bf16*>(st + 2 * L::QR);
    const bf16* v1_s = k1_s + jcap * L::JS;
    const float* ls = reinterpret_cast<const float*>(st + 2 * L::QR + 2 * jcap * L::JS * 2);
    const int ia = rt / G, ib = min(rt + ROWS, N * G) / G;
    const int ib_c = min(ib, N - 1);
    const int jlo = max(ia + o_lo, 0);
    const int oa = max(o_lo, -ib_c), ob = min(o_hi, N - 1 - ia);
    // this thread's build rows rr = wtid / 8 + 16 x (16-byte chunk wtid % 8 of each): the
    // staged window-1 row of offset 0, and the offsets [olo, ohi) that keep j inside the window
    constexpr int BR = ROWS * D / 8 / 128;
    const int c16 = wtid % (D / 8);
    int b_idx[BR], b_olo[BR], b_ohi[BR];
#pragma unroll
    for (int x = 0; x < BR; ++x) {
      const int r = rt + wtid / (D / 8) + (128 / (D / 8)) * x;
      const int i = min(r / G, N - 1);
      const Range jw = window(i, s.w1, N, s.causal);
      const bool row = r < N * G;
      b_idx[x] = i - jlo;
      b_olo[x] = row ? jw.lo - i : 1;
      b_ohi[x] = row ? jw.hi - i : 0;
    }
    // builds A_o, B_o of offset `off` into buffer `pb` (this warpgroup's 128 threads)
    auto build = [&](int off, int pb) {
      uint8_t* ab = own + pb * 2 * L::AB;
#pragma unroll
      for (int x = 0; x < BR; ++x) {
        const int rr = wtid / (D / 8) + (128 / (D / 8)) * x;
        uint4 xa = make_uint4(0, 0, 0, 0), xb = xa;
        if (off >= b_olo[x] && off < b_ohi[x]) {
          const int jr = b_idx[x] + off;
          const uint4 qv = *reinterpret_cast<const uint4*>(q_s + rr * L::JS + c16 * 8);
          const uint4 dv4 = *reinterpret_cast<const uint4*>(d_s + rr * L::JS + c16 * 8);
          const uint4 kv4 = *reinterpret_cast<const uint4*>(k1_s + jr * L::JS + c16 * 8);
          const uint4 vv4 = *reinterpret_cast<const uint4*>(v1_s + jr * L::JS + c16 * 8);
          xa = make_uint4(bf2_mul(qv.x, kv4.x), bf2_mul(qv.y, kv4.y), bf2_mul(qv.z, kv4.z), bf2_mul(qv.w, kv4.w));
          xb = make_uint4(bf2_mul(dv4.x, vv4.x), bf2_mul(dv4.y, vv4.y), bf2_mul(dv4.z, vv4.z), bf2_mul(dv4.w, vv4.w));
        }
        const uint32_t at = sw128_tile(ROWS, rr, c16 * 8);
        *reinterpret_cast<uint4*>(ab + at) = xa;
        *reinterpret_cast<uint4*>(ab + L::AB + at) = xb;
      }
      fence_async_smem();
    };
    if (oa <= ob) build(oa, step & 1);
    bar_sync(BAR_WG + wg, 128);
    for (int off = oa; off <= ob; ++off, ++step) {
      const int pb = step & 1;
      const uint32_t abase = smem_u32(own + pb * 2 * L::AB), bbase = abase + L::AB;
      // S^T = K2 @ A_o^T, dP^T = V2 @ B_o^T
      float sacc[32], dpacc[32];
      wg_fence();
      wgmma_a_tt<KS>(sacc, kf, abase);
      wgmma_a_tt<KS>(dpacc, vf, bbase);
      wg_commit();
      // the next offset's operands while the products run (the other buffer: its last
      // readers, the products of step - 1, were waited for)
      if (off < ob) build(off + 1, pb ^ 1);
      wg_wait0();
      reg_fence(sacc);
      reg_fence(dpacc);
      // P^T, dS^T: row (key) e, column (query row) 8 n + 2 t + c
      const bool inside = rt + ROWS <= N * G && ia + off >= 0 && ib_c + off < N &&
                          window(ib_c, s.w2, N, s.causal).lo <= kb && window(ia, s.w2, N, s.causal).hi >= kb + ROWS &&
                          kb + ROWS <= N;
      uint32_t pf[4][4], dsf[4][4];
      auto p_ds = [&](auto masked) {
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const float2 l2 = *reinterpret_cast<const float2*>(ls + 8 * n + 2 * t);
          const float2 dl = *reinterpret_cast<const float2*>(ls + ROWS + 8 * n + 2 * t);
          float pv[4], dsv[4];
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int e = x / 2, c = x % 2;
            bool ok = true;
            if constexpr (decltype(masked)::value) {
              const int r = rt + 8 * n + 2 * t + c;
              const int i = min(r / G, N - 1), j = i + off;
              const Range jw = window(i, s.w1, N, s.causal), kw = window(i, s.w2, N, s.causal);
              ok = r < N * G && j >= jw.lo && j < jw.hi && key[e] >= kw.lo && key[e] < kw.hi;
            }
            pv[x] = ok ? fast_exp2(fmaf(sacc[4 * n + x], sl2, -(c ? l2.y : l2.x))) : 0.0f;
            dsv[x] = s.scale * pv[x] * (dpacc[4 * n + x] - (c ? dl.y : dl.x));
          }
          pf[n / 2][2 * (n % 2) + 0] = bf2_pack(pv[0], pv[1]);
          pf[n / 2][2 * (n % 2) + 1] = bf2_pack(pv[2], pv[3]);
          dsf[n / 2][2 * (n % 2) + 0] = bf2_pack(dsv[0], dsv[1]);
          dsf[n / 2][2 * (n % 2) + 1] = bf2_pack(dsv[2], dsv[3]);
        }
      };
      if (inside)
        p_ds(Flag<false>{});
      else
        p_ds(Flag<true>{});
      // dv2 += P^T @ B_o, dk2 += dS^T @ A_o
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        reg_fence(dk[a]);
        reg_fence(dv[a]);
      }
      wg_fence();
      // interleaved per k-step (one loop each costs a register spill here)
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int st = 0; st < 4; ++st) {
          wgmma_m64n64k16_rs<1>(dv[a], pf[st], desc_sw128(bbase + a * (ROWS * 128) + st * 2048), 1);
          wgmma_m64n64k16_rs<1>(dk[a], dsf[st], desc_sw128(abase + a * (ROWS * 128) + st * 2048), 1);
        }
      wg_commit();
      wg_wait0();
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        reg_fence(dk[a]);
        reg_fence(dv[a]);
      }
      bar_sync(BAR_WG + wg, 128);  // the next buffer is built by every thread
    }
  }

  // ---- epilogue: dk2, dv2 (bf16) staged through this warpgroup's A_o / B_o space ----
  __syncthreads();
  const float one[2] = {1.0f, 1.0f};
  store_rows_bf16<D>(own_base, dk, one, kb, N, dk2, kv_off);
  bar_sync(BAR_WG + wg, 128);  // the stage is read before it is reused
  store_rows_bf16<D>(own_base, dv, one, kb, N, dv2, kv_off);
}

}  // namespace

// simplicial_bwd_offsets_q_bf16_d{D}: dq; simplicial_bwd_offsets_k1_bf16_d{D}: dk1, dv1 added
// into zeroed f32 buffers. Both: grid (ceil(N G / 128), Hkv, B), 256 threads.
#define SIMPLICIAL_BWD_OFFSETS(D)                                                                              \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_offsets_q_bf16_d##D(                 \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,         \
      const float* lse, const float* dlt, bf16* dq, const Shape s) {                                           \
    bwd_offsets<D, false>(q, k1, k2, v1, v2, dout, lse, dlt, dq, nullptr, nullptr, s);                         \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_offsets_k1_bf16_d##D(                \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,         \
      const float* lse, const float* dlt, float* dk1, float* dv1, const Shape s) {                             \
    bwd_offsets<D, true>(q, k1, k2, v1, v2, dout, lse, dlt, nullptr, dk1, dv1, s);                             \
  }

#define SIMPLICIAL_BWD_OFFSETS_K2(D)                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_offsets_k2_bf16_d##D(                \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,         \
      const float* lse, const float* dlt, bf16* dk2, bf16* dv2, const Shape s) {                               \
    bwd_offsets_k2<D>(q, k1, k2, v1, v2, dout, lse, dlt, dk2, dv2, s);                                         \
  }

SIMPLICIAL_BWD_OFFSETS(64)
SIMPLICIAL_BWD_OFFSETS_K2(64)
