// Pieces shared by the two offset-walk files (simplicial_fwd_offsets.cu, simplicial_bwd_offsets.cu):
// the block shape, the partner rows a block stages, and the cooperative load of one K2 / V2 tile.
#pragma once

#include "common.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"

namespace simplex {
namespace offset_walk {

constexpr int ROWS = 64;            // rows per warpgroup = wgmma M
constexpr int CTA_ROWS = 2 * ROWS;  // two warpgroups
constexpr int TK = 64;              // window-2 keys per tile
constexpr int THREADS = 256;
constexpr int BAR_WG = 1;  // + warpgroup: one warpgroup alone (epilogue)

// Positions of the partners `rows` consecutive rows stage (window-1 keys of their queries, or
// queries of their window-1 keys): their own positions widened by the window-1 span, at most
// the sequence. Mirrored by `partner_positions` (src/kernels/smem.rs, which also sizes the
// forward's shared memory through it).
__device__ __forceinline__ int partner_positions(const Shape& s, int rows = CTA_ROWS) {
  const int G = s.heads_q / s.heads_kv;
  const int own = (rows - 1) / G + 2;
  const int span = s.causal ? s.w1 : 2 * s.w1 - 1;
  return min(s.seq, own + span - 1);
}

// cp.async of the K2 and V2 rows k0 .. k0 + TK - 1 (zero from `hi` on) into the tiles at shared
// addresses ks, vs, each D/64 128B-swizzled atoms of TK x 128 B. Row p of k2 / v2 starts at
// element base + p * stride. All THREADS threads. The second form addresses buffer `buf` of a
// two-buffer tile space: K2 tiles at sm + buf * KT, V2 tiles at sm + (2 + buf) * KT.
template <int D>
__device__ __forceinline__ void load_kv_tile(uint32_t ks, uint32_t vs, int k0, int hi, const __nv_bfloat16* k2,
                                             const __nv_bfloat16* v2, long long base, long long stride) {
  constexpr int CHUNKS = TK * D / 8;  // 16-byte chunks per tile
  static_assert(CHUNKS % THREADS == 0, "whole chunks per thread");
#pragma unroll
  for (int x = 0; x < CHUNKS / THREADS; ++x) {
    const int c = threadIdx.x + x * THREADS;
    const int kk = c / (D / 8), c16 = c % (D / 8);
    const int pos = k0 + kk;
    const bool ok = pos < hi;
    const long long src = ok ? base + pos * stride + c16 * 8 : 0;
    const uint32_t at = sw128_tile(TK, kk, c16 * 8);
    cp_async16(ks + at, k2 + src, ok);
    cp_async16(vs + at, v2 + src, ok);
  }
}
template <int D>
__device__ __forceinline__ void load_kv_tile(uint8_t* sm, int buf, int k0, int hi, const __nv_bfloat16* k2,
                                             const __nv_bfloat16* v2, long long base, long long stride) {
  constexpr int KT = TK * D * 2;
  load_kv_tile<D>(smem_u32(sm + buf * KT), smem_u32(sm + (2 + buf) * KT), k0, hi, k2, v2, base, stride);
}

// Stores a warpgroup's 64 x D f32 accumulator rows (rows rbase + 16 warp + g + 8 e of the
// thread, each scaled by row_scale[e]) as bf16 to out + row_off(r), staged through shared
// memory at sm (64 x D bf16 per warpgroup) for coalesced 16-byte stores; rows >= nrows are
// skipped. The caller has made the stage space free for all warpgroups.
template <int D, typename RowOffset>
__device__ __forceinline__ void store_rows_bf16(uint8_t* sm, const float (&acc)[D / 64][32], const float (&row_scale)[2],
                                                int rbase, int nrows, __nv_bfloat16* out, RowOffset row_off) {
  const auto [tid, wg, warp, lane, g, t] = thread_place();
  __nv_bfloat16* stage = reinterpret_cast<__nv_bfloat16*>(sm) + wg * ROWS * D;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int rr = warp * 16 + g + 8 * e;
#pragma unroll
    for (int a = 0; a < D / 64; ++a)
#pragma unroll
      for (int n = 0; n < 8; ++n)
        *reinterpret_cast<uint32_t*>(stage + rr * D + 64 * a + 8 * n + 2 * t) =
            bf2_pack(acc[a][4 * n + 2 * e] * row_scale[e], acc[a][4 * n + 2 * e + 1] * row_scale[e]);
  }
  bar_sync(BAR_WG + wg, 128);
  for (int c = tid - 128 * wg; c < ROWS * D / 8; c += 128) {
    const int rr = c / (D / 8), c16 = c % (D / 8), r = rbase + rr;
    if (r < nrows)
      *reinterpret_cast<uint4*>(out + row_off(r) + c16 * 8) = *reinterpret_cast<const uint4*>(stage + rr * D + c16 * 8);
  }
}

// acc = A @ T^T, issued (the caller commits and waits): A the thread's A fragments of D/16
// k-steps, T a [TK x D] tile of D/64 128B-swizzled atoms at shared address `tile` (K-major:
// its rows are the N index, as load_kv_tile stores them). The atoms are AROWS rows apart
// (AROWS >= TK; `tile` may start at any row of them: the swizzle follows the address).
template <int KS, int AROWS = TK>
__device__ __forceinline__ void wgmma_a_tt(float (&acc)[32], const uint32_t (&a)[KS][4], uint32_t tile) {
  const uint32_t lo = desc_lo(tile);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
    wgmma_m64n64k16_rs(acc, a[ks], desc_at(lo, (ks / 4) * (AROWS * 128) + (ks % 4) * 32), ks > 0);
}

// acc = A @ T^T with A a [64 x D] tile in shared memory too (D/64 128B-swizzled atoms of 64 x
// 128 B at `a_tile`), issued; T as for wgmma_a_tt.
template <int KS>
__device__ __forceinline__ void wgmma_ss_tt(float (&acc)[32], uint32_t a_tile, uint32_t tile) {
  const uint32_t alo = desc_lo(a_tile), blo = desc_lo(tile);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
    wgmma_m64n64k16_ss(acc, desc_at(alo, (ks / 4) * (ROWS * 128) + (ks % 4) * 32),
                       desc_at(blo, (ks / 4) * (TK * 128) + (ks % 4) * 32), ks > 0);
}

// acc[a] (+)= P @ T[:, 64 a .. 64 a + 63], issued: P the A fragments of the TK / 16 k-steps
// over T's rows (the accumulator layout of a 64 x TK product, packed), T as for wgmma_a_tt
// (atoms AROWS rows apart) read MN-major (transposed B); accumulate = false overwrites acc.
template <int NA, int AROWS = TK>
__device__ __forceinline__ void wgmma_a_t(float (&acc)[NA][32], const uint32_t (&p)[TK / 16][4], uint32_t tile,
                                          bool accumulate) {
  const uint32_t lo = desc_lo(tile);
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int st = 0; st < TK / 16; ++st)
      wgmma_m64n64k16_rs<1>(acc[a], p[st], desc_at(lo, a * (AROWS * 128) + st * 2048), accumulate || st > 0);
}

// Starts key tile kt of nkt (first key k0; all threads): waits for its cp.async loads, makes
// them visible to wgmma, and starts loading the next tile into the other buffer.
template <typename Load>
__device__ __forceinline__ void begin_tile(int kt, int nkt, int k0, Load&& load) {
  cp_async_wait_all();
  fence_async_smem();
  __syncthreads();
  if (kt + 1 < nkt) {
    load(k0 + TK, (kt & 1) ^ 1);
    cp_async_commit();
  }
}

// acc[a] += m_e ∘ x[a] for the thread's accumulator elements (rows g, g + 8 of its warp's 16,
// e = 0, 1; columns 64 a + 8 n + 2 t + {0, 1}), m_e a bf16 row of D entries per e (the
// offset's partner row, staged in shared memory).
template <int NA>
__device__ __forceinline__ void fma_rows(float (&acc)[NA][32], const float (&x)[NA][32],
                                         const __nv_bfloat16* const (&m)[2], int t) {
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float2 v = bf2_float2(*reinterpret_cast<const uint32_t*>(m[e] + 64 * a + 8 * n + 2 * t));
        acc[a][4 * n + 2 * e] = fmaf(v.x, x[a][4 * n + 2 * e], acc[a][4 * n + 2 * e]);
        acc[a][4 * n + 2 * e + 1] = fmaf(v.y, x[a][4 * n + 2 * e + 1], acc[a][4 * n + 2 * e + 1]);
      }
}

// Stores 16-byte chunk `at` of A_o = x ∘ y and of B_o = u ∘ w (the tile at `a`, B_o the
// same layout `b_off` bytes later): the eight bf16 products of each chunk, or zeros where the
// pair is not `valid`. The chunk's elements start at x + own, u + own (the row's staged rows)
// and y + partner, w + partner (its partner's), read only when valid.
__device__ __forceinline__ void store_operand_chunks(uint8_t* a, int b_off, uint32_t at, bool valid,
                                                     const __nv_bfloat16* x, const __nv_bfloat16* u, int own,
                                                     const __nv_bfloat16* y, const __nv_bfloat16* w,
                                                     int partner) {
  uint4 pa = make_uint4(0, 0, 0, 0), pb = pa;
  if (valid) {
    const uint4 xv = *reinterpret_cast<const uint4*>(x + own), yv = *reinterpret_cast<const uint4*>(y + partner);
    const uint4 uv = *reinterpret_cast<const uint4*>(u + own), wv = *reinterpret_cast<const uint4*>(w + partner);
    pa = make_uint4(bf2_mul(xv.x, yv.x), bf2_mul(xv.y, yv.y), bf2_mul(xv.z, yv.z), bf2_mul(xv.w, yv.w));
    pb = make_uint4(bf2_mul(uv.x, wv.x), bf2_mul(uv.y, wv.y), bf2_mul(uv.z, wv.z), bf2_mul(uv.w, wv.w));
  }
  *reinterpret_cast<uint4*>(a + at) = pa;
  *reinterpret_cast<uint4*>(a + b_off + at) = pb;
}

// Packs P and dS of accumulator columns 8 n .. 8 n + 7 (pv, dv: the thread's values x = 0..3,
// rows g / g + 8 and columns 2 t, 2 t + 1) into the bf16 A fragments of k-step n / 2, the
// operands of the products that follow (the m64n64 accumulator layout is the A layout).
__device__ __forceinline__ void pack_p_ds(uint32_t (&pf)[TK / 16][4], uint32_t (&dsf)[TK / 16][4], int n,
                                          const float (&pv)[4], const float (&dv)[4]) {
  pf[n / 2][2 * (n % 2) + 0] = bf2_pack(pv[0], pv[1]);
  pf[n / 2][2 * (n % 2) + 1] = bf2_pack(pv[2], pv[3]);
  dsf[n / 2][2 * (n % 2) + 0] = bf2_pack(dv[0], dv[1]);
  dsf[n / 2][2 * (n % 2) + 1] = bf2_pack(dv[2], dv[3]);
}

// The windows of the thread's rows r = rbase + 16 warp + g + 8 e (e = 0, 1) of a [N G] row
// space (row r is query r / G): ok[e] = r < nrows, the query i[e] (0 past the rows), its
// window 1 jr[e] (empty past the rows) and window 2 kr[e].
struct RowWindows {
  bool ok[2];
  int i[2];
  Range jr[2], kr[2];
};
__device__ __forceinline__ RowWindows row_windows(int rbase, int nrows, int G, const Shape& s) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
  RowWindows w;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + lane / 4 + 8 * e;
    w.ok[e] = r < nrows;
    w.i[e] = w.ok[e] ? r / G : 0;
    w.jr[e] = w.ok[e] ? window(w.i[e], s.w1, s.seq, s.causal) : Range{0, 0};
    w.kr[e] = window(w.i[e], s.w2, s.seq, s.causal);
  }
  return w;
}

// The A fragments (mma.sync / wgmma register layout) of the thread's rows of a [rows x 16 KS]
// bf16 operand: rows rbase + 16 warp + g (+ 8), element (r, c) at x + row_off(r) + c; zero for
// rows >= nrows.
template <int KS, typename RowOffset>
__device__ __forceinline__ void load_row_fragments(uint32_t (&f)[KS][4], const __nv_bfloat16* x, RowOffset row_off,
                                                   int rbase, int nrows) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = i & 1, col = 16 * ks + 2 * t + 8 * (i >> 1);
      const int r = rbase + warp * 16 + g + 8 * e;
      f[ks][i] = r < nrows ? *reinterpret_cast<const uint32_t*>(x + row_off(r) + col) : 0u;
    }
}

// dv += P^T @ B, dk += dS^T @ A for a step of the key-side kernels, issued (the caller
// fences before and commits and waits after): P^T, dS^T the A fragments of the 64 query rows
// (packed by pack_p_ds), A, B the step's [64 x D] operands at shared addresses abase, bbase
// (D/64 128B-swizzled atoms of 64 rows) read MN-major. Interleaved per k-step (one loop per
// product costs the k2 pass a register spill).
template <int NA>
__device__ __forceinline__ void key_products(float (&dk)[NA][32], float (&dv)[NA][32], const uint32_t (&pf)[TK / 16][4],
                                             const uint32_t (&dsf)[TK / 16][4], uint32_t abase, uint32_t bbase) {
  const uint32_t alo = desc_lo(abase), blo = desc_lo(bbase);
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int st = 0; st < TK / 16; ++st) {
      wgmma_m64n64k16_rs<1>(dv[a], pf[st], desc_at(blo, a * (ROWS * 128) + st * 2048), 1);
      wgmma_m64n64k16_rs<1>(dk[a], dsf[st], desc_at(alo, a * (ROWS * 128) + st * 2048), 1);
    }
}

// One row's running max after a tile: mx is this thread's max of the row's logits in the tile
// (scaled by sl2 unless `fold`: then the logits are still unscaled and the max is scaled here),
// reduced over the quad (the row's four threads). Sets m_row to the new max and alpha to
// 2^(old max - new max), and returns the offset the tile's exponentials subtract (0 while
// the row has seen no key, so that alpha and every exponential stay 0 rather than NaN).
__device__ __forceinline__ float running_max_step(float mx, bool fold, float sl2, float& m_row, float& alpha) {
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  if (fold) mx *= sl2;
  const float m_new = fmaxf(m_row, mx);
  const float m_use = m_new == -INFINITY ? 0.0f : m_new;
  alpha = fast_exp2(m_row - m_use);
  m_row = m_new;
  return m_use;
}

// One online-softmax update (base 2) of the thread's rows g (e = 0) and g + 8 (e = 1; t = lane % 4) over TO
// logit tiles of 64 keys (m64n64 accumulators): masks where !fold (ok(u, e, col) says whether
// column col of tile u is inside row e's windows), takes the row max, turns the logits into
// probabilities in place, and updates the running max m_row and sum l_row; alpha[e] is the
// factor the row's earlier output is rescaled by. fold (every pair of the warp inside its
// windows, positive scale): the logits stay unscaled, the max is taken on them and scaled once,
// and the scale goes into the exp's FMA.
template <int TO, typename Ok>
__device__ __forceinline__ void online_softmax(float (&sacc)[TO][32], bool fold, float sl2, int t, Ok&& ok,
                                               float (&m_row)[2], float (&l_row)[2], float (&alpha)[2]) {
  const float f = fold ? sl2 : 1.0f;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float mx = -INFINITY;
    if (fold) {
#pragma unroll
      for (int u = 0; u < TO; ++u)
#pragma unroll
        for (int x = 0; x < 16; ++x) mx = fmaxf(mx, sacc[u][4 * (x / 2) + 2 * e + x % 2]);
    } else {
#pragma unroll
      for (int u = 0; u < TO; ++u)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float x = ok(u, e, 8 * n + 2 * t + c) ? sacc[u][4 * n + 2 * e + c] * sl2 : -INFINITY;
            sacc[u][4 * n + 2 * e + c] = x;
            mx = fmaxf(mx, x);
          }
    }
    const float m_use = running_max_step(mx, fold, sl2, m_row[e], alpha[e]);
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < TO; ++u)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float p = fast_exp2(fmaf(sacc[u][4 * n + 2 * e + c], f, -m_use));
          sacc[u][4 * n + 2 * e + c] = p;
          sum += p;
        }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l_row[e] = l_row[e] * alpha[e] + sum;
  }
}

// acc (rows g, g + 8 of the thread) *= alpha of the row: the online softmax's rescale of the
// output rows.
template <int NA>
__device__ __forceinline__ void rescale_rows(float (&acc)[NA][32], const float (&alpha)[2]) {
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) acc[a][4 * n + x] *= alpha[x / 2];
}

// P, one m64n64 f32 accumulator, rounded to bf16 as the A fragments of the values product's
// four k16 steps (the accumulator layout of m64n64 is the A layout of its k16 steps).
__device__ __forceinline__ void pack_probs(const float (&p)[32], uint32_t (&pf)[4][4]) {
#pragma unroll
  for (int st = 0; st < 4; ++st) {
    pf[st][0] = bf2_pack(p[8 * st + 0], p[8 * st + 1]);
    pf[st][1] = bf2_pack(p[8 * st + 2], p[8 * st + 3]);
    pf[st][2] = bf2_pack(p[8 * st + 4], p[8 * st + 5]);
    pf[st][3] = bf2_pack(p[8 * st + 6], p[8 * st + 7]);
  }
}

// The same for H accumulators.
template <int H>
__device__ __forceinline__ void pack_probs(const float (&p)[H][32], uint32_t (&pf)[H][4][4]) {
#pragma unroll
  for (int h = 0; h < H; ++h) pack_probs(p[h], pf[h]);
}

}  // namespace offset_walk
}  // namespace simplex
