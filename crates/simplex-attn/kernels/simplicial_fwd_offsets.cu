// 2-simplicial attention forward on Hopper tensor cores (wgmma) for few query heads per K/V
// head: the "offset walk". bf16 in, f32 accumulation, f32 lse.
//
//   S[r,j,k] = scale * sum_l q[r,l] k1[j,l] k2[k,l]        r = (query i_r, head): the CTA's rows
//   o[r]     = sum_{j,k} softmax_{(j,k)}(S[r]) v1[j] ∘ v2[k],   lse[r] = log sum exp S[r]
// Orientation as in simplicial_fwd_wgmma.cu: window 1 (k1, v1) is the small window, window 2
// (k2, v2) the large one, in tensor-core tiles of TK keys (the launcher exchanges the sets).
//
// Why a second forward. simplicial_fwd_wgmma.cu multiplies (Q ∘ k1_j) for ONE window-1
// position j shared by all 64 rows of a step. When the rows are 64 different queries (G =
// Hq / Hkv = 1, a small LM layer), each row sees only w1 of the block's w1 + 63 positions and
// most of the work is masked. Here a step is one window-1 OFFSET o: row r pairs with
// j_r = i_r + o (each row its own k1 row), so
//   S_o[r, k]  = sum_l (q_r ∘ k1_{j_r})[l] k2_k[l]         A_o = Q ∘ K1[j_r] in registers
//   O[r]      += v1_{j_r} ∘ (P_o @ V2_tile)[r]             a fresh product per step, then FMAs
// and a row's steps are inside its window except at the sequence ends (offsets o in
// (-w1, 0] causal, (-w1, w1) bidirectional). Nothing is packed, so it wins only at small G
// (ForwardVariant::fastest in src/kernels/choice.rs has the measured threshold).
//
// Layout: 128 rows per CTA, two warpgroups of 128 threads, each owning 64 rows and running
// logits, softmax and values for them. P goes from the logits accumulator straight into the
// A registers of the values product (the accumulator layout of m64n64 is the A layout of
// k16 steps), so there is no hand-over: the warpgroups meet only at the key-tile barriers.
// Per key tile (TK = 64 keys of window 2; the next tile is fetched by cp.async meanwhile) and
// per offset o:
//   S  = A_o @ K2_tile^T    wgmma m64n64k16, A registers, B = K2 tile K-major 128B-swizzled
//   mask (a warp-uniform branch skips it where the warp's rows are inside), online softmax
//   (exp2, the scale folded into the exp's FMA), rescale O by alpha
//   Ot = P @ V2_tile        wgmma m64n64k16 per 64 columns, B = V2 tile MN-major (transposed B)
//   O += v1_{j_r} ∘ Ot      f32 FMAs
// Shared memory: K2 and V2 tiles 2 buffers x 2 x TK * D * 2 B (64 KB at D = 128), the CTA's
// window-1 rows of k1 and v1 (all of them, staged once; rows padded by 16 B so the 8 rows a
// fragment load touches fall in different banks).
// TO offsets per step (1 or 2) share one softmax update and one wait per product kind.
// Registers (D = 128): Q 32 + O 64 + Ot 64 + S 32 (+ A 32 while the logits run); ptxas: TO = 1
// 197 (D = 64), 255 + 16 B spill (D = 128); TO = 2 (D = 64) 255 + 100 B spill.
// Reference: src/reference.rs; tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs; when it
// runs, speed: docs/kernels.md.
#include "offset_walk.cuh"

using namespace simplex;
using namespace simplex::offset_walk;
typedef __nv_bfloat16 bf16;

namespace {

template <int D, int TO>
__device__ __forceinline__ void fwd_offsets(const bf16* __restrict__ q,   // [B,N,Hq,D]
                                            const bf16* __restrict__ k1,  // [B,N,Hkv,D] small window
                                            const bf16* __restrict__ k2,  // [B,N,Hkv,D] large window
                                            const bf16* __restrict__ v1,  // [B,N,Hkv,D]
                                            const bf16* __restrict__ v2,  // [B,N,Hkv,D]
                                            bf16* __restrict__ o,         // [B,N,Hq,D]
                                            float* __restrict__ lse,      // [B,N,Hq]
                                            const Shape s) {
  constexpr int KS = D / 16;   // k-steps of the logits
  constexpr int NA = D / 64;   // 64-column blocks of the values
  constexpr int KT = TK * D * 2;  // one K2 (or V2) tile: NA swizzled atoms of TK x 128 B
  constexpr int JS = D + 8;       // padded window-1 row, elements
  uint8_t* sm = aligned_dynamic_smem();
  const int jcap = partner_positions(s);
  const bf16* k1_s = reinterpret_cast<const bf16*>(sm + 4 * KT);
  const bf16* v1_s = k1_s + jcap * JS;

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const auto [row0, nrows, JU, KU] = cta_rows(s, G, CTA_ROWS);
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto q_off = [&](int r) { return hr.row(r) * D; };

  // cooperative loads (all 256 threads): a K2 and a V2 tile, both NA swizzled atoms
  auto load_tile = [&](int k0, int buf) {
    load_kv_tile<D>(sm, buf, k0, KU.hi, k2, v2, kv_off(0), (long long)Hkv * D);
  };
  {  // the CTA's window-1 rows (zero past the union)
    const uint32_t a = smem_u32(k1_s), v = smem_u32(v1_s);
    for (int c = tid; c < jcap * D / 8; c += THREADS) {
      const int jj = c / (D / 8), c16 = c % (D / 8);
      const int pos = JU.lo + jj;
      const bool ok = pos < JU.hi;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      cp_async16(a + (jj * JS + c16 * 8) * 2, k1 + src, ok);
      cp_async16(v + (jj * JS + c16 * 8) * 2, v1 + src, ok);
    }
  }
  load_tile(KU.lo, 0);
  cp_async_commit();

  // ---- this warpgroup's rows: rbase + 16 warp + g + 8 e ----
  const int rbase = row0 + ROWS * wg;
  const RowWindows rw = row_windows(rbase, nrows, G, s);
  const int(&qi)[2] = rw.i;
  const Range(&jr)[2] = rw.jr;
  const Range(&kr)[2] = rw.kr;
  const bool(&row_ok)[2] = rw.ok;
  uint32_t qf[KS][4];
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.0f, 0.0f};
  load_row_fragments<KS>(qf, q, q_off, rbase, nrows);
  float acc[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) acc[a][x] = 0.0f;

  // the union of this warpgroup's windows (warpgroup-uniform skips)
  const bool any_rows = rbase < nrows;
  const int iw0 = min(rbase, nrows - 1) / G, iw1 = (min(rbase + ROWS, nrows) - 1) / G;
  const Range KW = {window(iw0, s.w2, N, s.causal).lo, window(iw1, s.w2, N, s.causal).hi};
  const int o_lo = 1 - s.w1, o_hi = s.causal ? 0 : s.w1 - 1;
  const float sl2 = s.scale * LOG2E;
  const int nkt = (KU.hi - KU.lo + TK - 1) / TK;

  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1, k0 = KU.lo + kt * TK;
    begin_tile(kt, nkt, k0, load_tile);
    if (!any_rows || k0 + TK <= KW.lo || k0 >= KW.hi) continue;
    const uint32_t kbase = smem_u32(sm + buf * KT), vbase = smem_u32(sm + (2 + buf) * KT);
    // this tile's keys inside every window of rows e (per thread; made warp-uniform below)
    const bool keys_in = k0 >= kr[0].lo && k0 + TK <= kr[0].hi && k0 >= kr[1].lo && k0 + TK <= kr[1].hi;
    // offsets for which some row of the warpgroup has its j inside the sequence
    const int oa = max(o_lo, -iw1), ob = min(o_hi, N - 1 - iw0);
    for (int off0 = oa; off0 <= ob; off0 += TO) {
      // window-1 row of each of the thread's rows per offset, its validity, its staged row
      bool jok[TO][2];
      const bf16* k1r[TO][2];
      const bf16* v1r[TO][2];
#pragma unroll
      for (int u = 0; u < TO; ++u)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = qi[e] + off0 + u;
          jok[u][e] = off0 + u <= ob && j >= jr[e].lo && j < jr[e].hi;
          const int jj = min(max(j - JU.lo, 0), jcap - 1);
          k1r[u][e] = k1_s + jj * JS;
          v1r[u][e] = v1_s + jj * JS;
        }
      // S_u = (Q ∘ K1[j_r]) @ K2_tile^T for the TO offsets
      float sacc[TO][32];
      {
        uint32_t af[TO][KS][4];
#pragma unroll
        for (int u = 0; u < TO; ++u)
#pragma unroll
          for (int ks = 0; ks < KS; ++ks) {
            const int col = 16 * ks + 2 * t;
            af[u][ks][0] = bf2_mul(qf[ks][0], *reinterpret_cast<const uint32_t*>(k1r[u][0] + col));
            af[u][ks][1] = bf2_mul(qf[ks][1], *reinterpret_cast<const uint32_t*>(k1r[u][1] + col));
            af[u][ks][2] = bf2_mul(qf[ks][2], *reinterpret_cast<const uint32_t*>(k1r[u][0] + col + 8));
            af[u][ks][3] = bf2_mul(qf[ks][3], *reinterpret_cast<const uint32_t*>(k1r[u][1] + col + 8));
          }
        wg_fence();
#pragma unroll
        for (int u = 0; u < TO; ++u) wgmma_a_tt<KS>(sacc[u], af[u], kbase);
        wg_commit();
        wg_wait0();
#pragma unroll
        for (int u = 0; u < TO; ++u) reg_fence(sacc[u]);
      }
      // mask and online softmax (base 2) of rows g (e = 0) and g + 8 (e = 1) over the TO offsets
      bool all_ok = keys_in;
#pragma unroll
      for (int u = 0; u < TO; ++u) all_ok = all_ok && jok[u][0] && jok[u][1];
      const bool fold = __all_sync(0xffffffffu, all_ok) && sl2 > 0.0f;
      float alpha[2];
      online_softmax<TO>(sacc, fold, sl2, t, [&](int u, int e, int col) {
        const int key = k0 + col;
        return jok[u][e] && key >= kr[e].lo && key < kr[e].hi;
      }, m_row, l_row, alpha);
      // Ot_u = P_u @ V2_tile: P's accumulator layout is the A layout of the k16 steps
      float ot[TO][NA][32];
      {
        uint32_t pf[TO][TK / 16][4];
        pack_probs(sacc, pf);
        wg_fence();
#pragma unroll
        for (int u = 0; u < TO; ++u) wgmma_a_t<NA>(ot[u], pf[u], vbase, false);
        wg_commit();
        rescale_rows(acc, alpha);  // O = alpha O while the products run
        wg_wait0();
#pragma unroll
        for (int u = 0; u < TO; ++u)
#pragma unroll
          for (int a = 0; a < NA; ++a) reg_fence(ot[u][a]);
      }
      // O += v1_{j_r} ∘ Ot_u
#pragma unroll
      for (int u = 0; u < TO; ++u) fma_rows<NA>(acc, ot[u], v1r[u], t);
    }
  }

  // ---- epilogue: lse, O / l staged through the tile space for coalesced stores ----
  __syncthreads();  // both warpgroups are done with the tiles
  float inv[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    if (t == 0 && row_ok[e])
      lse[(long long)(b * N + r / G) * Hq + kv * G + r % G] = (m_row[e] + log2f(l_row[e])) * LN2;
    inv[e] = 1.0f / l_row[e];
  }
  store_rows_bf16<D>(sm, acc, inv, rbase, nrows, o, q_off);
}

}  // namespace

// simplicial_fwd_offsets_to{TO}_bf16_d{D}: the offset walk for D = Dv = 64 (TO = 2 window-1
// offsets per step) or 128 (TO = 1): one softmax update and one wait per product kind for all
// TO offsets.
#define SIMPLICIAL_FWD_OFFSETS(TO, D)                                                                        \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_fwd_offsets_to##TO##_bf16_d##D(        \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, bf16* o, float* lse, \
      const Shape s) {                                                                                       \
    fwd_offsets<D, TO>(q, k1, k2, v1, v2, o, lse, s);                                                        \
  }

SIMPLICIAL_FWD_OFFSETS(2, 64)
SIMPLICIAL_FWD_OFFSETS(1, 128)
