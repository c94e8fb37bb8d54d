// The k kernel of the mma.sync 2-simplicial backward (dk2, dv2 of the keys a block owns),
// included by simplicial_bwd_mma.cu inside its anonymous namespace (after its tile constants
// and helpers): the file's header has the formulas and the tiling.
#pragma once

template <int D, int R>
struct KSmem {
  static constexpr int ROW = D + 8;
  static constexpr int K2_OFF = 0;
  static constexpr int V2_OFF = K2_OFF + TK * ROW * 2;
  static constexpr int Q_OFF = V2_OFF + TK * ROW * 2;
  static constexpr int O_OFF = Q_OFF + R * ROW * 2;
  static constexpr int K1_OFF = O_OFF + R * ROW * 2;
  static constexpr int V1_OFF = K1_OFF + JK * D * 2;
  static constexpr int META_OFF = V1_OFF + JK * D * 2;  // float2 [R] (lse log2e, delta)
  static constexpr int I_OFF = META_OFF + R * 8;       // int [R] query of the row
  static constexpr int BYTES = I_OFF + R * 4;
};
static_assert(KSmem<128, 64>::BYTES <= 113 * 1024, "K kernel: two blocks per SM");

// R rows (query, head) per step of the walk: 64, or 32 when G < 64 packs several queries into
// a step (each step walks the union of its queries' window 1: fewer queries, less waste).
template <int D, int R>
__device__ __forceinline__ void bwd_k(const bf16* __restrict__ q, const bf16* __restrict__ k1,
                                      const bf16* __restrict__ k2, const bf16* __restrict__ v1,
                                      const bf16* __restrict__ v2, const bf16* __restrict__ dout,
                                      const float* __restrict__ lse, const float* __restrict__ dlt,
                                      bf16* __restrict__ dk2, bf16* __restrict__ dv2, const Shape s) {
  using L = KSmem<D, R>;
  constexpr int NP = R / 16;  // 16-row groups per step
  constexpr int KS = D / 16, NT = D / 8;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  bf16* k2s = reinterpret_cast<bf16*>(smem_raw + L::K2_OFF);
  bf16* v2s = reinterpret_cast<bf16*>(smem_raw + L::V2_OFF);
  bf16* qs = reinterpret_cast<bf16*>(smem_raw + L::Q_OFF);
  bf16* os = reinterpret_cast<bf16*>(smem_raw + L::O_OFF);
  bf16* k1s = reinterpret_cast<bf16*>(smem_raw + L::K1_OFF);
  bf16* v1s = reinterpret_cast<bf16*>(smem_raw + L::V1_OFF);
  float2* meta = reinterpret_cast<float2*>(smem_raw + L::META_OFF);
  int* irow = reinterpret_cast<int*>(smem_raw + L::I_OFF);
  const uint32_t k2a = smem_u32(k2s), v2a = smem_u32(v2s), qa = smem_u32(qs), oa = smem_u32(os);

  const int N = s.seq, Hq = s.heads_q, Hkv = s.heads_kv, G = Hq / Hkv;
  const int b = blockIdx.z, kv = blockIdx.y;
  const int k0 = blockIdx.x * TK, kend = min(k0 + TK, N);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  auto kv_off = [&](int pos) -> long long { return ((long long)(b * N + pos) * Hkv + kv) * D; };
  auto q_row = [&](int r) -> long long { return (long long)(b * N + r / G) * Hq + kv * G + r % G; };
  auto q_off = [&](int r) -> long long { return q_row(r) * D; };

  stage_rows<D>(k2s, L::ROW, k2, kv_off, k0, TK, kend);
  stage_rows<D>(v2s, L::ROW, v2, kv_off, k0, TK, kend);
  // the queries that see a key of the tile, as rows r = i * G + h
  const int r_lo = seen_by(k0, s.w2, N, s.causal).lo * G;
  const int r_hi = seen_by(kend - 1, s.w2, N, s.causal).hi * G;
  const int key[2] = {k0 + 16 * warp + g, k0 + 16 * warp + g + 8};

  float dka[NT][4], dva[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int x = 0; x < 4; ++x) dka[n][x] = dva[n][x] = 0.0f;
  const float sl2 = s.scale * LOG2E;

  for (int rb0 = r_lo; rb0 < r_hi; rb0 += R) {
    const int rend = min(rb0 + R, r_hi);
    const Range JU = {window(rb0 / G, s.w1, N, s.causal).lo, window((rend - 1) / G, s.w1, N, s.causal).hi};
    // The windows every row of the step shares (windows move monotonically with the query):
    // where j is inside the shared window 1 and the whole key tile inside the shared window 2,
    // no pair of the step is masked (at the anchor shapes: all but the ramps).
    const int i_first = rb0 / G, i_last = (rend - 1) / G;
    const Range J_ALL = {window(i_last, s.w1, N, s.causal).lo, window(i_first, s.w1, N, s.causal).hi};
    const bool keys_inside = rend - rb0 == R && kend == k0 + TK &&
                             window(i_last, s.w2, N, s.causal).lo <= k0 && kend <= window(i_first, s.w2, N, s.causal).hi;
    __syncthreads();  // the previous row block is done
    stage_rows<D>(qs, L::ROW, q, q_off, rb0, R, rend);
    stage_rows<D>(os, L::ROW, dout, q_off, rb0, R, rend);
    for (int rr = threadIdx.x; rr < R; rr += THREADS) {
      const int r = rb0 + rr;
      const bool ok = r < rend;
      irow[rr] = ok ? r / G : -(1 << 29);
      meta[rr] = ok ? make_float2(lse[q_row(r)] * LOG2E, dlt[q_row(r)]) : make_float2(0.0f, 0.0f);
    }
    for (int j0 = JU.lo; j0 < JU.hi; j0 += JK) {
      const int jn = min(JK, JU.hi - j0);
      if (j0 > JU.lo) __syncthreads();  // done with the previous chunk's rows
      stage_rows<D>(k1s, D, k1, kv_off, j0, jn, JU.hi);
      stage_rows<D>(v1s, D, v1, kv_off, j0, jn, JU.hi);
      cp_async_wait_all();
      __syncthreads();
      for (int jj = 0; jj < jn; ++jj) {
        const int j = j0 + jj;
        const bf16* k1j = k1s + jj * D;
        const bf16* v1j = v1s + jj * D;
        // S^T = K2 @ (q ∘ k1_j)^T and dP^T = V2 @ (dout ∘ v1_j)^T: 16 keys x R rows
        float sa[2 * NP][4], pa[2 * NP][4];
#pragma unroll
        for (int n = 0; n < 2 * NP; ++n)
#pragma unroll
          for (int x = 0; x < 4; ++x) sa[n][x] = pa[n][x] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          uint32_t ak[4], av[4];
          {
            const int row = 16 * warp + (lane % 8) + 8 * ((lane / 8) % 2), col = 16 * ks + 8 * (lane / 16);
            ldsm_x4(ak, k2a + (row * L::ROW + col) * 2);
            ldsm_x4(av, v2a + (row * L::ROW + col) * 2);
          }
          const uint32_t kl = ld_u32(k1j + 16 * ks + 2 * t), kh = ld_u32(k1j + 16 * ks + 2 * t + 8);
          const uint32_t vl = ld_u32(v1j + 16 * ks + 2 * t), vh = ld_u32(v1j + 16 * ks + 2 * t + 8);
#pragma unroll
          for (int np = 0; np < NP; ++np) {
            const int row = 16 * np + (lane % 8) + 8 * (lane / 16), col = 16 * ks + 8 * ((lane / 8) % 2);
            uint32_t bq[4], bo[4];
            ldsm_x4(bq, qa + (row * L::ROW + col) * 2);
            ldsm_x4(bo, oa + (row * L::ROW + col) * 2);
            mma(sa[2 * np], ak, bf2_mul(bq[0], kl), bf2_mul(bq[1], kh));
            mma(sa[2 * np + 1], ak, bf2_mul(bq[2], kl), bf2_mul(bq[3], kh));
            mma(pa[2 * np], av, bf2_mul(bo[0], vl), bf2_mul(bo[1], vh));
            mma(pa[2 * np + 1], av, bf2_mul(bo[2], vl), bf2_mul(bo[3], vh));
          }
        }
        // P^T, dS^T (zero outside the windows of the column's row; block-uniform branch)
        if (keys_inside && j >= J_ALL.lo && j < J_ALL.hi) {
#pragma unroll
          for (int n = 0; n < 2 * NP; ++n) {
            const float4 m = *reinterpret_cast<const float4*>(meta + 8 * n + 2 * t);  // rows rr, rr + 1
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const float p = fast_exp2(sa[n][x] * sl2 - ((x & 1) ? m.z : m.x));
              pa[n][x] = p * (pa[n][x] - ((x & 1) ? m.w : m.y));
              sa[n][x] = p;
            }
          }
        } else {
#pragma unroll
          for (int n = 0; n < 2 * NP; ++n) {
            const int rr = 8 * n + 2 * t;
            const float4 m = *reinterpret_cast<const float4*>(meta + rr);  // rows rr, rr + 1
            const int2 iq = *reinterpret_cast<const int2*>(irow + rr);
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int i = c ? iq.y : iq.x;
              const float l2 = c ? m.z : m.x, dd = c ? m.w : m.y;
              const bool jok = in_window(i, j, s.w1, s.causal);
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const bool ok = jok && key[e] < kend && in_window(i, key[e], s.w2, s.causal);
                const float p = masked_exp2(ok, sa[n][2 * e + c] * sl2 - l2);
                pa[n][2 * e + c] = p * (pa[n][2 * e + c] - dd);
                sa[n][2 * e + c] = p;
              }
            }
          }
        }
        uint32_t pA[NP][4], dA[NP][4];
        pack_a<NP>(pA, sa);
        pack_a<NP>(dA, pa);
        // dv2 += P^T @ (dout ∘ v1_j), dk2 += dS^T @ (q ∘ k1_j): B by ldmatrix.trans, per column
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          const uint32_t sv0 = bf2_splat(v1j[16 * np + g]), sv1 = bf2_splat(v1j[16 * np + 8 + g]);
          const uint32_t sk0 = bf2_splat(k1j[16 * np + g]), sk1 = bf2_splat(k1j[16 * np + 8 + g]);
#pragma unroll
          for (int kk = 0; kk < NP; ++kk) {
            const int row = 16 * kk + (lane % 8) + 8 * ((lane / 8) % 2), col = 16 * np + 8 * (lane / 16);
            uint32_t bo[4], bq[4];
            ldsm_x4_t(bo, oa + (row * L::ROW + col) * 2);
            ldsm_x4_t(bq, qa + (row * L::ROW + col) * 2);
            mma(dva[2 * np], pA[kk], bf2_mul(bo[0], sv0), bf2_mul(bo[1], sv0));
            mma(dva[2 * np + 1], pA[kk], bf2_mul(bo[2], sv1), bf2_mul(bo[3], sv1));
            mma(dka[2 * np], dA[kk], bf2_mul(bq[0], sk0), bf2_mul(bq[1], sk0));
            mma(dka[2 * np + 1], dA[kk], bf2_mul(bq[2], sk1), bf2_mul(bq[3], sk1));
          }
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (key[e] >= kend) continue;
    bf16* dkr = dk2 + kv_off(key[e]);
    bf16* dvr = dv2 + kv_off(key[e]);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      *reinterpret_cast<uint32_t*>(dkr + 8 * n + 2 * t) = bf2_pack(dka[n][2 * e] * s.scale, dka[n][2 * e + 1] * s.scale);
      *reinterpret_cast<uint32_t*>(dvr + 8 * n + 2 * t) = bf2_pack(dva[n][2 * e], dva[n][2 * e + 1]);
    }
  }
}
