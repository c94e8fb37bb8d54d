//! The CUDA kernels (through the candle op and its autograd, bf16 and f32) against the float64
//! oracle: o, lse and all five gradients.
//!
//! Built only with `--features cuda`. Without a CUDA device each test prints that it was skipped
//! and passes, unless `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh sets it). Outputs are poisoned
//! with NaN before every kernel (the calls ask for it), so an unwritten element fails. Errors
//! are measured as the relative L2 error ||got - want|| / ||want|| (METHOD.md: f32 far under
//! 1e-3, bf16 operands 1e-3..1e-2) and the worst element against atol + rtol * max|want|;
//! every comparison is printed, and a test reports all failing cases before it fails.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{
    cases, check_all_cuda, compare_outputs, cuda, max_abs, poisoned, round_to, Case, Data,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use simplex_attn::kernels::ForwardVariant;
use simplex_attn::reference::{simplicial_attn_backward_reference, simplicial_attn_reference};
use simplex_attn::{simplicial_attn, AttnSpec, Kernels, Variant};

struct Run {
    o: Vec<f64>,
    lse: Vec<f64>,
    grads: [Vec<f64>; 5],
}

/// Forward, then backward of `sum(o * dout)` through candle's autograd, on `dev` in `dtype`.
fn run_op(dev: &Device, c: &Case, x: &Data, dout: &[f64], dtype: DType) -> anyhow::Result<Run> {
    let t = |v: &Vec<f64>, s: [usize; 4]| -> anyhow::Result<Var> {
        let t = Tensor::from_vec(v.clone(), s.to_vec(), &Device::Cpu)?.to_dtype(dtype)?;
        Ok(Var::from_tensor(&t.to_device(dev)?)?)
    };
    let q = t(&x.q, c.q_shape())?;
    let k1 = t(&x.k1, c.k_shape())?;
    let k2 = t(&x.k2, c.k_shape())?;
    let v1 = t(&x.v1, c.v_shape())?;
    let v2 = t(&x.v2, c.v_shape())?;
    let spec = c.spec.with_kernels(poisoned(c.spec.kernels));
    let out = simplicial_attn(&q, &k1, &k2, &v1, &v2, &spec)?;
    anyhow::ensure!(
        out.o.dtype() == dtype,
        "o is {:?}, want {dtype:?}",
        out.o.dtype()
    );
    anyhow::ensure!(
        out.lse.dtype() == DType::F32,
        "lse is {:?}, want F32",
        out.lse.dtype()
    );
    let dout_t = Tensor::from_vec(dout.to_vec(), out.o.shape(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let grads = (out.o.clone() * dout_t)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let g = |v: &Var| -> anyhow::Result<Vec<f64>> {
        let g = grads.get(v).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        anyhow::ensure!(
            g.dtype() == dtype,
            "gradient is {:?}, want {dtype:?}",
            g.dtype()
        );
        flat(g)
    };
    Ok(Run {
        o: flat(&out.o)?,
        lse: flat(&out.lse)?,
        grads: [g(&q)?, g(&k1)?, g(&k2)?, g(&v1)?, g(&v2)?],
    })
}

/// Checks one case; returns the failures (empty when it passes).
fn check_case(dev: &Device, c: &Case, seed: u64, dtype: DType) -> Vec<String> {
    let mut x = Data::new(c, seed);
    for v in [&mut x.q, &mut x.k1, &mut x.k2, &mut x.v1, &mut x.v2] {
        round_to(v, dtype);
    }
    let dims = c.dims();
    let want = simplicial_attn_reference(&c.spec, &dims, &x.inputs());
    let mut dout = common::random(want.o.len(), 1.0, &mut StdRng::seed_from_u64(seed + 1));
    round_to(&mut dout, dtype);
    let wg = simplicial_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let tag = format!("{dtype:?} {c:?}");
    let got = match run_op(dev, c, &x, &dout, dtype) {
        Ok(g) => g,
        Err(e) => return vec![format!("{tag}: {e}")],
    };
    compare_outputs(
        &tag,
        &["o", "lse", "dq", "dk1", "dk2", "dv1", "dv2"],
        &[
            &got.o,
            &got.lse,
            &got.grads[0],
            &got.grads[1],
            &got.grads[2],
            &got.grads[3],
            &got.grads[4],
        ],
        &[
            &want.o, &want.lse, &wg.dq, &wg.dk1, &wg.dk2, &wg.dv1, &wg.dv2,
        ],
        dtype,
    )
}

/// Runs every case in both dtypes and fails listing all failing comparisons.
fn check_all(cases: &[Case], seed: u64, dtypes: &[DType]) {
    check_all_cuda(cases, seed, dtypes, check_case);
}

const BOTH: [DType; 2] = [DType::BF16, DType::F32];

#[test]
fn fwd_and_bwd_match_oracle_on_all_common_cases() {
    check_all(&cases(), 1000, &BOTH);
}

#[test]
fn gqa_ratios_one_to_eight_sixteen_and_sixty_four() {
    let dims = [32, 64, 96, 128];
    let mut cs = vec![];
    for (t, g) in [1usize, 2, 3, 4, 5, 6, 7, 8, 16, 64]
        .into_iter()
        .enumerate()
    {
        let hkv = if g <= 8 { 2 } else { 1 };
        let d = dims[t % dims.len()];
        cs.push(Case::new(1, 37, g * hkv, hkv, d, AttnSpec::causal(5, 11)));
        let bi = AttnSpec::bidirectional().with_windows(Some(3), Some(4));
        cs.push(Case::new(
            2,
            19,
            g * hkv,
            hkv,
            dims[(t + 1) % dims.len()],
            bi,
        ));
    }
    check_all(&cs, 2000, &BOTH);
}

#[test]
fn head_dims_32_to_256_and_the_determinant_lift() {
    let mut cs = vec![];
    for d in [32, 64, 96, 128, 192, 256] {
        cs.push(Case::new(1, 23, 4, 1, d, AttnSpec::causal(7, 13)));
    }
    cs.push(Case::new(
        1,
        17,
        2,
        2,
        256,
        AttnSpec::bidirectional().with_windows(Some(5), None),
    ));
    cs.push(Case {
        b: 1,
        n: 15,
        hq: 4,
        hkv: 2,
        d: 256,
        dv: 64,
        spec: AttnSpec::causal(4, 9),
    });
    cs.push(Case {
        b: 1,
        n: 15,
        hq: 4,
        hkv: 2,
        d: 32,
        dv: 256,
        spec: AttnSpec::causal(9, 4),
    });
    // the determinant lift doubles D: 96 -> 192, 126 -> 252
    let det = |s: AttnSpec| s.with_variant(Variant::Determinant);
    cs.push(Case::new(1, 21, 8, 1, 96, det(AttnSpec::causal(6, 10))));
    cs.push(Case::new(1, 12, 2, 1, 126, det(AttnSpec::bidirectional())));
    // lifts of at most 128 columns: in bf16 zero-padded to the tensor cores' D = Dv (63 -> 126
    // -> 128, 48 -> 96 -> 128, 30 -> 60 -> 64), in f32 the CUDA-core kernels
    cs.push(Case::new(1, 37, 8, 2, 63, det(AttnSpec::causal(9, 21))));
    cs.push(Case::new(2, 19, 4, 1, 48, det(AttnSpec::causal(32, 5))));
    cs.push(Case::new(
        1,
        70,
        2,
        2,
        30,
        det(AttnSpec::bidirectional().with_windows(Some(11), Some(40))),
    ));
    // where the producer forward runs at D = 128 (G >= 16, or forced): padded to D = 128,
    // Dv = 64 (its determinant instantiation; the backward pads the values to 128)
    cs.push(Case::new(1, 37, 16, 1, 63, det(AttnSpec::causal(9, 21))));
    cs.push(Case::new(1, 19, 64, 1, 48, det(AttnSpec::causal(32, 5))));
    cs.push(Case {
        b: 2,
        n: 29,
        hq: 64,
        hkv: 1,
        d: 128,
        dv: 64,
        spec: AttnSpec::bidirectional().with_windows(Some(5), Some(40)),
    });
    // the same kernel with both windows over the 128 window-1 rows it stages at once: the rows
    // are restaged during the walk
    cs.push(Case {
        b: 1,
        n: 200,
        hq: 16,
        hkv: 1,
        d: 128,
        dv: 64,
        spec: AttnSpec::causal(160, 140),
    });
    let producer = Kernels {
        forward: Some(ForwardVariant::Producer),
        ..Kernels::default()
    };
    cs.push(Case::new(
        1,
        45,
        4,
        2,
        63,
        det(AttnSpec::causal(13, 30)).with_kernels(producer),
    ));
    check_all(&cs, 3000, &BOTH);
}

#[test]
fn seq_one_window_one_and_windows_longer_than_seq() {
    let cs = vec![
        Case::new(2, 1, 64, 1, 128, AttnSpec::causal(32, 512)),
        Case::new(1, 1, 3, 1, 64, AttnSpec::bidirectional()),
        Case::new(1, 33, 8, 2, 64, AttnSpec::causal(1, 1)),
        Case::new(1, 9, 16, 1, 32, AttnSpec::causal(100, 200)),
        Case::new(
            1,
            9,
            4,
            4,
            32,
            AttnSpec::bidirectional().with_windows(Some(100), Some(1)),
        ),
        // more keys than one tile in both windows, rows over several blocks, odd length
        Case::new(1, 201, 16, 1, 64, AttnSpec::causal(70, 130)),
        Case::new(
            1,
            129,
            2,
            2,
            32,
            AttnSpec::bidirectional().with_windows(Some(40), Some(90)),
        ),
    ];
    check_all(&cs, 4000, &BOTH);
}

#[test]
fn random_shapes_match_oracle_f32() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut cs = vec![];
    for _ in 0..40 {
        let (b, n, hkv, g) = (
            rng.random_range(1..3),
            rng.random_range(1..40),
            rng.random_range(1..3),
            rng.random_range(1..9),
        );
        let (w1, w2) = (rng.random_range(1..50), rng.random_range(1..50));
        let mut spec = if rng.random_bool(0.5) {
            AttnSpec::causal(w1, w2)
        } else {
            AttnSpec::bidirectional().with_windows(Some(w1), Some(w2))
        };
        if rng.random_bool(0.2) {
            spec = spec.with_windows(None, Some(w2));
        }
        let (d, dv) = if rng.random_bool(0.3) {
            spec = spec.with_variant(Variant::Determinant);
            let d = 3 * rng.random_range(1..30);
            (d, rng.random_range(1..80))
        } else {
            (rng.random_range(1..130), rng.random_range(1..130))
        };
        cs.push(Case {
            b,
            n,
            hq: g * hkv,
            hkv,
            d,
            dv,
            spec,
        });
    }
    check_all(&cs, 5000, &[DType::F32]);
}

#[test]
fn results_are_deterministic() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    // w1 < w2: (k1, v1) is the tensor-core backward's atomically summed set
    let c = Case::new(1, 77, 16, 2, 64, AttnSpec::causal(20, 33));
    let x = Data::new(&c, 6);
    let dout = common::random(c.b * c.n * c.hq * c.dv, 1.0, &mut StdRng::seed_from_u64(7));
    // the deterministic backward: every output bitwise equal
    let det = Case {
        spec: c.spec.with_kernels(Kernels {
            deterministic: true,
            ..Kernels::default()
        }),
        ..c
    };
    let a = run_op(&dev, &det, &x, &dout, DType::BF16)?;
    let b = run_op(&dev, &det, &x, &dout, DType::BF16)?;
    anyhow::ensure!(
        a.o == b.o && a.lse == b.lse,
        "forward differs between two runs"
    );
    for (t, (ga, gb)) in a.grads.iter().zip(&b.grads).enumerate() {
        anyhow::ensure!(
            ga == gb,
            "deterministic mode: gradient {t} differs between two runs"
        );
    }
    // the default (tensor-core) backward: q, k2, v2 bitwise; k1, v1 to f32 summation order
    let a = run_op(&dev, &c, &x, &dout, DType::BF16)?;
    let b = run_op(&dev, &c, &x, &dout, DType::BF16)?;
    for (t, name) in ["q", "k1", "k2", "v1", "v2"].iter().enumerate() {
        let (ga, gb) = (&a.grads[t], &b.grads[t]);
        if matches!(*name, "k1" | "v1") {
            let diff = ga
                .iter()
                .zip(gb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            anyhow::ensure!(
                diff <= 1e-2 * max_abs(gb),
                "d{name} differs between two runs by {diff}"
            );
        } else {
            anyhow::ensure!(ga == gb, "d{name} differs between two runs");
        }
    }
    Ok(())
}

#[test]
fn f16_and_f64_inputs_are_a_clear_error() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    for dtype in [DType::F16, DType::F64] {
        let t = |h: usize| -> anyhow::Result<Tensor> {
            Ok(Tensor::ones((1, 4, h, 8), DType::F32, &dev)?.to_dtype(dtype)?)
        };
        let r = simplicial_attn(
            &t(2)?,
            &t(1)?,
            &t(1)?,
            &t(1)?,
            &t(1)?,
            &AttnSpec::causal(2, 2),
        );
        let e = match r {
            Ok(_) => anyhow::bail!("{dtype:?} inputs on CUDA were accepted"),
            Err(e) => e.to_string(),
        };
        let name = format!("{dtype:?}");
        anyhow::ensure!(
            e.contains(&name) && e.contains("bf16"),
            "unclear error for {dtype:?}: {e}"
        );
        println!("{dtype:?}: {e}");
    }
    Ok(())
}

#[test]
fn head_dims_over_256_are_a_clear_error() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let t = |h: usize| -> anyhow::Result<Tensor> {
        Ok(Tensor::ones((1, 4, h, 300), DType::F32, &dev)?)
    };
    let e = match simplicial_attn(
        &t(2)?,
        &t(1)?,
        &t(1)?,
        &t(1)?,
        &t(1)?,
        &AttnSpec::causal(2, 2),
    ) {
        Ok(_) => anyhow::bail!("D = 300 on CUDA was accepted"),
        Err(e) => e.to_string(),
    };
    anyhow::ensure!(e.contains("300") && e.contains("256"), "unclear error: {e}");
    Ok(())
}
