// The k2 pass of the 2-simplicial offset-walk backward (dk2, dv2), included by
// simplicial_bwd_offsets.cu inside its anonymous namespace (after `offset_walk.cuh` and its
// `using` declarations): the file's header has the formulas and the walk.
#pragma once

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
// threads (cp.async, double-buffered); both warpgroups walk the same steps, so the block's
// 256 threads build one A_o, B_o per step (half each; double-buffered, so building step s + 1
// overlaps the products of step s) and meet at a barrier per step (a warpgroup whose keys miss
// the tile builds and waits). dk2, dv2 sum over every (query, head) row: no atomics,
// deterministic.
// The masking runs only in steps not wholly inside the windows (a warpgroup-uniform branch).
// A compile-time flag for generic lambdas (`if constexpr (decltype(f)::value)`).
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

template <int D>
struct K2Layout {
  static constexpr int JS = D + 8;                 // padded staged row, elements
  static constexpr int AB = ROWS * D * 2;          // one A_o (or B_o): swizzled [64][D]
  static constexpr int OPS = 4 * AB;               // the block's 2 buffers x (A_o, B_o)
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
  uint8_t* sm = aligned_dynamic_smem();
  const int jcap = partner_positions(s, ROWS);  // window-1 rows one query tile stages
  // per staging buffer: q rows, dout rows, k1 rows, v1 rows, lse * log2e, delta
  const int STAGE = 2 * L::QR + 2 * jcap * L::JS * 2 + 2 * ROWS * 4;
  uint8_t* ops = sm;                    // A_o, B_o: 2 buffers, built by both warpgroups
  uint8_t* stage_base = sm + L::OPS;    // 2 buffers x STAGE

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int key0 = blockIdx.x * CTA_ROWS;
  const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128, warp = wtid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
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
  int step = 0;  // the A_o / B_o buffer parity

  for (int tile = 0; tile < ntiles; ++tile) {
    const int buf = tile & 1, rt = r_lo + tile * ROWS;
    cp_async_wait_all();
    __syncthreads();
    if (tile + 1 < ntiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_commit();
    }
    // whether this warpgroup's keys meet the tile (both warpgroups build and meet at the step
    // barriers either way)
    const bool active = any_keys && rt + ROWS > wr_lo && rt < wr_hi;
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
    // this thread's build rows rr = tid / 8 + 32 x (16-byte chunk tid % 8 of each): the
    // staged window-1 row of offset 0, and the offsets [olo, ohi) that keep j inside the window
    constexpr int BR = ROWS * D / 8 / THREADS;
    const int c16 = tid % (D / 8);
    int b_idx[BR], b_olo[BR], b_ohi[BR];
#pragma unroll
    for (int x = 0; x < BR; ++x) {
      const int r = rt + tid / (D / 8) + (THREADS / (D / 8)) * x;
      const int i = min(r / G, N - 1);
      const Range jw = window(i, s.w1, N, s.causal);
      const bool row = r < N * G;
      b_idx[x] = i - jlo;
      b_olo[x] = row ? jw.lo - i : 1;
      b_ohi[x] = row ? jw.hi - i : 0;
    }
    // builds this thread's part of A_o, B_o of offset `off` into buffer `pb` (the two
    // warpgroups' 256 threads build one copy)
    auto build = [&](int off, int pb) {
      uint8_t* ab = ops + pb * 2 * L::AB;
#pragma unroll
      for (int x = 0; x < BR; ++x) {
        const int rr = tid / (D / 8) + (THREADS / (D / 8)) * x;
        store_operand_chunks(ab, L::AB, sw128_tile(ROWS, rr, c16 * 8), off >= b_olo[x] && off < b_ohi[x], q_s,
                             d_s, rr * L::JS + c16 * 8, k1_s, v1_s, (b_idx[x] + off) * L::JS + c16 * 8);
      }
      fence_async_smem();
    };
    if (oa <= ob) build(oa, step & 1);
    __syncthreads();
    for (int off = oa; off <= ob; ++off, ++step) {
      const int pb = step & 1;
      const uint32_t abase = smem_u32(ops + pb * 2 * L::AB), bbase = abase + L::AB;
      // S^T = K2 @ A_o^T, dP^T = V2 @ B_o^T
      if (!active) {  // only the build and the barrier
        if (off < ob) build(off + 1, pb ^ 1);
        __syncthreads();
        continue;
      }
      float sacc[32], dpacc[32];
      wg_fence();
      wgmma_a_tt<KS>(sacc, kf, abase);
      wgmma_a_tt<KS>(dpacc, vf, bbase);
      wg_commit();
      // the next offset's operands while the products run (the other buffer: its last
      // readers, the products of step - 1, were waited for before the step barrier)
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
            pv[x] = masked_exp2(ok, fmaf(sacc[4 * n + x], sl2, -(c ? l2.y : l2.x)));
            dsv[x] = s.scale * pv[x] * (dpacc[4 * n + x] - (c ? dl.y : dl.x));
          }
          pack_p_ds(pf, dsf, n, pv, dsv);
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
      key_products<NA>(dk, dv, pf, dsf, abase, bbase);
      wg_commit();
      wg_wait0();
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        reg_fence(dk[a]);
        reg_fence(dv[a]);
      }
      __syncthreads();  // the next buffer is built, this one read by both warpgroups
    }
  }

  // ---- epilogue: dk2, dv2 (bf16) staged through the A_o / B_o space ----
  __syncthreads();
  const float one[2] = {1.0f, 1.0f};
  store_rows_bf16<D>(ops, dk, one, kb, N, dk2, kv_off);
  bar_sync(BAR_WG + wg, 128);  // the stage is read before it is reused
  store_rows_bf16<D>(ops, dv, one, kb, N, dv2, kv_off);
}
