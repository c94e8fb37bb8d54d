// Shared pieces of the dot-product attention kernels (dot_attn_*.cu): the launch shape and the
// key ranges of the masks (the wgmma kernels' CTA layout is in dot_attn_wgmma.cuh).
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

}  // namespace dot
