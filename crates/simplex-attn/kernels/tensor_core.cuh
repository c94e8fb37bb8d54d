// Small device helpers shared by the tensor-core kernels (simplicial_fwd_wgmma.cu,
// simplicial_bwd_mma.cu): shared-memory addresses, cp.async, ldmatrix, ex2 and packed bf16x2
// arithmetic on the 32-bit registers that mma/wgmma fragments are made of.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"

namespace simplex {

// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is not read then).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

// Stores to a shared-memory address (st.shared: 4 bytes; 16 bytes, 16-byte aligned).
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t x) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(x) : "memory");
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, float a, float b, float c, float d) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

// Four 8x8 b16 matrices from shared memory (lane l gives the address of row l % 8 of matrix
// l / 8); register i holds matrix i's (row lane / 4, columns 2 (lane % 4) + {0, 1}).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// The same, each matrix transposed: register i holds (rows 2 (lane % 4) + {0, 1}, column lane / 4).
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Elementwise product of two packed bf16 pairs.
__device__ __forceinline__ uint32_t bf2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 z = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&z);
}
// (lo, hi) rounded to a packed bf16 pair.
__device__ __forceinline__ uint32_t bf2_pack(float lo, float hi) {
  __nv_bfloat162 z = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&z);
}
// (x, x) as a packed bf16 pair.
__device__ __forceinline__ uint32_t bf2_splat(__nv_bfloat16 x) {
  __nv_bfloat162 z = __halves2bfloat162(x, x);
  return *reinterpret_cast<uint32_t*>(&z);
}
// A packed bf16 pair as two floats.
__device__ __forceinline__ float2 bf2_float2(uint32_t x) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
}

}  // namespace simplex
