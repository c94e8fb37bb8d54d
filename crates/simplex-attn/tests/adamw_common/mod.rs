//! The flat AdamW checks shared by `flat_adamw.rs` (CPU) and `cuda_fused.rs` (GPU).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simplex_attn::fused::adamw::{AdamWStep, FlatAdamW};

const SHAPES: [&[usize]; 4] = [&[3, 4], &[5], &[2, 3, 2], &[4099]];
const DECAY: [bool; 4] = [true, false, true, true];

fn values(n: usize, amp: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// Updates as (micro-batch gradients per parameter (None: no gradient), max_norm).
type Plan = Vec<(Vec<Vec<Option<Vec<f64>>>>, f64)>;

fn plan(rng: &mut StdRng) -> Plan {
    let grads = |rng: &mut StdRng, amp: f64, missing: Option<usize>| -> Vec<Option<Vec<f64>>> {
        SHAPES
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: usize = s.iter().product();
                (Some(i) != missing).then(|| values(n, amp, rng))
            })
            .collect()
    };
    vec![
        (vec![grads(rng, 1.0, None)], 0.0),
        (vec![grads(rng, 1.0, Some(1))], 1.0),
        (vec![grads(rng, 0.5, None), grads(rng, 0.5, Some(2))], 1e3),
        (vec![grads(rng, 2.0, None)], 0.5),
    ]
}

fn hp(t: u64, max_norm: f64) -> AdamWStep {
    AdamWStep {
        lr: 3e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t,
        max_norm,
    }
}

fn tensors(vals: &[Vec<f64>], dev: &Device, dtype: DType) -> Vec<Tensor> {
    vals.iter()
        .zip(SHAPES)
        .map(|(v, s)| {
            Tensor::from_vec(v.clone(), s, dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        })
        .collect()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Runs the plan on `dev` with working copies of `dtype` and checks masters, moments, working
/// copies and the reported norm against a per-element f64 loop.
pub fn check_against_reference(dev: &Device, dtype: DType) {
    let mut rng = StdRng::seed_from_u64(7);
    let init: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|s| values(s.iter().product(), 1.0, &mut rng))
        .collect();
    let masters = tensors(&init, dev, DType::F32);
    let work: Vec<Tensor> = masters
        .iter()
        .map(|m| m.to_dtype(dtype).unwrap().zeros_like().unwrap())
        .collect();
    let mut opt = FlatAdamW::new(&masters, work.clone(), &DECAY).unwrap();
    // reference state: f32-rounded initial values
    let mut p: Vec<Vec<f64>> = init
        .iter()
        .map(|v| v.iter().map(|&x| x as f32 as f64).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v2 = m.clone();
    for (step, (micro, max_norm)) in plan(&mut rng).into_iter().enumerate() {
        let t = step as u64 + 1;
        let mut g: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
        for (k, mb) in micro.iter().enumerate() {
            let gs: Vec<Option<Tensor>> = mb
                .iter()
                .zip(SHAPES)
                .map(|(x, s)| {
                    x.as_ref().map(|x| {
                        Tensor::from_vec(x.clone(), s, dev)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap()
                    })
                })
                .collect();
            opt.gather(&gs, k > 0).unwrap();
            for (i, x) in gs.iter().enumerate() {
                if let Some(x) = x {
                    // the gathered value is the gradient as stored (rounded on its device)
                    g[i].iter_mut().zip(&host(x)).for_each(|(a, b)| *a += b);
                }
            }
        }
        let h = hp(t, max_norm);
        opt.step(&h).unwrap();
        let norm = g.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let scale = if max_norm > 0.0 && norm > max_norm {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let (bc1, bc2) = h.bias_corrections();
        for i in 0..SHAPES.len() {
            let keep = if DECAY[i] {
                1.0 - h.lr * h.weight_decay
            } else {
                1.0
            };
            for k in 0..p[i].len() {
                let gk = g[i][k] * scale;
                m[i][k] = h.beta1 * m[i][k] + (1.0 - h.beta1) * gk;
                v2[i][k] = h.beta2 * v2[i][k] + (1.0 - h.beta2) * gk * gk;
                p[i][k] =
                    p[i][k] * keep - h.lr * (m[i][k] / bc1) / ((v2[i][k] / bc2).sqrt() + h.eps);
            }
        }
        let got_norm = host(&opt.grad_norm().unwrap())[0];
        assert!(
            (got_norm - norm).abs() <= 1e-5 * norm,
            "update {t}: norm {got_norm} vs {norm}"
        );
        for i in 0..SHAPES.len() {
            let [gp, gm, gv] = opt.state(i).unwrap();
            assert_eq!(gp.dims(), SHAPES[i]);
            for (name, got, want) in [
                ("master", host(&gp), &p[i]),
                ("m", host(&gm), &m[i]),
                ("v", host(&gv), &v2[i]),
            ] {
                let scale = want.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
                for (k, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * scale,
                        "{dtype:?} update {t}: {name} of parameter {i}[{k}]: {a} vs {b}"
                    );
                }
            }
            // the working copy is the master in its dtype
            let want: Vec<f64> = host(&gp.to_dtype(dtype).unwrap());
            assert_eq!(
                host(&work[i]),
                want,
                "{dtype:?} update {t}: working copy {i}"
            );
        }
    }
}

/// A second optimizer loaded from the first's state takes the same next update, bit for bit.
pub fn round_trip_is_exact(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(3);
    let init: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|s| values(s.iter().product(), 1.0, &mut rng))
        .collect();
    let masters = tensors(&init, dev, DType::F32);
    let fresh = |dtype: DType| -> (FlatAdamW, Vec<Tensor>) {
        let work: Vec<Tensor> = masters.iter().map(|m| m.to_dtype(dtype).unwrap()).collect();
        (
            FlatAdamW::new(&masters, work.clone(), &DECAY).unwrap(),
            work,
        )
    };
    let (mut a, wa) = fresh(DType::BF16);
    let grads = |rng: &mut StdRng| -> Vec<Option<Tensor>> {
        let v: Vec<Vec<f64>> = SHAPES
            .iter()
            .map(|s| values(s.iter().product(), 1.0, rng))
            .collect();
        tensors(&v, dev, DType::F32).into_iter().map(Some).collect()
    };
    for t in 1..=2 {
        a.gather(&grads(&mut rng), false).unwrap();
        a.step(&hp(t, 1.0)).unwrap();
    }
    let (mut b, wb) = fresh(DType::BF16);
    for i in 0..SHAPES.len() {
        let [p, m, v] = a.state(i).unwrap();
        b.set_state(i, [&p, &m, &v]).unwrap();
    }
    b.write_working().unwrap();
    for i in 0..SHAPES.len() {
        assert_eq!(host(&wa[i]), host(&wb[i]), "working copy {i} after loading");
    }
    let g = grads(&mut rng);
    a.gather(&g, false).unwrap();
    b.gather(&g, false).unwrap();
    a.step(&hp(3, 1.0)).unwrap();
    b.step(&hp(3, 1.0)).unwrap();
    for i in 0..SHAPES.len() {
        let (sa, sb) = (a.state(i).unwrap(), b.state(i).unwrap());
        for k in 0..3 {
            assert_eq!(host(&sa[k]), host(&sb[k]), "parameter {i}, state {k}");
        }
        assert_eq!(host(&wa[i]), host(&wb[i]), "working copy {i}");
    }
}
