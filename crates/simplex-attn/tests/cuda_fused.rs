//! The fused ops' CUDA kernels (bf16 and f32) against their candle-op twins: every output and
//! input gradient, compared with the twin run in f64 on the CPU from the same (dtype-rounded)
//! inputs and with the twin run on the GPU; the flat AdamW against its per-element reference
//! and its exact state round trip; repeated calls give identical bits (no atomics). Built only
//! with `--features cuda`; without a CUDA device each test prints that it was skipped and
//! passes, unless `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh sets it). Outputs are poisoned
//! with NaN before every kernel in debug builds and with the `poison-outputs` feature (the
//! GPU test bundle builds the tests with it); a release build without it says so.
#![cfg(feature = "cuda")]

mod adamw_common;
mod common;
mod fused_common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, cuda};
use fused_common::{cases, input_values, run, Impl};

fn rounded(values: &[Vec<f64>], dtype: DType) -> Vec<Vec<f64>> {
    values
        .iter()
        .map(|v| {
            Tensor::from_vec(v.clone(), v.len(), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F64)?.to_vec1())
                .unwrap()
        })
        .collect()
}

#[test]
fn fused_kernels_match_the_twins() {
    let Some(dev) = cuda() else { return };
    if !simplex_attn::kernels::POISON_BY_DEFAULT {
        println!(
            "note: outputs are not poisoned (build with --features cuda,poison-outputs to see \
             unwritten elements)"
        );
    }
    for (dtype, rtol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        for (k, c) in cases(true).iter().enumerate() {
            let values = rounded(&input_values(c, k as u64), dtype);
            let (fo, fg) = run(c, Impl::Fused, &dev, dtype, &values).unwrap();
            let (to, tg) = run(c, Impl::Twin, &Device::Cpu, DType::F64, &values).unwrap();
            let (go, gg) = run(c, Impl::Twin, &dev, dtype, &values).unwrap();
            for (what, f, t, g) in [
                ("output", &fo, &to, &go),
                ("gradient of input", &fg, &tg, &gg),
            ] {
                for (i, ((f, t), g)) in f.iter().zip(t).zip(g).enumerate() {
                    let name = format!("{} {dtype:?}: {what} {i}", c.name);
                    assert_close(&format!("{name} vs the f64 twin"), f, t, rtol, rtol * 1e-2);
                    assert_close(
                        &format!("{name} vs the twin on the GPU"),
                        f,
                        g,
                        2.0 * rtol,
                        rtol * 1e-2,
                    );
                }
            }
            println!("ok {} {dtype:?}", c.name);
        }
    }
}

/// Two runs of every fused op give the same bits (no atomics, fixed reduction orders).
#[test]
fn fused_kernels_are_deterministic() {
    let Some(dev) = cuda() else { return };
    for (k, c) in cases(true).iter().enumerate() {
        let values = input_values(c, k as u64);
        let a = run(c, Impl::Fused, &dev, DType::BF16, &values).unwrap();
        let b = run(c, Impl::Fused, &dev, DType::BF16, &values).unwrap();
        assert_eq!(a, b, "{}: two runs differ", c.name);
    }
}

#[test]
fn flat_adamw_on_cuda_matches_the_reference() {
    let Some(dev) = cuda() else { return };
    for dtype in [DType::F32, DType::BF16] {
        adamw_common::check_against_reference(&dev, dtype);
    }
    adamw_common::round_trip_is_exact(&dev);
}

/// The training path's RMSNorm outside autograd (`rms_norm_saved`, `rms_norm_grads`) on CUDA:
/// the output and the gradient (with the residual gradient added in the kernel's pass, odd
/// widths included) against the same functions on the CPU in f64.
#[test]
fn norm_outside_autograd_adds_the_residual_gradient_in_its_pass() {
    let Some(dev) = cuda() else { return };
    let flat = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .unwrap()
    };
    for (dtype, rtol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        for (rows, c) in [(37, 64), (5, 24), (130, 512)] {
            let r = |seed: u64, shape: &[usize]| {
                let n: usize = shape.iter().product();
                let v: Vec<f64> = (0..n)
                    .map(|i| ((i as f64 + 1.0) * (0.37 + seed as f64 * 0.11)).sin())
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
            };
            let (x, a, w) = (
                r(1, &[rows, c]),
                r(2, &[rows, c]),
                (r(3, &[c]) + 1.5).unwrap(),
            );
            let (dy, plus) = (r(4, &[rows, c]), r(5, &[rows, c]));
            let on =
                |t: &Tensor, d: &Device, dt: DType| t.to_dtype(dt).unwrap().to_device(d).unwrap();
            let grads = |d: &Device, dt: DType| {
                let (h, y, saved) = simplex_attn::fused::rms_norm_saved(
                    &on(&x, d, dt),
                    Some(&on(&a, d, dt)),
                    &on(&w, d, dt),
                    1e-5,
                )
                .unwrap();
                let (dh, dw) = simplex_attn::fused::rms_norm_grads(
                    &on(&dy, d, dt),
                    &saved,
                    &on(&w, d, dt),
                    Some(&on(&plus, d, dt)),
                )
                .unwrap();
                [h, y, dh, dw].map(|t| flat(&t))
            };
            let got = grads(&dev, dtype);
            let want = grads(&Device::Cpu, DType::F64);
            for (i, name) in ["h", "y", "plus + dh", "dw"].iter().enumerate() {
                let what = format!("{dtype:?} rows {rows} c {c}: {name}");
                assert_close(&what, &got[i], &want[i], rtol, rtol * 1e-2);
            }
        }
    }
}
