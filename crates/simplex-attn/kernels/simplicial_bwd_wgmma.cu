// 2-simplicial attention backward on Hopper tensor cores (wgmma), bf16 in, f32 accumulation.
//
// Gradients (spec section 3; the same two-kernel split as simplicial_bwd_mma.cu, whose header
// has the formulas): P and dS are recomputed from the saved lse and the delta pre-pass; window 1
// (k1, v1) is the SMALL window, walked one position j at a time, window 2 (k2, v2) the large one
// in 64-key tiles (the launch exchanges the sets when needed).
//
// The kernel is built like the forward (simplicial_fwd_wgmma.cu): a producer warpgroup WG0
// and NC = D/64 consumer warpgroups, one per 64 columns (head-dim entries) of the gradients,
// with P and dS handed over through double-buffered 128B-swizzled shared memory (named
// barriers FULL / EMPTY per buffer, as in the forward). Every product is arranged so that its
// shared-memory operand is K-major (the only layout the descriptor helpers in wgmma.cuh
// describe) and its register operand carries the per-j scaling:
//
// q kernel, simplicial_bwd_q_wgmma_d{D}: owns 64 rows r = (query, head) (grid x = row blocks,
//   y = K/V head, z = batch), like the forward.
//   WG0:  S  = (Q ∘ k1_j) @ K2^T,  dP = (dout ∘ v1_j) @ V2^T       A: registers (ldmatrix of
//         the staged Q, dout rows, times k1_j / v1_j), B: the K2 / V2 tile (swizzled), M = rows
//         P = exp2(S s log2e - lse log2e) (masked), dS = P (dP - delta)  -> smem [row][key]
//   WG1+c: X^T = K2^T @ dS^T,  Y^T = V2^T @ P^T                      A: ldmatrix.trans of the
//         tile (columns 64c..64c+63), B: dS, P from smem; M = head-dim entries, N = rows
//         dq^T += k1_j ∘ X^T (registers); dk1[j] += s Σ_rows q ∘ X, dv1[j] += Σ_rows dout ∘ Y:
//         sums over the thread's 16 rows and its quad (2 shuffles), owned smem accumulators per
//         window-1 chunk, added to global f32 with atomics at the end of each chunk.
// (The k side, dk2 and dv2, runs in simplicial_bwd_producer.cu, simplicial_bwd_mma.cu or the
// offset walk: a wgmma k kernel here lost to those at every shape measured and was retired,
// docs/history/kernels.md.)
// Determinism: dq is summed in a fixed order; dk1, dv1 with f32 atomics across row blocks, as in the mma.sync backward (`Kernels::deterministic` selects the CUDA-core one).
//
// Shared memory (D = 128): q kernel: K2, V2 tiles 2 x 2 x 16 KB, P/dS 2 x 2 x 8 KB, q and dout
// rows 2 x 17 KB, window-1 rows 2 x JC x 256 B, dk1/dv1 accumulators 2 x JC x 512 B (JC = 48):
// 203 KB. One CTA of 128 (1 + D/64) threads per SM.
// Registers: WG0 holds two A operands (2 x D/4) and two accumulators (2 x 32); a consumer two
// accumulators (64) plus dq^T (32) and the q, dout values of its 16 rows (32).
// When they run, speed: docs/kernels.md.
#include "common.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"

using namespace simplex;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int BLK = 64;       // owned rows = WG0's M
constexpr int TN = 64;        // keys per tile = WG0's N
constexpr int BAR_FULL = 1;   // + buffer: P, dS written (WG0 arrives, consumers wait)
constexpr int BAR_EMPTY = 3;  // + buffer: P, dS consumed (consumers arrive, WG0 waits)
constexpr int PA = BLK * TN * 2;  // one hand-over atom: 64 rows of 128 bytes

__device__ __forceinline__ uint32_t ld_u32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Copies rows [pos0, pos0 + n) of a [.., D] tensor (row p at src + off(p)) into `rows`-row smem
// as D/64 swizzled atoms (swizzled = true) or rows of `stride` elements; rows at or past `end`
// (and past n) are zero-filled. Threads [tid0, tid0 + nthreads) of the block take part.
template <int D, bool SWIZZLED, typename Off>
__device__ __forceinline__ void stage(uint32_t dst, int rows, int stride, const bf16* src, Off off, int pos0,
                                      int n, int end, int tid, int nthreads) {
  for (int c = tid; c < rows * (D / 8); c += nthreads) {
    const int rr = c / (D / 8), c16 = c % (D / 8), pos = pos0 + rr;
    const bool ok = rr < n && pos < end;
    const uint32_t at = SWIZZLED ? sw128_tile(rows, rr, c16 * 8) : (rr * stride + c16 * 8) * 2;
    cp_async16(dst + at, src + (ok ? off(pos) + c16 * 8 : 0), ok);
  }
}

// A fragment (mma.sync layout) of rows [r0, r0 + 16) x columns [c0, c0 + 16) of a row-major
// smem tile with `stride` elements per row.
__device__ __forceinline__ void lds_a(uint32_t (&a)[4], uint32_t base, int stride, int r0, int c0, int lane) {
  const int row = r0 + (lane % 8) + 8 * ((lane / 8) % 2), col = c0 + 8 * (lane / 16);
  ldsm_x4(a, base + (row * stride + col) * 2);
}
// A fragment of the TRANSPOSED block: M = columns [c0, c0 + 16), K = rows [r0, r0 + 16) of a
// swizzled [rows x D] tile.
__device__ __forceinline__ void lds_at(uint32_t (&a)[4], uint32_t base, int rows, int r0, int c0, int lane) {
  const int mat = lane / 8;
  ldsm_x4_t(a, base + sw128_tile(rows, r0 + (mat / 2) * 8 + lane % 8, c0 + (mat % 2) * 8));
}
// a = f ∘ (lo, hi) along K: columns 2t, 2t+1 scaled by lo, 2t+8, 2t+9 by hi (WG0's products).
__device__ __forceinline__ void scale_k(uint32_t (&a)[4], const uint32_t (&f)[4], uint32_t lo, uint32_t hi) {
  a[0] = bf2_mul(f[0], lo);
  a[1] = bf2_mul(f[1], lo);
  a[2] = bf2_mul(f[2], hi);
  a[3] = bf2_mul(f[3], hi);
}

// Register rebalancing between the warpgroups (D = 128: three warpgroups launched at 168
// registers each = 504 per thread slot; producer 152 + two consumers 176 = 504). No-op for D = 64 (two
// warpgroups, 255 each).
template <int D>
__device__ __forceinline__ void producer_registers() {
  if constexpr (D > 64) asm volatile("setmaxnreg.dec.sync.aligned.u32 152;\n" ::: "memory");
}
template <int D>
__device__ __forceinline__ void consumer_registers() {
  if constexpr (D > 64) asm volatile("setmaxnreg.inc.sync.aligned.u32 176;\n" ::: "memory");
}

// WG0's two products for one position j: sa = (F1 ∘ u) @ B1^T and pa = (F2 ∘ w) @ B2^T, with
// F1, F2 the warpgroup's 64 rows of two padded smem tiles (`stride` elements per row), u, w the
// window-1 rows k1_j, v1_j (scaling along K), B1, B2 swizzled [TN x D] tiles. Issues both and
// returns once sa is complete (pa may still run: wg_wait0 before reading it), so the caller
// computes P while the tensor cores finish dP.
template <int KS>
__device__ __forceinline__ void logits_pair(float (&sa)[32], float (&pa)[32], uint32_t f1, uint32_t f2, int stride,
                                            const bf16* u, const bf16* w, uint32_t b1, uint32_t b2, int warp,
                                            int lane) {
  const int t = lane % 4;
  // builds A = F ∘ x (ldmatrix, bf16x2 products) and issues acc = A @ B^T; A stays untouched
  // until the product completes (each call has its own array)
  auto issue = [&](float (&acc)[32], uint32_t (&a)[KS][4], uint32_t f_base, const bf16* x, uint32_t b) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t f[4];
      lds_a(f, f_base, stride, 16 * warp, 16 * ks, lane);
      scale_k(a[ks], f, ld_u32(x + 16 * ks + 2 * t), ld_u32(x + 16 * ks + 2 * t + 8));
    }
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      wgmma_m64n64k16_rs(acc, a[ks], desc_sw128(b + (ks / 4) * (TN * 128) + (ks % 4) * 32), ks > 0);
    wg_commit();
  };
  uint32_t a1[KS][4], a2[KS][4];
  issue(sa, a1, f1, u, b1);
  issue(pa, a2, f2, w, b2);
  wg_wait1();
  reg_fence(sa);
}

// Writes a 64 x 64 f32 accumulator (this warp's rows 16w + g (+8), columns 8n + 2t (+1)) as bf16
// into a swizzled hand-over atom, row-major.
__device__ __forceinline__ void store_atom(uint8_t* atom, const float (&acc)[32], int warp, int g, int t) {
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int n = 0; n < 8; ++n)
      *reinterpret_cast<uint32_t*>(atom + sw128(16 * warp + g + 8 * e, n) + 4 * t) =
          bf2_pack(acc[4 * n + 2 * e], acc[4 * n + 2 * e + 1]);
}

// ------------------------------------------------------------------------------------------
// q kernel

template <int D>
struct QLayout {
  static constexpr int NC = D / 64;
  static constexpr int THREADS = 128 * (1 + NC);
  static constexpr int JC = D <= 64 ? 96 : 48;  // window-1 rows per chunk
  static constexpr int ROWP = D + 8;             // padded q / dout row, elements
  static constexpr int KT = TN * D * 2;          // one swizzled key tile
  static constexpr int K2_OFF = 0;               // [2 buffers]
  static constexpr int V2_OFF = K2_OFF + 2 * KT;
  static constexpr int P_OFF = V2_OFF + 2 * KT;  // [2 buffers][P, dS]
  static constexpr int Q_OFF = P_OFF + 4 * PA;
  static constexpr int O_OFF = Q_OFF + BLK * ROWP * 2;
  static constexpr int K1_OFF = O_OFF + BLK * ROWP * 2;
  static constexpr int V1_OFF = K1_OFF + JC * D * 2;
  static constexpr int DK_OFF = V1_OFF + JC * D * 2;  // f32 [JC][D]
  static constexpr int DV_OFF = DK_OFF + JC * D * 4;
  static constexpr int BYTES = DV_OFF + JC * D * 4 + 1024;  // + alignment slack
};
static_assert(QLayout<128>::BYTES <= 227 * 1024 && QLayout<64>::BYTES <= 227 * 1024, "q kernel smem");

template <int D>
__device__ __forceinline__ void bwd_q(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                      const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                      const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                      const float* __restrict__ lse, const float* __restrict__ dlt,
                                      bf16* __restrict__ dq, float* __restrict__ dk1, float* __restrict__ dv1,
                                      const Shape s) {
  using L = QLayout<D>;
  constexpr int KS = D / 16, THREADS = L::THREADS;
  uint8_t* sm = aligned_dynamic_smem();
  const bf16* k1s = reinterpret_cast<const bf16*>(sm + L::K1_OFF);
  const bf16* v1s = reinterpret_cast<const bf16*>(sm + L::V1_OFF);
  float* dks = reinterpret_cast<float*>(sm + L::DK_OFF);
  float* dvs = reinterpret_cast<float*>(sm + L::DV_OFF);

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const auto [row0, nrows, JU, KU] = cta_rows(s, G, BLK);
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto q_row = [&](int r) { return hr.row(r); };
  auto q_off = [&](int r) -> long long { return q_row(r) * D; };
  const float sl2 = s.scale * LOG2E;

  auto load_tile = [&](int k0, int buf) {
    stage<D, true>(smem_u32(sm + L::K2_OFF + buf * L::KT), TN, 0, k2, kv_off, k0, TN, KU.hi, tid, THREADS);
    stage<D, true>(smem_u32(sm + L::V2_OFF + buf * L::KT), TN, 0, v2, kv_off, k0, TN, KU.hi, tid, THREADS);
  };
  stage<D, false>(smem_u32(sm + L::Q_OFF), BLK, L::ROWP, q, q_off, row0, BLK, nrows, tid, THREADS);
  stage<D, false>(smem_u32(sm + L::O_OFF), BLK, L::ROWP, dout, q_off, row0, BLK, nrows, tid, THREADS);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();  // q, dout rows staged
  const int nkt = (KU.hi - KU.lo + TN - 1) / TN;

  // All warpgroups walk the same (chunk, tile, j) sequence with the same block-wide barriers,
  // each with its own copy of the walk: on_step(buf, k0, j0, jj, pb, use) per position j.
  // Returns the number of hand-overs.
  auto walk = [&](auto&& on_step) -> int {
    int uses = 0;
    for (int j0 = JU.lo; j0 < JU.hi; j0 += L::JC) {
      const int jn = min(L::JC, JU.hi - j0);
      __syncthreads();  // the previous chunk is flushed
      stage<D, false>(smem_u32(sm + L::K1_OFF), L::JC, D, k1, kv_off, j0, jn, JU.hi, tid, THREADS);
      stage<D, false>(smem_u32(sm + L::V1_OFF), L::JC, D, v1, kv_off, j0, jn, JU.hi, tid, THREADS);
      for (int x = tid; x < L::JC * D; x += THREADS) dks[x] = dvs[x] = 0.0f;
      load_tile(KU.lo, 0);
      cp_async_commit();
      for (int kt = 0; kt < nkt; ++kt) {
        const int buf = kt & 1, k0 = KU.lo + kt * TN;
        cp_async_wait_all();
        fence_async_smem();
        __syncthreads();
        if (kt + 1 < nkt) {
          load_tile(k0 + TN, buf ^ 1);
          cp_async_commit();
        }
        for (int jj = 0; jj < jn; ++jj, ++uses) on_step(buf, k0, j0, jj, uses & 1, uses);
      }
      __syncthreads();  // every j of the chunk is summed
      for (int x = tid; x < jn * D; x += THREADS) {
        const long long at = kv_off(j0 + x / D) + x % D;
        atomicAdd(dk1 + at, dks[x] * s.scale);
        atomicAdd(dv1 + at, dvs[x]);
      }
    }
    return uses;
  };

  if (wg == 0) {
    producer_registers<D>();
    float lse2[2], dl[2];
    Range jr[2], kr[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = row0 + warp * 16 + g + 8 * e;
      const bool ok = r < nrows;
      const int i = ok ? r / G : 0;
      jr[e] = ok ? window(i, s.w1, N, s.causal) : Range{0, 0};
      kr[e] = window(i, s.w2, N, s.causal);
      lse2[e] = ok ? lse[q_row(r)] * LOG2E : 0.0f;
      dl[e] = ok ? dlt[q_row(r)] : 0.0f;
    }
    const uint32_t qa = smem_u32(sm + L::Q_OFF), oa = smem_u32(sm + L::O_OFF);
    const int uses = walk([&](int buf, int k0, int j0, int jj, int pb, int use) {
      const int j = j0 + jj;
      const bf16* k1j = k1s + jj * D;
      const bf16* v1j = v1s + jj * D;
      const uint32_t kb = smem_u32(sm + L::K2_OFF + buf * L::KT), vb = smem_u32(sm + L::V2_OFF + buf * L::KT);
      float sa[32], pa[32];
      // S = (Q ∘ k1_j) @ K2^T done, dP = (dout ∘ v1_j) @ V2^T may still run
      logits_pair<KS>(sa, pa, qa, oa, L::ROWP, k1j, v1j, kb, vb, warp, lane);
      // P (zero where the pair is outside the row's windows), then dS = P (dP - delta). Where
      // every (row, key) of the warp is inside the windows for this j, no masking (a
      // warp-uniform branch).
      bool inside = true;
#pragma unroll
      for (int e = 0; e < 2; ++e)
        inside = inside && j >= jr[e].lo && j < jr[e].hi && k0 >= kr[e].lo && k0 + TN <= kr[e].hi;
      if (__all_sync(0xffffffffu, inside)) {
#pragma unroll
        for (int x = 0; x < 32; ++x) sa[x] = fast_exp2(sa[x] * sl2 - lse2[(x % 4) / 2]);
      } else {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool jok = j >= jr[e].lo && j < jr[e].hi;
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int key = k0 + 8 * n + 2 * t + c, x = 4 * n + 2 * e + c;
              const bool ok = jok && key >= kr[e].lo && key < kr[e].hi;
              sa[x] = masked_exp2(ok, sa[x] * sl2 - lse2[e]);
            }
        }
      }
      wg_wait0();
      reg_fence(pa);
#pragma unroll
      for (int x = 0; x < 32; ++x) pa[x] = sa[x] * (pa[x] - dl[(x % 4) / 2]);
      if (use >= 2) bar_sync(BAR_EMPTY + pb, THREADS);  // the consumers are done with this buffer
      uint8_t* ps = sm + L::P_OFF + pb * 2 * PA;
      store_atom(ps, sa, warp, g, t);
      store_atom(ps + PA, pa, warp, g, t);
      fence_async_smem();
      bar_arrive(BAR_FULL + pb, THREADS);
    });
    for (int pb = 0; pb < 2; ++pb)  // balance the EMPTY arrivals of the last uses
      if (uses > pb) bar_sync(BAR_EMPTY + pb, THREADS);
    __syncthreads();  // the consumers' dq^T is staged
  } else {
    consumer_registers<D>();
    const int c0 = 64 * (wg - 1) + 16 * warp;  // this warp's head-dim entries c0 + g (+8)
    // q and dout at (rows 8n + 2t (+1), column c0 + g + 8e), as bf16 pairs; dq^T accumulators
    uint32_t qv[2][8], ov[2][8];
    float dqa[32];
    {
      const bf16* qs = reinterpret_cast<const bf16*>(sm + L::Q_OFF);
      const bf16* os = reinterpret_cast<const bf16*>(sm + L::O_OFF);
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int r = 8 * n + 2 * t, c = c0 + g + 8 * e;
          qv[e][n] = bf2_pack(__bfloat162float(qs[r * L::ROWP + c]), __bfloat162float(qs[(r + 1) * L::ROWP + c]));
          ov[e][n] = bf2_pack(__bfloat162float(os[r * L::ROWP + c]), __bfloat162float(os[(r + 1) * L::ROWP + c]));
        }
    }
#pragma unroll
    for (int x = 0; x < 32; ++x) dqa[x] = 0.0f;
    walk([&](int buf, int, int, int jj, int pb, int) {
      // X^T = K2^T @ dS^T first; Y^T = V2^T @ P^T runs while dq and dk1 take X^T
      const uint32_t kb = smem_u32(sm + L::K2_OFF + buf * L::KT), vb = smem_u32(sm + L::V2_OFF + buf * L::KT);
      uint32_t kf[4][4], vf[4][4];
#pragma unroll
      for (int st = 0; st < 4; ++st) lds_at(kf[st], kb, TN, 16 * st, c0, lane);
      bar_sync(BAR_FULL + pb, THREADS);
      const uint32_t ps = smem_u32(sm + L::P_OFF + pb * 2 * PA);
      float xa[32], ya[32];
      wg_fence();
#pragma unroll
      for (int st = 0; st < 4; ++st) wgmma_m64n64k16_rs(xa, kf[st], desc_sw128(ps + PA + st * 32), st > 0);
      wg_commit();
#pragma unroll
      for (int st = 0; st < 4; ++st) lds_at(vf[st], vb, TN, 16 * st, c0, lane);
      wg_wait0();
      reg_fence(xa);
      wg_fence();
#pragma unroll
      for (int st = 0; st < 4; ++st) wgmma_m64n64k16_rs(ya, vf[st], desc_sw128(ps + st * 32), st > 0);
      wg_commit();
      const bf16* k1j = k1s + jj * D;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = c0 + g + 8 * e;
        const float kj = __bfloat162float(k1j[c]);
        float sk = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int x = 4 * n + 2 * e;
          dqa[x] += kj * xa[x];
          dqa[x + 1] += kj * xa[x + 1];
          const float2 qq = bf2_float2(qv[e][n]);
          sk += qq.x * xa[x] + qq.y * xa[x + 1];
        }
        sk += __shfl_xor_sync(0xffffffffu, sk, 1);
        sk += __shfl_xor_sync(0xffffffffu, sk, 2);
        if (t == 0) dks[jj * D + c] += sk;
      }
      wg_wait0();
      reg_fence(ya);
      bar_arrive(BAR_EMPTY + pb, THREADS);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = c0 + g + 8 * e;
        float sv = 0.0f;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int x = 4 * n + 2 * e;
          const float2 oo = bf2_float2(ov[e][n]);
          sv += oo.x * ya[x] + oo.y * ya[x + 1];
        }
        sv += __shfl_xor_sync(0xffffffffu, sv, 1);
        sv += __shfl_xor_sync(0xffffffffu, sv, 2);
        if (t == 1) dvs[jj * D + c] += sv;
      }
    });
    // dq[r, c] = s dq^T[c, r], staged through the K2 tiles' smem for coalesced stores
    bf16* stage_q = reinterpret_cast<bf16*>(sm + L::K2_OFF);  // [BLK][D]
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int cc = 0; cc < 2; ++cc)
          stage_q[(8 * n + 2 * t + cc) * D + c0 + g + 8 * e] = __float2bfloat16_rn(dqa[4 * n + 2 * e + cc] * s.scale);
    __syncthreads();
  }
  // (both branches end with the same block barrier: dq^T is staged)
  for (int c = tid; c < BLK * D / 8; c += THREADS) {
    const int rr = c / (D / 8), c16 = c % (D / 8), r = row0 + rr;
    if (r < nrows)
      *reinterpret_cast<uint4*>(dq + q_off(r) + c16 * 8) =
          *reinterpret_cast<const uint4*>(reinterpret_cast<const bf16*>(sm + L::K2_OFF) + rr * D + c16 * 8);
  }
}

}  // namespace

#define SIMPLICIAL_BWD_WGMMA(D)                                                                              \
  extern "C" __global__ void __launch_bounds__(QLayout<D>::THREADS, 1) simplicial_bwd_q_wgmma_d##D(         \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2, const bf16* dout,       \
      const float* lse, const float* dlt, bf16* dq, float* dk1, float* dv1, const Shape s) {                 \
    bwd_q<D>(q, k1, k2, v1, v2, dout, lse, dlt, dq, dk1, dv1, s);                                            \
  }

SIMPLICIAL_BWD_WGMMA(64)
SIMPLICIAL_BWD_WGMMA(128)
