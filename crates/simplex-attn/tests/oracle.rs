//! The oracle checked against independent formulations: central finite differences for all five
//! gradients, the pair-grid identity (plain dot-product attention over N*N pair keys, and the
//! candle-ops twin with its autograd), and direct 3x3 determinants.

mod common;

use candle_core::{Device, Tensor, Var};
use common::{assert_close, Case, Data};
use simplex_attn::reference::{
    det3, dot_attention_reference, simplicial_attn_backward_reference, simplicial_attn_reference,
    Inputs,
};
use simplex_attn::slow::simplicial_attn_slow;
use simplex_attn::{AttnSpec, Variant};

fn loss(c: &Case, x: &Inputs, dout: &[f64]) -> f64 {
    let o = simplicial_attn_reference(&c.spec, &c.dims(), x).o;
    o.iter().zip(dout).map(|(a, b)| a * b).sum()
}

/// Central differences of `sum(dout * O)` in every element of every input.
fn check_finite_differences(c: &Case, seed: u64) {
    let x = Data::new(c, seed);
    let dims = c.dims();
    let dout = common::random(
        c.b * c.n * c.hq * c.dv,
        1.0,
        &mut rand::SeedableRng::seed_from_u64(seed ^ 77),
    );
    let g = simplicial_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let h = 1e-5;
    let names = ["dq", "dk1", "dk2", "dv1", "dv2"];
    let analytic = [&g.dq, &g.dk1, &g.dk2, &g.dv1, &g.dv2];
    for (which, (name, an)) in names.iter().zip(analytic).enumerate() {
        let mut bufs = [
            x.q.clone(),
            x.k1.clone(),
            x.k2.clone(),
            x.v1.clone(),
            x.v2.clone(),
        ];
        let mut numeric = vec![0.0; an.len()];
        for e in 0..an.len() {
            let orig = bufs[which][e];
            let at = |v: f64, bufs: &mut [Vec<f64>; 5]| {
                bufs[which][e] = v;
                let inp = Inputs {
                    q: &bufs[0],
                    k1: &bufs[1],
                    k2: &bufs[2],
                    v1: &bufs[3],
                    v2: &bufs[4],
                };
                loss(c, &inp, &dout)
            };
            let up = at(orig + h, &mut bufs);
            let down = at(orig - h, &mut bufs);
            bufs[which][e] = orig;
            numeric[e] = (up - down) / (2.0 * h);
        }
        assert_close(
            &format!("{name} vs finite differences {c:?}"),
            an,
            &numeric,
            1e-6,
            1e-8,
        );
    }
}

#[test]
fn oracle_gradients_match_finite_differences_causal_gqa() {
    check_finite_differences(&Case::new(1, 6, 4, 2, 3, AttnSpec::causal(3, 2)), 1);
}

#[test]
fn oracle_gradients_match_finite_differences_bidirectional_biases_dv() {
    let spec = AttnSpec::bidirectional()
        .with_windows(Some(2), None)
        .with_biases(0.25, 1.0);
    check_finite_differences(
        &Case {
            b: 2,
            n: 5,
            hq: 2,
            hkv: 1,
            d: 4,
            dv: 3,
            spec,
        },
        2,
    );
}

#[test]
fn oracle_gradients_match_finite_differences_determinant() {
    let spec = AttnSpec::causal(4, 3)
        .with_variant(Variant::Determinant)
        .with_scale(0.8);
    check_finite_differences(&Case::new(1, 6, 2, 1, 6, spec), 3);
}

#[test]
fn pair_grid_identity_with_plain_dot_product_attention() {
    // 2-simplicial attention = dot-product attention over pair keys k1_j ∘ k2_k, values v1_j ∘ v2_k
    for (t, spec) in [
        AttnSpec::causal(3, 5),
        AttnSpec::bidirectional().with_windows(Some(2), Some(4)),
        AttnSpec::causal(40, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let c = Case::new(1, 9, 3, 1, 5, spec);
        let x = Data::new(&c, 10 + t as u64);
        let want = simplicial_attn_reference(&spec, &c.dims(), &x.inputs());
        let (n, d) = (c.n, c.d);
        let win = spec.windows(n);
        let mut keys = vec![0.0; n * n * d];
        let mut values = vec![0.0; n * n * d];
        for j in 0..n {
            for k in 0..n {
                for l in 0..d {
                    keys[(j * n + k) * d + l] = x.k1[j * d + l] * x.k2[k * d + l];
                    values[(j * n + k) * d + l] = x.v1[j * d + l] * x.v2[k * d + l];
                }
            }
        }
        for h in 0..c.hq {
            let q: Vec<f64> = (0..n)
                .flat_map(|i| x.q[(i * c.hq + h) * d..][..d].to_vec())
                .collect();
            let (o, lse) = dot_attention_reference(
                &q,
                &keys,
                &values,
                (n, n * n, d, d),
                spec.scale_for(d),
                |i, p| win.range1(i).contains(&(p / n)) && win.range2(i).contains(&(p % n)),
            );
            let want_o: Vec<f64> = (0..n)
                .flat_map(|i| want.o[(i * c.hq + h) * d..][..d].to_vec())
                .collect();
            let want_lse: Vec<f64> = (0..n).map(|i| want.lse[i * c.hq + h]).collect();
            assert_close("pair-grid o", &o, &want_o, 1e-12, 1e-13);
            assert_close("pair-grid lse", &lse, &want_lse, 1e-12, 1e-13);
        }
    }
}

#[test]
fn candle_pair_grid_and_its_autograd_match_the_oracle() -> anyhow::Result<()> {
    let spec = AttnSpec::causal(3, 4).with_biases(0.1, 0.5);
    let c = Case {
        b: 2,
        n: 7,
        hq: 4,
        hkv: 2,
        d: 6,
        dv: 5,
        spec,
    };
    for variant in [Variant::Trilinear, Variant::Determinant] {
        let c = Case {
            spec: c.spec.with_variant(variant),
            ..c
        };
        let x = Data::new(&c, 5);
        let dev = Device::Cpu;
        let var = |v: &Vec<f64>, s: [usize; 4]| -> anyhow::Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_vec(
                v.clone(),
                s.to_vec(),
                &dev,
            )?)?)
        };
        let (q, k1, k2) = (
            var(&x.q, c.q_shape())?,
            var(&x.k1, c.k_shape())?,
            var(&x.k2, c.k_shape())?,
        );
        let (v1, v2) = (var(&x.v1, c.v_shape())?, var(&x.v2, c.v_shape())?);
        let (o, lse) = simplicial_attn_slow(&q, &k1, &k2, &v1, &v2, &c.spec)?;
        let want = simplicial_attn_reference(&c.spec, &c.dims(), &x.inputs());
        let flat =
            |t: &Tensor| -> anyhow::Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1::<f64>()?) };
        assert_close("slow o", &flat(&o)?, &want.o, 1e-12, 1e-13);
        assert_close("slow lse", &flat(&lse)?, &want.lse, 1e-12, 1e-13);
        let dout = common::random(want.o.len(), 1.0, &mut rand::SeedableRng::seed_from_u64(6));
        let wg = simplicial_attn_backward_reference(&c.spec, &c.dims(), &x.inputs(), &dout);
        let grads = (o * Tensor::from_vec(dout, c.b * c.n * c.hq * c.dv, &dev)?
            .reshape((c.b, c.n, c.hq, c.dv))?)?
        .sum_all()?
        .backward()?;
        for (name, v, w) in [
            ("dq", &q, &wg.dq),
            ("dk1", &k1, &wg.dk1),
            ("dk2", &k2, &wg.dk2),
            ("dv1", &v1, &wg.dv1),
            ("dv2", &v2, &wg.dv2),
        ] {
            let g = grads
                .get(v)
                .ok_or_else(|| anyhow::anyhow!("no grad for {name}"))?;
            assert_close(
                &format!("slow {name} {variant}"),
                &flat(g)?,
                w,
                1e-10,
                1e-12,
            );
        }
    }
    Ok(())
}

#[test]
fn determinant_logits_are_sums_of_direct_3x3_determinants() {
    // One query, one key pair: the oracle's lse is the logit itself, so it must equal the
    // determinant computed by cofactor expansion here, chunk by chunk.
    let spec = AttnSpec::causal(1, 1)
        .with_variant(Variant::Determinant)
        .with_scale(1.0);
    let c = Case::new(1, 1, 1, 1, 9, spec);
    let x = Data::new(&c, 21);
    let cofactor = |a: &[f64], b: &[f64], m: &[f64]| {
        a[0] * b[1] * m[2] + a[1] * b[2] * m[0] + a[2] * b[0] * m[1]
            - a[2] * b[1] * m[0]
            - a[0] * b[2] * m[1]
            - a[1] * b[0] * m[2]
    };
    let want: f64 = (0..3)
        .map(|ch| {
            let r = 3 * ch..3 * ch + 3;
            cofactor(&x.q[r.clone()], &x.k1[r.clone()], &x.k2[r])
        })
        .sum();
    let got = simplicial_attn_reference(&spec, &c.dims(), &x.inputs()).lse[0];
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!(
        (det3(&x.q[..3], &x.k1[..3], &x.k2[..3]) - cofactor(&x.q[..3], &x.k1[..3], &x.k2[..3]))
            .abs()
            < 1e-12
    );
}

#[test]
fn determinant_variant_is_rotation_invariant_and_trilinear_is_not() {
    // Rotating every 3-chunk of q, k1, k2 by one rotation leaves determinant logits unchanged.
    let rot = {
        let (a, b) = (0.7f64, -1.1f64);
        let rz = [
            [a.cos(), -a.sin(), 0.0],
            [a.sin(), a.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let rx = [
            [1.0, 0.0, 0.0],
            [0.0, b.cos(), -b.sin()],
            [0.0, b.sin(), b.cos()],
        ];
        let mut r = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] = (0..3).map(|t| rz[i][t] * rx[t][j]).sum();
            }
        }
        r
    };
    let rotate = |v: &[f64]| -> Vec<f64> {
        v.chunks(3)
            .flat_map(|c| {
                (0..3)
                    .map(|i| (0..3).map(|j| rot[i][j] * c[j]).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for (variant, invariant) in [(Variant::Determinant, true), (Variant::Trilinear, false)] {
        let c = Case::new(1, 8, 2, 1, 6, AttnSpec::causal(3, 4).with_variant(variant));
        let x = Data::new(&c, 4);
        let a = simplicial_attn_reference(&c.spec, &c.dims(), &x.inputs());
        let (q, k1, k2) = (rotate(&x.q), rotate(&x.k1), rotate(&x.k2));
        let r = Inputs {
            q: &q,
            k1: &k1,
            k2: &k2,
            v1: &x.v1,
            v2: &x.v2,
        };
        let b = simplicial_attn_reference(&c.spec, &c.dims(), &r);
        let diff =
            a.o.iter()
                .zip(&b.o)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert_eq!(diff < 1e-12, invariant, "{variant}: max diff {diff}");
    }
}
