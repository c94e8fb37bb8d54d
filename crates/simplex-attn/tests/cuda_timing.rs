//! Rough timings of the CUDA kernels at the anchor shapes (ignored by default; run explicitly:
//! `cuda_timing-* --ignored --nocapture`, as gpu-bundle/run.sh does). Not a benchmark: host
//! clock around synchronized calls through the candle op, median of a few runs. FLOPs use the
//! spec's convention, 4 * N * w1 * w2 * D per query head (backward counted as 2.5x forward);
//! the exact pair count (causal ramps) is printed beside it.
#![cfg(feature = "cuda")]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use simplex_attn::{simplicial_attn, AttnSpec, Kernels};

struct Config {
    b: usize,
    n: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    w1: usize,
    w2: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(dev: &Device, c: &Config, reps: usize, backward: bool) -> anyhow::Result<f64> {
    // no NaN fill of the outputs (the test bundle turns it on by default): timed as the bench
    let spec = AttnSpec::causal(c.w1, c.w2).with_kernels(Kernels {
        poison_outputs: false,
        ..Kernels::default()
    });
    let r = |h: usize| -> anyhow::Result<Var> {
        let t = Tensor::randn(0f32, 1.0, (c.b, c.n, h, c.d), dev)?.to_dtype(DType::BF16)?;
        Ok(Var::from_tensor(&t)?)
    };
    let (q, k1, k2, v1, v2) = (r(c.hq)?, r(c.hkv)?, r(c.hkv)?, r(c.hkv)?, r(c.hkv)?);
    let dout = Tensor::randn(0f32, 1.0, (c.b, c.n, c.hq, c.d), dev)?.to_dtype(DType::BF16)?;
    let mut times = vec![];
    for rep in 0..=reps {
        dev.synchronize()?;
        let t0 = Instant::now();
        let out = simplicial_attn(&q, &k1, &k2, &v1, &v2, &spec)?;
        if backward {
            let g = (out.o * &dout)?.sum_all()?.backward()?;
            drop(g);
        }
        dev.synchronize()?;
        if rep > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

#[test]
#[ignore = "timing: run explicitly on the GPU machine"]
fn time_forward_and_backward_at_the_anchor_shapes() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let anchors = [
        (
            Config {
                b: 2,
                n: 8192,
                hq: 64,
                hkv: 1,
                d: 128,
                w1: 32,
                w2: 512,
            },
            true,
        ),
        (
            Config {
                b: 2,
                n: 8192,
                hq: 64,
                hkv: 1,
                d: 128,
                w1: 512,
                w2: 32,
            },
            true,
        ),
        (
            Config {
                b: 32,
                n: 1024,
                hq: 8,
                hkv: 8,
                d: 64,
                w1: 512,
                w2: 32,
            },
            true,
        ),
    ];
    for (c, with_bwd) in anchors {
        let flops = 4.0 * (c.b * c.hq * c.n * c.w1 * c.w2 * c.d) as f64;
        let pairs = AttnSpec::causal(c.w1, c.w2).windows(c.n).pairs() as f64;
        let exact = 4.0 * (c.b * c.hq * c.d) as f64 * pairs;
        let fwd = time(&dev, &c, 3, false)?;
        println!(
            "simplicial_fwd bf16 b={} n={} hq={} hkv={} d={} (w1,w2)=({},{}): {:.2} ms, {:.1} TFLOP/s \
             (4*n*w1*w2*d), {:.1} TFLOP/s (exact pairs)",
            c.b, c.n, c.hq, c.hkv, c.d, c.w1, c.w2, fwd * 1e3, flops / fwd / 1e12, exact / fwd / 1e12
        );
        if with_bwd {
            let both = time(&dev, &c, 1, true)?;
            println!(
                "simplicial_fwd+bwd bf16 b={} n={} hq={} hkv={} d={} (w1,w2)=({},{}): {:.2} ms, {:.1} \
                 TFLOP/s (3.5 * 4*n*w1*w2*d)",
                c.b, c.n, c.hq, c.hkv, c.d, c.w1, c.w2, both * 1e3, 3.5 * flops / both / 1e12
            );
        }
    }
    Ok(())
}
