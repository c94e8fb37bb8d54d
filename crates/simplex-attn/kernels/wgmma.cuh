// Hopper warpgroup pieces shared by the wgmma kernels (simplicial_fwd_wgmma.cu,
// simplicial_bwd_wgmma.cu and the others that include it): the 1024-byte shared-memory
// alignment and the 128-byte-swizzled operand layout with its descriptors, wgmma
// m64n64k16 (A in registers or shared memory) and m64n128k16 (A in registers), the fences
// around them, named barriers.
#pragma once

#include <stdint.h>

namespace simplex {

// Descriptor of a K-major operand tile in 128-byte-swizzled shared memory: rows of 128 bytes,
// 8-row groups 1024 bytes apart (SBO); the leading offset is unused in this mode. The low word
// holds the address >> 4 (14 bits: shared addresses are below 256 KB) and LBO = 1; the high
// word SBO = 64 and the 128-byte swizzle mode.
__device__ __forceinline__ uint32_t desc_lo(uint32_t addr) { return (addr >> 4) + (1u << 16); }
// The descriptor `offset` bytes (a multiple of 16) past the tile whose low word is `lo`: the
// address field is linear and does not carry, so a k-step's descriptor is one add.
__device__ __forceinline__ uint64_t desc_at(uint32_t lo, uint32_t offset) {
  return (static_cast<uint64_t>(0x40000040u) << 32) | (lo + (offset >> 4));
}
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) { return desc_at(desc_lo(addr), 0); }
// The low word of an MN-major operand's descriptor whose 64-column atoms (each 8-row groups
// 1024 bytes apart, the SBO) lie `atom_stride` bytes apart (the leading offset, LBO): a B
// operand wider than 64 columns, as m64n128's.
__device__ __forceinline__ uint32_t desc_lo_mn(uint32_t addr, uint32_t atom_stride) {
  return (addr >> 4) + ((atom_stride >> 4) << 16);
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128B-swizzled atom.
__device__ __forceinline__ uint32_t sw128(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

// Byte offset of element (row, col) (col a multiple of 8) of a [rows x D] bf16 tile stored as
// D/64 swizzled atoms of `rows` x 128 bytes (columns 64a .. 64a+63 in atom a).
__device__ __forceinline__ uint32_t sw128_tile(int rows, int row, int col) {
  return (col / 64) * (rows * 128) + sw128(row, (col % 64) / 8);
}

// The kernel's dynamic shared memory from its first 1024-byte boundary, where 128-byte-swizzled
// tiles may start (the swizzle pattern repeats every 8 rows of 128 bytes, and the dynamic
// shared memory base is only 16-byte aligned; launches ask for 1024 bytes of slack:
// src/kernels/table.rs). The pad is added to the shared array itself, not to an integer copy
// of its address, so the compiler still knows every pointer derived from the result points to
// shared memory and emits LDS / STS for it (through an integer it emitted generic LD / ST,
// which also recompute the shared window's generic base).
__device__ __forceinline__ uint8_t* aligned_dynamic_smem() {
  extern __shared__ uint8_t dynamic_smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(dynamic_smem));
  return dynamic_smem + ((1024u - (base & 1023u)) & 1023u);
}

// The same start as a 32-bit shared-memory address, for kernels that address their shared
// memory only through PTX operands (cp.async, wgmma descriptors, ldmatrix).
__device__ __forceinline__ uint32_t aligned_dynamic_smem_u32() {
  extern __shared__ uint8_t dynamic_smem[];
  return (static_cast<uint32_t>(__cvta_generic_to_shared(dynamic_smem)) + 1023u) & ~1023u;
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Waits until at most one committed group is still in flight.
__device__ __forceinline__ void wg_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator reads/writes across wgmma issue/wait.
__device__ __forceinline__ void reg_fence(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }
template <int N>
__device__ __forceinline__ void reg_fence(float (&x)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) reg_fence(x[i]);
}

// d (+)= a @ b for a 64 x 64 x 16 step: a from registers (the warp's 16 rows, mma.sync A
// layout), b from a swizzled tile, K-major (TRANS_B = 0: rows of b^T, the K index contiguous) or
// MN-major (TRANS_B = 1: rows of b, the N index contiguous); accumulate = 0 overwrites d.
template <int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  static_assert(TRANS_B == 0 || TRANS_B == 1, "TRANS_B is 0 or 1");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(TRANS_B));
}

// d (+)= a @ b for a 64 x 128 x 16 step, A from registers as for wgmma_m64n64k16_rs (d: the
// m64n128 accumulator, whose first 32 registers are columns 0..63 as an m64n64 one's).
template <int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  static_assert(TRANS_B == 0 || TRANS_B == 1, "TRANS_B is 0 or 1");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(TRANS_B));
}

// d (+)= a @ b for a 64 x 64 x 16 step with both operands in swizzled shared memory, K-major
// (TRANS_A = 0: a as 64 rows of 16 K elements; TRANS_B = 0: b as 64 rows of b^T) or MN-major
// (TRANS_A = 1: a as 16 rows of its 64 M elements; TRANS_B = 1: b as 16 rows of 64 N
// elements); accumulate = 0 overwrites d.
template <int TRANS_A = 0, int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

// Named barriers (ids 1..15; 0 is __syncthreads): sync waits for `count` threads to arrive.
// D (64 x 128) (+)= A B, both operands in shared memory (descriptors): A 64 x 16 (K-major
// unless TRANS_A), B 16 x 128 (K-major unless TRANS_B).
template <int TRANS_A = 0, int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TRANS_A), "n"(TRANS_B));
}

__device__ __forceinline__ void bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes visible to wgmma (async proxy).
__device__ __forceinline__ void fence_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace simplex
