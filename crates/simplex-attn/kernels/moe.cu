// Mixture-of-experts kernels (src/moe/*.rs has the math, the CPU versions and the launch code).
//
// Routing, for T tokens, E experts, k experts per token, A = T k assignments (a = t k + j):
//   moe_topk          idx[t, :] = the k largest scores of row t, descending, ties to the lower
//                     expert (one thread per row)
//   moe_rank          rank[a] = earlier assignments to the same expert, counts[e] (one block
//                     per expert walks the assignments in order: a stable counting sort)
//   moe_offsets       offsets[e] = kept assignments of experts < e (kept: rank < capacity)
//   moe_slots         slot_of[a] = offsets[e] + rank[a] (or NONE when dropped), slot_assign
//                     its inverse; slots >= offsets[E] hold no assignment (NONE)
// Rows in expert order, M = A slots of C values:
//   moe_permute       xp[s] = x[slot_assign[s] / k] (zero for an empty slot)
//   moe_permute_bwd   dx[t] = sum_j dxp[slot_of[t k + j]]
//   moe_combine       out[t] = sum_j w[t k + j] yp[slot_of[t k + j]]          (f32 sums)
//   moe_combine_bwd   dyp[s] = w[a] dout[a / k] (a = slot_assign[s]); dw[a] = dout[a / k] . yp[slot_of[a]]
// Grouped products (rows s of expert e: offsets[e] <= s < offsets[e + 1]):
//   gmm_*_fwd         y = x W_e^T for the rows of group e; rows at or past offsets[E] are zero
//   gmm_*_dx          dx = dy W_e, the same way
//   gmm_*_dw          dW_e = dy_e^T x_e: the group's rows are the reduction range (zero when empty)
//
// The bf16 products (gmm_mma_*): 128 x 128 output tiles, 8 warps (2 x 4, each 64 x 32 through
// 4 x 4 mma.sync m16n8k16 with f32 accumulators: 64 registers), k steps of 64 through a 3-stage
// cp.async pipeline (32 KB per stage: 96 KB of shared memory), tiles stored with 16-byte chunks
// XOR-swizzled by row (chunk ^ (row & 7)) so that cp.async stores and ldmatrix loads are free
// of bank conflicts in both orientations (a tile stored k-major is read with ldmatrix.trans).
// Each thread block finds its group from the offsets on the device, so a launch needs no
// token counts on the host: the grid holds ceil(M / 128) + E + 1 row tiles, the most any
// split of M rows into E groups can need, and the blocks past the last tile return at once.
// The f32 products (gmm_simt_*) are plain 16 x 16 shared-memory tiles, for f32 runs and for
// shapes the tensor-core path does not take (a width not a multiple of 8).
#include <cuda_bf16.h>
#include <stdint.h>

#include "tensor_core.cuh"

typedef __nv_bfloat16 bf16;

using simplex::cp_async16;
using simplex::ldsm_x4;
using simplex::ldsm_x4_t;
using simplex::smem_u32;

namespace {

constexpr uint32_t NONE = 0xffffffffu;

__device__ __forceinline__ float f32(float x) { return x; }
__device__ __forceinline__ float f32(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T cast(float x);
template <> __device__ __forceinline__ float cast<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 cast<bf16>(float x) { return __float2bfloat16_rn(x); }

// ---- permutation ----

// One block per slot: copies token row slot_assign[s] / k of x into row s of xp (zeros when
// the slot is empty). Rows are moved as 16-byte words when `vec` (row bytes and addresses
// multiples of 16), else element by element.
template <typename T>
__device__ void permute(const T* x, const uint32_t* slot_assign, T* xp, int c, int k, int vec) {
  const int s = blockIdx.x;
  const uint32_t a = slot_assign[s];
  T* dst = xp + (size_t)s * c;
  if (vec) {
    const int words = c * (int)sizeof(T) / 16;
    uint4* d = reinterpret_cast<uint4*>(dst);
    if (a == NONE) {
      for (int i = threadIdx.x; i < words; i += blockDim.x) d[i] = make_uint4(0, 0, 0, 0);
    } else {
      const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)(a / k) * c);
      for (int i = threadIdx.x; i < words; i += blockDim.x) d[i] = src[i];
    }
    return;
  }
  const T* src = x + (size_t)(a / k) * c;
  for (int i = threadIdx.x; i < c; i += blockDim.x) dst[i] = a == NONE ? cast<T>(0.f) : src[i];
}

// One block per token: dx[t] = sum over its kept slots of dxp (f32 sums, in j order).
template <typename T>
__device__ void permute_bwd(const T* dxp, const uint32_t* slot_of, T* dx, int c, int k) {
  const int t = blockIdx.x;
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const uint32_t s = slot_of[(size_t)t * k + j];
      if (s != NONE) acc += f32(dxp[(size_t)s * c + i]);
    }
    dx[(size_t)t * c + i] = cast<T>(acc);
  }
}

// One block per token: out[t] = sum_j w[t k + j] yp[slot_of[t k + j]].
template <typename T>
__device__ void combine(const T* yp, const float* w, const uint32_t* slot_of, T* out, int c, int k) {
  const int t = blockIdx.x;
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const size_t a = (size_t)t * k + j;
      const uint32_t s = slot_of[a];
      if (s != NONE) acc += w[a] * f32(yp[(size_t)s * c + i]);
    }
    out[(size_t)t * c + i] = cast<T>(acc);
  }
}

// dyp[s] = w[a] dout[a / k] for a = slot_assign[s] (zero for an empty slot); one block per slot.
template <typename T>
__device__ void combine_bwd_rows(const T* dout, const float* w, const uint32_t* slot_assign, T* dyp, int c, int k) {
  const int s = blockIdx.x;
  const uint32_t a = slot_assign[s];
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    dyp[(size_t)s * c + i] = a == NONE ? cast<T>(0.f) : cast<T>(w[a] * f32(dout[(size_t)(a / k) * c + i]));
  }
}

// dw[a] = dout[a / k] . yp[slot_of[a]] (zero when dropped); one warp per assignment.
template <typename T>
__device__ void combine_bwd_weights(const T* dout, const T* yp, const uint32_t* slot_of, float* dw, int n_assign, int c, int k) {
  const int warps = blockDim.x / 32;
  const int a = blockIdx.x * warps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= n_assign) return;
  const uint32_t s = slot_of[a];
  float acc = 0.f;
  if (s != NONE) {
    const T* d = dout + (size_t)(a / k) * c;
    const T* y = yp + (size_t)s * c;
    for (int i = lane; i < c; i += 32) acc += f32(d[i]) * f32(y[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) dw[a] = acc;
}

// ---- grouped products ----

// What one thread block computes: rows [row_begin, row_end) of its group's output starting at
// row i0 (group-row mode), or its expert (group-k mode); `e == E` marks the zero tail.
struct TileJob {
  int e;
  int i0, row_end;
};

// Group-row mode: the t-th row tile over the groups in order, then the zero tail
// [offsets[E], m). False when t is past the last tile.
__device__ bool row_tile(const uint32_t* offsets, int n_groups, int m, int bm, int t, TileJob& job) {
  for (int e = 0; e <= n_groups; ++e) {
    const int begin = offsets[e];
    const int end = e < n_groups ? (int)offsets[e + 1] : m;
    const int tiles = (end - begin + bm - 1) / bm;
    if (t < tiles) {
      job.e = e;
      job.i0 = begin + t * bm;
      job.row_end = end;
      return true;
    }
    t -= tiles;
  }
  return false;
}

// The arguments of one grouped product C = A B^T:
//   A(i, kk) = ta ? a[kk * lda + i] : a[i * lda + kk]      B(j, kk) = tb ? b[kk * ldb + j] : b[j * ldb + kk]
// group-row mode: C is m x n (rows of group e use B + e * b_group); group-k mode: C_e = c + e *
// c_group is m x n and the reduction runs over kk in [offsets[e], offsets[e + 1]).
template <typename T>
struct Gmm {
  const T* a;
  const T* b;
  T* c;
  const uint32_t* offsets;
  int n_groups;
  int m, n, k;
  int lda, ldb, ldc;
  long long b_group, c_group;
};

// The job of this block; false: nothing to do. Sets the reduction range [k_begin, k_end) and
// points b / c at the group's matrices.
template <typename T, bool GROUP_K>
__device__ bool setup(Gmm<T>& g, int bm, TileJob& job, int& k_begin, int& k_end) {
  if (GROUP_K) {
    job.e = blockIdx.z;
    job.i0 = blockIdx.y * bm;
    job.row_end = g.m;
    k_begin = g.offsets[job.e];
    k_end = g.offsets[job.e + 1];
    g.c += (long long)job.e * g.c_group;
    return true;
  }
  if (!row_tile(g.offsets, g.n_groups, g.m, bm, blockIdx.y, job)) return false;
  k_begin = 0;
  k_end = job.e < g.n_groups ? g.k : 0;  // the tail multiplies nothing: zeros
  if (job.e < g.n_groups) g.b += (long long)job.e * g.b_group;
  return true;
}

// -- f32 / fallback: 16 x 16 tiles, one output per thread --
template <typename T, bool TA, bool TB, bool GROUP_K>
__device__ void gmm_simt(Gmm<T> g) {
  constexpr int TS = 16;
  __shared__ float as[TS][TS + 1], bs[TS][TS + 1];
  TileJob job;
  int k_begin, k_end;
  if (!setup<T, GROUP_K>(g, TS, job, k_begin, k_end)) return;
  const int tx = threadIdx.x % TS, ty = threadIdx.x / TS;
  const int i = job.i0 + ty, j = blockIdx.x * TS + tx;
  float acc = 0.f;
  for (int k0 = k_begin; k0 < k_end; k0 += TS) {
    // as[r][q] = A(i0 + r, k0 + q), bs[r][q] = B(j0 + r, k0 + q)
    {
      const int r = ty, q = tx, ii = job.i0 + r, kk = k0 + q;
      const bool ok = ii < job.row_end && kk < k_end;
      as[r][q] = ok ? f32(TA ? g.a[(size_t)kk * g.lda + ii] : g.a[(size_t)ii * g.lda + kk]) : 0.f;
      const int jj = blockIdx.x * TS + r;
      const bool okb = jj < g.n && kk < k_end;
      bs[r][q] = okb ? f32(TB ? g.b[(size_t)kk * g.ldb + jj] : g.b[(size_t)jj * g.ldb + kk]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < TS; ++q) acc += as[ty][q] * bs[tx][q];
    __syncthreads();
  }
  if (i < job.row_end && j < g.n) g.c[(size_t)i * g.ldc + j] = cast<T>(acc);
}

// -- bf16 tensor cores --
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3, THREADS = 256;
// Thread blocks per SM the register budget is cut for: 2, at most 128 registers a thread (a few
// spill; 1 block per SM with 190 registers and no spills measured no faster: docs/history/moe.md).
constexpr int MIN_BLOCKS = 2;
constexpr int TILE_BYTES = BM * BK * 2;  // one operand tile of one stage (BN == BM)
constexpr int SMEM = STAGES * 2 * TILE_BYTES;
static_assert(SMEM == 98304, "src/moe/cuda.rs (MMA_SMEM) launches the products with 96 KB of shared memory");

// Byte offset of 16-byte chunk `ch` of row `row` in a tile of `chunks` chunks per row.
__device__ __forceinline__ uint32_t swz(int row, int ch, int chunks) {
  return (uint32_t)((row * chunks + (ch ^ (row & 7))) * 16);
}

// Loads the tile of one operand for reduction steps [kt, kt + BK) into `dst`:
// rows [r0, r0 + 128) of X(r, kk) (valid rows < r_end, valid kk < k_end), stored [128][64]
// (8 chunks per row) when X is row-major in kk, or [64][128] (16 chunks per row) when it is
// stored transposed (kk-major).
template <bool TRANS>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* x, int ld, int r0, int r_end, int kt, int k_end) {
#pragma unroll
  for (int it = 0; it < 4; ++it) {
    const int q = threadIdx.x + it * THREADS;
    if (!TRANS) {
      const int row = q / 8, ch = q % 8;
      const int r = r0 + row, kk = kt + ch * 8;
      const bool ok = r < r_end && kk < k_end;
      cp_async16(dst + swz(row, ch, 8), ok ? x + (size_t)r * ld + kk : x, ok);
    } else {
      const int row = q / 16, ch = q % 16;
      const int kk = kt + row, r = r0 + ch * 8;
      const bool ok = kk < k_end && r < r_end;
      cp_async16(dst + swz(row, ch, 16), ok ? x + (size_t)kk * ld + r : x, ok);
    }
  }
}

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

template <bool TA, bool TB, bool GROUP_K>
__device__ void gmm_mma(Gmm<bf16> g) {
  extern __shared__ __align__(128) unsigned char smem[];
  TileJob job;
  int k_begin, k_end;
  if (!setup<bf16, GROUP_K>(g, BM, job, k_begin, k_end)) return;
  const int j0 = blockIdx.x * BN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp % 2, wn = warp / 2;  // warp tile: rows wm * 64.., columns wn * 32..
  const uint32_t base = smem_u32(smem);
  auto a_tile = [&](int s) { return base + (uint32_t)(s * 2 * TILE_BYTES); };
  auto b_tile = [&](int s) { return base + (uint32_t)(s * 2 * TILE_BYTES + TILE_BYTES); };

  float acc[4][4][4];
#pragma unroll
  for (int x = 0; x < 4; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y)
#pragma unroll
      for (int z = 0; z < 4; ++z) acc[x][y][z] = 0.f;

  const int ktiles = (k_end - k_begin + BK - 1) / BK;
  auto load = [&](int kt, int s) {
    const int k0 = k_begin + kt * BK;
    load_tile<TA>(a_tile(s), g.a, g.lda, job.i0, job.row_end, k0, k_end);
    load_tile<TB>(b_tile(s), g.b, g.ldb, j0, g.n, k0, k_end);
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < ktiles) load(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
    cp_async_commit();
    const uint32_t at = a_tile(kt % STAGES), bt = b_tile(kt % STAGES);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t bf[4][2];
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int c0 = wn * 32 + p * 16, mat = lane / 8;
        uint32_t r[4];
        if (!TB) {
          ldsm_x4(r, bt + swz(c0 + (mat / 2) * 8 + lane % 8, kk * 2 + mat % 2, 8));
        } else {
          ldsm_x4_t(r, bt + swz(kk * 16 + (mat % 2) * 8 + lane % 8, (c0 + (mat / 2) * 8) / 8, 16));
        }
        bf[2 * p][0] = r[0], bf[2 * p][1] = r[1], bf[2 * p + 1][0] = r[2], bf[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int r0 = wm * 64 + mi * 16;
        uint32_t af[4];
        if (!TA) {
          ldsm_x4(af, at + swz(r0 + lane % 16, kk * 2 + lane / 16, 8));
        } else {
          const int mat = lane / 8;
          ldsm_x4_t(af, at + swz(kk * 16 + (mat / 2) * 8 + lane % 8, (r0 + (mat % 2) * 8) / 8, 16));
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma(acc[mi][ni], af, bf[ni][0], bf[ni][1]);
      }
    }
  }
  cp_async_wait<0>();
  // c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1] of each 16 x 8 block
  const int gr = lane / 4, tc = 2 * (lane % 4);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = job.i0 + wm * 64 + mi * 16 + gr + 8 * h;
        const int j = j0 + wn * 32 + ni * 8 + tc;
        if (i < job.row_end && j < g.n) {
          const __nv_bfloat162 v = __floats2bfloat162_rn(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
          *reinterpret_cast<__nv_bfloat162*>(g.c + (size_t)i * g.ldc + j) = v;
        }
      }
}

}  // namespace

// ---- entry points ----

extern "C" __global__ void moe_topk(const float* scores, uint32_t* idx, int t_rows, int e_cols, int k) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= t_rows) return;
  const float* s = scores + (size_t)t * e_cols;
  uint32_t* out = idx + (size_t)t * k;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    float bv = 0.f;
    for (int e = 0; e < e_cols; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= out[i] == (uint32_t)e;
      if (taken) continue;
      const float v = s[e];
      if (best < 0 || v > bv) best = e, bv = v;
    }
    out[j] = (uint32_t)best;
  }
}

extern "C" __global__ void moe_rank(const uint32_t* idx, uint32_t* rank, uint32_t* counts, int n_assign) {
  __shared__ uint32_t warp_sums[32];
  __shared__ uint32_t done;
  const uint32_t e = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (threadIdx.x == 0) done = 0;
  __syncthreads();
  for (int a0 = 0; a0 < n_assign; a0 += blockDim.x) {
    const int a = a0 + threadIdx.x;
    const bool mine = a < n_assign && idx[a] == e;
    const uint32_t ballot = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_sums[warp] = __popc(ballot);
    __syncthreads();
    uint32_t before = done + __popc(ballot & ((1u << lane) - 1));
    for (int w = 0; w < warp; ++w) before += warp_sums[w];
    if (mine) rank[a] = before;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < warps; ++w) done += warp_sums[w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) counts[e] = done;
}

extern "C" __global__ void moe_offsets(const uint32_t* counts, uint32_t* offsets, int n_experts, uint32_t capacity) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  uint32_t s = 0;
  for (int e = 0; e < n_experts; ++e) {
    offsets[e] = s;
    s += min(counts[e], capacity);
  }
  offsets[n_experts] = s;
}

extern "C" __global__ void moe_slots(const uint32_t* idx, const uint32_t* rank, const uint32_t* offsets, uint32_t* slot_of,
                                     uint32_t* slot_assign, int n_assign, int n_experts, uint32_t capacity) {
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n_assign) return;
  if ((uint32_t)a >= offsets[n_experts]) slot_assign[a] = NONE;
  const uint32_t e = idx[a], r = rank[a];
  if (r < capacity) {
    const uint32_t s = offsets[e] + r;
    slot_of[a] = s;
    slot_assign[s] = (uint32_t)a;
  } else {
    slot_of[a] = NONE;
  }
}

#define MOE_ROWS(name, T)                                                                                       \
  extern "C" __global__ void moe_permute_##name(const T* x, const uint32_t* slot_assign, T* xp, int c, int k,   \
                                                int vec) {                                                      \
    permute<T>(x, slot_assign, xp, c, k, vec);                                                                  \
  }                                                                                                             \
  extern "C" __global__ void moe_permute_bwd_##name(const T* dxp, const uint32_t* slot_of, T* dx, int c, int k) { \
    permute_bwd<T>(dxp, slot_of, dx, c, k);                                                                     \
  }                                                                                                             \
  extern "C" __global__ void moe_combine_##name(const T* yp, const float* w, const uint32_t* slot_of, T* out,   \
                                                int c, int k) {                                                 \
    combine<T>(yp, w, slot_of, out, c, k);                                                                      \
  }                                                                                                             \
  extern "C" __global__ void moe_combine_bwd_rows_##name(const T* dout, const float* w,                         \
                                                         const uint32_t* slot_assign, T* dyp, int c, int k) {   \
    combine_bwd_rows<T>(dout, w, slot_assign, dyp, c, k);                                                       \
  }                                                                                                             \
  extern "C" __global__ void moe_combine_bwd_weights_##name(const T* dout, const T* yp, const uint32_t* slot_of, \
                                                            float* dw, int n_assign, int c, int k) {            \
    combine_bwd_weights<T>(dout, yp, slot_of, dw, n_assign, c, k);                                              \
  }                                                                                                             \
  extern "C" __global__ void gmm_simt_fwd_##name(Gmm<T> g) { gmm_simt<T, false, false, false>(g); }              \
  extern "C" __global__ void gmm_simt_dx_##name(Gmm<T> g) { gmm_simt<T, false, true, false>(g); }               \
  extern "C" __global__ void gmm_simt_dw_##name(Gmm<T> g) { gmm_simt<T, true, true, true>(g); }

MOE_ROWS(bf16, bf16)
MOE_ROWS(f32, float)

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) gmm_mma_fwd_bf16(Gmm<bf16> g) { gmm_mma<false, false, false>(g); }
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) gmm_mma_dx_bf16(Gmm<bf16> g) { gmm_mma<false, true, false>(g); }
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) gmm_mma_dw_bf16(Gmm<bf16> g) { gmm_mma<true, true, true>(g); }
