// 2-simplicial attention backward on Hopper tensor cores for few query heads per K/V head: the
// offset walk of simplicial_fwd_offsets.cu applied to the backward. bf16 in, f32 accumulation.
// Two kernels: the qk1 pass (dq, dk1, dv1: window 1, the small window), replacing the q kernel
// of simplicial_bwd_mma.cu / simplicial_bwd_wgmma.cu, and the k2 pass (dk2, dv2: window 2),
// replacing their k kernel. Which run is chosen in src/kernels/dispatch (`OffsetsBackward`): as
// measured, both for G = Hq/Hkv <= 16 at D = 64 (docs/kernels.md).
//
// With P = exp(S - lse), dS = scale P ∘ (dP - delta), dP[r,j,k] = dout_r · (v1_j ∘ v2_k):
//   dq_r  = sum_{j,k} dS[r,j,k] k1_j ∘ k2_k
//   dk1_j = sum_{r,k} dS[r,j,k] q_r ∘ k2_k,     dv1_j = sum_{r,k} P[r,j,k] dout_r ∘ v2_k
//   dk2_k = sum_{r,j} dS[r,j,k] q_r ∘ k1_j,     dv2_k = sum_{r,j} P[r,j,k] dout_r ∘ v1_j
// Both kernels step through window-1 OFFSETS o: in a step every row r (query i, head h) pairs
// with its own window-1 key j = i + o, so the products are dense, with
//   A_o = Q ∘ K1[i + o], B_o = dout ∘ V1[i + o]   (64 x D, built in swizzled shared memory)
//   S = A_o K2^T, dP = B_o V2^T                    (the logits and dP of those pairs)
// The qk1 pass owns 64 query rows and sums X = dS K2, Y = P V2 over the window-2 tiles of one
// offset; the k2 pass owns 64 window-2 keys per warpgroup and walks (query tile, offset) steps.
// Details above each kernel. Shared pieces (tile loads, the tile products, the row stores):
// offset_walk.cuh.
// Reference: src/reference.rs; tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs.
#include "offset_walk.cuh"

using namespace simplex;
using namespace simplex::offset_walk;
typedef __nv_bfloat16 bf16;

namespace {

#include "bwd_offsets_k2.cuh"

// qk1 pass: dq, dk1 and dv1 in one walk (G = Hq/Hkv a power of two up to 128). A block owns 64 query
// rows; its two warpgroups split the window-1 offsets (warpgroup 0 the first half, 1 the
// second) and walk the same window-2 tiles in step. For one offset o every row pairs with its
// own window-1 key j_r = i_r + o, so
//   A_o = Q ∘ K1[j_r], B_o = dout ∘ V1[j_r]   built once per offset into swizzled smem
//   S = A_o @ K2_tile^T, dP = B_o @ V2_tile^T  wgmma, both operands in shared memory
//   P, dS in registers (masked only in steps not wholly inside the windows)
//   X += dS @ K2_tile, Y += P @ V2_tile        wgmma, A = dS / P from the accumulators,
//                                               B MN-major; summed over the offset's tiles
// and once per offset (X = sum_k dS[r, j_r, k] k2_k, Y = sum_k P[r, j_r, k] v2_k):
//   dq_r += X_r ∘ k1[j_r]                      registers
//   dk1[j_r] += X_r ∘ q_r, dv1[j_r] += Y_r ∘ dout_r
// The key side is a shift of the row side by o: those sums go, summed first over the G heads of
// a position (warp shuffles), into f32 accumulators in shared memory, one per warpgroup
// and one row per key of a chunk of CHUNK offsets (up to G = 16 conflict-free plain adds: at
// one offset positions map to distinct keys; from G = 32 on a position's heads span several
// warps, which meet in shared-memory atomics), flushed into the f32 dk1, dv1 buffers with
// float4 atomics after each chunk (neighbouring blocks share keys). dq: the two warpgroups' halves are added
// in shared memory at the end (deterministic).
// Tiles: three K2/V2 buffers, the next tile fetched during the current step; a warpgroup does
// not wait for its X/Y products before the next step's barrier (the buffer they read is the
// one refilled a step later).
// Shared memory (D = 64, G = 1, window 1 = 32): tiles 48 KB, (A_o, B_o) x 2 32 KB, q and dout
// rows 18 KB, window-1 k1 and v1 rows 2 x 96 x 144 B, key sums 2 x 2 x 79 x 256 B: 204 KB.
// Registers: X, Y, dq (96), S, dP (64), P, dS as bf16 A fragments (32); ptxas 255, 24 B spill.
template <int D>
struct Qk1Layout {
  static constexpr int JS = D + 8;              // padded staged row, elements
  static constexpr int STAGES = 3;              // K2/V2 tile buffers
  static constexpr int KT = TK * D * 2;         // one K2 (or V2) tile
  static constexpr int TILES = STAGES * 2 * KT;
  static constexpr int AB = ROWS * D * 2;       // one A_o (or B_o): swizzled [64][D]
  static constexpr int OPS = 2 * 2 * AB;        // (A_o, B_o) per warpgroup
  static constexpr int OWN = 2 * ROWS * JS * 2; // the block's q and dout rows
  static constexpr int CHUNK = 16;              // offsets per flush of the key accumulators
};

template <int D>
__device__ __forceinline__ void bwd_offsets_qk1(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                                const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                                const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                                const float* __restrict__ lse, const float* __restrict__ dlt,
                                                bf16* __restrict__ dq, float* __restrict__ dk1,
                                                float* __restrict__ dv1, const Shape s) {
  using L = Qk1Layout<D>;
  constexpr int KS = D / 16;
  constexpr int NA = D / 64;
  uint8_t* sm = aligned_dynamic_smem();

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int row0 = blockIdx.x * ROWS, nrows = N * G;
  const int p_first = row0 / G, p_last = (min(row0 + ROWS, nrows) - 1) / G;
  const int npos = max(ROWS / G, 1);  // positions per block (G a power of two)
  const Range PU = {window(p_first, s.w1, N, s.causal).lo, window(p_last, s.w1, N, s.causal).hi};
  const Range KU = {window(p_first, s.w2, N, s.causal).lo, window(p_last, s.w2, N, s.causal).hi};
  const int pcap = partner_positions(s, ROWS);
  const int acc_rows = npos + L::CHUNK - 1;
  const int tid = threadIdx.x, wg = tid / 128, wtid = tid % 128, warp = wtid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto q_row = [&](int i, int h) -> long long { return (long long)(b * N + i) * Hq + kv * G + h; };

  // shared memory: tiles | (A_o, B_o) x 2 | q, dout rows | k1, v1 partner rows | dk1, dv1 sums
  uint8_t* ops = sm + L::TILES + wg * 2 * L::AB;
  const bf16* q_s = reinterpret_cast<const bf16*>(sm + L::TILES + L::OPS);
  const bf16* d_s = q_s + ROWS * L::JS;
  const bf16* k1_s = d_s + ROWS * L::JS;
  const bf16* v1_s = k1_s + pcap * L::JS;
  float* sums = reinterpret_cast<float*>(sm + L::TILES + L::OPS + L::OWN + 2 * pcap * L::JS * 2);
  float* dk1_acc = sums + wg * 2 * acc_rows * D;  // this warpgroup's [acc_rows][D] pair
  float* dv1_acc = dk1_acc + acc_rows * D;

  auto tile_addr = [&](int stage) { return smem_u32(sm + stage * 2 * L::KT); };
  auto load_tile = [&](int k0, int stage) {
    load_kv_tile<D>(tile_addr(stage), tile_addr(stage) + L::KT, k0, KU.hi, k2, v2, kv_off(0), (long long)Hkv * D);
  };
  {  // own q, dout rows; partner k1, v1 rows (zero past the sequence / the union)
    const uint32_t qa = smem_u32(q_s), da = smem_u32(d_s), ka = smem_u32(k1_s), va = smem_u32(v1_s);
    for (int c = tid; c < ROWS * D / 8; c += THREADS) {
      const int rr = c / (D / 8), c16 = c % (D / 8), r = row0 + rr;
      const bool ok = r < nrows;
      const long long src = ok ? q_row(r / G, r % G) * D + c16 * 8 : 0;
      cp_async16(qa + (rr * L::JS + c16 * 8) * 2, q + src, ok);
      cp_async16(da + (rr * L::JS + c16 * 8) * 2, dout + src, ok);
    }
    for (int c = tid; c < pcap * D / 8; c += THREADS) {
      const int pr = c / (D / 8), c16 = c % (D / 8), pos = PU.lo + pr;
      const bool ok = pos < PU.hi;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      cp_async16(ka + (pr * L::JS + c16 * 8) * 2, k1 + src, ok);
      cp_async16(va + (pr * L::JS + c16 * 8) * 2, v1 + src, ok);
    }
    for (int c = tid; c < 4 * acc_rows * D; c += THREADS) sums[c] = 0.0f;
  }
  load_tile(KU.lo, 0);
  cp_async_commit();

  // ---- this thread's rows row0 + 16 warp + g + 8 e ----
  int pos[2];
  bool row_ok[2];
  float lse2[2] = {0.0f, 0.0f}, delta[2] = {0.0f, 0.0f};
  Range kr[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = row0 + warp * 16 + g + 8 * e;
    row_ok[e] = r < nrows;
    pos[e] = row_ok[e] ? r / G : p_first;
    kr[e] = window(pos[e], s.w2, N, s.causal);
    if (row_ok[e]) {
      lse2[e] = lse[q_row(pos[e], r % G)] * LOG2E;
      delta[e] = dlt[q_row(pos[e], r % G)];
    }
  }
  float dqa[NA][32], xa[NA][32], ya[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) dqa[a][x] = xa[a][x] = ya[a][x] = 0.0f;

  // offsets with a partner inside the sequence for some row, split between the warpgroups
  const int o_lo = 1 - s.w1, o_hi = s.causal ? 0 : s.w1 - 1;
  const int oa = max(o_lo, -p_last), ob = min(o_hi, N - 1 - p_first);
  const int half = (ob - oa + 2) / 2;
  const int my_oa = wg == 0 ? oa : oa + half, my_n = wg == 0 ? half : ob - oa + 1 - half;
  const int rounds = half;
  const int nkt = (KU.hi - KU.lo + TK - 1) / TK;
  const float sl2 = s.scale * LOG2E;
  const uint32_t abase = smem_u32(ops), bbase = abase + L::AB;

  // builds A_o, B_o of offset `off` (this warpgroup's 128 threads)
  auto build = [&](int off) {
    constexpr int BR = ROWS * D / 8 / 128;
    const int c16 = wtid % (D / 8);
#pragma unroll
    for (int x = 0; x < BR; ++x) {
      const int rr = wtid / (D / 8) + (128 / (D / 8)) * x, r = row0 + rr;
      const int j = r / G + off;
      store_operand_chunks(ops, L::AB, sw128_tile(ROWS, rr, c16 * 8), r < nrows && j >= 0 && j < N, q_s, d_s,
                           rr * L::JS + c16 * 8, k1_s, v1_s, (j - PU.lo) * L::JS + c16 * 8);
    }
    fence_async_smem();
  };
  // adds this warpgroup's key sums of the chunk starting at offset cb into dk1, dv1 and zeroes
  // them (the warpgroup's 128 threads; the caller has synchronized the warpgroup)
  auto flush = [&](int cb) {
    for (int c = wtid; c < 2 * acc_rows * D / 4; c += 128) {
      const int u = c / (acc_rows * D / 4), rc = c % (acc_rows * D / 4);
      const int kr_ = rc / (D / 4), col = 4 * (rc % (D / 4)), key = p_first + cb + kr_;
      float4* src = reinterpret_cast<float4*>((u ? dv1_acc : dk1_acc) + kr_ * D + col);
      const float4 v = *src;
      if (key >= 0 && key < N && (v.x != 0.0f || v.y != 0.0f || v.z != 0.0f || v.w != 0.0f))
        atomicAdd(reinterpret_cast<float4*>((u ? dv1 : dk1) + kv_off(key) + col), v);
      *src = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };

  cp_async_wait_all();  // the staged rows (and the first tile) for the first build
  __syncthreads();
  if (my_n > 0) build(my_oa);
  int step = 0;
  for (int round = 0; round < rounds; ++round) {
    const int off = my_oa + round;
    const bool active = round < my_n;
    bool pok[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) pok[e] = row_ok[e] && pos[e] + off >= 0 && pos[e] + off < N;
    for (int kt = 0; kt < nkt; ++kt, ++step) {
      const int stage = step % L::STAGES, k0 = KU.lo + kt * TK;
      // tile `step` has landed for every thread, and every thread is past step - 1 (so the X/Y
      // products of step - 2, which read the buffer refilled now, are complete)
      cp_async_wait_all();
      fence_async_smem();
      __syncthreads();
      if (kt + 1 < nkt || round + 1 < rounds) {
        load_tile(kt + 1 < nkt ? k0 + TK : KU.lo, (step + 1) % L::STAGES);
        cp_async_commit();
      }
      if (!active) continue;
      const uint32_t kbase = tile_addr(stage), vbase = kbase + L::KT;
      // S = A_o @ K2_tile^T, dP = B_o @ V2_tile^T (this also retires the previous step's X, Y)
      float sacc[32], dpacc[32];
      wg_fence();
      wgmma_ss_tt<KS>(sacc, abase, kbase);
      wgmma_ss_tt<KS>(dpacc, bbase, vbase);
      wg_commit();
      wg_wait0();
      reg_fence(sacc);
      reg_fence(dpacc);
      // P = exp2(S scale log2e - lse log2e), dS = scale P (dP - delta) as bf16 A fragments
      bool inside = pok[0] && pok[1];
#pragma unroll
      for (int e = 0; e < 2; ++e) inside = inside && k0 >= kr[e].lo && k0 + TK <= kr[e].hi;
      const bool all_in = __all_sync(0xffffffffu, inside);
      uint32_t pf[TK / 16][4], dsf[TK / 16][4];
      auto p_ds = [&](auto masked) {
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          float pv[4], dv[4];
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int e = x / 2;
            bool ok = true;
            if constexpr (decltype(masked)::value) {
              const int key = k0 + 8 * n + 2 * t + x % 2;
              ok = pok[e] && key >= kr[e].lo && key < kr[e].hi;
            }
            pv[x] = masked_exp2(ok, fmaf(sacc[4 * n + x], sl2, -lse2[e]));
            dv[x] = s.scale * pv[x] * (dpacc[4 * n + x] - delta[e]);
          }
          pack_p_ds(pf, dsf, n, pv, dv);
        }
      };
      if (all_in)
        p_ds(Flag<false>{});
      else
        p_ds(Flag<true>{});
      // X += dS @ K2_tile, Y += P @ V2_tile (not waited for here)
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        reg_fence(xa[a]);
        reg_fence(ya[a]);
      }
      wg_fence();
      wgmma_a_t<NA>(xa, dsf, kbase, kt > 0);
      wgmma_a_t<NA>(ya, pf, vbase, kt > 0);
      wg_commit();
    }
    wg_wait0();
#pragma unroll
    for (int a = 0; a < NA; ++a) {
      reg_fence(xa[a]);
      reg_fence(ya[a]);
    }
    if (!active) continue;
    // ---- end of offset `off`: dq += X ∘ k1[j]; key sums X ∘ q, Y ∘ dout into the chunk ----
    const int chunk_base = my_oa + (round / L::CHUNK) * L::CHUNK;
    const bf16* kr1[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) kr1[e] = k1_s + min(max(pos[e] + off - PU.lo, 0), pcap - 1) * L::JS;
    fma_rows<NA>(dqa, xa, kr1, t);
    const bf16* qr[2];
    const bf16* dr[2];
    int arow[2];
    bool writer[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int rr = warp * 16 + g + 8 * e;
      qr[e] = q_s + rr * L::JS;
      dr[e] = d_s + rr * L::JS;
      arow[e] = pos[e] + off - (p_first + chunk_base);  // the key's accumulator row
      writer[e] = pok[e] && ((row0 + rr) % min(G, 16) == 0);  // head 0 of its position in the warp
    }
#pragma unroll
    for (int a = 0; a < NA; ++a)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const int col = 64 * a + 8 * n + 2 * t;
        float c[2][4];  // per e: (X ∘ q) x2, (Y ∘ dout) x2
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float2 qv = bf2_float2(*reinterpret_cast<const uint32_t*>(qr[e] + col));
          const float2 dv = bf2_float2(*reinterpret_cast<const uint32_t*>(dr[e] + col));
          c[e][0] = xa[a][4 * n + 2 * e] * qv.x;
          c[e][1] = xa[a][4 * n + 2 * e + 1] * qv.y;
          c[e][2] = ya[a][4 * n + 2 * e] * dv.x;
          c[e][3] = ya[a][4 * n + 2 * e + 1] * dv.y;
          // the G heads of a position are G consecutive rows g (lanes 4 apart); at G = 16
          // they are all 16 rows of the warp, both e
          for (int m = 4; m < min(4 * G, 32); m *= 2)
#pragma unroll
            for (int v = 0; v < 4; ++v) c[e][v] += __shfl_xor_sync(0xffffffffu, c[e][v], m);
        }
        if (G >= 16)
#pragma unroll
          for (int v = 0; v < 4; ++v) c[0][v] += c[1][v];
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (writer[e]) {
            float* pk = dk1_acc + arow[e] * D + col;
            float* pv = dv1_acc + arow[e] * D + col;
            if (G >= 32) {
              // the position's heads span G / 16 warps: they meet in shared-memory atomics
              atomicAdd(pk, c[e][0]);
              atomicAdd(pk + 1, c[e][1]);
              atomicAdd(pv, c[e][2]);
              atomicAdd(pv + 1, c[e][3]);
            } else {
              const float2 ok = *reinterpret_cast<float2*>(pk), ov = *reinterpret_cast<float2*>(pv);
              *reinterpret_cast<float2*>(pk) = make_float2(ok.x + c[e][0], ok.y + c[e][1]);
              *reinterpret_cast<float2*>(pv) = make_float2(ov.x + c[e][2], ov.y + c[e][3]);
            }
          }
      }
    if (round + 1 < my_n) {
      if ((round + 1) % L::CHUNK == 0) {
        bar_sync(BAR_WG + wg, 128);
        flush(chunk_base);
      }
      build(off + 1);  // the last S / dP products of this offset were waited for
    }
    bar_sync(BAR_WG + wg, 128);  // A_o, B_o (and the flushed sums) are complete
  }

  // ---- epilogue: the last chunk's key sums; dq = the two warpgroups' halves, bf16 ----
  __syncthreads();  // every tile product is done (the tile space is free)
  if (my_n > 0) flush(my_oa + ((my_n - 1) / L::CHUNK) * L::CHUNK);
  float* dq_half = reinterpret_cast<float*>(sm + ROWS * D * 2);  // after warpgroup 0's bf16 stage
  if (wg == 1) {
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int n = 0; n < 8; ++n)
          *reinterpret_cast<float2*>(dq_half + (warp * 16 + g + 8 * e) * D + 64 * a + 8 * n + 2 * t) =
              make_float2(dqa[a][4 * n + 2 * e], dqa[a][4 * n + 2 * e + 1]);
  }
  __syncthreads();
  if (wg == 0) {
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const float2 h = *reinterpret_cast<const float2*>(dq_half + (warp * 16 + g + 8 * e) * D + 64 * a + 8 * n + 2 * t);
          dqa[a][4 * n + 2 * e] += h.x;
          dqa[a][4 * n + 2 * e + 1] += h.y;
        }
    const float one[2] = {1.0f, 1.0f};
    store_rows_bf16<D>(sm, dqa, one, row0, nrows, dq, [&](int r) { return q_row(r / G, r % G) * D; });
  }
}

}  // namespace

#define SIMPLICIAL_BWD_OFFSETS_K2(D)                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_offsets_k2_bf16_d##D(                \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,         \
      const float* lse, const float* dlt, bf16* dk2, bf16* dv2, const Shape s) {                               \
    bwd_offsets_k2<D>(q, k1, k2, v1, v2, dout, lse, dlt, dk2, dv2, s);                                         \
  }

#define SIMPLICIAL_BWD_OFFSETS_QK1(D)                                                                          \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_offsets_qk1_bf16_d##D(               \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,         \
      const float* lse, const float* dlt, bf16* dq, float* dk1, float* dv1, const Shape s) {                   \
    bwd_offsets_qk1<D>(q, k1, k2, v1, v2, dout, lse, dlt, dq, dk1, dv1, s);                                    \
  }

SIMPLICIAL_BWD_OFFSETS_QK1(64)
SIMPLICIAL_BWD_OFFSETS_K2(64)
