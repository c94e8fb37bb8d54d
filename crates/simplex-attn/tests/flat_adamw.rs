//! The flat multi-tensor AdamW against a plain per-element loop in f64: gathering (copy,
//! accumulate, missing gradients), global-norm clipping (on and off), weight decay only where
//! marked, f32 and bf16 working copies, and an exact state round trip.

mod adamw_common;

use adamw_common::{check_against_reference, round_trip_is_exact};
use candle_core::{DType, Device};

#[test]
fn flat_adamw_matches_the_per_element_reference() {
    for dtype in [DType::F32, DType::BF16] {
        check_against_reference(&Device::Cpu, dtype);
    }
}

#[test]
fn flat_adamw_state_round_trip_is_exact() {
    round_trip_is_exact(&Device::Cpu);
}

#[test]
fn flat_adamw_rejects_mismatched_inputs() {
    use candle_core::Tensor;
    use simplex_attn::fused::adamw::{AdamWStep, FlatAdamW};
    let dev = Device::Cpu;
    let m = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    let e = FlatAdamW::new(std::slice::from_ref(&m), vec![w], &[true])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("master [2, 3], working copy [3, 2]"), "{e}");
    let mut opt = FlatAdamW::new(
        std::slice::from_ref(&m),
        vec![m.zeros_like().unwrap()],
        &[true],
    )
    .unwrap();
    let e = opt
        .gather(&[Some(Tensor::zeros(5, DType::F32, &dev).unwrap())], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient 0 has 5 elements"), "{e}");
    let hp = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        t: 0,
        max_norm: 0.0,
    };
    assert!(opt
        .step(&hp)
        .unwrap_err()
        .to_string()
        .contains("start at 1"));
}
