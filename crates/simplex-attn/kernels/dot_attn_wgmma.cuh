// Shared pieces of the Hopper (wgmma) dot-product attention kernels (dot_attn_fwd.cu,
// dot_attn_fwd_wgmma.cu, dot_attn_bwd_wgmma.cu): the persistent kernels' CTA layout (a producer
// warpgroup and two consumer warpgroups), their two stage rings and producers; the row space
// and the key tiles' loads; the forwards' softmax step and epilogue.
//
// Row space: the kernels of one (batch b, K/V head kv) see the rows r = i * G + hh, query i,
// query head kv * G + hh (G = Hq / Hkv), so the G heads that share a K/V head share every K/V
// tile (as in simplicial_fwd_producer.cu). Query i sits at position i + Nk - Nq (dot_attn.cuh).
//
// Rings: the producer (warpgroup 0) fills NS stages; step s uses stage s % NS (the steps of all
// of a persistent CTA's work items form one stream, so loads run ahead across items). Each
// stage has two mbarriers (StageRing): FULL completes when the stage's tiles have landed, EMPTY
// when each of the eight consumer warps has released it. One producer thread loads whole tiles
// with the TMA (tma.cuh): K and V (forward, dq), or the rows of q and dout and their lse, delta
// pairs (dk/dv, the rows of a step being G heads x 64 / G queries, one box each). Where G does
// not divide 64 the dk/dv producer's 128 threads copy the rows with cp.async instead and arrive
// on FULL once their copies have landed. Either way the two consumers drift apart freely.
// Matrix pieces (swizzled tiles, descriptors, wgmma wrappers, fragment loads, online softmax)
// come from wgmma.cuh and offset_walk.cuh, validated by the simplicial kernels.
#pragma once

#include "dot_attn.cuh"
#include "offset_walk.cuh"
#include "tma.cuh"

namespace dot_wgmma {

using namespace simplex;
typedef __nv_bfloat16 bf16;
using dot::DotShape;
using dot::Span;

constexpr int ROWS = 64;       // rows (or keys) per consumer warpgroup = wgmma M
constexpr int CTA_ROWS = 128;  // two consumers
constexpr int THREADS = 384;   // producer + two consumers
constexpr int PTHREADS = 128;  // producer threads
constexpr int NS = 3;          // ring stages
// setmaxnreg: the launch gives every thread 168 registers (65536 / 384 rounded down to 8); the
// consumers can only take what the producer gives back (an excess blocks setmaxnreg.inc).
// 40 / 232 chosen by compiling 24/240 .. 72/216 and reading the spill report.
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232;
static_assert(PRODUCER_REGS + 2 * CONSUMER_REGS <= 3 * 168, "the launch's registers");
// Named barriers: ids 2, 3 (BAR_WG + warpgroup) are one consumer warpgroup's alone.
constexpr int BAR_TURN = 4;  // + consumer (forward; the fused backward's BAR_DS is id 4)
static_assert(offset_walk::BAR_WG + 2 <= BAR_TURN, "barrier ids overlap");
// Rows (lse, delta pairs) of a dk/dv step, and the row-space padding of the pairs' buffer.
constexpr int TQ = 64;

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
// the group). The grid is persistent (one CTA per SM, src/kernels/dispatch): CTA x takes
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

// cp.async (the 128 threads of a warpgroup: the D = 64 forward's, dot_attn_fwd.cu) of keys
// k0 .. k0 + TK - 1 of k and v (zero from `hi` on) into the tiles at shared addresses kt, vt:
// D/64 128B-swizzled atoms of TK rows x 128 B (K-major for S = Q K^T, MN-major for P V). Key j
// of the (batch, K/V head) starts at element base + j * stride.
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

// Blocks of TQ rows covering a row space of nrows rows (the backward's padding of its row
// buffers: the pairs, dq's f32 sums).
__device__ __forceinline__ int row_blocks(int nrows) { return (nrows + TQ - 1) / TQ; }

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
  // blocks of TQ rows covering the row space
  __device__ __forceinline__ int row_blocks() const { return dot_wgmma::row_blocks(nq * G); }
  // first element of row r's (lse log2 e, delta) pair in the backward's row-space buffer
  // [B, Hkv, rows padded to TQ, 2] (f32; src/kernels/tma.rs: PairsMap)
  __device__ __forceinline__ long long pair(int r) const {
    const int padded = row_blocks() * TQ;
    return ((long long)(b * hkv + kv) * padded + r) * 2;
  }
};

// The keys of the rows [r0, r1) (non-empty, inside the row space): keys_of_block of their queries.
__device__ __forceinline__ Span keys_of_rows(const DotShape& s, int G, int r0, int r1) {
  return dot::keys_of_block(s, r0 / G, (r1 - 1) / G + 1);
}

// A work item of the forward and dq kernels: the block of CTA_ROWS rows from row0 of the row
// space of (batch b, K/V head kv), and the keys KU they see, in nkt steps of TK keys.
struct RowItem {
  int row0, b, kv;
  Span KU;
  int nkt;
};

// The row blocks of the forward and dq kernels (within a group the last block, under a causal
// mask the one seeing most keys, first), G query heads per K/V head, nrows rows per group.
struct RowBlocks {
  int G, nrows;
  Work work;
  __device__ __forceinline__ explicit RowBlocks(const DotShape& s)
      : G(s.heads_q / s.heads_kv),
        nrows(s.seq_q * G),  // (members initialize in declaration order)
        work((nrows + CTA_ROWS - 1) / CTA_ROWS, s.heads_kv, s.batch, true) {}
  // Row block n of this CTA's walk into `it` (its keys in steps of TK), n advanced; false past
  // the last. Every warpgroup walks the same blocks in the same order, so the ring's stages
  // line up.
  template <int TK>
  __device__ __forceinline__ bool next(const DotShape& s, int& n, RowItem& it) const {
    const int w = work.nth(n++);
    if (w < 0) return false;
    it = item<TK>(s, w);
    return true;
  }
  // item w of the list, its keys in steps of TK
  template <int TK>
  __device__ __forceinline__ RowItem item(const DotShape& s, int w) const {
    RowItem it;
    int blk;
    work.decode(w, blk, it.kv, it.b);
    it.row0 = blk * CTA_ROWS;
    it.KU = keys_of_rows(s, G, it.row0, min(it.row0 + CTA_ROWS, nrows));
    it.nkt = (it.KU.hi - it.KU.lo + TK - 1) / TK;
    return it;
  }
};

// Shared memory of the forward and dq kernels: the ring of NS stages, each a K tile and a V
// tile of TK keys x D columns (128B-swizzled), then the ring's mbarriers (StageRing).
template <int TK, int D>
struct RingSmem {
  static constexpr int KT = TK * D * 2;                   // one K (or V) tile
  static constexpr int STAGE = 2 * KT;                    // K, then V
  static constexpr int BARS = NS * STAGE;                 // StageRing's 2 NS mbarriers
  static constexpr int BYTES = BARS + 2 * NS * 8 + 1024;  // + alignment slack (src/kernels/table.rs)
};

// The stage ring of the persistent kernels: step gs (a CTA's steps over all its work items form
// one stream) uses stage gs % NS. FULL[stage] completes when the producer's arrivals are in and
// the bytes it announced have landed; EMPTY[stage] when each of the eight consumer warps has
// released it. Waits name the parity of the stage's use, gs / NS.
struct StageRing {
  static constexpr int CONSUMER_WARPS = 8;
  uint32_t bars;  // FULL[0 .. NS), then EMPTY[0 .. NS), 8 bytes each
  __device__ __forceinline__ uint32_t full(int st) const { return bars + 8 * st; }
  __device__ __forceinline__ uint32_t empty(int st) const { return bars + 8 * (NS + st); }
  // One thread, before the CTA barrier that splits the roles; `producers`: the arrivals that
  // fill a stage (1 for a TMA producer, which also announces the bytes).
  __device__ __forceinline__ void init(int producers = 1) const {
    for (int st = 0; st < NS; ++st) {
      mbar_init(full(st), producers);
      mbar_init(empty(st), CONSUMER_WARPS);
    }
    fence_mbar_init();
  }
  // A consumer: waits for step gs's tiles.
  __device__ __forceinline__ void wait_full(int gs) const { mbar_wait(full(gs % NS), (gs / NS) & 1); }
  // A consumer warp (all lanes, past the wgmma wait of the last product that read the stage):
  // done with stage st.
  __device__ __forceinline__ void release(int st) const {
    if (threadIdx.x % 32 == 0) mbar_arrive(empty(st));
  }
  // The producer: waits until stage gs % NS is free for step gs (its previous use released;
  // the first NS steps pass at once: the parity before the first phase counts as completed).
  __device__ __forceinline__ void wait_empty(int gs) const {
    mbar_wait(empty(gs % NS), ((gs / NS) & 1) ^ 1);
  }
};

// Loads a kernel adds to the K / V stream, once per work item (the dq kernel: none).
struct NoItemLoads {
  // one thread, before the ring's barriers are set up (whose fence covers these)
  __device__ __forceinline__ void init() const {}
  // the producer thread, for the j-th item of its CTA, right after its first step's K and V
  __device__ __forceinline__ void load(const RowItem&, int) const {}
};

// The producer of the forward and dq kernels (one thread): the K and V tiles of each of this
// CTA's row blocks, TK keys a step, into the ring (stage st: K at base + st * STAGE, V KT bytes
// later), each D/64-column atom one TMA box of the [D, Hkv, Nk, B] maps tk, tv (keys past Nk
// land as zeros; keys past the block's last key are real keys, which every row masks); and
// each item's `extra` loads after its first step (the forward's Q tile).
template <int TK, int D, typename Extra>
__device__ __forceinline__ void produce_kv(const DotShape& s, const RowBlocks& rb, uint32_t base, const StageRing& ring,
                                           const TensorMap& tk, const TensorMap& tv, const Extra& extra) {
  using L = RingSmem<TK, D>;
  tma_prefetch_map(tk);
  tma_prefetch_map(tv);
  int gs = 0, n = 0;
  for (RowItem it; rb.next<TK>(s, n, it);) {
    if (it.nkt == 0) extra.load(it, n - 1);
    for (int step = 0; step < it.nkt; ++step, ++gs) {
      const int st = gs % NS, k0 = it.KU.lo + step * TK;
      const uint32_t kt = base + st * L::STAGE;
      ring.wait_empty(gs);
      mbar_arrive_expect_tx(ring.full(st), L::STAGE);
#pragma unroll
      for (int a = 0; a < D / 64; ++a) {
        tma_load_4d(kt + a * TK * 128, tk, 64 * a, it.kv, k0, it.b, ring.full(st));
        tma_load_4d(kt + L::KT + a * TK * 128, tv, 64 * a, it.kv, k0, it.b, ring.full(st));
      }
      if (step == 0) extra.load(it, n - 1);
    }
  }
}

// The start of the forward and dq kernels: thread 0 sets up the ring's barriers (and the
// extra loads'); warpgroup 0 gives back its registers, its thread 0 runs the producer, and it
// is done (false); the two consumer warpgroups take the registers it gave back (true).
template <int TK, int D, typename Extra = NoItemLoads>
__device__ __forceinline__ bool consumer_warpgroup(const DotShape& s, const RowBlocks& rb, uint32_t base,
                                                   const StageRing& ring, const TensorMap& tk, const TensorMap& tv,
                                                   const Extra& extra = {}) {
  if (threadIdx.x == 0) {
    extra.init();
    ring.init();
  }
  __syncthreads();
  if (threadIdx.x / 128 == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS) : "memory");
    if (threadIdx.x == 0) produce_kv<TK, D>(s, rb, base, ring, tk, tv, extra);
    return false;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS) : "memory");
  return true;
}

// The rows that see at least one of the keys [j0, j1) (non-empty, inside 0..Nk); empty (lo == hi)
// when none does.
__device__ __forceinline__ Span rows_of_keys(const DotShape& s, int G, int j0, int j1) {
  const Span qs = dot::queries_of_block(s, j0, j1);
  return qs.hi > qs.lo ? Span{qs.lo * G, qs.hi * G} : Span{0, 0};
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

// The forwards' softmax step over one tile of 64 H keys from k0 (H m64n64 logit blocks): masks
// only where a row of the warp misses a key of the tile (kr: the keys of the thread's rows g and
// g + 8), updates the running max m_row and sum l_row, and turns the logits into probabilities
// in place; alpha = 2^(old max - new max) is what the output rows are to be rescaled by
// (offset_walk::rescale_rows, once no values product is in flight).
template <int H>
__device__ __forceinline__ void softmax_tile(float (&sacc)[H][32], int k0, const Span (&kr)[2], float sl2, int t,
                                             float (&m_row)[2], float (&l_row)[2], float (&alpha)[2]) {
  const bool inside = k0 >= kr[0].lo && k0 + 64 * H <= kr[0].hi && k0 >= kr[1].lo && k0 + 64 * H <= kr[1].hi;
  const bool fold = __all_sync(0xffffffffu, inside) && sl2 > 0.0f;
  offset_walk::online_softmax<H>(sacc, fold, sl2, t, [&](int u, int e, int col) {
    const int key = k0 + 64 * u + col;
    return key >= kr[e].lo && key < kr[e].hi;
  }, m_row, l_row, alpha);
}

// The forwards' epilogue for a warpgroup's 64 rows from rbase: lse = (max + log2 sum) ln 2 and
// O / sum, straight from registers (rows >= nrows skipped).
template <int D, typename RowOffset>
__device__ __forceinline__ void store_output_rows(const float (&acc)[D / 64][32], const float (&m_row)[2],
                                                  const float (&l_row)[2], int rbase, int nrows, const RowSpace& rs,
                                                  bf16* o, float* lse, RowOffset q_off) {
  const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, g = lane / 4, t = lane % 4;
  float inv[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = rbase + warp * 16 + g + 8 * e;
    if (t == 0 && r < nrows) lse[rs.stat(r)] = (m_row[e] + log2f(l_row[e])) * LN2;
    inv[e] = 1.0f / l_row[e];
  }
  store_acc_rows<D>(acc, inv, rbase, nrows, o, q_off);
}

}  // namespace dot_wgmma
