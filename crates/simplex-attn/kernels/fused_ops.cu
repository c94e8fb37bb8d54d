// The model's fused ops around attention (src/fused/*.rs has the math, the CPU versions and
// the candle-op twins the tests compare against; launch code in src/fused/cuda/).
//
//   rms_norm_fwd      h = x + a (optional), y = h * rstd * w, rstd = 1/sqrt(mean h^2 + eps)
//   rms_norm_bwd      dh = plus + rstd (dy w - xhat mean(dy w xhat)) (plus: an optional gradient
//                     to add, e.g. the residual stream's), per-block partial sums of dy xhat
//   rms_norm_dw       dw = the partial sums added in block order
//   split_heads_fwd   one projection's columns -> contiguous head parts, RoPE on chosen parts
//   split_heads_bwd   the parts' gradients -> dx (inverse rotation)
//   swiglu_fwd/bwd    silu(g) * u of [g | u] rows and its gradient
//   xent_rows         per row of logits: loss = lse - z[y], dz = (softmax - onehot) / n
//   flat_gather       parameter gradients -> one flat f32 buffer (copy or add)
//   flat_sumsq        per-block partial sums of grad^2 (fixed grid: a fixed summation order)
//   flat_adamw        the clip scale from the partials, AdamW on the flat buffers, bf16/f32
//                     working copies written through a pointer table
//   flat_write        master -> working copies (after loading a checkpoint)
//
// All are memory-bound: one thread block streams rows or chunks with 16-byte accesses where
// the width allows (the VEC template path: 8 bf16 or 2 x 4 f32 per access), f32 arithmetic.
// Registers: under 64 per thread, no shared memory beyond reductions (rms_norm_bwd: one f32
// row of dw sums per warp).
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

namespace {

constexpr int WARP = 32;

__device__ __forceinline__ float f32(float x) { return x; }
__device__ __forceinline__ float f32(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T cast(float x);
template <> __device__ __forceinline__ float cast<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 cast<bf16>(float x) { return __float2bfloat16_rn(x); }

// 8 consecutive elements <-> 8 floats (16-byte accesses for bf16, two for f32).
__device__ __forceinline__ void load8(const bf16* p, float (&f)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 t = __bfloat1622float2(h[k]);
    f[2 * k] = t.x;
    f[2 * k + 1] = t.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&f)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void store8(bf16* p, const float (&f)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store8(float* p, const float (&f)[8]) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
// Elements i .. i+7 of a row as floats: vector access when VEC, else one by one (zero past n).
template <bool VEC, typename T>
__device__ __forceinline__ void get8(const T* p, long long i, long long n, float (&f)[8]) {
  if (VEC) {
    load8(p + i, f);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) f[k] = i + k < n ? f32(p[i + k]) : 0.0f;
  }
}
template <bool VEC, typename T>
__device__ __forceinline__ void put8(T* p, long long i, long long n, const float (&f)[8]) {
  if (VEC) {
    store8(p + i, f);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (i + k < n) p[i + k] = cast<T>(f[k]);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = WARP / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// Sum (or max) over the block; every thread gets it. `red` holds blockDim.x / 32 floats.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float x, float* red) {
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, nw = blockDim.x / WARP;
  x = MAX ? warp_max(x) : warp_sum(x);
  __syncthreads();
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < nw; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

// ---------------------------------------------------------------- RMSNorm
// One warp per row, 8 rows per block of 256 threads; the row is read twice (the second time
// from cache).
template <typename T, bool VEC>
__device__ void norm_fwd(const T* __restrict__ x, const T* __restrict__ a, const T* __restrict__ w, T* __restrict__ h,
                         T* __restrict__ y, float* __restrict__ rstd, int rows, int c, float eps) {
  const int lane = threadIdx.x % WARP;
  const long long r = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
  if (r >= rows) return;
  const long long base = r * c;
  float ss = 0.0f;
  for (int i = lane * 8; i < c; i += WARP * 8) {
    float v[8];
    get8<VEC>(x + base, i, c, v);
    if (a != nullptr) {
      float av[8];
      get8<VEC>(a + base, i, c, av);
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = f32(cast<T>(v[k] + av[k]));  // the stored h, rounded
      put8<VEC>(h + base, i, c, v);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) ss += v[k] * v[k];
  }
  const float s = rsqrtf(warp_sum(ss) / c + eps);
  if (lane == 0) rstd[r] = s;
  const T* src = a != nullptr ? h : x;
  if (a != nullptr) __syncwarp();
  for (int i = lane * 8; i < c; i += WARP * 8) {
    float v[8], wv[8];
    get8<VEC>(src + base, i, c, v);
    get8<VEC>(w, i, c, wv);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = v[k] * s * wv[k];
    put8<VEC>(y + base, i, c, v);
  }
}

// dh rows and per-block dw partials: warp w of block b takes rows b*W + w, + gridDim*W, ...;
// its dw sums go to its own shared row, the block adds the rows in warp order.
template <typename T, bool VEC>
__device__ void norm_bwd(const T* __restrict__ dy, const T* __restrict__ h, const T* __restrict__ w,
                         const float* __restrict__ rstd, const T* __restrict__ plus, T* __restrict__ dh,
                         float* __restrict__ dw_part, int rows, int c) {
  extern __shared__ float acc[];  // [warps][c]
  const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, nw = blockDim.x / WARP;
  float* mine = acc + warp * c;
  for (int i = lane; i < c; i += WARP) mine[i] = 0.0f;
  __syncwarp();
  for (long long r = (long long)blockIdx.x * nw + warp; r < rows; r += (long long)gridDim.x * nw) {
    const long long base = r * c;
    const float s = rstd[r];
    float dot = 0.0f;
    for (int i = lane * 8; i < c; i += WARP * 8) {
      float g[8], x[8], wv[8];
      get8<VEC>(dy + base, i, c, g);
      get8<VEC>(h + base, i, c, x);
      get8<VEC>(w, i, c, wv);
#pragma unroll
      for (int k = 0; k < 8; ++k) dot += g[k] * wv[k] * x[k] * s;
    }
    const float mean = warp_sum(dot) / c;
    for (int i = lane * 8; i < c; i += WARP * 8) {
      float g[8], x[8], wv[8], d[8];
      get8<VEC>(dy + base, i, c, g);
      get8<VEC>(h + base, i, c, x);
      get8<VEC>(w, i, c, wv);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float xhat = x[k] * s;
        d[k] = s * (g[k] * wv[k] - xhat * mean);
        if (i + k < c) mine[i + k] += g[k] * xhat;
      }
      if (plus != nullptr) {
        float p[8];
        get8<VEC>(plus + base, i, c, p);
#pragma unroll
        for (int k = 0; k < 8; ++k) d[k] += p[k];
      }
      put8<VEC>(dh + base, i, c, d);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    float t = 0.0f;
    for (int k = 0; k < nw; ++k) t += acc[k * c + i];
    dw_part[(long long)blockIdx.x * c + i] = t;
  }
}

template <typename T>
__device__ void norm_dw(const float* __restrict__ part, T* __restrict__ dw, int blocks, int c) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c) return;
  float t = 0.0f;
  for (int b = 0; b < blocks; ++b) t += part[(long long)b * c + i];
  dw[i] = cast<T>(t);
}

// ---------------------------------------------------------------- split heads + RoPE
// Mirrored by `SplitArgs` in src/fused/cuda/heads.rs (#[repr(C)]).
struct SplitArgs {
  long long rows;  // B * N
  int n, width, d, pos, parts;
  int col0[5], heads[5], rotate[5];
};
struct Parts {
  void* p[5];
};

// One thread per 8 pair slots (i .. i+7, i + hp .. i + hp + 7) of one head of one row,
// hp = ceil(d / 2); rotated heads have an even d, so hp = d / 2 there.
template <typename T, bool VEC, bool BWD>
__device__ void split(const T* __restrict__ src, Parts parts, T* __restrict__ dst, const float* __restrict__ cosv,
                      const float* __restrict__ sinv, const SplitArgs s) {
  const int hp = (s.d + 1) / 2, groups = (hp + 7) / 8;
  int heads = 0;
#pragma unroll
  for (int q = 0; q < 5; ++q) heads += q < s.parts ? s.heads[q] : 0;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= s.rows * heads * groups) return;
  const long long r = idx / (heads * groups);
  const int rest = (int)(idx % (heads * groups)), head = rest / groups, i = (rest % groups) * 8;
  // this head's part, by constant indices only (no local-memory copy of the arguments)
  int h0 = 0, col0 = s.col0[0], hp_heads = s.heads[0], rot = s.rotate[0];
  T* part = reinterpret_cast<T*>(parts.p[0]);
#pragma unroll
  for (int q = 1; q < 5; ++q)
    if (q < s.parts && head >= h0 + hp_heads) {
      h0 += hp_heads;
      col0 = s.col0[q], hp_heads = s.heads[q], rot = s.rotate[q];
      part = reinterpret_cast<T*>(parts.p[q]);
    }
  const int hh = head - h0, pw = hp_heads * s.d;
  const long long xoff = r * s.width + col0 + (long long)hh * s.d;  // this head in x
  const long long poff = r * pw + (long long)hh * s.d;              // in the part
  const int n2 = s.d - hp;                                          // elements of the 2nd half
  float a[8], b[8];
  if (BWD) {
    if (part == nullptr) {
#pragma unroll
      for (int k = 0; k < 8; ++k) a[k] = b[k] = 0.0f;
    } else {
      get8<VEC>(part + poff, i, hp, a);
      get8<VEC>(part + poff + hp, i, n2, b);
    }
  } else {
    get8<VEC>(src + xoff, i, hp, a);
    get8<VEC>(src + xoff + hp, i, n2, b);
  }
  if (rot) {
    const long long t = (long long)(s.pos + r % s.n) * hp;
    float c8[8], s8[8];
    get8<VEC>(cosv + t, i, hp, c8);
    get8<VEC>(sinv + t, i, hp, s8);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float x1 = a[k], x2 = b[k], sn = BWD ? -s8[k] : s8[k];
      a[k] = x1 * c8[k] - x2 * sn;
      b[k] = x1 * sn + x2 * c8[k];
    }
  }
  if (BWD) {
    put8<VEC>(dst + xoff, i, hp, a);
    put8<VEC>(dst + xoff + hp, i, n2, b);
  } else {
    put8<VEC>(part + poff, i, hp, a);
    put8<VEC>(part + poff + hp, i, n2, b);
  }
}

// ---------------------------------------------------------------- SwiGLU
template <typename T, bool VEC>
__device__ void swiglu_fwd(const T* __restrict__ gu, T* __restrict__ out, long long rows, int h) {
  const int groups = (h + 7) / 8;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= rows * groups) return;
  const long long r = idx / groups;
  const int j = (int)(idx % groups) * 8;
  float g[8], u[8];
  get8<VEC>(gu + r * 2 * h, j, h, g);
  get8<VEC>(gu + r * 2 * h + h, j, h, u);
#pragma unroll
  for (int k = 0; k < 8; ++k) g[k] = g[k] / (1.0f + __expf(-g[k])) * u[k];
  put8<VEC>(out + r * h, j, h, g);
}

template <typename T, bool VEC>
__device__ void swiglu_bwd(const T* __restrict__ gu, const T* __restrict__ dout, T* __restrict__ dgu,
                           long long rows, int h) {
  const int groups = (h + 7) / 8;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= rows * groups) return;
  const long long r = idx / groups;
  const int j = (int)(idx % groups) * 8;
  float g[8], u[8], d[8];
  get8<VEC>(gu + r * 2 * h, j, h, g);
  get8<VEC>(gu + r * 2 * h + h, j, h, u);
  get8<VEC>(dout + r * h, j, h, d);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float sg = 1.0f / (1.0f + __expf(-g[k]));
    const float dg = d[k] * u[k] * sg * (1.0f + g[k] * (1.0f - sg));
    u[k] = d[k] * g[k] * sg;
    g[k] = dg;
  }
  put8<VEC>(dgu + r * 2 * h, j, h, g);
  put8<VEC>(dgu + r * 2 * h + h, j, h, u);
}

// ---------------------------------------------------------------- cross-entropy rows
// One block per row: max, sum of exp, then dz over the row. An id >= v (not the ignore id)
// gives a NaN loss.
template <typename T>
__device__ void xent(const T* __restrict__ z, const uint32_t* __restrict__ ids, const float* __restrict__ inv,
                     T* __restrict__ dz, float* __restrict__ loss, int v, uint32_t ignore, int has_ignore) {
  __shared__ float red[32];
  const long long r = blockIdx.x;
  const T* zr = z + r * v;
  T* dr = dz + r * v;
  const uint32_t y = ids[r];
  if (has_ignore && y == ignore) {
    for (int j = threadIdx.x; j < v; j += blockDim.x) dr[j] = cast<T>(0.0f);
    if (threadIdx.x == 0) loss[r] = 0.0f;
    return;
  }
  float m = -INFINITY;
  for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, f32(zr[j]));
  m = block_reduce<true>(m, red);
  float s = 0.0f;
  for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(f32(zr[j]) - m);
  s = block_reduce<false>(s, red);
  const float scale = inv[0] / s;
  for (int j = threadIdx.x; j < v; j += blockDim.x) {
    const float p = __expf(f32(zr[j]) - m) * scale;
    dr[j] = cast<T>(j == (int)y ? p - inv[0] : p);
  }
  if (threadIdx.x == 0) loss[r] = y < (uint32_t)v ? m + logf(s) - f32(zr[y]) : NAN;
}

// ---------------------------------------------------------------- flat AdamW
// Mirrored by `FlatEntry` and `AdamWArgs` in src/fused/cuda/adamw.rs (#[repr(C)]).
struct FlatEntry {
  unsigned long long offset, len, work, grad;  // work / grad: device addresses (grad 0: none)
  int work_bf16, grad_bf16, decay, pad;
};
struct AdamWArgs {
  float lr, beta1, beta2, eps, keep, bc1, bc2, max_norm;  // keep = 1 - lr * weight_decay
  int partials;
};
constexpr int CHUNK = 4096;  // elements per block (src/fused/adamw.rs CHUNK)

__device__ __forceinline__ float load_any(unsigned long long addr, int bf, unsigned long long k) {
  return bf ? __bfloat162float(reinterpret_cast<const bf16*>(addr)[k]) : reinterpret_cast<const float*>(addr)[k];
}
__device__ __forceinline__ void store_any(unsigned long long addr, int bf, unsigned long long k, float x) {
  if (bf)
    reinterpret_cast<bf16*>(addr)[k] = __float2bfloat16_rn(x);
  else
    reinterpret_cast<float*>(addr)[k] = x;
}

}  // namespace

#define FOR_TYPES(X) X(bf16, bf16) X(f32, float)

#define NORM(name, T)                                                                                           \
  extern "C" __global__ void rms_norm_fwd_##name(const T* x, const T* a, const T* w, T* h, T* y, float* rstd,    \
                                                 int rows, int c, float eps, int vec) {                          \
    if (vec)                                                                                                    \
      norm_fwd<T, true>(x, a, w, h, y, rstd, rows, c, eps);                                                     \
    else                                                                                                        \
      norm_fwd<T, false>(x, a, w, h, y, rstd, rows, c, eps);                                                    \
  }                                                                                                             \
  extern "C" __global__ void rms_norm_bwd_##name(const T* dy, const T* h, const T* w, const float* rstd,        \
                                                 const T* plus, T* dh, float* part, int rows, int c, int vec) {  \
    if (vec)                                                                                                    \
      norm_bwd<T, true>(dy, h, w, rstd, plus, dh, part, rows, c);                                               \
    else                                                                                                        \
      norm_bwd<T, false>(dy, h, w, rstd, plus, dh, part, rows, c);                                              \
  }                                                                                                             \
  extern "C" __global__ void rms_norm_dw_##name(const float* part, T* dw, int blocks, int c) {                  \
    norm_dw<T>(part, dw, blocks, c);                                                                            \
  }                                                                                                             \
  extern "C" __global__ void split_heads_fwd_##name(const T* x, Parts parts, const float* cosv,                  \
                                                    const float* sinv, SplitArgs s, int vec) {                   \
    if (vec)                                                                                                    \
      split<T, true, false>(x, parts, nullptr, cosv, sinv, s);                                                  \
    else                                                                                                        \
      split<T, false, false>(x, parts, nullptr, cosv, sinv, s);                                                 \
  }                                                                                                             \
  extern "C" __global__ void split_heads_bwd_##name(Parts grads, T* dx, const float* cosv, const float* sinv,    \
                                                    SplitArgs s, int vec) {                                      \
    if (vec)                                                                                                    \
      split<T, true, true>(nullptr, grads, dx, cosv, sinv, s);                                                  \
    else                                                                                                        \
      split<T, false, true>(nullptr, grads, dx, cosv, sinv, s);                                                 \
  }                                                                                                             \
  extern "C" __global__ void swiglu_fwd_##name(const T* gu, T* out, long long rows, int h, int vec) {           \
    if (vec)                                                                                                    \
      swiglu_fwd<T, true>(gu, out, rows, h);                                                                    \
    else                                                                                                        \
      swiglu_fwd<T, false>(gu, out, rows, h);                                                                   \
  }                                                                                                             \
  extern "C" __global__ void swiglu_bwd_##name(const T* gu, const T* dout, T* dgu, long long rows, int h,       \
                                               int vec) {                                                       \
    if (vec)                                                                                                    \
      swiglu_bwd<T, true>(gu, dout, dgu, rows, h);                                                              \
    else                                                                                                        \
      swiglu_bwd<T, false>(gu, dout, dgu, rows, h);                                                             \
  }                                                                                                             \
  extern "C" __global__ void xent_rows_##name(const T* z, const uint32_t* ids, const float* inv, T* dz,          \
                                              float* loss, int v, uint32_t ignore, int has_ignore) {            \
    xent<T>(z, ids, inv, dz, loss, v, ignore, has_ignore);                                                      \
  }
FOR_TYPES(NORM)

// Gradient i's elements [start, start + CHUNK) of block b (chunks[b] = {i, start}) into the flat
// buffer: copied, or added when `accumulate`; a missing gradient copies zeros or adds nothing.
extern "C" __global__ void flat_gather(const FlatEntry* e, const uint2* chunks, float* flat, int accumulate) {
  const FlatEntry t = e[chunks[blockIdx.x].x];
  const unsigned long long start = chunks[blockIdx.x].y, end = min(start + CHUNK, t.len);
  for (unsigned long long k = start + threadIdx.x; k < end; k += blockDim.x) {
    const float g = t.grad ? load_any(t.grad, t.grad_bf16, k) : 0.0f;
    float* dst = flat + t.offset + k;
    *dst = accumulate ? *dst + g : g;
  }
}

// partials[b] = sum of g^2 over the grid-stride elements of block b (grid fixed by the caller).
extern "C" __global__ void flat_sumsq(const float* g, unsigned long long n, float* partials) {
  __shared__ float red[32];
  float s = 0.0f;
  for (unsigned long long k = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; k < n;
       k += (unsigned long long)gridDim.x * blockDim.x)
    s += g[k] * g[k];
  s = block_reduce<false>(s, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

extern "C" __global__ void flat_adamw(const FlatEntry* e, const uint2* chunks, float* master, float* m, float* v,
                                      const float* grad, const float* partials, AdamWArgs a, float* norm_out) {
  __shared__ float red[32];
  float s = 0.0f;
  for (int k = threadIdx.x; k < a.partials; k += blockDim.x) s += partials[k];
  const float norm = sqrtf(block_reduce<false>(s, red));
  if (blockIdx.x == 0 && threadIdx.x == 0) norm_out[0] = norm;
  const float scale = (a.max_norm > 0.0f && norm > a.max_norm) ? a.max_norm / (norm + 1e-6f) : 1.0f;
  const FlatEntry t = e[chunks[blockIdx.x].x];
  const float keep = t.decay ? a.keep : 1.0f;
  const unsigned long long start = chunks[blockIdx.x].y, end = min(start + CHUNK, t.len);
  for (unsigned long long k = start + threadIdx.x; k < end; k += blockDim.x) {
    const unsigned long long f = t.offset + k;
    const float g = grad[f] * scale;
    const float mk = a.beta1 * m[f] + (1.0f - a.beta1) * g;
    const float vk = a.beta2 * v[f] + (1.0f - a.beta2) * g * g;
    const float p = master[f] * keep - a.lr * ((mk / a.bc1) / (sqrtf(vk / a.bc2) + a.eps));
    m[f] = mk;
    v[f] = vk;
    master[f] = p;
    store_any(t.work, t.work_bf16, k, p);
  }
}

extern "C" __global__ void flat_write(const FlatEntry* e, const uint2* chunks, const float* master) {
  const FlatEntry t = e[chunks[blockIdx.x].x];
  const unsigned long long start = chunks[blockIdx.x].y, end = min(start + CHUNK, t.len);
  for (unsigned long long k = start + threadIdx.x; k < end; k += blockDim.x)
    store_any(t.work, t.work_bf16, k, master[t.offset + k]);
}
