// Microbenchmark: the tensor pipe's rate for wgmma m64nNk16 bf16 -> f32 with A from registers
// and B K-major, 128B-swizzled in shared memory, N = 64 and 128, 1 to 3 warpgroups per CTA, one
// CTA per SM. Each warpgroup loops over commit groups of CHAIN k-steps on one accumulator and
// waits for each group before issuing the next (as the attention kernels' products do). Prints
// bf16 MACs per clock per SM (the H100's dense peak is 2048: 989.4e12 / (2 * 132 SMs * 1.83e9))
// and TFLOP/s over all SMs. The operands are arbitrary bit patterns: only the time matters.
// Build and run on the GPU machine (docs/history/kernels.md, 2026-12-07, has a run):
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++20 -o wgmma_rate scripts/wgmma_rate.cu
//   ./wgmma_rate
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

__device__ __forceinline__ uint64_t desc(uint32_t addr) {
  return (static_cast<uint64_t>(0x40000040u) << 32) | ((addr >> 4) + (1u << 16));
}

#define WG_FENCE asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")
#define WG_COMMIT asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory")
#define WG_WAIT0 asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory")

__device__ __forceinline__ void mma64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31},"
      "{%32,%33,%34,%35}, %36, 1, 1, 1, 0;\n"
      : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]),"+f"(d[8]),"+f"(d[9]),"+f"(d[10]),"+f"(d[11]),"+f"(d[12]),"+f"(d[13]),"+f"(d[14]),"+f"(d[15]),"+f"(d[16]),"+f"(d[17]),"+f"(d[18]),"+f"(d[19]),"+f"(d[20]),"+f"(d[21]),"+f"(d[22]),"+f"(d[23]),"+f"(d[24]),"+f"(d[25]),"+f"(d[26]),"+f"(d[27]),"+f"(d[28]),"+f"(d[29]),"+f"(d[30]),"+f"(d[31])
      : "r"(a[0]),"r"(a[1]),"r"(a[2]),"r"(a[3]),"l"(b));
}
__device__ __forceinline__ void mma128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
      "{%64,%65,%66,%67}, %68, 1, 1, 1, 0;\n"
      : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]),"+f"(d[8]),"+f"(d[9]),"+f"(d[10]),"+f"(d[11]),"+f"(d[12]),"+f"(d[13]),"+f"(d[14]),"+f"(d[15]),"+f"(d[16]),"+f"(d[17]),"+f"(d[18]),"+f"(d[19]),"+f"(d[20]),"+f"(d[21]),"+f"(d[22]),"+f"(d[23]),"+f"(d[24]),"+f"(d[25]),"+f"(d[26]),"+f"(d[27]),"+f"(d[28]),"+f"(d[29]),"+f"(d[30]),"+f"(d[31]),
        "+f"(d[32]),"+f"(d[33]),"+f"(d[34]),"+f"(d[35]),"+f"(d[36]),"+f"(d[37]),"+f"(d[38]),"+f"(d[39]),"+f"(d[40]),"+f"(d[41]),"+f"(d[42]),"+f"(d[43]),"+f"(d[44]),"+f"(d[45]),"+f"(d[46]),"+f"(d[47]),"+f"(d[48]),"+f"(d[49]),"+f"(d[50]),"+f"(d[51]),"+f"(d[52]),"+f"(d[53]),"+f"(d[54]),"+f"(d[55]),"+f"(d[56]),"+f"(d[57]),"+f"(d[58]),"+f"(d[59]),"+f"(d[60]),"+f"(d[61]),"+f"(d[62]),"+f"(d[63])
      : "r"(a[0]),"r"(a[1]),"r"(a[2]),"r"(a[3]),"l"(b));
}

// CHAIN k-steps on one accumulator per commit group (as the attention kernels do), ITERS groups.
template <int N, int CHAIN>
__global__ void __launch_bounds__(384, 1) rate(float* out, long long* cycles, int iters) {
  extern __shared__ __align__(1024) uint8_t sm[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(sm)) + 1023u) & ~1023u;
  for (int i = threadIdx.x; i < 256 * 128 / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(sm)[i] = 0x3c003c00u ^ i;
  __syncthreads();
  uint32_t a[4] = {0x3f803f80u ^ threadIdx.x, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  __syncthreads();
  long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    WG_FENCE;
#pragma unroll
    for (int k = 0; k < CHAIN; ++k) {
      const uint64_t b = desc(base + (k % 4) * 32 + (k / 4 % 2) * 16384);
      if constexpr (N == 64) mma64(*reinterpret_cast<float(*)[32]>(d), a, b);
      else mma128(*reinterpret_cast<float(*)[64]>(d), a, b);
    }
    WG_COMMIT;
    WG_WAIT0;
  }
  long long t1 = clock64();
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < N / 2; ++i) s += d[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

template <int N, int CHAIN>
void run(int wgs, int sms) {
  const int iters = 4000;
  float* out; long long* cyc;
  cudaMalloc(&out, sms * 384 * 4); cudaMalloc(&cyc, sms * 8);
  auto k = rate<N, CHAIN>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  k<<<sms, 128 * wgs, 64 * 1024>>>(out, cyc, 10);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cudaEventRecord(e0);
  k<<<sms, 128 * wgs, 64 * 1024>>>(out, cyc, iters);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1);
  long long c; cudaMemcpy(&c, cyc, 8, cudaMemcpyDeviceToHost);
  const double macs = double(iters) * CHAIN * 64.0 * N * 16 * wgs;  // per CTA (= per SM)
  printf("m64n%dk16 RS, chain %2d, %d warpgroup(s): %7.1f MAC/clk/SM, %6.1f TFLOP/s (%s)\n", N, CHAIN, wgs,
         macs / c, 2 * macs * sms / (ms * 1e-3) / 1e12, cudaGetErrorString(cudaGetLastError()));
  cudaFree(out); cudaFree(cyc);
}

int main() {
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  for (int w = 1; w <= 3; ++w) {
    run<64, 4>(w, sms); run<64, 8>(w, sms); run<64, 16>(w, sms);
    run<128, 4>(w, sms); run<128, 8>(w, sms); run<128, 16>(w, sms);
  }
  return 0;
}
