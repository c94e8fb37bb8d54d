#!/usr/bin/env python3
"""PyTorch's dot-product attention at the shapes of `simplex bench attn --only dot-`, for a side
by side with simplex's kernels on the same card (BENCHMARKS.md, "CUDA: dot-product attention").

Times `F.scaled_dot_product_attention` (causal, bf16) with one backend at a time (cuDNN, flash,
memory-efficient), the forward and forward + backward (`o.backward(dout)`), after warm-up, on
one of two clocks (`--clock`, as `simplex bench attn --clock`): `events` (default), the device
time between CUDA events recorded around each call; `host`, the wall clock from the call's start
to a synchronize after it. Prints the median and min per call and TFLOP/s in simplex's
convention: forward 4 * D * pairs * Hq * B with the causal pairs counted exactly (N (N + 1) / 2
per head), forward + backward 3.5x that. The times include PyTorch's own work around the
kernels (allocation, autograd); for the kernels alone, run it under scripts/kernel_trace.c and
read the trace with `scripts/kernel_gaps.py --per-kernel`.

    python3 scripts/torch_attention.py [--backends cudnn flash efficient] [--shapes lm d128]
                                       [--reps 50] [--warmup 10] [--clock events|host]

Shapes: lm = B 32, N 1024, H 8, D 64 (the `25m` model's attention layer); d128 = B 4, N 4096,
Hq 32, Hkv 8, D 128 (GQA 4, `enable_gqa=True`).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"lm": (32, 1024, 8, 8, 64), "d128": (4, 4096, 32, 8, 128)}
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def timed(fn, reps, warmup, clock):
    """Median and min milliseconds of fn() over reps calls, each between CUDA events (clock
    "events") or from its start to a synchronize after it on the host (clock "host")."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if clock == "host":
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--clock", default="events", choices=["events", "host"])
    a = ap.parse_args()
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, clock {a.clock}")
    for shape in a.shapes:
        b, n, hq, hkv, d = SHAPES[shape]
        gen = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(b, hq, n, d, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_()
        k = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_()
        v = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_()
        dout = torch.randn(b, hq, n, d, device=dev, dtype=torch.bfloat16, generator=gen)
        gflop = 4 * d * (n * (n + 1) // 2) * hq * b / 1e9
        for name in a.backends:

            def fwd():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv)

            def fwd_bwd():
                q.grad = k.grad = v.grad = None
                fwd().backward(dout)

            try:
                with sdpa_kernel(BACKENDS[name]):
                    with torch.no_grad():
                        f_med, f_min = timed(fwd, a.reps, a.warmup, a.clock)
                    fb_med, fb_min = timed(fwd_bwd, a.reps, a.warmup, a.clock)
            except RuntimeError as e:  # the backend does not take this shape or card
                print(f"{shape:5} {name:9} not run: {str(e).splitlines()[0][:100]}")
                continue
            print(f"{shape:5} {name:9} fwd {f_med:.3f} ms (min {f_min:.3f}; {gflop / f_med:.1f} TFLOP/s)  "
                  f"f+b {fb_med:.3f} ms (min {fb_min:.3f}; {3.5 * gflop / fb_med:.1f} TFLOP/s)")


if __name__ == "__main__":
    main()
