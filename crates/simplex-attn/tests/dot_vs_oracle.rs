//! Dot-product attention: the fast CPU kernels (through the candle op and autograd, f64, f32,
//! bf16) against the float64 oracle, and the oracle's backward against finite differences.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, dot_case as case, random, DotCase as Case, DotData as Data};
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};
use simplex_attn::dot::{dot_attn_backward_reference, dot_attn_reference, DotInputs};
use simplex_attn::{dot_attn, DotSpec};

struct Run {
    o: Vec<f64>,
    lse: Vec<f64>,
    grads: [Vec<f64>; 3],
}

/// Forward and backward of `sum(o * dout)` through the candle op in `dtype`.
fn run_op(c: &Case, x: &Data, dout: &[f64], dtype: DType) -> anyhow::Result<Run> {
    let dev = Device::Cpu;
    let [qs, ks, vs] = c.shapes();
    let var = |v: &[f64], s: [usize; 4]| -> anyhow::Result<Var> {
        Ok(Var::from_tensor(
            &Tensor::from_vec(v.to_vec(), s.to_vec(), &dev)?.to_dtype(dtype)?,
        )?)
    };
    let (q, k, v) = (var(&x.q, qs)?, var(&x.k, ks)?, var(&x.v, vs)?);
    let out = dot_attn(&q, &k, &v, &c.spec)?;
    let dout_t = Tensor::from_vec(dout.to_vec(), out.o.shape(), &dev)?.to_dtype(dtype)?;
    let grads = (out.o.clone() * dout_t)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
    };
    let g = |v: &Var| -> anyhow::Result<Vec<f64>> {
        flat(grads.get(v).ok_or_else(|| anyhow::anyhow!("no gradient"))?)
    };
    Ok(Run {
        o: flat(&out.o)?,
        lse: flat(&out.lse)?,
        grads: [g(&q)?, g(&k)?, g(&v)?],
    })
}

fn check_case(c: &Case, seed: u64, dtype: DType) -> anyhow::Result<()> {
    let x = Data::new(c, seed);
    let dims = c.dims();
    let want = dot_attn_reference(&c.spec, &dims, &x.inputs());
    let dout = random(want.o.len(), 1.0, &mut StdRng::seed_from_u64(seed + 1));
    let wg = dot_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let got = run_op(c, &x, &dout, dtype)?;
    let (rtol, atol) = match dtype {
        DType::F64 => (1e-11, 1e-12),
        _ => (2e-5, 1e-6),
    };
    let tag = format!("{c:?} {dtype:?}");
    assert_close(&format!("o {tag}"), &got.o, &want.o, rtol, atol);
    assert_close(&format!("lse {tag}"), &got.lse, &want.lse, rtol, atol);
    for ((name, g), w) in ["dq", "dk", "dv"]
        .iter()
        .zip(&got.grads)
        .zip([&wg.dq, &wg.dk, &wg.dv])
    {
        assert_close(&format!("{name} {tag}"), g, w, rtol * 4.0, atol * 4.0);
    }
    Ok(())
}

/// Odd lengths, seq 1, window 1, windows longer than the sequence, GQA, several D, causal and
/// bidirectional, more keys than queries (a cached decode step), several tiles of each kind.
fn cases() -> Vec<Case> {
    let (causal, sliding, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    vec![
        case(1, 1, 1, 1, 4, causal()),
        case(2, 1, 4, 2, 16, sliding(3)),
        case(2, 7, 4, 2, 16, sliding(1)),
        case(1, 13, 3, 3, 33, sliding(4)),
        case(2, 11, 8, 1, 16, causal()),
        case(1, 17, 6, 2, 64, sliding(100)),
        case(1, 9, 5, 5, 3, causal().with_scale(0.7)),
        Case {
            dv: 5,
            ..case(1, 9, 2, 1, 8, bi())
        },
        case(1, 10, 4, 4, 16, bi().with_window(Some(3))),
        Case {
            nk: 12,
            ..case(1, 5, 4, 2, 16, causal())
        },
        Case {
            nk: 9,
            ..case(2, 1, 4, 1, 8, sliding(3))
        },
        Case {
            nk: 20,
            ..case(1, 6, 2, 2, 8, bi().with_window(Some(4)))
        },
        // several query blocks and key tiles (tq = 64 / G, tk = 128), masked edges inside tiles
        case(1, 300, 2, 1, 32, causal()),
        case(1, 200, 1, 1, 16, sliding(70)),
        Case {
            nk: 290,
            ..case(1, 150, 3, 1, 8, sliding(131))
        },
    ]
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
fn slow_twin_matches_oracle_through_autograd() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    for (t, c) in cases().iter().enumerate().filter(|(_, c)| c.nq < 100) {
        let x = Data::new(c, 400 + t as u64);
        let dims = c.dims();
        let want = dot_attn_reference(&c.spec, &dims, &x.inputs());
        let dout = random(want.o.len(), 1.0, &mut StdRng::seed_from_u64(t as u64));
        let wg = dot_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
        let [qs, ks, vs] = c.shapes();
        let var = |v: &[f64], s: [usize; 4]| -> anyhow::Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_vec(
                v.to_vec(),
                s.to_vec(),
                &dev,
            )?)?)
        };
        let (q, k, v) = (var(&x.q, qs)?, var(&x.k, ks)?, var(&x.v, vs)?);
        let (o, lse) = simplex_attn::dot::dot_attn_slow(&q, &k, &v, &c.spec)?;
        let dout_t = Tensor::from_vec(dout.clone(), o.shape(), &dev)?;
        let grads = (o.clone() * dout_t)?.sum_all()?.backward()?;
        let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1()?) };
        assert_close(&format!("slow o {c:?}"), &flat(&o)?, &want.o, 1e-12, 1e-12);
        assert_close(
            &format!("slow lse {c:?}"),
            &flat(&lse)?,
            &want.lse,
            1e-12,
            1e-12,
        );
        for ((name, var), w) in [("dq", &q), ("dk", &k), ("dv", &v)]
            .into_iter()
            .zip([&wg.dq, &wg.dk, &wg.dv])
        {
            let g = grads
                .get(var)
                .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
            assert_close(&format!("slow {name} {c:?}"), &flat(g)?, w, 1e-11, 1e-12);
        }
    }
    Ok(())
}

#[test]
fn gqa_ratios_one_to_eight() -> anyhow::Result<()> {
    for g in 1..=8 {
        check_case(
            &case(1, 13, 2 * g, 2, 16, DotSpec::sliding(5)),
            300 + g as u64,
            DType::F32,
        )?;
    }
    Ok(())
}

#[test]
fn bf16_inputs_are_computed_in_f32() -> anyhow::Result<()> {
    // The oracle sees the same bf16-rounded inputs, so only the output rounding remains.
    let c = case(1, 19, 4, 2, 16, DotSpec::sliding(7));
    let mut x = Data::new(&c, 7);
    for v in [&mut x.q, &mut x.k, &mut x.v] {
        for e in v.iter_mut() {
            *e = half::bf16::from_f64(*e).to_f64();
        }
    }
    let want = dot_attn_reference(&c.spec, &c.dims(), &x.inputs());
    let got = run_op(&c, &x, &vec![0.0; want.o.len()], DType::BF16)?;
    assert_close("o bf16", &got.o, &want.o, 8e-3, 1e-3);
    assert_close("lse bf16", &got.lse, &want.lse, 1e-5, 1e-5);
    Ok(())
}

#[test]
fn oracle_agrees_with_the_masked_reference_of_the_pair_grid_check() {
    // An independent float64 implementation (one head at a time, an explicit mask).
    let c = Case {
        nk: 11,
        ..case(1, 8, 2, 1, 6, DotSpec::sliding(4))
    };
    let x = Data::new(&c, 5);
    let want = dot_attn_reference(&c.spec, &c.dims(), &x.inputs());
    let keys = c.spec.keys(&c.dims());
    for h in 0..c.hq {
        let q: Vec<f64> = (0..c.nq)
            .flat_map(|i| x.q[(i * c.hq + h) * c.d..][..c.d].to_vec())
            .collect();
        let (o, lse) = simplex_attn::reference::dot_attention_reference(
            &q,
            &x.k,
            &x.v,
            (c.nq, c.nk, c.d, c.dv),
            c.spec.scale_for(c.d),
            |i, j| keys.range(i).contains(&j),
        );
        let mine: Vec<f64> = (0..c.nq)
            .flat_map(|i| want.o[(i * c.hq + h) * c.dv..][..c.dv].to_vec())
            .collect();
        assert_close("o", &mine, &o, 1e-13, 1e-14);
        let mine: Vec<f64> = (0..c.nq).map(|i| want.lse[i * c.hq + h]).collect();
        assert_close("lse", &mine, &lse, 1e-13, 1e-14);
    }
}

#[test]
fn oracle_backward_matches_central_differences() {
    let eps = 1e-6;
    for (t, c) in [
        Case {
            dv: 3,
            ..case(2, 5, 4, 2, 4, DotSpec::sliding(3))
        },
        Case {
            nk: 7,
            ..case(1, 4, 2, 1, 3, DotSpec::bidirectional().with_window(Some(2)))
        },
        case(1, 6, 3, 3, 5, DotSpec::causal()),
    ]
    .iter()
    .enumerate()
    {
        let x = Data::new(c, 40 + t as u64);
        let dims = c.dims();
        let dout = random(
            c.b * c.nq * c.hq * c.dv,
            1.0,
            &mut StdRng::seed_from_u64(50 + t as u64),
        );
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            let o = dot_attn_reference(&c.spec, &dims, &DotInputs { q, k, v }).o;
            o.iter().zip(&dout).map(|(a, b)| a * b).sum()
        };
        let g = dot_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
        for (name, which, grad) in [("dq", 0, &g.dq), ("dk", 1, &g.dk), ("dv", 2, &g.dv)] {
            let fd: Vec<f64> = (0..grad.len())
                .map(|e| {
                    let at = |delta: f64| {
                        let mut xs = [x.q.clone(), x.k.clone(), x.v.clone()];
                        xs[which][e] += delta;
                        loss(&xs[0], &xs[1], &xs[2])
                    };
                    (at(eps) - at(-eps)) / (2.0 * eps)
                })
                .collect();
            assert_close(&format!("{name} {c:?}"), grad, &fd, 1e-7, 1e-8);
        }
    }
}

#[test]
fn bad_inputs_are_errors_that_name_the_problem() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let t = |s: &[usize], dt: DType| Tensor::zeros(s, dt, &dev);
    let q = t(&[1, 4, 4, 8], DType::F32)?;
    let k = t(&[1, 4, 2, 8], DType::F32)?;
    let e = dot_attn(&q, &k, &t(&[1, 4, 2, 8], DType::F64)?, &DotSpec::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("v is F64"), "{e}");
    let e = dot_attn(
        &q,
        &t(&[1, 4, 3, 8], DType::F32)?,
        &t(&[1, 4, 3, 8], DType::F32)?,
        &DotSpec::causal(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("heads_q = 4 is not a multiple of heads_kv = 3"),
        "{e}"
    );
    let e = dot_attn(&q, &k, &k, &DotSpec::sliding(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("window = 0"), "{e}");
    let e = dot_attn(&t(&[1, 4, 8], DType::F32)?, &k, &k, &DotSpec::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 4 dims"), "{e}");
    let u = t(&[1, 4, 4, 8], DType::U32)?;
    let e = dot_attn(&u, &u, &u, &DotSpec::causal())
        .unwrap_err()
        .to_string();
    assert!(e.contains("U32"), "{e}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes_match_oracle(
        b in 1usize..3, nq in 1usize..24, extra in 0usize..6, hkv in 1usize..3, g in 1usize..5,
        d in 1usize..20, dv in 1usize..12, w in 1usize..30, causal in any::<bool>(),
        unbounded in any::<bool>(), seed in 0u64..1000,
    ) {
        let window = if unbounded { None } else { Some(w) };
        let spec = DotSpec { causal, window, ..DotSpec::causal() };
        let c = Case { b, nq, nk: nq + extra, hq: g * hkv, hkv, d, dv, spec };
        check_case(&c, seed, DType::F64).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
