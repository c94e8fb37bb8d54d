//! The dot-product attention CUDA kernels (through `dot_attn` and candle's autograd, bf16 and
//! f32) against the float64 oracle: o, lse, dq, dk and dv.
//!
//! bf16 with D = Dv in {64, 128} runs the tensor-core kernels (the wgmma backward, the
//! persistent wgmma forward at D = 128 and the one-warpgroup forward at D = 64); f32, other
//! head dims and misaligned views run the CUDA-core kernels (`dot::DotKernel`). Built only with
//! `--features cuda`; without a CUDA device each test prints that it was skipped and passes,
//! unless `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh sets it). Outputs are poisoned with NaN
//! before every kernel (the calls ask for it). Errors: relative L2 ||got - want|| / ||want||
//! and the worst element against atol + rtol * max|want|; every comparison is printed, and a
//! test lists all failing comparisons before it fails.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{
    check_all_cuda, compare_outputs, cuda, dot_case as case, poisoned, round_to, DotCase as Case,
    DotData as Data,
};
use rand::{rngs::StdRng, SeedableRng};
use simplex_attn::dot::{dot_attn_backward_reference, dot_attn_reference, has_fused_kernel};
use simplex_attn::kernels::DotBackwardKernels;
use simplex_attn::{dot_attn, DotSpec, Kernels};

/// Seeded inputs of a case, rounded to what `dtype` stores so the oracle sees the kernel's
/// inputs.
fn data(c: &Case, seed: u64, dtype: DType) -> Data {
    let mut x = Data::new(c, seed);
    for v in [&mut x.q, &mut x.k, &mut x.v] {
        round_to(v, dtype);
    }
    x
}

/// o, lse and (dq, dk, dv) of one call.
struct Run {
    o: Vec<f64>,
    lse: Vec<f64>,
    grads: [Vec<f64>; 3],
}

/// A variable holding `offset` padding values then `values`, in `dtype` on `dev`, and the view
/// of `values` in it with `shape`: with `offset` > 0 a contiguous tensor that does not start on a
/// 16-byte boundary (gradients reach the variable through the view).
fn input(
    values: &[f64],
    shape: [usize; 4],
    dtype: DType,
    dev: &Device,
    offset: usize,
) -> anyhow::Result<(Var, Tensor)> {
    let mut padded = vec![0.5; offset];
    padded.extend_from_slice(values);
    let t = Tensor::from_vec(padded, offset + values.len(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let var = Var::from_tensor(&t)?;
    let view = var
        .as_tensor()
        .narrow(0, offset, values.len())?
        .reshape(shape.to_vec())?;
    Ok((var, view))
}

/// Forward, then backward of `sum(o * dout)` through candle's autograd.
fn run_op(
    dev: &Device,
    c: &Case,
    x: &Data,
    dout: &[f64],
    (dtype, offset): (DType, usize),
) -> anyhow::Result<Run> {
    let [qs, ks, vs] = c.shapes();
    let (q, qt) = input(&x.q, qs, dtype, dev, offset)?;
    let (k, kt) = input(&x.k, ks, dtype, dev, offset)?;
    let (v, vt) = input(&x.v, vs, dtype, dev, offset)?;
    let kernels = poisoned(c.spec.kernels);
    let out = dot_attn(&qt, &kt, &vt, &c.spec.with_kernels(kernels))?;
    anyhow::ensure!(out.o.dtype() == dtype, "o is {:?}", out.o.dtype());
    anyhow::ensure!(
        out.lse.dtype() == DType::F32,
        "lse is {:?}",
        out.lse.dtype()
    );
    let (_, dout_t) = input(dout, [c.b, c.nq, c.hq, c.dv], dtype, dev, 0)?;
    let grads = (out.o.clone() * dout_t)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let g = |v: &Var| -> anyhow::Result<Vec<f64>> {
        let g = grads.get(v).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        anyhow::ensure!(g.dtype() == dtype, "gradient is {:?}", g.dtype());
        Ok(flat(g)?[offset..].to_vec())
    };
    Ok(Run {
        o: flat(&out.o)?,
        lse: flat(&out.lse)?,
        grads: [g(&q)?, g(&k)?, g(&v)?],
    })
}

/// Checks one case; returns the failing comparisons (empty when it passes).
fn check_case(dev: &Device, c: &Case, seed: u64, dtype: DType, offset: usize) -> Vec<String> {
    let x = data(c, seed, dtype);
    let dims = c.dims();
    let want = dot_attn_reference(&c.spec, &dims, &x.inputs());
    let mut dout = common::random(want.o.len(), 1.0, &mut StdRng::seed_from_u64(seed + 1));
    round_to(&mut dout, dtype);
    let wg = dot_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let tag = format!("{dtype:?} offset {offset} {c:?}");
    let got = match run_op(dev, c, &x, &dout, (dtype, offset)) {
        Ok(g) => g,
        Err(e) => return vec![format!("{tag}: {e}")],
    };
    compare_outputs(
        &tag,
        &["o", "lse", "dq", "dk", "dv"],
        &[
            &got.o,
            &got.lse,
            &got.grads[0],
            &got.grads[1],
            &got.grads[2],
        ],
        &[&want.o, &want.lse, &wg.dq, &wg.dk, &wg.dv],
        dtype,
    )
}

/// Runs every case in every dtype (bf16 D = Dv in {64, 128} on the tensor-core kernels) and
/// fails listing all failing comparisons.
fn check_all(cases: &[Case], seed: u64, dtypes: &[DType]) {
    check_all_cuda(cases, seed, dtypes, |dev, c, seed, dtype| {
        check_case(dev, c, seed, dtype, 0)
    });
}

const BOTH: [DType; 2] = [DType::BF16, DType::F32];

#[test]
fn tensor_core_shapes_match_oracle_causal_windows_gqa_1_2_8() {
    let (c, sl) = (DotSpec::causal, DotSpec::sliding);
    let cases = [
        case(2, 1, 4, 2, 64, c()),
        case(1, 37, 2, 2, 64, c()),
        case(2, 77, 8, 1, 128, c()),
        case(1, 33, 4, 2, 64, sl(1)),
        case(1, 21, 2, 1, 128, sl(100)),
        case(1, 300, 2, 1, 64, sl(70)),
        case(1, 257, 4, 2, 128, sl(130)),
        case(1, 513, 2, 1, 64, c()),
        case(1, 300, 2, 2, 128, c()),
        case(1, 150, 3, 3, 64, c().with_scale(-0.3)),
        case(2, 1024, 4, 2, 64, c()),
    ];
    check_all(&cases, 1000, &BOTH);
}

#[test]
fn bidirectional_with_and_without_window_match_oracle() {
    let bi = DotSpec::bidirectional;
    let cases = [
        case(2, 45, 4, 4, 64, bi()),
        case(1, 200, 2, 1, 128, bi().with_window(Some(50))),
        case(1, 40, 2, 2, 64, bi().with_window(Some(1))),
        case(1, 1, 8, 1, 128, bi()),
        case(1, 140, 8, 1, 64, bi().with_window(Some(200))),
    ];
    check_all(&cases, 2000, &BOTH);
}

#[test]
fn cache_steps_with_more_keys_than_queries_match_oracle() {
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(2, 1, 8, 1, 64, c()).keys(50),
        case(1, 5, 4, 2, 128, sl(64)).keys(130),
        case(1, 17, 2, 2, 64, bi().with_window(Some(20))).keys(150),
        case(1, 70, 2, 1, 64, c()).keys(200),
        case(1, 130, 4, 1, 128, sl(33)).keys(300),
        case(1, 1, 2, 2, 64, sl(1)).keys(9),
    ];
    check_all(&cases, 3000, &BOTH);
}

#[test]
fn wgmma_tile_edges_match_oracle() {
    // rows r = i G + hh in CTAs of 128 (64 per consumer; the D = 64 forward: CTAs of 64), key
    // tiles of 128 (D = 128 forward), 64 (D = 64 forward, dq), key blocks of 128 (dk/dv)
    // stepping over 64 rows: blocks straddling a query's heads and the sequence end, a consumer
    // without rows, exact multiples, D = 128 key blocks past Nk
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(1, 100, 3, 1, 64, c()),
        case(2, 333, 4, 1, 128, c()),
        case(1, 700, 2, 2, 128, sl(200)),
        case(1, 260, 6, 2, 64, bi().with_window(Some(90))),
        case(1, 64, 2, 1, 64, c()),
        case(1, 128, 1, 1, 128, c()),
        case(1, 190, 4, 4, 64, sl(64)).keys(400),
        case(1, 129, 2, 1, 128, bi()),
        case(1, 90, 2, 1, 128, c().with_scale(-0.2)),
        case(1, 1030, 4, 1, 128, c()),
        case(1, 50, 16, 2, 64, c()).keys(333),
        // the dk/dv kernel's row boxes of G heads x 64 / G queries (G = 32, 64), and its cp.async
        // rows where G does not divide 64 (G = 3, 5) at D = 128
        case(1, 33, 32, 1, 64, c()),
        case(1, 9, 64, 1, 128, bi()),
        case(1, 150, 3, 1, 128, sl(40)),
        case(1, 70, 10, 2, 128, c()).keys(100),
    ];
    check_all(&cases, 7000, &[DType::BF16]);
}

#[test]
fn bidirectional_scaled_and_longer_key_cases_match_oracle() {
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(1, 37, 2, 2, 64, c()),
        case(2, 77, 8, 1, 128, c()),
        case(1, 257, 4, 2, 128, sl(130)),
        case(1, 140, 8, 1, 64, bi().with_window(Some(200))),
        case(1, 70, 2, 1, 64, c()).keys(200),
        case(1, 150, 3, 3, 64, c().with_scale(-0.3)),
    ];
    check_all(&cases, 8000, &[DType::BF16]);
}

/// The case with its dot-product backward forced to `b`.
fn with_dot_backward(mut c: Case, b: DotBackwardKernels) -> Case {
    let k = Kernels {
        dot_backward: b,
        ..c.spec.kernels
    };
    c.spec = c.spec.with_kernels(k);
    c
}

#[test]
fn the_fused_backward_matches_oracle() {
    // D = 128, G dividing 64: pairs pre-pass, dk/dv adding dq's f32 sums, rounding; steps of 64
    // rows aligned to the row space (rows before a block's first row masked), both consumers'
    // dS^T in every step (one without seen keys: zeros), dq tiles past Nq G, keys past Nk,
    // several blocks per CTA (the K tiles' hand-over between items)
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    // (Auto takes it for these shapes; forced here so the test keeps covering it)
    let fused = |c| with_dot_backward(c, DotBackwardKernels::Fused);
    let cases = [
        case(2, 77, 8, 1, 128, c()),
        case(1, 1, 4, 4, 128, c()),
        case(1, 257, 4, 2, 128, sl(130)),
        case(1, 300, 2, 2, 128, c()),
        case(1, 200, 2, 1, 128, bi().with_window(Some(50))),
        case(1, 130, 4, 1, 128, sl(33)).keys(300),
        case(1, 9, 64, 1, 128, bi()),
        case(2, 1030, 4, 1, 128, c()),
    ]
    .map(fused);
    check_all(&cases, 9000, &[DType::BF16]);
}

#[test]
fn the_split_backward_at_d128_matches_oracle() {
    // dq kernel + dk/dv kernel at D = 128, which Auto leaves for the fused backward where the
    // GQA ratio divides 64: forced here (G = 3, 5 run it anyway, tested above)
    let (c, sl) = (DotSpec::causal, DotSpec::sliding);
    let split = |c| with_dot_backward(c, DotBackwardKernels::Split);
    let cases = [
        case(2, 77, 8, 1, 128, c()),
        case(1, 257, 4, 2, 128, sl(130)),
        case(1, 5, 4, 2, 128, sl(64)).keys(130),
        case(1, 9, 64, 1, 128, DotSpec::bidirectional()),
        case(2, 333, 4, 1, 128, c()),
    ]
    .map(split);
    check_all(&cases, 9500, &[DType::BF16]);
}

#[test]
fn other_head_dims_run_the_cuda_core_kernels() {
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(1, 29, 4, 2, 32, c()),
        case(1, 40, 2, 1, 96, sl(9)),
        case(1, 23, 2, 2, 256, bi()),
        case(1, 31, 2, 1, 16, c()).value_dim(40),
        case(1, 19, 4, 4, 64, c()).value_dim(32),
        case(2, 9, 2, 1, 200, c()).keys(20),
        case(1, 50, 8, 1, 3, c()),
        case(1, 70, 2, 2, 128, bi().with_window(Some(7))).value_dim(256),
    ];
    check_all(&cases, 4000, &BOTH);
}

#[test]
fn misaligned_views_run_the_cuda_core_kernels() {
    let Some(dev) = cuda() else { return };
    let cases = [
        case(1, 45, 4, 2, 64, DotSpec::causal()),
        case(1, 30, 2, 2, 128, DotSpec::sliding(7)).keys(40),
    ];
    let mut failures = vec![];
    for (t, c) in cases.iter().enumerate() {
        failures.extend(check_case(&dev, c, 5000 + t as u64, DType::BF16, 3));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn results_are_deterministic_when_asked() -> anyhow::Result<()> {
    // the split backward (D = 64 always; D = 128 with `deterministic`, where the fused one
    // otherwise adds dq's sums in a varying order)
    let Some(dev) = cuda() else { return Ok(()) };
    let det = Kernels {
        deterministic: true,
        ..Kernels::default()
    };
    for c in [
        case(1, 200, 8, 1, 64, DotSpec::causal()),
        case(1, 100, 4, 2, 128, DotSpec::sliding(40).with_kernels(det)),
    ] {
        let x = data(&c, 6, DType::BF16);
        let dout = common::random(c.b * c.nq * c.hq * c.dv, 1.0, &mut StdRng::seed_from_u64(7));
        let a = run_op(&dev, &c, &x, &dout, (DType::BF16, 0))?;
        let b = run_op(&dev, &c, &x, &dout, (DType::BF16, 0))?;
        anyhow::ensure!(
            a.o == b.o && a.lse == b.lse,
            "forward differs between two runs"
        );
        for (t, (ga, gb)) in a.grads.iter().zip(&b.grads).enumerate() {
            anyhow::ensure!(ga == gb, "gradient {t} differs between two runs ({c:?})");
        }
    }
    Ok(())
}

#[test]
fn unsupported_dtypes_and_head_dims_are_clear_errors() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let spec = DotSpec::causal();
    for dtype in [DType::F16, DType::F64] {
        let t = Tensor::ones((1, 4, 2, 8), DType::F32, &dev)?.to_dtype(dtype)?;
        let e = dot_attn(&t, &t, &t, &spec)
            .expect_err("no CUDA kernel")
            .to_string();
        assert!(
            e.contains(&format!("{dtype:?}")) && e.contains("bf16 or f32"),
            "{e}"
        );
        assert!(!has_fused_kernel(&dev, dtype, 8, 8));
    }
    let t = Tensor::ones((1, 4, 2, 320), DType::BF16, &dev)?;
    let e = dot_attn(&t, &t, &t, &spec)
        .expect_err("D too large")
        .to_string();
    assert!(e.contains("D = 320"), "{e}");
    assert!(!has_fused_kernel(&dev, DType::BF16, 320, 320));
    assert!(has_fused_kernel(&dev, DType::BF16, 64, 64));
    assert!(has_fused_kernel(&dev, DType::F32, 7, 200));
    Ok(())
}

/// A bench row without the NaN fill of outputs (the test bundle turns it on by default), as the
/// bench runs it.
fn unpoisoned(
    mut s: simplex_attn::dot::bench::DotBenchShape,
) -> simplex_attn::dot::bench::DotBenchShape {
    s.spec = s.spec.with_kernels(Kernels {
        poison_outputs: false,
        ..s.spec.kernels
    });
    s
}

/// Not a check: times the bench's dot rows (whole op calls, as `simplex bench attn --only dot`)
/// as candle runs them, then with freed device memory kept in the pool, then also without
/// cudarc's per-buffer event tracking (the CLI's setup), each on both clocks of the bench, to
/// separate the op's framework costs from its kernels. Run with `--ignored --nocapture`;
/// changes the device's settings for the rest of the process.
#[test]
#[ignore]
fn op_costs_outside_the_kernels() -> anyhow::Result<()> {
    use simplex_attn::bench::{Clock, Timing};
    use simplex_attn::dot::bench::{cuda_shapes, run_shape};
    let Some(dev) = cuda() else { return Ok(()) };
    let Device::Cuda(cd) = &dev else {
        return Ok(());
    };
    let shapes: Vec<_> = cuda_shapes()
        .into_iter()
        .filter(|s| !s.name.ends_with("-slow"))
        .map(unpoisoned)
        .collect();
    for setting in ["as is", "pool retained", "pool retained, no event tracking"] {
        match setting {
            "pool retained" => simplex_attn::cuda::retain_pool_memory(cd)?,
            "pool retained, no event tracking" => {
                // SAFETY: one stream; buffers created from here on are used on it alone.
                unsafe { cd.disable_event_tracking() }
            }
            _ => {}
        }
        for (s, clock) in shapes
            .iter()
            .flat_map(|s| [(s, Clock::Host), (s, Clock::Events)])
        {
            let timing = Timing {
                clock,
                ..Timing::host(5, 1.0)
            };
            let r = run_shape(s, &dev, &timing, false)?;
            println!(
                "costs {setting:>32} {:>14} {clock:>6}: fwd {:.3} ms, f+b {:.3} ms, outside autograd {:.3} ms",
                s.name,
                r.forward_s * 1e3,
                r.forward_backward_s * 1e3,
                r.forward_backward_direct_s * 1e3,
            );
        }
    }
    Ok(())
}

/// Not a check: one bench row (`SIMPLEX_PROFILE_ROW`, default `dot-lm-layer`) with one timed
/// repetition, forward then forward+backward, for a profiler (`ncu ... cuda_dot --ignored
/// one_bench_row_for_a_profiler`): few kernel launches besides the op's own.
#[test]
#[ignore]
fn one_bench_row_for_a_profiler() -> anyhow::Result<()> {
    use simplex_attn::bench::Timing;
    use simplex_attn::dot::bench::{cuda_shapes, run_shape};
    let Some(dev) = cuda() else { return Ok(()) };
    let name = std::env::var("SIMPLEX_PROFILE_ROW").unwrap_or_else(|_| "dot-lm-layer".into());
    let s = cuda_shapes()
        .into_iter()
        .find(|s| s.name == name)
        .map(unpoisoned)
        .ok_or_else(|| anyhow::anyhow!("no bench row {name}"))?;
    let r = run_shape(&s, &dev, &Timing::host(1, 0.0), false)?;
    println!(
        "{name}: fwd {:.3} ms, f+b {:.3} ms",
        r.forward_s * 1e3,
        r.forward_backward_s * 1e3
    );
    Ok(())
}
