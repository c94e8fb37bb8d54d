// A CUPTI injection library that writes every kernel, memcpy and memset of a CUDA program with
// its device start and end times (ns, the GPU's own clock) to a tab-separated file, without
// serializing anything: the program runs as it does without it. For questions a per-kernel
// profiler cannot answer, such as how long the device sits idle between the kernels of a
// training update (ncu replays kernels one at a time; the machine has no nsys).
//
// Build (here, no GPU needed; CUPTI from the nvidia-cuda-cupti 13.0 wheel, unpacked into CUPTI):
//   gcc -O2 -shared -fPIC -o kernel_trace.so scripts/kernel_trace.c
//     -I$CUPTI/nvidia/cu13/include -I$CUDA_INCLUDE -L$CUPTI/nvidia/cu13/lib -l:libcupti.so.13
// (CUDA_INCLUDE: a folder with cuda.h, e.g. .toolchain's nvidia/cu13/include.)
// Run (on the GPU machine; libcupti.so.13 from the same wheel on LD_LIBRARY_PATH):
//   CUDA_INJECTION64_PATH=$PWD/kernel_trace.so KERNEL_TRACE_OUT=trace.tsv ./program ...
// The driver loads the library at cuInit and calls InitializeInjection. Records are written as
// CUPTI hands over its buffers and at exit. Lines: kind (K kernel, C memcpy, S memset), start,
// end, stream id, name (kernels only). scripts/kernel_gaps.py reads them.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *trace_out;
enum { BUFFER_BYTES = 16 << 20 };

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
  *buffer = (uint8_t *)aligned_alloc(8, BUFFER_BYTES);
  *size = *buffer ? BUFFER_BYTES : 0;
  *max_records = 0;  // as many as fit
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  (void)ctx, (void)stream, (void)size;
  CUpti_Activity *record = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)record;
        fprintf(trace_out, "K\t%llu\t%llu\t%u\t%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
                k->streamId, k->name ? k->name : "?");
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)record;
        fprintf(trace_out, "C\t%llu\t%llu\t%u\tmemcpy %llu bytes\n", (unsigned long long)m->start,
                (unsigned long long)m->end, m->streamId, (unsigned long long)m->bytes);
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)record;
        fprintf(trace_out, "S\t%llu\t%llu\t%u\tmemset %llu bytes\n", (unsigned long long)m->start,
                (unsigned long long)m->end, m->streamId, (unsigned long long)m->bytes);
        break;
      }
      default:
        break;
    }
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS && dropped)
    fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
  free(buffer);
}

static void flush_at_exit(void) {
  cuptiActivityFlushAll(1);
  if (trace_out) fflush(trace_out);
}

static int check(CUptiResult r, const char *what) {
  if (r == CUPTI_SUCCESS) return 1;
  const char *msg = NULL;
  cuptiGetResultString(r, &msg);
  fprintf(stderr, "kernel_trace: %s failed: %s\n", what, msg ? msg : "?");
  return 0;
}

int InitializeInjection(void) {
  const char *path = getenv("KERNEL_TRACE_OUT");
  trace_out = fopen(path ? path : "kernel_trace.tsv", "w");
  if (!trace_out) {
    fprintf(stderr, "kernel_trace: cannot write %s\n", path ? path : "kernel_trace.tsv");
    return 0;
  }
  if (!check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks") ||
      !check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels") ||
      !check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpy") ||
      !check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memset"))
    return 0;
  atexit(flush_at_exit);
  return 1;
}
