// 2-simplicial attention backward, the window-2 side (dk2, dv2), on Hopper tensor cores with a
// producer warpgroup: bf16 in, f32 accumulation. For G = Hq/Hkv a multiple of 64 (the anchors),
// where a 64-row block of query rows is the 64 heads of one query. Replaces the k kernel of
// simplicial_bwd_mma.cu / simplicial_bwd_wgmma.cu there (the q side stays with those kernels).
//
// With P = exp(S - lse), dS = scale P ∘ (dP - delta), dP[r,j,k] = dout_r · (v1_j ∘ v2_k):
//   dk2_k = sum_{r,j} dS[r,j,k] q_r ∘ k1_j,     dv2_k = sum_{r,j} P[r,j,k] dout_r ∘ v1_j
// A CTA owns 128 window-2 keys, 64 per consumer warpgroup, and walks the steps (query i, block
// of 64 heads hb, window-1 position j) of every query that sees one of its keys:
//   A = Q_{i,hb} ∘ k1_j, B = dout_{i,hb} ∘ v1_j     64 x D, built by the producer, swizzled
//   S^T = K2_c @ A^T, dP^T = V2_c @ B^T             SS wgmma: the consumer's own 64 keys
//   P^T, dS^T                                       (masked only where the step's keys are
//                                                   not all inside query i's window 2)
//   dv2_c += P^T @ B, dk2_c += dS^T @ A             RS wgmma, B / A read MN-major
// as in the k2 pass of simplicial_bwd_offsets.cu, but with the producer/consumer split of
// simplicial_fwd_producer.cu: WG0 stages the query block's q and dout rows (cp.async, two
// buffers), reads k1_j / v1_j (one step ahead, registers) and builds A, B and the block's lse,
// delta (read from global once per block) into a ring of NV step buffers; each consumer waits
// on its own FULL barrier per buffer and both arrive on the buffer's EMPTY barrier, so the
// consumers drift apart freely.
// Shared memory (D = 128): own K2 / V2 rows 4 x 16 KB, step buffers NV = 3 x 32 KB (A, B; each
// 1024-byte aligned: wgmma's 128-byte swizzle reads the address bits) and 3 x 512 B (lse,
// delta), q / dout staging 2 x 32 KB: 226.5 KB.
// Registers: setmaxnreg 56 (producer) / 224 (consumers: dk2 64 + dv2 64 + S^T 32 + dP^T 32 +
// P^T, dS^T fragments 32). ptxas: the consumers spill 400 B at 216; at 56 the producer
// spills 8 B (44 B with its loops unrolled further; 120 B at 40).
// dk2, dv2 are sums in a fixed order per key (deterministic).
// Reference: src/reference.rs; tests: tests/cuda_wgmma.rs (every backward case with this kernel
// where G is a multiple of 64), tests/cuda_vs_oracle.rs; when it runs, speed: docs/kernels.md.
#include "offset_walk.cuh"

using namespace simplex;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int ROWS = 64;       // heads of a step = keys per consumer = wgmma M and N
constexpr int CTA_KEYS = 128;  // two consumers
constexpr int NV = 3;          // step buffers
constexpr int THREADS = 384;   // producer + two consumers
constexpr int PTHREADS = 128;
// setmaxnreg: the launch gives every thread 168 registers; the consumers take what the
// producer gives back (P + 2 C <= 3 * 168).
constexpr int PRODUCER_REGS = 56, CONSUMER_REGS = 224;
static_assert(PRODUCER_REGS + 2 * CONSUMER_REGS <= 3 * 168, "the launch's registers");
// Named barriers: FULL per consumer and buffer (producer arrives, the consumer waits: 256
// threads), EMPTY per buffer (both consumers arrive, the producer waits: 384), the producer
// alone; ids 2, 3 are store_rows_bf16's (offset_walk.cuh).
constexpr int BAR_FULL = 4;
constexpr int BAR_EMPTY = BAR_FULL + 2 * NV;
constexpr int BAR_PRODUCER = BAR_EMPTY + NV;
constexpr int FULL_THREADS = PTHREADS + 128;
static_assert(offset_walk::BAR_WG + 2 < BAR_FULL, "barrier ids overlap");
static_assert(BAR_PRODUCER < 16, "16 named barriers");

// Shared memory from a 1024-byte aligned base; tiles are D/64 128B-swizzled atoms of 64 x 128 B.
template <int D>
struct Smem {
  static constexpr int T = ROWS * D * 2;           // one [64 x D] bf16 tile
  static constexpr int KV_OFF = 0;                 // consumer c: K2 at 2 c T, V2 at (2 c + 1) T
  // step buffers: A, B (1024-byte aligned, as the 128-byte swizzle reads the address bits)
  static constexpr int STEP = 2 * T;
  static constexpr int STEP_OFF = 4 * T;
  static constexpr int STAGE = 2 * T;  // a query block's q and dout rows
  static constexpr int STAGE_OFF = STEP_OFF + NV * STEP;
  static constexpr int LD_OFF = STAGE_OFF + 2 * STAGE;  // per step buffer: lse * log2e, delta
  static constexpr int BYTES = LD_OFF + NV * 2 * ROWS * 4 + 1024;  // + alignment slack
};
static_assert(Smem<64>::STEP % 1024 == 0 && Smem<128>::STEP % 1024 == 0, "aligned step buffers");
static_assert(Smem<128>::BYTES <= 227 * 1024, "one CTA per SM fits the shared memory");

template <int D>
__device__ __forceinline__ void bwd_producer_k2(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                                const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                                const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                                const float* __restrict__ lse, const float* __restrict__ dlt,
                                                bf16* __restrict__ dk2, bf16* __restrict__ dv2, const Shape s) {
  using L = Smem<D>;
  constexpr int KS = D / 16;
  constexpr int NA = D / 64;
  uint8_t* sm = aligned_dynamic_smem();

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv, HB = G / ROWS;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int key0 = blockIdx.x * CTA_KEYS;
  const int tid = threadIdx.x, wg = tid / 128;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  // first (query, head) row of block hb of query i
  auto q_row = [&](int i, int hb) -> long long { return (long long)(b * N + i) * Hq + kv * G + hb * ROWS; };
  // the queries that see any of the CTA's keys through window 2
  const int klast = min(key0 + CTA_KEYS, N) - 1;
  const int i_lo = seen_by(key0, s.w2, N, s.causal).lo, i_hi = seen_by(klast, s.w2, N, s.causal).hi;

  if (wg == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS) : "memory");
    const int ptid = tid;
    // the consumers' own K2, V2 rows (zero past the sequence)
    for (int c = ptid; c < CTA_KEYS * D / 8; c += PTHREADS) {
      const int kk = c / (D / 8), c16 = c % (D / 8), pos = key0 + kk, cons = kk / ROWS;
      const bool ok = pos < N;
      const long long src = ok ? kv_off(pos) + c16 * 8 : 0;
      const uint32_t at = sw128_tile(ROWS, kk % ROWS, c16 * 8);
      cp_async16(smem_u32(sm + L::KV_OFF + 2 * cons * L::T) + at, k2 + src, ok);
      cp_async16(smem_u32(sm + L::KV_OFF + (2 * cons + 1) * L::T) + at, v2 + src, ok);
    }
    // stages query block (i, hb): its q and dout rows (swizzled like A, B)
    auto stage = [&](int i, int hb, int buf) {
      uint8_t* st = sm + L::STAGE_OFF + buf * L::STAGE;
      const long long r0 = q_row(i, hb);
#pragma unroll 1
      for (int c = ptid; c < ROWS * D / 8; c += PTHREADS) {
        const int rr = c / (D / 8), c16 = c % (D / 8);
        const uint32_t at = sw128_tile(ROWS, rr, c16 * 8);
        cp_async16(smem_u32(st) + at, q + (r0 + rr) * D + c16 * 8, true);
        cp_async16(smem_u32(st + L::T) + at, dout + (r0 + rr) * D + c16 * 8, true);
      }
    };
    int consumed = 0;
    auto wait_consumed = [&](int n) {
      for (; consumed < n; ++consumed) bar_sync(BAR_EMPTY + consumed % NV, THREADS);
    };
    // this thread's chunks of a tile: column chunk c16 fixed, rows rr0 + x * RSTEP
    constexpr int CPR = D / 8, RSTEP = PTHREADS / CPR, NCH = ROWS * CPR / PTHREADS;
    const int c16 = ptid % CPR, rr0 = ptid / CPR;
    auto load_kv1 = [&](int j, uint4& kj, uint4& vj) {
      kj = *reinterpret_cast<const uint4*>(k1 + kv_off(j) + c16 * 8);
      vj = *reinterpret_cast<const uint4*>(v1 + kv_off(j) + c16 * 8);
    };

    if (i_lo < i_hi) stage(i_lo, 0, 0);
    cp_async_commit();
    int step = 0, blk = 0;
    for (int i = i_lo; i < i_hi; ++i)
      for (int hb = 0; hb < HB; ++hb, ++blk) {
        const int buf = blk & 1;
        cp_async_wait_all();
        fence_async_smem();
        bar_sync(BAR_PRODUCER, PTHREADS);  // block blk staged (and the own rows); block blk - 1 built
        {  // prefetch the next block into the other buffer
          const int ni = hb + 1 < HB ? i : i + 1, nhb = hb + 1 < HB ? hb + 1 : 0;
          if (ni < i_hi) stage(ni, nhb, buf ^ 1);
          cp_async_commit();
        }
        const uint8_t* st = sm + L::STAGE_OFF + buf * L::STAGE;
        const Range jw = window(i, s.w1, N, s.causal);
        // this thread's entry of the block's lse * log2e (threads 0..63) or delta (64..127)
        const long long r0 = q_row(i, hb);
        const float ld_mine = ptid < ROWS ? lse[r0 + ptid] * LOG2E : dlt[r0 + ptid - ROWS];
        uint4 nk, nv;
        load_kv1(jw.lo, nk, nv);
        for (int j = jw.lo; j < jw.hi; ++j, ++step) {
          const uint4 kj = nk, vj = nv;
          if (j + 1 < jw.hi) load_kv1(j + 1, nk, nv);
          wait_consumed(step - NV + 1);
          uint8_t* dst = sm + L::STEP_OFF + (step % NV) * L::STEP;
#pragma unroll 2
          for (int x = 0; x < NCH; ++x) {
            const uint32_t at = sw128_tile(ROWS, rr0 + x * RSTEP, c16 * 8);
            uint4 a = *reinterpret_cast<const uint4*>(st + at);
            uint4 d = *reinterpret_cast<const uint4*>(st + L::T + at);
            a = make_uint4(bf2_mul(a.x, kj.x), bf2_mul(a.y, kj.y), bf2_mul(a.z, kj.z), bf2_mul(a.w, kj.w));
            d = make_uint4(bf2_mul(d.x, vj.x), bf2_mul(d.y, vj.y), bf2_mul(d.z, vj.z), bf2_mul(d.w, vj.w));
            *reinterpret_cast<uint4*>(dst + at) = a;
            *reinterpret_cast<uint4*>(dst + L::T + at) = d;
          }
          reinterpret_cast<float*>(sm + L::LD_OFF + (step % NV) * 2 * ROWS * 4)[ptid] = ld_mine;
          fence_async_smem();
          bar_arrive(BAR_FULL + step % NV, FULL_THREADS);
          bar_arrive(BAR_FULL + NV + step % NV, FULL_THREADS);
        }
      }
    wait_consumed(step);  // balance the EMPTY barriers
    __syncthreads();      // the consumers' epilogue reuses the own-row space
    return;
  }

  // ---------------- consumers ----------------
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS) : "memory");
  const int c = wg - 1, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int kc = key0 + ROWS * c;  // this consumer's keys kc .. kc + 63
  const uint32_t kbase = smem_u32(sm + L::KV_OFF + 2 * c * L::T), vbase = kbase + L::T;
  // the thread's keys (accumulator rows g, g + 8 of its warp's 16)
  int key[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) key[e] = kc + warp * 16 + g + 8 * e;
  const Range mine = kc < N ? Range{seen_by(kc, s.w2, N, s.causal).lo, seen_by(min(kc + ROWS, N) - 1, s.w2, N, s.causal).hi}
                            : Range{0, 0};
  const float sl2 = s.scale * LOG2E;
  float dk[NA][32], dv[NA][32];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int x = 0; x < 32; ++x) dk[a][x] = dv[a][x] = 0.0f;

  int step = 0;
  for (int i = i_lo; i < i_hi; ++i) {
    const Range kw = window(i, s.w2, N, s.causal), jw = window(i, s.w1, N, s.causal);
    const bool seen = i >= mine.lo && i < mine.hi;              // some key of mine in i's window 2
    const bool inside = kc >= kw.lo && kc + ROWS <= kw.hi;      // all of them
    bool kok[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) kok[e] = key[e] >= kw.lo && key[e] < kw.hi;
    for (int hb = 0; hb < HB; ++hb)
      for (int j = jw.lo; j < jw.hi; ++j, ++step) {
        const int vb = step % NV;
        bar_sync(BAR_FULL + NV * c + vb, FULL_THREADS);  // A, B of the step built
        if (seen) {
          const uint8_t* buf = sm + L::STEP_OFF + vb * L::STEP;
          const uint32_t abase = smem_u32(buf), bbase = abase + L::T;
          const float* ls = reinterpret_cast<const float*>(sm + L::LD_OFF + vb * 2 * ROWS * 4);
          // S^T = K2_c @ A^T, dP^T = V2_c @ B^T
          float sacc[32], dpacc[32];
          wg_fence();
          offset_walk::wgmma_ss_tt<KS>(sacc, kbase, abase);
          offset_walk::wgmma_ss_tt<KS>(dpacc, vbase, bbase);
          wg_commit();
          wg_wait0();
          reg_fence(sacc);
          reg_fence(dpacc);
          // P^T, dS^T: row (key) e, column (head) 8 n + 2 t + cc
          uint32_t pf[4][4], dsf[4][4];
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const float2 l2 = *reinterpret_cast<const float2*>(ls + 8 * n + 2 * t);
            const float2 dl = *reinterpret_cast<const float2*>(ls + ROWS + 8 * n + 2 * t);
            float pv[4], dsv[4];
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const int e = x / 2, cc = x % 2;
              const bool ok = inside || kok[e];
              pv[x] = masked_exp2(ok, fmaf(sacc[4 * n + x], sl2, -(cc ? l2.y : l2.x)));
              dsv[x] = s.scale * pv[x] * (dpacc[4 * n + x] - (cc ? dl.y : dl.x));
            }
            offset_walk::pack_p_ds(pf, dsf, n, pv, dsv);
          }
          // dv2 += P^T @ B, dk2 += dS^T @ A (B, A read MN-major)
#pragma unroll
          for (int a = 0; a < NA; ++a) {
            reg_fence(dk[a]);
            reg_fence(dv[a]);
          }
          wg_fence();
          offset_walk::key_products<NA>(dk, dv, pf, dsf, abase, bbase);
          wg_commit();
          wg_wait0();
#pragma unroll
          for (int a = 0; a < NA; ++a) {
            reg_fence(dk[a]);
            reg_fence(dv[a]);
          }
        }
        bar_arrive(BAR_EMPTY + vb, THREADS);
      }
  }

  // ---- epilogue: dk2, dv2 (bf16) staged through the own-row space ----
  __syncthreads();  // the producer and both consumers are done with it
  const float one[2] = {1.0f, 1.0f};
  offset_walk::store_rows_bf16<D>(sm, dk, one, kc, N, dk2, kv_off);
  bar_sync(offset_walk::BAR_WG + wg, 128);  // the stage is read before it is reused
  offset_walk::store_rows_bf16<D>(sm, dv, one, kc, N, dv2, kv_off);
}

}  // namespace

// simplicial_bwd_producer_k2_bf16_d{D}: dk2, dv2 for D = Dv = 64 or 128, G a multiple of 64;
// 384 threads, 128 window-2 keys per CTA. Same signature as the k kernels of
// simplicial_bwd_mma.cu and simplicial_bwd_wgmma.cu.
#define SIMPLICIAL_BWD_PRODUCER_K2(D)                                                                         \
  extern "C" __global__ void __launch_bounds__(THREADS, 1) simplicial_bwd_producer_k2_bf16_d##D(             \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,       \
      const float* lse, const float* delta, bf16* dk2, bf16* dv2, const Shape s) {                           \
    bwd_producer_k2<D>(q, k1, k2, v1, v2, dout, lse, delta, dk2, dv2, s);                                    \
  }

SIMPLICIAL_BWD_PRODUCER_K2(64)
SIMPLICIAL_BWD_PRODUCER_K2(128)
