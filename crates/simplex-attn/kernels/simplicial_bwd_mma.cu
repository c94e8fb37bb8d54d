// 2-simplicial attention backward on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulation).
//
// Gradients (spec section 3, scale s applied in f32; P from the saved lse, delta from the
// pre-pass in simplicial_bwd_dq.cu):
//   P[r,j,k]  = exp2(s log2e S~ - lse[r] log2e),  S~[r,j,k] = sum_c q[r,c] k1[j,c] k2[k,c]
//   dP[r,j,k] = sum_c dout[r,c] v1[j,c] v2[k,c],  dS = P (dP - delta[r])
//   dq[r]   = s sum_j k1[j] ∘ X_j[r],     X_j = dS_j @ K2            (rows r, columns c)
//   dk1[j]  = s sum_r q[r] ∘ X_j[r],      dv1[j] = sum_r dout[r] ∘ Y_j[r],   Y_j = P_j @ V2
//   dk2[k]  = s sum_j (dS_j^T @ (Q ∘ k1[j]))[k],   dv2[k] = sum_j (P_j^T @ (dout ∘ v1[j]))[k]
// in the kernels' orientation: window 1 (k1, v1) is the SMALL window, walked one j at a time;
// window 2 (k2, v2) the large one, in tiles (the launch exchanges the sets when needed, as for
// the forward). Reference: src/reference.rs; tests: tests/cuda_wgmma.rs, tests/cuda_vs_oracle.rs;
// when they run, speed: docs/kernels.md.
//
// Two kernels, each recomputing P and dS (2 of its 4 GEMMs):
//
// simplicial_bwd_q_mma_d{D}: owns 64 rows r = (query, head) like the forward (grid x = row
//   blocks, y = K/V head, z = batch); 4 warps x 16 rows. For each chunk of JC window-1 rows (k1,
//   v1 in smem), each 64-key tile of window 2 (k2, v2 in smem, rows padded by 16 B so ldmatrix
//   is conflict-free), each j: S and dP (A = q ∘ k1_j, dout ∘ v1_j from registers; B = K2, V2
//   by ldmatrix), P and dS in registers, X = dS @ K2 and Y = P @ V2 (A = P, dS re-packed from
//   the accumulators; B by ldmatrix.trans) in 32-column slices; dq += k1_j ∘ X in registers;
//   the column sums of q ∘ X and dout ∘ Y over the warp's 16 rows (a halving butterfly of
//   shuffles) go to per-j f32 accumulators in smem, added to global f32 dk1, dv1 with atomics
//   once per chunk. Registers: q, dout fragments 2 x 2D/16 x 4, dq 4D/8, S and dP 2 x 32.
//   Smem (D = 128, JC = 48): 2 tiles x 17 KB + k1, v1 rows 2 x 12 KB + accumulators 2 x 24 KB
//   = 106 KB, two blocks per SM (JC per head dim: `q_chunk`).
//
// simplicial_bwd_k_mma_d{D} (and _r32_d{D}): owns 64 keys of window 2 (grid x = key tiles); 4
//   warps x 16 keys. Walks the rows that see the tile in blocks of 64 (32 in the r32 variant,
//   launched when G < 64: its blocks span fewer queries, so less of their window-1 union is
//   masked) (q, dout in smem) and their window-1 rows
//   (k1, v1 in smem, chunks of JK): S^T and dP^T (A = K2, V2 of the warp's keys by ldmatrix;
//   B = q ∘ k1_j, dout ∘ v1_j: ldmatrix then bf16x2 products), P^T and dS^T, then
//   dv2 += P^T @ (dout ∘ v1_j) and dk2 += dS^T @ (q ∘ k1_j) (B by ldmatrix.trans, scaled per
//   column). Registers: dk2, dv2 accumulators 2 x 4D/8, S^T and dP^T 2 x 32. Smem (D = 128):
//   4 x 17 KB + 2 x 16 KB + 1 KB = 101 KB, two blocks per SM.
//
// Determinism: dq, dk2, dv2 are summed in a fixed order; dk1, dv1 are added with f32 atomics
// across row blocks (order not fixed: bits may differ run to run). The CUDA-core backward is
// deterministic (`Kernels::deterministic` selects it).
#include "common.cuh"
#include "tensor_core.cuh"

using namespace simplex;
typedef __nv_bfloat16 bf16;

namespace {

constexpr int THREADS = 128;  // 4 warps
constexpr int RB = 64;        // rows per block (Q kernel: owned; K kernel: per step)
constexpr int TK = 64;        // window-2 keys per tile (Q kernel) / owned per block (K kernel)
// Window-1 rows per chunk of the Q kernel: as many as keep its smem under 113 KB (two blocks
// per SM). With G < 64 a block's union of window 1 is wider than the window (w1 + 64/G - 1), and
// every chunk walks all key tiles again, so fewer chunks means fewer tile loads.
__host__ __device__ constexpr int q_chunk(int d) { return d <= 64 ? 96 : (d <= 96 ? 64 : 48); }
constexpr int JK = 64;        // window-1 rows per chunk, K kernel

// d += a @ b for one 16x8x16 tile: a rows (g, g+8) x cols (2t, 2t+8), b cols (g) x rows (2t, 2t+8).
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_all;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t ld_u32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
// Whether position x is in the window of width w of query i (spec.rs `Windows::range`).
__device__ __forceinline__ bool in_window(int i, int x, int w, int causal) {
  return causal ? (x <= i && x > i - w) : (abs(i - x) < w);
}

// Copies rows [pos0, pos0 + n) of a [.., D] tensor (row p at src + off(p)) to smem rows of
// `stride` elements; rows at or past `end` are zero-filled. All threads of the block.
template <int D, typename Off>
__device__ __forceinline__ void stage_rows(bf16* dst, int stride, const bf16* src, Off off, int pos0, int n, int end) {
  const uint32_t base = smem_u32(dst);
  for (int c = threadIdx.x; c < n * (D / 8); c += THREADS) {
    const int rr = c / (D / 8), c16 = c % (D / 8), pos = pos0 + rr;
    const bool ok = pos < end;
    cp_async16(base + (rr * stride + c16 * 8) * 2, src + (ok ? off(pos) + c16 * 8 : 0), ok);
  }
}

// The 4 x 16 x (D/8) products of a [16 x 64] bf16 A operand (packed from accumulators) with a
// [64 x 32] slice of a [64 x D] smem tile (row-major, `ROW` elements per row) as B.
template <int ROW>
__device__ __forceinline__ void a_times_tile(float (&acc)[4][4], const uint32_t (&a)[4][4], uint32_t tile, int col0, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t b[4];
      const int row = 16 * kk + (lane % 8) + 8 * ((lane / 8) % 2), col = col0 + 16 * np + 8 * (lane / 16);
      ldsm_x4_t(b, tile + (row * ROW + col) * 2);
      mma(acc[2 * np], a[kk], b[0], b[1]);
      mma(acc[2 * np + 1], a[kk], b[2], b[3]);
    }
}

// Packs a [16 x 16 KK] f32 accumulator (2 KK n-tiles) into the A fragments of KK k-steps.
template <int KK>
__device__ __forceinline__ void pack_a(uint32_t (&a)[KK][4], const float (&c)[2 * KK][4]) {
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    a[kk][0] = bf2_pack(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = bf2_pack(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = bf2_pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = bf2_pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

// Sums v[i] over the 8 lanes that share lane % 4 (a halving butterfly: 7V/8 shuffles instead of
// 3V). On return lane l holds in v[0 .. V/8) the sums of the original indices
// i + half_offset(l), see `butterfly_index`.
template <int V>
__device__ __forceinline__ void butterfly_sum(float (&v)[V], int lane) {
#pragma unroll
  for (int level = 0; level < 3; ++level) {
    const int m = 4 << level, S = V >> level;
    const bool upper = lane & m;
#pragma unroll
    for (int i = 0; i < S / 2; ++i) {
      const float send = upper ? v[i] : v[i + S / 2];
      const float keep = upper ? v[i + S / 2] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, m);
    }
  }
}
template <int V>
__device__ __forceinline__ int butterfly_index(int i, int lane) {
  return i + ((lane & 4) ? V / 2 : 0) + ((lane & 8) ? V / 4 : 0) + ((lane & 16) ? V / 8 : 0);
}

template <int D>
struct QSmem {
  static constexpr int JC = q_chunk(D);
  static constexpr int ROW = D + 8;  // padded tile row, elements
  static constexpr int K2_OFF = 0;
  static constexpr int V2_OFF = K2_OFF + TK * ROW * 2;
  static constexpr int K1_OFF = V2_OFF + TK * ROW * 2;
  static constexpr int V1_OFF = K1_OFF + JC * D * 2;
  static constexpr int DK_OFF = V1_OFF + JC * D * 2;
  static constexpr int DV_OFF = DK_OFF + JC * D * 4;
  static constexpr int BYTES = DV_OFF + JC * D * 4;
};
// two blocks per SM (228 KB of shared memory each, 1 KB of it reserved per block)
static_assert(QSmem<32>::BYTES <= 113 * 1024 && QSmem<64>::BYTES <= 113 * 1024 &&
                  QSmem<96>::BYTES <= 113 * 1024 && QSmem<128>::BYTES <= 113 * 1024,
              "Q kernel: two blocks per SM");

template <int D>
__device__ __forceinline__ void bwd_q(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                      const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                      const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                      const float* __restrict__ lse, const float* __restrict__ dlt,
                                      bf16* __restrict__ dq, float* __restrict__ dk1, float* __restrict__ dv1,
                                      const Shape s) {
  using L = QSmem<D>;
  constexpr int KS = D / 16, NT = D / 8;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  bf16* k2s = reinterpret_cast<bf16*>(smem_raw + L::K2_OFF);
  bf16* v2s = reinterpret_cast<bf16*>(smem_raw + L::V2_OFF);
  bf16* k1s = reinterpret_cast<bf16*>(smem_raw + L::K1_OFF);
  bf16* v1s = reinterpret_cast<bf16*>(smem_raw + L::V1_OFF);
  float* dks = reinterpret_cast<float*>(smem_raw + L::DK_OFF);
  float* dvs = reinterpret_cast<float*>(smem_raw + L::DV_OFF);
  const uint32_t k2a = smem_u32(k2s), v2a = smem_u32(v2s);

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const auto [row0, nrows, JU, KU] = cta_rows(s, G, RB);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const HeadRows hr(s);
  auto kv_off = [&](int pos) { return hr.key(pos, D); };
  auto q_row = [&](int r) { return hr.row(r); };

  uint32_t qf[KS][4], of[KS][4];
  float lse2[2], dl[2];
  int ii[2];
  bool row_ok[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = row0 + warp * 16 + g + 8 * e;
    row_ok[e] = r < nrows;
    ii[e] = row_ok[e] ? r / G : -(1 << 29);
    lse2[e] = row_ok[e] ? lse[q_row(r)] * LOG2E : 0.0f;
    dl[e] = row_ok[e] ? dlt[q_row(r)] : 0.0f;
  }
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int e = x & 1, col = 16 * ks + 2 * t + 8 * (x >> 1);
      const int r = row0 + warp * 16 + g + 8 * e;
      qf[ks][x] = row_ok[e] ? ld_u32(q + q_row(r) * D + col) : 0u;
      of[ks][x] = row_ok[e] ? ld_u32(dout + q_row(r) * D + col) : 0u;
    }
  float dqa[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int x = 0; x < 4; ++x) dqa[n][x] = 0.0f;
  const float sl2 = s.scale * LOG2E;

  for (int j0 = JU.lo; j0 < JU.hi; j0 += L::JC) {
    const int jn = min(L::JC, JU.hi - j0);
    __syncthreads();  // the previous chunk's flush is done
    stage_rows<D>(k1s, D, k1, kv_off, j0, jn, JU.hi);
    stage_rows<D>(v1s, D, v1, kv_off, j0, jn, JU.hi);
    for (int x = threadIdx.x; x < L::JC * D; x += THREADS) dks[x] = dvs[x] = 0.0f;
    for (int k0 = KU.lo; k0 < KU.hi; k0 += TK) {
      __syncthreads();  // everyone is done with the previous tile
      stage_rows<D>(k2s, L::ROW, k2, kv_off, k0, TK, KU.hi);
      stage_rows<D>(v2s, L::ROW, v2, kv_off, k0, TK, KU.hi);
      cp_async_wait_all();
      __syncthreads();
      bool tile_ok[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const Range kr = window(max(ii[e], 0), s.w2, N, s.causal);
        tile_ok[e] = row_ok[e] && kr.lo < k0 + TK && kr.hi > k0;
      }
      for (int jj = 0; jj < jn; ++jj) {
        const int j = j0 + jj;
        bool jok[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) jok[e] = tile_ok[e] && in_window(ii[e], j, s.w1, s.causal);
        if (!__any_sync(0xffffffffu, jok[0] || jok[1])) continue;  // warp-uniform
        const bf16* k1j = k1s + jj * D;
        const bf16* v1j = v1s + jj * D;
        // S = (q ∘ k1_j) @ K2^T and dP = (dout ∘ v1_j) @ V2^T: 16 rows x 64 keys
        float sa[8][4], pa[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int x = 0; x < 4; ++x) sa[n][x] = pa[n][x] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          const uint32_t kl = ld_u32(k1j + 16 * ks + 2 * t), kh = ld_u32(k1j + 16 * ks + 2 * t + 8);
          const uint32_t vl = ld_u32(v1j + 16 * ks + 2 * t), vh = ld_u32(v1j + 16 * ks + 2 * t + 8);
          const uint32_t aq[4] = {bf2_mul(qf[ks][0], kl), bf2_mul(qf[ks][1], kl), bf2_mul(qf[ks][2], kh), bf2_mul(qf[ks][3], kh)};
          const uint32_t ao[4] = {bf2_mul(of[ks][0], vl), bf2_mul(of[ks][1], vl), bf2_mul(of[ks][2], vh), bf2_mul(of[ks][3], vh)};
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            const int row = 16 * np + (lane % 8) + 8 * (lane / 16), col = 16 * ks + 8 * ((lane / 8) % 2);
            uint32_t bk[4], bv[4];
            ldsm_x4(bk, k2a + (row * L::ROW + col) * 2);
            ldsm_x4(bv, v2a + (row * L::ROW + col) * 2);
            mma(sa[2 * np], aq, bk[0], bk[1]);
            mma(sa[2 * np + 1], aq, bk[2], bk[3]);
            mma(pa[2 * np], ao, bv[0], bv[1]);
            mma(pa[2 * np + 1], ao, bv[2], bv[3]);
          }
        }
        // P and dS (zero where the pair is outside the row's windows)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int key = k0 + 8 * n + 2 * t + c;
              const bool ok = jok[e] && in_window(ii[e], key, s.w2, s.causal);
              const float p = masked_exp2(ok, sa[n][2 * e + c] * sl2 - lse2[e]);
              pa[n][2 * e + c] = p * (pa[n][2 * e + c] - dl[e]);
              sa[n][2 * e + c] = p;
            }
        uint32_t pA[4][4], dA[4][4];
        pack_a<4>(pA, sa);
        pack_a<4>(dA, pa);
        // X = dS @ K2, Y = P @ V2 in 32-column slices: dq += k1_j ∘ X; the column sums of
        // q ∘ X and dout ∘ Y over the warp's rows go to the chunk's accumulators in smem
#pragma unroll
        for (int cc = 0; cc < D / 32; ++cc) {
          float xa[4][4], ya[4][4];
#pragma unroll
          for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int x = 0; x < 4; ++x) xa[n][x] = ya[n][x] = 0.0f;
          a_times_tile<L::ROW>(xa, dA, k2a, 32 * cc, lane);
          a_times_tile<L::ROW>(ya, pA, v2a, 32 * cc, lane);
          float cs[16];  // [which: q∘X, dout∘Y][n-tile of the slice][column of the pair]
#pragma unroll
          for (int n4 = 0; n4 < 4; ++n4) {
            const int n = 4 * cc + n4, col = 8 * n + 2 * t;
            const float2 kj = bf2_float2(ld_u32(k1j + col));
            dqa[n][0] += kj.x * xa[n4][0];
            dqa[n][1] += kj.y * xa[n4][1];
            dqa[n][2] += kj.x * xa[n4][2];
            dqa[n][3] += kj.y * xa[n4][3];
            const float2 q0 = bf2_float2(qf[n / 2][(n % 2) * 2]), q1 = bf2_float2(qf[n / 2][(n % 2) * 2 + 1]);
            const float2 o0 = bf2_float2(of[n / 2][(n % 2) * 2]), o1 = bf2_float2(of[n / 2][(n % 2) * 2 + 1]);
            cs[2 * n4] = q0.x * xa[n4][0] + q1.x * xa[n4][2];
            cs[2 * n4 + 1] = q0.y * xa[n4][1] + q1.y * xa[n4][3];
            cs[8 + 2 * n4] = o0.x * ya[n4][0] + o1.x * ya[n4][2];
            cs[8 + 2 * n4 + 1] = o0.y * ya[n4][1] + o1.y * ya[n4][3];
          }
          butterfly_sum<16>(cs, lane);
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int idx = butterfly_index<16>(i, lane);
            const int n = 4 * cc + (idx % 8) / 2, c = idx % 2;
            atomicAdd((idx >= 8 ? dvs : dks) + jj * D + 8 * n + 2 * t + c, cs[i]);
          }
        }
      }
    }
    __syncthreads();
    for (int x = threadIdx.x; x < jn * D; x += THREADS) {
      const long long at = kv_off(j0 + x / D) + x % D;
      atomicAdd(dk1 + at, dks[x] * s.scale);
      atomicAdd(dv1 + at, dvs[x]);
    }
  }
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (!row_ok[e]) continue;
    bf16* dst = dq + q_row(row0 + warp * 16 + g + 8 * e) * D;
#pragma unroll
    for (int n = 0; n < NT; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n + 2 * t) = bf2_pack(dqa[n][2 * e] * s.scale, dqa[n][2 * e + 1] * s.scale);
  }
}

#include "bwd_mma_k.cuh"

}  // namespace

#define SIMPLICIAL_BWD_MMA(D)                                                                        \
  extern "C" __global__ void __launch_bounds__(THREADS, 2) simplicial_bwd_q_mma_d##D(               \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2,                 \
      const bf16* dout, const float* lse, const float* dlt, bf16* dq, float* dk1, float* dv1,        \
      const Shape s) {                                                                               \
    bwd_q<D>(q, k1, k2, v1, v2, dout, lse, dlt, dq, dk1, dv1, s);                                    \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS, 2) simplicial_bwd_k_mma_d##D(               \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2,                 \
      const bf16* dout, const float* lse, const float* dlt, bf16* dk2, bf16* dv2, const Shape s) {   \
    bwd_k<D, 64>(q, k1, k2, v1, v2, dout, lse, dlt, dk2, dv2, s);                                    \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS, 2) simplicial_bwd_k_mma_r32_d##D(           \
      const bf16* q, const bf16* k1, const bf16* k2, const bf16* v1, const bf16* v2,                 \
      const bf16* dout, const float* lse, const float* dlt, bf16* dk2, bf16* dv2, const Shape s) {   \
    bwd_k<D, 32>(q, k1, k2, v1, v2, dout, lse, dlt, dk2, dv2, s);                                    \
  }

SIMPLICIAL_BWD_MMA(32)
SIMPLICIAL_BWD_MMA(64)
SIMPLICIAL_BWD_MMA(96)
SIMPLICIAL_BWD_MMA(128)

// y = x as bf16 (the f32 atomic accumulators of dk1, dv1 into the gradient's dtype).
extern "C" __global__ void simplicial_bwd_f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}
