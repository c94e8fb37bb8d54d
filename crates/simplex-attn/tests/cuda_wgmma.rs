//! The tensor-core forward (bf16, D = Dv in {64, 128}) and backward (bf16, D = Dv in
//! {32, 64, 96, 128}; both the wgmma and the mma.sync kernels) against the CUDA-core kernels in
//! f32 on the same bf16-rounded inputs, at shapes too large for the float64 oracle: the anchor
//! configurations of the spec (GQA 64 and 128, windows (32, 512) and (512, 32)), query packing
//! (G < 64), window-1 longer than one staged chunk, bidirectional windows, ragged row blocks.
//! (The oracle comparison of the small shapes is in cuda_vs_oracle.rs, which routes bf16
//! cases through the default choice of these kernels.) Built only with `--features cuda`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Tensor};
use common::{cuda, poisoned};
use simplex_attn::kernels::{ForwardVariant, OffsetsBackward, WgmmaBackward};
use simplex_attn::{simplicial_attn, AttnSpec, Kernels};

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

/// Random bf16 q, k1, k2, v1, v2 `[B,N,H,D]`, q and k scaled so that the logits are O(1).
fn bf16_inputs(
    dev: &candle_core::Device,
    b: usize,
    n: usize,
    hq: usize,
    hkv: usize,
    d: usize,
) -> anyhow::Result<[Tensor; 5]> {
    let amp = (1.0 / d as f64).powf(1.0 / 6.0) as f32;
    let r = |h: usize, a: f32| -> anyhow::Result<Tensor> {
        Ok(Tensor::randn(0f32, a, (b, n, h, d), dev)?.to_dtype(DType::BF16)?)
    };
    Ok([
        r(hq, amp)?,
        r(hkv, amp)?,
        r(hkv, amp)?,
        r(hkv, 1.0)?,
        r(hkv, 1.0)?,
    ])
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
        // few heads per K/V head (the offset walk's shapes): G = 1, 2, 3
        (2, 1000, 4, 4, 64, AttnSpec::causal(512, 32)),
        (1, 515, 4, 2, 128, AttnSpec::causal(33, 129)),
        (1, 200, 2, 2, 128, bi.with_windows(Some(30), Some(50))),
        (1, 257, 6, 2, 64, AttnSpec::causal(7, 300)),
        // the producer layout's per-consumer key shift: 2 queries per consumer (G = 32, shift
        // 2), 8 (G = 8, shift 8)
        (1, 613, 32, 1, 128, AttnSpec::causal(24, 100)),
        (1, 389, 16, 2, 128, AttnSpec::causal(300, 17)),
    ];
    let mut failures = vec![];
    for (t, &(b, n, hq, hkv, d, spec)) in cases.iter().enumerate() {
        let [q, k1, k2, v1, v2] = bf16_inputs(&dev, b, n, hq, hkv, d)?;
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let slow = simplicial_attn(&f(&q)?, &f(&k1)?, &f(&k2)?, &f(&v1)?, &f(&v2)?, &spec)?;
        // every compiled variant of the kernel
        for variant in [
            ForwardVariant::Specialized,
            ForwardVariant::PingPong,
            ForwardVariant::Producer,
            ForwardVariant::Offsets,
        ] {
            let kernels = Kernels {
                forward: Some(variant),
                ..poisoned(Kernels::default())
            };
            let fast = simplicial_attn(&q, &k1, &k2, &v1, &v2, &spec.with_kernels(kernels))?;
            let eo = rel_l2(&fast.o, &slow.o)?;
            let el = rel_l2(&fast.lse, &slow.lse)?;
            // lse: a single pair's logit carries the bf16 rounding of q ∘ k1 (2^-9 relative)
            let ok = eo < 1e-2 && el < 5e-3;
            println!("case {t} {variant:?}: b={b} n={n} hq={hq} hkv={hkv} d={d} {spec:?}: rel L2 o {eo:.2e} lse {el:.2e} {}", if ok { "ok" } else { "FAIL" });
            if !ok {
                failures.push((t, variant));
            }
        }
    }
    anyhow::ensure!(failures.is_empty(), "failing cases {failures:?}");
    Ok(())
}

#[test]
fn tensor_core_backward_matches_the_f32_kernels() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let bi = AttnSpec::bidirectional();
    let cases: Vec<(usize, usize, usize, usize, usize, AttnSpec)> = vec![
        (1, 1024, 64, 1, 128, AttnSpec::causal(32, 512)),
        (1, 900, 64, 1, 128, AttnSpec::causal(512, 32)),
        (1, 600, 128, 1, 64, AttnSpec::causal(32, 512)),
        (2, 515, 8, 8, 64, AttnSpec::causal(512, 32)),
        (2, 333, 8, 1, 96, AttnSpec::causal(40, 70)),
        (1, 257, 16, 16, 32, AttnSpec::causal(100, 150)),
        (1, 301, 3, 1, 128, AttnSpec::causal(1, 1)),
        (1, 1, 64, 1, 128, AttnSpec::causal(32, 512)),
        (1, 150, 32, 2, 64, bi.with_windows(Some(20), Some(90))),
        (1, 96, 64, 1, 128, bi),
        // few heads per K/V head at D = 64 (the offset walk's shapes): G = 1, 2, 3
        (2, 1000, 4, 4, 64, AttnSpec::causal(512, 32)),
        (1, 515, 4, 2, 64, AttnSpec::causal(33, 129)),
        (1, 200, 2, 2, 64, bi.with_windows(Some(30), Some(50))),
        (1, 257, 6, 2, 64, AttnSpec::causal(7, 300)),
        (1, 77, 3, 3, 64, AttnSpec::causal(100, 100)),
        // the qk1 pass's G = 4, 8; seq 1; windows past the sequence; window 1 = 1; three
        // chunks of key sums per warpgroup (window 1 = 70)
        (1, 300, 16, 4, 64, AttnSpec::causal(17, 200)),
        (1, 333, 8, 1, 64, AttnSpec::causal(24, 64)),
        (1, 1, 8, 8, 64, AttnSpec::causal(32, 512)),
        (1, 20, 2, 1, 64, AttnSpec::causal(64, 64)),
        (1, 65, 4, 4, 64, AttnSpec::causal(1, 30)),
        (1, 400, 2, 2, 64, AttnSpec::causal(70, 100)),
        // G = 16: a warp's 16 rows are the heads of one position; G = 32, 64: several warps
        (2, 77, 32, 2, 64, AttnSpec::causal(9, 50)),
        (1, 130, 32, 1, 64, AttnSpec::causal(20, 70)),
        (2, 45, 64, 1, 64, bi.with_windows(Some(5), Some(30))),
        // the producer k side (G a multiple of 64): G = 128 at D = 128 with windows past the
        // sequence, two K/V heads, a window 1 of 3
        (1, 77, 128, 1, 128, AttnSpec::causal(100, 300)),
        (2, 260, 128, 2, 64, AttnSpec::causal(3, 130)),
    ];
    let mut failures = vec![];
    for (t, &(b, n, hq, hkv, d, spec)) in cases.iter().enumerate() {
        let x = bf16_inputs(&dev, b, n, hq, hkv, d)?;
        let dout = Tensor::randn(0f32, 1.0, (b, n, hq, d), &dev)?.to_dtype(DType::BF16)?;
        let grads = |x: &[Tensor; 5], kernels: Kernels| -> anyhow::Result<Vec<Tensor>> {
            let vars = x
                .iter()
                .map(candle_core::Var::from_tensor)
                .collect::<candle_core::Result<Vec<_>>>()?;
            let spec = spec.with_kernels(poisoned(kernels));
            let o = simplicial_attn(&vars[0], &vars[1], &vars[2], &vars[3], &vars[4], &spec)?.o;
            let loss = (o.to_dtype(DType::F32)? * dout.to_dtype(DType::F32)?)?.sum_all()?;
            let g = loss.backward()?;
            vars.iter()
                .map(|v| {
                    g.get(v)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("no gradient"))
                })
                .collect()
        };
        let slow = grads(
            &x.clone().map(|t| t.to_dtype(DType::F32).expect("to f32")),
            Kernels::default(),
        )?;
        // every tensor-core backward kernel: the wgmma q kernel, mma.sync for both, the
        // offset walk for dq, dk1, dv1 (where it covers the call; D = 64), the producer k side
        // (where it covers the call: G a multiple of 64, D = 64 or 128)
        for (mode, offsets) in [
            (WgmmaBackward::Q, false),
            (WgmmaBackward::Off, false),
            (WgmmaBackward::Auto, true),
            (WgmmaBackward::Producer, false),
        ] {
            if offsets && d != 64 {
                continue;
            }
            if mode == WgmmaBackward::Producer
                && (!(hq / hkv).is_multiple_of(64) || !matches!(d, 64 | 128))
            {
                continue;
            }
            let mode_name = if offsets {
                "offset walk".to_string()
            } else {
                format!("{mode:?}")
            };
            let kernels = Kernels {
                wgmma_backward: mode,
                offsets_backward: if offsets {
                    OffsetsBackward::Both
                } else {
                    OffsetsBackward::Off
                },
                ..Kernels::default()
            };
            let fast = grads(&x, kernels)?;
            let mut line =
                format!("case {t} {mode_name}: b={b} n={n} hq={hq} hkv={hkv} d={d} {spec:?}:");
            let mut ok = true;
            // With one (j, k) pair per query (n = 1, or windows (1, 1)) the exact dq, dk1, dk2 are
            // zero (dS = dP - delta = 0); bf16 leaves rounding noise there, so those three are
            // checked against the size of dv (norm of the noise under 1e-2 of ||dv1||) instead.
            let single_pair = n == 1 || (spec.w1 == Some(1) && spec.w2 == Some(1));
            let dv_norm = slow[3]
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                .sqrt();
            for (t, (name, (f, s))) in ["dq", "dk1", "dk2", "dv1", "dv2"]
                .iter()
                .zip(fast.iter().zip(&slow))
                .enumerate()
            {
                let e = if single_pair && matches!(t, 0..=2) {
                    let f = f.to_dtype(DType::F64)?;
                    f.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt() / dv_norm
                } else {
                    rel_l2(f, s)?
                };
                ok &= e < 2e-2;
                line += &format!(" {name} {e:.2e}");
            }
            println!("{line} {}", if ok { "ok" } else { "FAIL" });
            if !ok {
                failures.push((t, mode_name));
            }
        }
    }
    anyhow::ensure!(failures.is_empty(), "failing cases {failures:?}");
    Ok(())
}
