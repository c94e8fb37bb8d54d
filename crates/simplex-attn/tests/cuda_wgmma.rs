//! The tensor-core forward (bf16, D = Dv in {64, 128}) against the CUDA-core kernel in f32 on
//! the same bf16-rounded inputs, at shapes too large for the float64 oracle: the anchor
//! configurations of the spec (GQA 64 and 128, windows (32, 512) and (512, 32)), query packing
//! (G < 64), window-1 longer than one staged chunk, bidirectional windows, ragged row blocks.
//! (The oracle comparison of the small shapes is in cuda_vs_oracle.rs, which routes bf16
//! D = 64/128 cases through this kernel too.) Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Tensor};
use common::cuda;
use simplex_attn::{simplicial_attn, AttnSpec};

fn rel_l2(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let nan = a
        .to_vec1::<f64>()?
        .iter()
        .filter(|x| !x.is_finite())
        .count();
    anyhow::ensure!(
        nan == 0,
        "{nan} non-finite elements (unwritten or overflowed)"
    );
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(num / den)
}

#[test]
fn wgmma_forward_matches_the_f32_kernel() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let bi = AttnSpec::bidirectional();
    let cases: Vec<(usize, usize, usize, usize, usize, AttnSpec)> = vec![
        (1, 2048, 64, 1, 128, AttnSpec::causal(32, 512)),
        (1, 1500, 64, 1, 128, AttnSpec::causal(512, 32)),
        (1, 1100, 128, 1, 128, AttnSpec::causal(32, 512)),
        (2, 700, 64, 1, 64, AttnSpec::causal(512, 32)),
        (2, 777, 8, 1, 64, AttnSpec::causal(40, 70)),
        (1, 333, 16, 16, 64, AttnSpec::causal(200, 300)),
        (1, 301, 3, 1, 128, AttnSpec::causal(1, 1)),
        (1, 1, 64, 1, 128, AttnSpec::causal(32, 512)),
        (1, 150, 32, 2, 64, bi.with_windows(Some(20), Some(90))),
        (1, 96, 64, 1, 128, bi),
    ];
    let mut failures = vec![];
    for (t, &(b, n, hq, hkv, d, spec)) in cases.iter().enumerate() {
        let amp = (1.0 / d as f64).powf(1.0 / 6.0) as f32;
        let r = |h: usize, a: f32| -> anyhow::Result<Tensor> {
            Ok(Tensor::randn(0f32, a, (b, n, h, d), &dev)?.to_dtype(DType::BF16)?)
        };
        let (q, k1, k2) = (r(hq, amp)?, r(hkv, amp)?, r(hkv, amp)?);
        let (v1, v2) = (r(hkv, 1.0)?, r(hkv, 1.0)?);
        let fast = simplicial_attn(&q, &k1, &k2, &v1, &v2, &spec)?;
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let slow = simplicial_attn(&f(&q)?, &f(&k1)?, &f(&k2)?, &f(&v1)?, &f(&v2)?, &spec)?;
        let eo = rel_l2(&fast.o, &slow.o)?;
        let el = rel_l2(&fast.lse, &slow.lse)?;
        // lse: a single pair's logit carries the bf16 rounding of q ∘ k1 (2^-9 relative)
        let ok = eo < 1e-2 && el < 5e-3;
        println!("case {t}: b={b} n={n} hq={hq} hkv={hkv} d={d} {spec:?}: rel L2 o {eo:.2e} lse {el:.2e} {}", if ok { "ok" } else { "FAIL" });
        if !ok {
            failures.push(t);
        }
    }
    anyhow::ensure!(failures.is_empty(), "failing cases {failures:?}");
    Ok(())
}
