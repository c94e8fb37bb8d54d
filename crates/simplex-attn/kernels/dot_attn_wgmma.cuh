// Shared pieces of the Hopper (wgmma) dot-product attention kernels, dot_attn_fwd_wgmma.cu and
// dot_attn_bwd_wgmma.cu: the CTA layout (a producer warpgroup and two consumer warpgroups), the
// named barriers of the producer's stage ring, the producer's loop, and the row space.
//
// Row space: the kernels of one (batch b, K/V head kv) see the rows r = i * G + hh, query i,
// query head kv * G + hh (G = Hq / Hkv), so the G heads that share a K/V head share every K/V
// tile (as in simplicial_fwd_producer.cu). Query i sits at position i + Nk - Nq (dot_attn.cuh).
//
// Ring: the producer warpgroup fills NS stages with cp.async; step s uses stage s % NS, loaded by
// producer warp s % NS (the steps of all of a persistent CTA's work items form one stream, so
// loads run ahead across items, up to one per stage in flight). Each consumer c waits on its own
// FULL[c][stage] (the stage's producer warp and that consumer: 160 threads), so the two
// consumers drift apart freely, and both arrive on EMPTY[stage] (288 threads) when done with
// it; the producer warp waits on EMPTY before refilling its stage. Matrix pieces (swizzled
// tiles, descriptors, wgmma wrappers, online softmax, staged row stores) come from wgmma.cuh and
// offset_walk.cuh, validated by the simplicial kernels.
#pragma once

#include "dot_attn.cuh"
#include "offset_walk.cuh"

namespace dot_wgmma {

using namespace simplex;
typedef __nv_bfloat16 bf16;
using dot::DotShape;
using dot::Span;

constexpr int ROWS = 64;       // rows (or keys) per consumer warpgroup = wgmma M
constexpr int CTA_ROWS = 128;  // two consumers
constexpr int THREADS = 384;   // producer + two consumers
constexpr int NS = 3;          // ring stages; producer warp p (< NS) loads stage p
constexpr int PTHREADS = 32;   // threads that load one stage: one producer warp
// setmaxnreg: the launch gives every thread 168 registers (65536 / 384 rounded down to 8); the
// consumers can only take what the producer gives back (an excess blocks setmaxnreg.inc).
// 40 / 232 chosen by compiling 24/240 .. 72/216 and reading the spill report (kernels/NOTES.md).
#ifndef DOT_PREGS
#define DOT_PREGS 40
#define DOT_CREGS 232
#endif
constexpr int PRODUCER_REGS = DOT_PREGS, CONSUMER_REGS = DOT_CREGS;
static_assert(PRODUCER_REGS + 2 * CONSUMER_REGS <= 3 * 168, "the launch's registers");
// Named barriers: ids 2, 3 (BAR_WG + warpgroup) are one consumer warpgroup's alone.
constexpr int BAR_FULL = 4;                // + NS * consumer + stage
constexpr int BAR_EMPTY = BAR_FULL + 2 * NS;  // + stage
constexpr int BAR_TURN = BAR_EMPTY + NS;      // + consumer (forward only)
constexpr int FULL_THREADS = PTHREADS + 128;   // the stage's producer warp and one consumer
constexpr int EMPTY_THREADS = PTHREADS + 256;  // the stage's producer warp and both consumers
static_assert(NS <= 4, "a producer warp per stage");
static_assert(offset_walk::BAR_WG + 2 < BAR_FULL, "barrier ids overlap");
static_assert(BAR_TURN + 1 < 16, "16 named barriers");

__device__ __forceinline__ uint8_t* align1024(uint8_t* p) {
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + 1023) & ~uintptr_t(1023));
}

template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// 4 bytes global -> shared, zero-filled when !valid (src is not read then).
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
}

// Work items: blocks of CTA_ROWS rows (forward, dq) or keys (dk/dv) of every (batch, K/V head),
// listed group by group (the blocks of one (batch, K/V head) adjacent, the longest first within
// the group). The grid is persistent (one CTA per SM, src/dot/plan.rs `wgmma_grid`): CTA x takes
// items in a snake order over the list (x, 2 grid - 1 - x, 2 grid + x, ...), so the CTAs running
// at once work on few groups and share their K, V (or q, dout) rows in L2, and each CTA gets a
// similar total; with one CTA per item it is the plain grid.
struct Work {
  int nblk, hkv, batch, nitems;
  bool reverse;  // block nblk - 1 first in its group (the longest when later blocks see more)
  __device__ __forceinline__ Work(int nblk_, int hkv_, int batch_, bool reverse_)
      : nblk(nblk_), hkv(hkv_), batch(batch_), nitems(nblk_ * hkv_ * batch_), reverse(reverse_) {}
  // this CTA's n-th item, or -1 past the list
  __device__ __forceinline__ int nth(int n) const {
    const int g = gridDim.x, x = blockIdx.x;
    const int w = n * g + ((n & 1) ? g - 1 - x : x);
    return w < nitems ? w : -1;
  }
  __device__ __forceinline__ void decode(int w, int& blk, int& kv, int& b) const {
    const int group = w / nblk, i = w % nblk;
    blk = reverse ? nblk - 1 - i : i;
    kv = group % hkv;
    b = group / hkv;
  }
};

// The producer's side of the ring, one per producer warp p < NS: the steps of all of a CTA's
// items form one stream, and warp p loads the steps s with s % NS == p into stage p. step(load)
// advances the stream by one step; for the warp's own steps it waits until both consumers
// released the stage (its previous step there), issues the copies (load(stage): the warp's 32
// threads), waits for them, fences them for the async proxy and arrives on the stage's FULL
// barriers. A warp waits only for its own copies (a warpgroup-wide wait, and the fence's memory
// barrier, would hold every stage back to the slowest), so up to NS steps load at once.
// finish() waits for the release of the warp's last step, balancing the EMPTY barrier.
struct Ring {
  int s = 0;  // steps of the stream passed
  int p;      // this warp's stage
  __device__ __forceinline__ explicit Ring(int p_) : p(p_) {}
  template <typename Load>
  __device__ __forceinline__ void step(Load&& load) {
    if (s % NS == p) {
      if (s >= NS) bar_sync(BAR_EMPTY + p, EMPTY_THREADS);  // both consumers are done with step s - NS
      load(p);
      cp_async_commit();
      cp_async_wait_group<0>();
      fence_async_smem();
      bar_arrive(BAR_FULL + p, FULL_THREADS);
      bar_arrive(BAR_FULL + NS + p, FULL_THREADS);
    }
    ++s;
  }
  __device__ __forceinline__ void finish() {
    if (s > p) bar_sync(BAR_EMPTY + p, EMPTY_THREADS);
  }
};

// cp.async (one producer warp) of keys k0 .. k0 + TK - 1 of k and v (zero from `hi` on) into the
// tiles at shared addresses kt, vt: D/64 128B-swizzled atoms of TK rows x 128 B (K-major for
// S = Q K^T, MN-major for P V). Key j of the (batch, K/V head) starts at element base + j * stride.
template <int TK, int D>
__device__ __forceinline__ void load_kv(uint32_t kt, uint32_t vt, const bf16* k, const bf16* v, long long base,
                                        long long stride, int k0, int hi) {
  constexpr int CHUNKS = TK * D / 8;
  static_assert(CHUNKS % PTHREADS == 0, "whole chunks per producer thread");
  const int ptid = threadIdx.x % PTHREADS;
#pragma unroll 2
  for (int x = 0; x < CHUNKS / PTHREADS; ++x) {
    const int c = ptid + x * PTHREADS;
    const int kk = c / (D / 8), c16 = c % (D / 8), pos = k0 + kk;
    const bool ok = pos < hi;
    const long long src = ok ? base + pos * stride + c16 * 8 : 0;
    const uint32_t at = sw128_tile(TK, kk, c16 * 8);
    cp_async16(kt + at, k + src, ok);
    cp_async16(vt + at, v + src, ok);
  }
}

// The rows of one (batch b, K/V head kv): offsets of q / o / dout rows, of lse / delta entries,
// of k / v rows.
struct RowSpace {
  int b, kv, G, nq, nk, hq, hkv;
  __device__ __forceinline__ RowSpace(const DotShape& s, int b_, int kv_)
      : b(b_), kv(kv_), G(s.heads_q / s.heads_kv), nq(s.seq_q), nk(s.seq_k), hq(s.heads_q), hkv(s.heads_kv) {}
  __device__ __forceinline__ int nrows() const { return nq * G; }
  // lse / delta index of row r
  __device__ __forceinline__ long long stat(int r) const {
    return (long long)(b * nq + r / G) * hq + kv * G + r % G;
  }
  // first element of row r of q, o, dout (head dim D)
  __device__ __forceinline__ long long row(int r, int D) const { return stat(r) * D; }
  // first element of key j of k, v (head dim D)
  __device__ __forceinline__ long long key(int j, int D) const { return ((long long)(b * nk + j) * hkv + kv) * D; }
};

// The keys of the rows [r0, r1) (non-empty, inside the row space): keys_of_block of their queries.
__device__ __forceinline__ Span keys_of_rows(const DotShape& s, int G, int r0, int r1) {
  return dot::keys_of_block(s, r0 / G, (r1 - 1) / G + 1);
}

// The rows that see at least one of the keys [j0, j1) (non-empty, inside 0..Nk); empty (lo == hi)
// when none does.
__device__ __forceinline__ Span rows_of_keys(const DotShape& s, int G, int j0, int j1) {
  const Span qs = dot::queries_of_block(s, j0, j1);
  return qs.hi > qs.lo ? Span{qs.lo * G, qs.hi * G} : Span{0, 0};
}

// The A fragments (mma.sync / wgmma register layout) of the thread's rows of a [rows x 16 KS]
// bf16 operand: rows rbase + 16 warp + g (+ 8), element (r, c) at x + row_off(r) + c; zero for
// rows >= nrows. As offset_walk::load_row_fragments, with the two rows' offsets computed once.
template <int KS, typename RowOffset>
__device__ __forceinline__ void load_frags(uint32_t (&f)[KS][4], const bf16* x, RowOffset row_off, int rbase,
                                           int nrows) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, g = lane / 4, t = lane % 4;
  const int r0 = rbase + warp * 16 + g;
  const bool ok0 = r0 < nrows, ok1 = r0 + 8 < nrows;
  const bf16* p0 = x + (ok0 ? row_off(r0) : 0) + 2 * t;
  const bf16* p1 = x + (ok1 ? row_off(r0 + 8) : 0) + 2 * t;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    f[ks][0] = ok0 ? *reinterpret_cast<const uint32_t*>(p0 + 16 * ks) : 0u;
    f[ks][1] = ok1 ? *reinterpret_cast<const uint32_t*>(p1 + 16 * ks) : 0u;
    f[ks][2] = ok0 ? *reinterpret_cast<const uint32_t*>(p0 + 16 * ks + 8) : 0u;
    f[ks][3] = ok1 ? *reinterpret_cast<const uint32_t*>(p1 + 16 * ks + 8) : 0u;
  }
}

// One online-softmax update (base 2) of the thread's rows g (e = 0) and g + 8 (e = 1) over a
// 128-key logit tile (two m64n64 accumulators h; t = lane % 4), as offset_walk::online_softmax
// with both rows interleaved and the row max and sum taken over four partial chains each
// (shorter dependency chains): masks where !fold (ok(h, e, col): column col of half h is inside
// row e's keys), takes the row max, turns the logits into probabilities in place, updates the
// running max m_row and sum l_row; alpha[e] rescales the row's earlier output. fold (every pair
// of the warp unmasked, positive scale): the max is taken on the raw logits and scaled once, the
// scale goes into the exp's FMA.
template <typename Ok>
__device__ __forceinline__ void softmax_tile(float (&sacc)[2][32], bool fold, float sl2, int t, Ok&& ok,
                                             float (&m_row)[2], float (&l_row)[2], float (&alpha)[2]) {
  // element (h, n, e, c) of the thread: sacc[h][4 n + 2 e + c], column 8 n + 2 t + c of half h
  float mx[2][4];
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int k = 0; k < 4; ++k) mx[e][k] = -INFINITY;
  if (!fold) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float& x = sacc[h][4 * n + 2 * e + c];
            x = ok(h, e, 8 * n + 2 * t + c) ? x * sl2 : -INFINITY;
          }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& m = mx[e][(n % 2) * 2 + c];
          m = fmaxf(m, sacc[h][4 * n + 2 * e + c]);
        }
  const float f = fold ? sl2 : 1.0f;
  float m_use[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float m = fmaxf(fmaxf(mx[e][0], mx[e][1]), fmaxf(mx[e][2], mx[e][3]));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    if (fold) m *= sl2;
    const float m_new = fmaxf(m_row[e], m);
    m_use[e] = m_new == -INFINITY ? 0.0f : m_new;
    alpha[e] = fast_exp2(m_row[e] - m_use[e]);
    m_row[e] = m_new;
  }
  float sum[2][4];
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int k = 0; k < 4; ++k) sum[e][k] = 0.0f;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = sacc[h][4 * n + 2 * e + c];
          x = fast_exp2(fmaf(x, f, -m_use[e]));
          sum[e][(n % 2) * 2 + c] += x;
        }
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float l = (sum[e][0] + sum[e][1]) + (sum[e][2] + sum[e][3]);
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    l_row[e] = l_row[e] * alpha[e] + l;
  }
}

// Stores a consumer warpgroup's 64 x D f32 accumulator rows as bf16 straight from registers:
// the thread's rows rbase + 16 warp + g + 8 e, each scaled by sc[e], at out + row_off(r), columns
// 64 a + 8 n + 2 t (+1) as bf16 pairs (the four threads of a row fill 16 contiguous bytes per
// n; L2 merges the halves of each sector); rows >= nrows are skipped.
template <int D, typename RowOffset>
__device__ __forceinline__ void store_acc_rows(const float (&acc)[D / 64][32], const float (&sc)[2], int rbase,
                                               int nrows, bf16* out, RowOffset row_off) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    if (r < nrows) {
      bf16* p = out + row_off(r);
#pragma unroll
      for (int a = 0; a < D / 64; ++a)
#pragma unroll
        for (int n = 0; n < 8; ++n)
          *reinterpret_cast<uint32_t*>(p + 64 * a + 8 * n + 2 * t) =
              bf2_pack(acc[a][4 * n + 2 * e] * sc[e], acc[a][4 * n + 2 * e + 1] * sc[e]);
    }
  }
}

}  // namespace dot_wgmma
