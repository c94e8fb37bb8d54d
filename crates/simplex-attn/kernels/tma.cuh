// Hopper's tensor memory accelerator (TMA) and the shared-memory barriers (mbarrier) its loads
// complete on: the pieces of a load ring in which one producer thread issues whole tiles and
// the hardware signals their arrival.
//
// A tensor map (CUtensorMap, 128 bytes, encoded on the host by cuTensorMapEncodeTiled:
// src/cuda/tma.rs) describes a global tensor and the box one load copies; the kernel takes it
// by value as a `const __grid_constant__` parameter and passes its address to the load. With
// the 128-byte swizzle a box of 64 bf16 columns x R rows lands as R rows of 128 bytes whose
// 16-byte chunks are permuted by row % 8: wgmma.cuh's `sw128` layout, so the tiles are wgmma
// operands as they land (the destination must be 1024-byte aligned). A box over several outer
// dimensions lands as their rows in order, innermost first (a box of G heads x P positions: the
// G heads of the first position, then of the next, ...), swizzled the same way. Rows of the box
// past the tensor's end are filled with zeros and still count toward the bytes the load
// completes.
//
// An mbarrier (8 bytes of shared memory) completes a phase when its expected arrivals have
// arrived and the bytes announced by `arrive_expect_tx` have landed; waiters name the parity
// of the phase they wait for (its count of completions so far, mod 2).
#pragma once

#include <stdint.h>

namespace simplex {

// The host's CUtensorMap, opaque here.
struct alignas(64) TensorMap {
  uint64_t opaque[16];
};

__device__ __forceinline__ void mbar_init(uint32_t bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes the barriers this thread initialized visible to the other threads and to the TMA unit
// (followed by a CTA barrier).
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival.
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival that also announces `bytes` more to land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra.uni WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Copies the box at coordinates (c0, c1, c2, c3) (innermost first, in elements) of the tensor
// `map` describes into shared memory at dst; its bytes complete on the mbarrier `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const TensorMap& map, int c0, int c1, int c2, int c3,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
      "%5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// The same for a three-dimensional map.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const TensorMap& map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// Adds `bytes` (a multiple of 16) of f32 at shared address src element-wise into global memory
// at dst (16-byte aligned), as one bulk operation of the issuing thread's current bulk group
// (the TMA unit reads the shared source asynchronously: see bulk_wait_read).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
}
// Closes the issuing thread's current bulk group.
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until every bulk group this thread committed has finished reading its shared source
// (the buffer may be written again).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Waits until every bulk group this thread committed has completed (its writes are done).
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Fetches the tensor map's 128 bytes ahead of its first load.
__device__ __forceinline__ void tma_prefetch_map(const TensorMap& map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
}

}  // namespace simplex
