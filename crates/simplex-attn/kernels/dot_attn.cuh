// Shared pieces of the dot-product attention kernels (dot_attn_*.cu): the launch shape, the key
// ranges of the masks, and the tensor-core building blocks (ldmatrix, mma.sync m16n8k16,
// cp.async) with their fragment layouts.
//
// Shapes (as in src/dot/spec.rs): q [B,Nq,Hq,D], k [B,Nk,Hkv,D], v [B,Nk,Hkv,Dv],
// o [B,Nq,Hq,Dv], lse [B,Nq,Hq] (f32, natural log). Query i sits at position p = i + Nk - Nq;
// query head h reads K/V head h / G, G = Hq / Hkv.
#pragma once

#include "common.cuh"

namespace dot {

using simplex::fast_exp2;
using simplex::LN2;
using simplex::masked_exp2;
using simplex::LOG2E;
using simplex::WARP;
typedef __nv_bfloat16 bf16;

// Mirrored field by field by `DotKernelShape` in src/dot/cuda/mod.rs (#[repr(C)], 4-byte fields).
struct DotShape {
  int batch, seq_q, seq_k, heads_q, heads_kv, d, dv;
  int causal;  // 1: p - w < j <= p; 0: |p - j| < w
  int window;  // clamped to [1, Nk], as spec.rs `KeyRanges::w`
  float scale; // softmax scale (1/sqrt(D) by default)
};

// A half-open index range [lo, hi).
struct Span {
  int lo, hi;
};

// The keys of query i (spec.rs `KeyRanges::range`); never empty for 0 <= i < Nq.
__device__ __forceinline__ Span keys_of(const DotShape& s, int i) {
  const int p = i + s.seq_k - s.seq_q;
  if (s.causal) return {max(p + 1 - s.window, 0), p + 1};
  return {max(p - (s.window - 1), 0), min(p + s.window, s.seq_k)};
}

// The keys of the queries [i0, i1), 0 <= i0 < i1 <= Nq: both ends of `keys_of` grow with i
// (src/dot/plan.rs `block_keys`, tested there against the spec).
__device__ __forceinline__ Span keys_of_block(const DotShape& s, int i0, int i1) {
  return {keys_of(s, i0).lo, keys_of(s, i1 - 1).hi};
}

// The queries that see at least one of the keys [j0, j1) (src/dot/plan.rs `block_queries`);
// empty (hi <= lo) when none does.
__device__ __forceinline__ Span queries_of_block(const DotShape& s, int j0, int j1) {
  const int off = s.seq_k - s.seq_q;
  const int lo = s.causal ? j0 - off : j0 - (s.window - 1) - off;
  const int hi = j1 + (s.window - 1) - off;
  return {max(lo, 0), min(hi, s.seq_q)};
}

// True when every query of [i0, i1) sees every key of [j0, j1): the tile needs no mask.
__device__ __forceinline__ bool tile_is_full(const DotShape& s, int i0, int i1, int j0, int j1) {
  return keys_of(s, i1 - 1).lo <= j0 && keys_of(s, i0).hi >= j1;
}

__device__ __forceinline__ bool sees(const Span& keys, int j) { return j >= keys.lo && j < keys.hi; }

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- cp.async: global -> shared, 16 (or 4) bytes at a time, zero-filled when `valid` is false ----

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies `rows` rows of W bf16 (W % 8 == 0) from global (row r at src + r * stride) into shared
// memory with row stride W + 8 (16 bytes of padding: the 8 rows one ldmatrix reads start in 8
// different 16-byte bank groups). Rows at or after `valid` are zero-filled. All `threads`
// threads of the block call it.
template <int ROWS, int W, int THREADS>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, long long stride, int valid) {
  constexpr int CHUNKS = W / 8;  // 16-byte chunks per row
  static_assert(ROWS * CHUNKS % THREADS == 0, "whole chunks per thread");
#pragma unroll
  for (int it = 0; it < ROWS * CHUNKS / THREADS; ++it) {
    const int c = it * THREADS + threadIdx.x;
    const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
    const bool ok = r < valid;
    cp_async16(dst + r * (W + 8) + col, ok ? src + r * stride + col : src, ok);
  }
}

// ---- ldmatrix and mma.sync m16n8k16 (bf16 in, f32 accumulate) ----
//
// Fragment layouts, lane = 4 g + t (g = lane / 4, t = lane % 4):
//   A 16x16 (row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16x8 (k x n):      b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16x8 (f32):        c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
// A C fragment pair (n-blocks 2m, 2m+1) rounded to bf16 is the A fragment of k-step m.

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// B fragments of two n-blocks (n0, n0 + 8) at k-step k0 when the tile stores B transposed,
// rows = n (keys, queries), columns = k (head dim): r0, r1 for n0 and r2, r3 for n0 + 8.
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16* tile, int stride, int n0, int k0) {
  const int lane = threadIdx.x % WARP;
  ldsm_x4(b, tile + (n0 + lane % 8 + (lane / 16) * 8) * stride + k0 + ((lane / 8) % 2) * 8);
}

// B fragments of two n-blocks (n0, n0 + 8) at k-step k0 when the tile stores B as is, rows = k
// (keys, queries), columns = n (head dim): r0, r1 for n0 and r2, r3 for n0 + 8.
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16* tile, int stride, int k0, int n0) {
  const int lane = threadIdx.x % WARP;
  ldsm_x4_trans(b, tile + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * stride + n0 + (lane / 16) * 8);
}

// The logit-side products of one warp: acc[m][16 x 8 NB] += A_m @ B^T for MT m-tiles of 16 rows,
// A rows `row0 + 16 m ..` of the row-major tile `a` (16 KS columns), B^T the [n][k] tile `b`
// (Q K^T, dO V^T, K Q^T, V dO^T). Each B fragment serves all MT m-tiles.
template <int MT, int KS, int NB>
__device__ __forceinline__ void mma_rows_nk(float (&acc)[MT][NB][4], const bf16* a, int row0, const bf16* b,
                                            int stride) {
  const int lane = threadIdx.x % WARP;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t af[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
      ldsm_x4(af[m], a + (row0 + 16 * m + lane % 16) * stride + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int nb = 0; nb < NB; nb += 2) {
      uint32_t bf[4];
      load_b_nk(bf, b, stride, nb * 8, ks * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma16816(acc[m][nb], af[m], bf[0], bf[1]);
        mma16816(acc[m][nb + 1], af[m], bf[2], bf[3]);
      }
    }
  }
}

// The value-side products of one warp: acc[m][16 x 8 NB] += P_m @ B, P_m (16 x 16 KS) given as
// C fragments p[m][2 KS][4] and rounded to bf16, B the [k][n] tile `b` (P V, dS K, P^T dO,
// dS^T Q). Each B fragment serves all MT m-tiles.
template <int MT, int KS, int NB>
__device__ __forceinline__ void mma_probs_kn(float (&acc)[MT][NB][4], const float (&p)[MT][2 * KS][4],
                                             const bf16* b, int stride) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    uint32_t af[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      af[m][0] = pack_bf16(p[m][2 * ks][0], p[m][2 * ks][1]);
      af[m][1] = pack_bf16(p[m][2 * ks][2], p[m][2 * ks][3]);
      af[m][2] = pack_bf16(p[m][2 * ks + 1][0], p[m][2 * ks + 1][1]);
      af[m][3] = pack_bf16(p[m][2 * ks + 1][2], p[m][2 * ks + 1][3]);
    }
#pragma unroll
    for (int nb = 0; nb < NB; nb += 2) {
      uint32_t bf[4];
      load_b_kn(bf, b, stride, ks * 16, nb * 8);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma16816(acc[m][nb], af[m], bf[0], bf[1]);
        mma16816(acc[m][nb + 1], af[m], bf[2], bf[3]);
      }
    }
  }
}

template <int MT, int NB>
__device__ __forceinline__ void zero(float (&acc)[MT][NB][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][nb][e] = 0.0f;
}

}  // namespace dot
