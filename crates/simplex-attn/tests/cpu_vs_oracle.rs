//! The fast CPU kernels (through the candle op, f64 and f32) against the float64 oracle.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, cases, Case, Data};
use proptest::prelude::*;
use simplex_attn::reference::{simplicial_attn_backward_reference, simplicial_attn_reference};
use simplex_attn::{simplicial_attn, AttnSpec, Variant};

struct Run {
    o: Vec<f64>,
    lse: Vec<f64>,
    grads: [Vec<f64>; 5],
}

/// Forward and backward of `sum(o * dout)` through the candle op in `dtype`.
fn run_op(c: &Case, x: &Data, dout: &[f64], dtype: DType) -> anyhow::Result<Run> {
    let dev = Device::Cpu;
    let t = |v: &Vec<f64>, s: [usize; 4]| -> anyhow::Result<candle_core::Var> {
        Ok(candle_core::Var::from_tensor(
            &Tensor::from_vec(v.clone(), s.to_vec(), &dev)?.to_dtype(dtype)?,
        )?)
    };
    let q = t(&x.q, c.q_shape())?;
    let k1 = t(&x.k1, c.k_shape())?;
    let k2 = t(&x.k2, c.k_shape())?;
    let v1 = t(&x.v1, c.v_shape())?;
    let v2 = t(&x.v2, c.v_shape())?;
    let out = simplicial_attn(&q, &k1, &k2, &v1, &v2, &c.spec)?;
    let dout_t = Tensor::from_vec(dout.to_vec(), out.o.shape(), &dev)?.to_dtype(dtype)?;
    let grads = (out.o.clone() * dout_t)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let g = |v: &candle_core::Var| -> anyhow::Result<Vec<f64>> {
        flat(grads.get(v).ok_or_else(|| anyhow::anyhow!("no gradient"))?)
    };
    Ok(Run {
        o: flat(&out.o)?,
        lse: flat(&out.lse)?,
        grads: [g(&q)?, g(&k1)?, g(&k2)?, g(&v1)?, g(&v2)?],
    })
}

fn check_case(c: &Case, seed: u64, dtype: DType) -> anyhow::Result<()> {
    let x = Data::new(c, seed);
    let dims = c.dims();
    let want = simplicial_attn_reference(&c.spec, &dims, &x.inputs());
    let dout = common::random(
        want.o.len(),
        1.0,
        &mut rand::SeedableRng::seed_from_u64(seed + 1),
    );
    let wg = simplicial_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let got = run_op(c, &x, &dout, dtype)?;
    let (rtol, atol) = match dtype {
        DType::F64 => (1e-10, 1e-12),
        DType::F32 => (2e-5, 1e-6),
        _ => (2e-2, 1e-3), // bf16 inputs: the rounding of the inputs dominates
    };
    let tag = format!("{c:?} {dtype:?}");
    assert_close(&format!("o {tag}"), &got.o, &want.o, rtol, atol);
    assert_close(&format!("lse {tag}"), &got.lse, &want.lse, rtol, atol);
    let names = ["dq", "dk1", "dk2", "dv1", "dv2"];
    let wants = [&wg.dq, &wg.dk1, &wg.dk2, &wg.dv1, &wg.dv2];
    for ((name, g), w) in names.iter().zip(&got.grads).zip(wants) {
        assert_close(&format!("{name} {tag}"), g, w, rtol * 4.0, atol * 4.0);
    }
    Ok(())
}

#[test]
fn fwd_and_bwd_match_oracle_f64_on_all_cases() -> anyhow::Result<()> {
    for (t, c) in cases().iter().enumerate() {
        check_case(c, 100 + t as u64, DType::F64)?;
    }
    Ok(())
}

#[test]
fn fwd_and_bwd_match_oracle_f32_on_all_cases() -> anyhow::Result<()> {
    for (t, c) in cases().iter().enumerate() {
        check_case(c, 200 + t as u64, DType::F32)?;
    }
    Ok(())
}

#[test]
fn bf16_inputs_are_computed_in_f32() -> anyhow::Result<()> {
    // The oracle sees the same bf16-rounded inputs, so only the output rounding remains.
    let c = Case::new(1, 19, 4, 2, 16, AttnSpec::causal(5, 7));
    let mut x = Data::new(&c, 7);
    for v in [&mut x.q, &mut x.k1, &mut x.k2, &mut x.v1, &mut x.v2] {
        for e in v.iter_mut() {
            *e = half::bf16::from_f64(*e).to_f64();
        }
    }
    let want = simplicial_attn_reference(&c.spec, &c.dims(), &x.inputs());
    let dout = vec![0.0; want.o.len()];
    let got = run_op(&c, &x, &dout, DType::BF16)?;
    assert_close("o bf16", &got.o, &want.o, 8e-3, 1e-3);
    assert_close("lse bf16", &got.lse, &want.lse, 1e-5, 1e-5);
    Ok(())
}

#[test]
fn gqa_ratios_one_to_eight() -> anyhow::Result<()> {
    for g in 1..=8 {
        let c = Case::new(1, 13, 2 * g, 2, 16, AttnSpec::causal(4, 6));
        check_case(&c, 300 + g as u64, DType::F32)?;
    }
    Ok(())
}

#[test]
fn window_orientation_does_not_change_results() -> anyhow::Result<()> {
    // (w1, w2) and (w2, w1) with (k1, v1) and (k2, v2) exchanged is the same function; the kernel
    // picks its orientation by the window sizes, so both orientations are exercised here.
    let c = Case::new(1, 23, 2, 1, 16, AttnSpec::causal(2, 17));
    let x = Data::new(&c, 9);
    let swapped = Case {
        spec: AttnSpec::causal(17, 2),
        ..c
    };
    let xs = Data {
        q: x.q.clone(),
        k1: x.k2.clone(),
        k2: x.k1.clone(),
        v1: x.v2.clone(),
        v2: x.v1.clone(),
    };
    let dout = vec![1.0; c.b * c.n * c.hq * c.dv];
    let a = run_op(&c, &x, &dout, DType::F64)?;
    let b = run_op(&swapped, &xs, &dout, DType::F64)?;
    assert_close("o", &a.o, &b.o, 1e-12, 1e-13);
    assert_close("dk1 vs dk2", &a.grads[1], &b.grads[2], 1e-11, 1e-12);
    assert_close("dv2 vs dv1", &a.grads[4], &b.grads[3], 1e-11, 1e-12);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes_match_oracle(
        b in 1usize..3, n in 1usize..20, hkv in 1usize..3, g in 1usize..5, d3 in 1usize..6,
        w1 in 1usize..24, w2 in 1usize..24, causal in any::<bool>(), det in any::<bool>(),
        unbounded in any::<bool>(), seed in 0u64..1000,
    ) {
        let mut spec = if causal { AttnSpec::causal(w1, w2) } else { AttnSpec::bidirectional().with_windows(Some(w1), Some(w2)) };
        if unbounded { spec = spec.with_windows(None, Some(w2)); }
        if det { spec = spec.with_variant(Variant::Determinant); }
        let c = Case::new(b, n, g * hkv, hkv, 3 * d3, spec);
        check_case(&c, seed, DType::F64).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

/// What the CUDA op does to run differing head dims on the tensor cores (the determinant lift:
/// `kernels::dispatch::simplicial::padded_head_dims`, and the backward's padding of the values,
/// `backward_value_dim`): zero columns appended to q, k1, k2 and to v1, v2 change neither the
/// output's first Dv columns nor the lse, and the gradients of the unpadded inputs are the
/// padded ones' first columns. Checked here on the CPU kernels.
#[test]
fn zero_padding_the_head_dims_changes_nothing() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let (b, n, hq, hkv, d, dv, p) = (2, 13, 4, 2, 6, 3, 8);
    let r = |h: usize, w: usize, s: u64| -> anyhow::Result<Tensor> {
        let t = Tensor::randn(0f64, 1.0, (b, n, h, w), &dev)?;
        Ok((t + s as f64 * 0.01)?)
    };
    let (q, k1, k2) = (r(hq, d, 1)?, r(hkv, d, 2)?, r(hkv, d, 3)?);
    let (v1, v2) = (r(hkv, dv, 4)?, r(hkv, dv, 5)?);
    // an explicit scale: the default, 1/sqrt(D), would read the padded D (the op keeps the
    // unpadded one)
    let spec = AttnSpec::causal(5, 4).with_scale(0.37);
    let vars: Vec<candle_core::Var> = [&q, &k1, &k2, &v1, &v2]
        .iter()
        .map(|t| candle_core::Var::from_tensor(t))
        .collect::<Result<_, _>>()?;
    let dout = Tensor::randn(0f64, 1.0, (b, n, hq, dv), &dev)?;
    let plain = simplicial_attn(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
        vars[3].as_tensor(),
        vars[4].as_tensor(),
        &spec,
    )?;
    let g_plain = (&plain.o * &dout)?.sum_all()?.backward()?;
    let padv: Vec<candle_core::Var> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let w = if i < 3 { d } else { dv };
            candle_core::Var::from_tensor(&v.as_tensor().pad_with_zeros(3, 0, p - w)?)
        })
        .collect::<Result<_, _>>()?;
    let padded = simplicial_attn(
        padv[0].as_tensor(),
        padv[1].as_tensor(),
        padv[2].as_tensor(),
        padv[3].as_tensor(),
        padv[4].as_tensor(),
        &spec,
    )?;
    let o = padded.o.narrow(3, 0, dv)?;
    let g_pad = (&o * &dout)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1()?) };
    assert_close("o", &flat(&o)?, &flat(&plain.o)?, 1e-12, 1e-14);
    assert_close("lse", &flat(&padded.lse)?, &flat(&plain.lse)?, 1e-12, 1e-14);
    for (i, (a, pv)) in vars.iter().zip(&padv).enumerate() {
        let w = if i < 3 { d } else { dv };
        let want = g_plain.get(a.as_tensor()).expect("gradient");
        let got = g_pad
            .get(pv.as_tensor())
            .expect("gradient")
            .narrow(3, 0, w)?;
        assert_close(
            &format!("grad {i}"),
            &flat(&got)?,
            &flat(want)?,
            1e-12,
            1e-14,
        );
    }
    Ok(())
}
