//! The fused ops on the CPU against their candle-op twins (outputs and every input gradient,
//! f64, f32 and bf16) and against central finite differences (f64); bad inputs.

mod common;
mod fused_common;

use candle_core::{DType, Device, Tensor};
use common::assert_close;
use fused_common::{cases, input_values, loss_at, run, Impl};
use simplex_attn::fused::{self, HeadPart, RopeTables, Targets};

fn compare(dtype: DType, rtol: f64) {
    let dev = Device::Cpu;
    for (k, c) in cases(true).iter().enumerate() {
        let values = input_values(c, k as u64);
        let (fo, fg) = run(c, Impl::Fused, &dev, dtype, &values).unwrap();
        let (to, tg) = run(c, Impl::Twin, &dev, DType::F64, &values).unwrap();
        for (i, (f, t)) in fo.iter().zip(&to).enumerate() {
            assert_close(
                &format!("{} {dtype:?}: output {i}", c.name),
                f,
                t,
                rtol,
                rtol * 1e-2,
            );
        }
        for (i, (f, t)) in fg.iter().zip(&tg).enumerate() {
            assert_close(
                &format!("{} {dtype:?}: gradient of input {i}", c.name),
                f,
                t,
                rtol,
                rtol * 1e-2,
            );
        }
    }
}

#[test]
fn fused_equals_twin_in_f64() {
    compare(DType::F64, 1e-10);
}

#[test]
fn fused_equals_twin_in_f32() {
    compare(DType::F32, 2e-5);
}

#[test]
fn fused_equals_twin_in_bf16() {
    compare(DType::BF16, 3e-2);
}

/// Every input gradient of the fused ops against central differences of the same loss.
#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for (k, c) in cases(false).iter().enumerate() {
        let values = input_values(c, 100 + k as u64);
        let (_, grads) = run(c, Impl::Fused, &dev, DType::F64, &values).unwrap();
        for (i, g) in grads.iter().enumerate() {
            let n = values[i].len();
            for e in [0, n / 2, n - 1] {
                let h = 1e-6;
                let mut plus = values.to_vec();
                plus[i][e] += h;
                let mut minus = values.to_vec();
                minus[i][e] -= h;
                let fd = (loss_at(c, &plus).unwrap() - loss_at(c, &minus).unwrap()) / (2.0 * h);
                let tol = 1e-6 * (1.0 + fd.abs());
                assert!(
                    (fd - g[e]).abs() <= tol,
                    "{}: d/d input {i}[{e}]: autograd {} vs finite difference {fd}",
                    c.name,
                    g[e]
                );
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors_that_name_the_problem() {
    let dev = Device::Cpu;
    let x = Tensor::ones((2, 3, 8), DType::F32, &dev).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(fused::rms_norm(
        &x,
        &Tensor::ones(7, DType::F32, &dev).unwrap(),
        1e-5,
    ));
    assert!(e.contains("weight [7] must be [8]"), "{e}");
    let e = err(fused::rms_norm(
        &x,
        &Tensor::ones(8, DType::F32, &dev).unwrap(),
        -1.0,
    ));
    assert!(e.contains("eps"), "{e}");
    let e = err(fused::swiglu(
        &Tensor::ones((2, 5), DType::F32, &dev).unwrap(),
    ));
    assert!(e.contains("must be even"), "{e}");
    let part = |heads, rotate| HeadPart { heads, rotate };
    let e = fused::split_heads(&x, 4, &[part(1, false)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x has 8 columns"), "{e}");
    let e = fused::split_heads(&x, 4, &[part(1, true), part(1, false)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no rotary tables"), "{e}");
    let tab = RopeTables::new(4, 4, 1e4, &dev).unwrap();
    let e = fused::split_heads(&x, 4, &[part(1, true), part(1, false)], Some((&tab, 2)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("positions 2..5 exceed"), "{e}");
    assert!(RopeTables::new(5, 4, 1e4, &dev).is_err());
    let xs = Tensor::ones((3, 4), DType::F32, &dev).unwrap();
    let w = Tensor::ones((5, 4), DType::F32, &dev).unwrap();
    let ids = Tensor::new(&[0u32, 7, 1], &dev).unwrap();
    let tg = Targets {
        ids: &ids,
        ignore: None,
    };
    let e = err(fused::linear_cross_entropy(&xs, &w, tg));
    assert!(e.contains("target 7 is outside the 5 classes"), "{e}");
    let short = Tensor::new(&[0u32, 1], &dev).unwrap();
    let e = err(fused::linear_cross_entropy(
        &xs,
        &w,
        Targets {
            ids: &short,
            ignore: None,
        },
    ));
    assert!(e.contains("targets"), "{e}");
    // the ignore id may be out of range
    let ids = Tensor::new(&[0u32, 999, 1], &dev).unwrap();
    let l = fused::linear_cross_entropy(
        &xs,
        &w,
        Targets {
            ids: &ids,
            ignore: Some(999),
        },
    )
    .unwrap();
    assert!(l.to_scalar::<f32>().unwrap().is_finite());
}

/// A split's second backward through the same graph gives the same gradient (the slots are
/// refilled by each pass).
#[test]
fn split_heads_backward_twice() {
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(
        &Tensor::arange(0f64, 24.0, &dev)
            .unwrap()
            .reshape((1, 2, 12))
            .unwrap(),
    )
    .unwrap();
    let tab = RopeTables::new(4, 8, 1e4, &dev).unwrap();
    let parts = [
        HeadPart {
            heads: 1,
            rotate: true,
        },
        HeadPart {
            heads: 2,
            rotate: false,
        },
    ];
    let outs = fused::split_heads(x.as_tensor(), 4, &parts, Some((&tab, 1))).unwrap();
    let loss = ((&outs[0] * 2.0).unwrap().sum_all().unwrap()
        + outs[1].sqr().unwrap().sum_all().unwrap())
    .unwrap();
    let grad = || {
        loss.backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .to_vec3::<f64>()
            .unwrap()
    };
    let (g1, g2) = (grad(), grad());
    assert_eq!(g1, g2);
}
