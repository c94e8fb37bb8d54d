//! The dot-product attention CUDA kernels (through `dot_attn` and candle's autograd, bf16 and
//! f32) against the float64 oracle: o, lse, dq, dk and dv.
//!
//! bf16 with D = Dv in {64, 128} runs the tensor-core kernels; f32, other head dims and
//! misaligned views run the CUDA-core kernels (`dot::DotKernel`). Built only with
//! `--features cuda`; without a CUDA device each test prints that it was skipped and passes,
//! unless `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh sets it). Outputs are poisoned with NaN
//! before every kernel. Errors: relative L2 ||got - want|| / ||want|| and the worst element
//! against atol + rtol * max|want|; every comparison is printed, and a test lists all failing
//! comparisons before it fails.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::cuda;
use rand::{rngs::StdRng, SeedableRng};
use simplex_attn::dot::{
    dot_attn_backward_reference, dot_attn_reference, has_fused_kernel, DotDims, DotInputs,
};
use simplex_attn::{dot_attn, DotSpec};

/// One shape: `q [b, nq, hq, d]`, `k [b, nk, hkv, d]`, `v [b, nk, hkv, dv]`.
#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    nq: usize,
    nk: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    spec: DotSpec,
}

fn case(b: usize, n: usize, hq: usize, hkv: usize, d: usize, spec: DotSpec) -> Case {
    Case {
        b,
        nq: n,
        nk: n,
        hq,
        hkv,
        d,
        dv: d,
        spec,
    }
}

impl Case {
    /// The same queries after `nk - nq` cached keys.
    fn keys(self, nk: usize) -> Case {
        Case { nk, ..self }
    }
    fn value_dim(self, dv: usize) -> Case {
        Case { dv, ..self }
    }
    fn shapes(&self) -> [[usize; 4]; 3] {
        [
            [self.b, self.nq, self.hq, self.d],
            [self.b, self.nk, self.hkv, self.d],
            [self.b, self.nk, self.hkv, self.dv],
        ]
    }
    fn dims(&self) -> DotDims {
        let [q, k, v] = self.shapes();
        self.spec.dims(&q, &k, &v).expect("valid case")
    }
}

/// Seeded inputs, rounded to what `dtype` stores so the oracle sees the kernel's inputs; logits
/// of order a few at every D.
struct Data {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

fn round_to(v: Vec<f64>, dtype: DType) -> Vec<f64> {
    v.into_iter()
        .map(|e| match dtype {
            DType::BF16 => half::bf16::from_f64(e).to_f64(),
            DType::F32 => e as f32 as f64,
            _ => e,
        })
        .collect()
}

impl Data {
    fn new(c: &Case, seed: u64, dtype: DType) -> Data {
        let mut rng = StdRng::seed_from_u64(seed);
        let [q, k, v] = c.shapes().map(|s| s.iter().product::<usize>());
        let amp = 2.0 / (c.d as f64).sqrt().sqrt();
        Data {
            q: round_to(common::random(q, amp, &mut rng), dtype),
            k: round_to(common::random(k, amp, &mut rng), dtype),
            v: round_to(common::random(v, 1.0, &mut rng), dtype),
        }
    }
    fn inputs(&self) -> DotInputs<'_> {
        DotInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
        }
    }
}

/// Tolerances of one comparison: relative L2, and the worst element against atol + rtol * max.
#[derive(Debug, Clone, Copy)]
struct Tol {
    rel_l2: f64,
    rtol: f64,
    atol: f64,
}

/// (forward, backward) tolerances of a dtype; bf16: the rounding of o, P, dS and the gradients
/// (2^-9 relative) dominates.
fn tolerances(dtype: DType) -> (Tol, Tol) {
    let tol = |rel_l2, rtol, atol| Tol { rel_l2, rtol, atol };
    match dtype {
        DType::BF16 => (tol(1e-2, 2e-2, 1e-3), tol(1.5e-2, 3e-2, 1e-3)),
        _ => (tol(2e-5, 1e-4, 1e-6), tol(1e-4, 4e-4, 4e-6)),
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Compares and returns a printable line; Err when over tolerance or not finite. `floor` stands
/// in for max|want| where the reference is exactly zero: with one key per query (seq 1 or
/// window 1) dP = delta, so dq and dk vanish, and the kernels, which take delta from the stored
/// (rounded) o as FlashAttention does, return rounding noise measured against the call's
/// largest gradient.
fn compare(what: &str, got: &[f64], want: &[f64], tol: Tol, floor: f64) -> Result<String, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let own = max_abs(want);
    let scale = if own == 0.0 { floor } else { own };
    let norm = if own == 0.0 {
        floor * (want.len() as f64).sqrt()
    } else {
        want.iter().map(|x| x * x).sum::<f64>().sqrt()
    };
    let (mut diff2, mut worst) = (0.0, (0usize, 0.0f64));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() {
            return Err(format!(
                "{what}: element {i} is {g} (want {w}): unwritten or overflowed"
            ));
        }
        let e = (g - w).abs();
        diff2 += e * e;
        if e > worst.1 {
            worst = (i, e);
        }
    }
    let rel = if norm > 0.0 {
        diff2.sqrt() / norm
    } else {
        diff2.sqrt()
    };
    let i = worst.0;
    let line = format!(
        "{what}: rel_l2 {rel:.2e}, worst index {i} got {:.6e} want {:.6e} |err| {:.2e} (max|want| {scale:.2e})",
        got[i], want[i], worst.1
    );
    if rel > tol.rel_l2 || worst.1 > tol.atol + tol.rtol * scale {
        Err(format!("{line}  > tol {tol:?}"))
    } else {
        Ok(line)
    }
}

/// o, lse and (dq, dk, dv) of one call.
struct Run {
    o: Vec<f64>,
    lse: Vec<f64>,
    grads: [Vec<f64>; 3],
}

/// A variable holding `offset` padding values then `values`, in `dtype` on `dev`, and the view
/// of `values` in it with `shape`: with `offset` > 0 a contiguous tensor that does not start on a
/// 16-byte boundary (gradients reach the variable through the view).
fn input(
    values: &[f64],
    shape: [usize; 4],
    dtype: DType,
    dev: &Device,
    offset: usize,
) -> anyhow::Result<(Var, Tensor)> {
    let mut padded = vec![0.5; offset];
    padded.extend_from_slice(values);
    let t = Tensor::from_vec(padded, offset + values.len(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let var = Var::from_tensor(&t)?;
    let view = var
        .as_tensor()
        .narrow(0, offset, values.len())?
        .reshape(shape.to_vec())?;
    Ok((var, view))
}

/// Forward, then backward of `sum(o * dout)` through candle's autograd.
fn run_op(
    dev: &Device,
    c: &Case,
    x: &Data,
    dout: &[f64],
    dtype: DType,
    offset: usize,
) -> anyhow::Result<Run> {
    let [qs, ks, vs] = c.shapes();
    let (q, qt) = input(&x.q, qs, dtype, dev, offset)?;
    let (k, kt) = input(&x.k, ks, dtype, dev, offset)?;
    let (v, vt) = input(&x.v, vs, dtype, dev, offset)?;
    let out = dot_attn(&qt, &kt, &vt, &c.spec)?;
    anyhow::ensure!(out.o.dtype() == dtype, "o is {:?}", out.o.dtype());
    anyhow::ensure!(
        out.lse.dtype() == DType::F32,
        "lse is {:?}",
        out.lse.dtype()
    );
    let (_, dout_t) = input(dout, [c.b, c.nq, c.hq, c.dv], dtype, dev, 0)?;
    let grads = (out.o.clone() * dout_t)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let g = |v: &Var| -> anyhow::Result<Vec<f64>> {
        let g = grads.get(v).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        anyhow::ensure!(g.dtype() == dtype, "gradient is {:?}", g.dtype());
        Ok(flat(g)?[offset..].to_vec())
    };
    Ok(Run {
        o: flat(&out.o)?,
        lse: flat(&out.lse)?,
        grads: [g(&q)?, g(&k)?, g(&v)?],
    })
}

/// Checks one case; returns the failing comparisons (empty when it passes).
fn check_case(dev: &Device, c: &Case, seed: u64, dtype: DType, offset: usize) -> Vec<String> {
    let x = Data::new(c, seed, dtype);
    let dims = c.dims();
    let want = dot_attn_reference(&c.spec, &dims, &x.inputs());
    let dout = round_to(
        common::random(want.o.len(), 1.0, &mut StdRng::seed_from_u64(seed + 1)),
        dtype,
    );
    let wg = dot_attn_backward_reference(&c.spec, &dims, &x.inputs(), &dout);
    let tag = format!("{dtype:?} offset {offset} {c:?}");
    let got = match run_op(dev, c, &x, &dout, dtype, offset) {
        Ok(g) => g,
        Err(e) => return vec![format!("{tag}: {e}")],
    };
    let (tf, tb) = tolerances(dtype);
    let floor = [&wg.dq, &wg.dk, &wg.dv]
        .map(|g| max_abs(g))
        .into_iter()
        .fold(0.0, f64::max);
    let gots = [
        &got.o,
        &got.lse,
        &got.grads[0],
        &got.grads[1],
        &got.grads[2],
    ];
    let wants = [&want.o, &want.lse, &wg.dq, &wg.dk, &wg.dv];
    let mut failures = vec![];
    for (t, ((name, g), w)) in ["o", "lse", "dq", "dk", "dv"]
        .iter()
        .zip(gots)
        .zip(wants)
        .enumerate()
    {
        let (tol, floor) = if t < 2 { (tf, 0.0) } else { (tb, floor) };
        match compare(&format!("{name} {tag}"), g, w, tol, floor) {
            Ok(line) => println!("ok   {line}"),
            Err(line) => {
                println!("FAIL {line}");
                failures.push(line);
            }
        }
    }
    failures
}

/// Runs every case in every dtype and fails listing all failing comparisons.
fn check_all(cases: &[Case], seed: u64, dtypes: &[DType]) {
    let Some(dev) = cuda() else { return };
    let mut failures = vec![];
    for &dtype in dtypes {
        for (t, c) in cases.iter().enumerate() {
            failures.extend(check_case(&dev, c, seed + t as u64, dtype, 0));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing comparisons:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const BOTH: [DType; 2] = [DType::BF16, DType::F32];

#[test]
fn tensor_core_shapes_match_oracle_causal_windows_gqa_1_2_8() {
    let (c, sl) = (DotSpec::causal, DotSpec::sliding);
    let cases = [
        case(2, 1, 4, 2, 64, c()),
        case(1, 37, 2, 2, 64, c()),
        case(2, 77, 8, 1, 128, c()),
        case(1, 33, 4, 2, 64, sl(1)),
        case(1, 21, 2, 1, 128, sl(100)),
        case(1, 300, 2, 1, 64, sl(70)),
        case(1, 257, 4, 2, 128, sl(130)),
        case(1, 513, 2, 1, 64, c()),
        case(1, 300, 2, 2, 128, c()),
        case(1, 150, 3, 3, 64, c().with_scale(-0.3)),
        case(2, 1024, 4, 2, 64, c()),
    ];
    check_all(&cases, 1000, &BOTH);
}

#[test]
fn bidirectional_with_and_without_window_match_oracle() {
    let bi = DotSpec::bidirectional;
    let cases = [
        case(2, 45, 4, 4, 64, bi()),
        case(1, 200, 2, 1, 128, bi().with_window(Some(50))),
        case(1, 40, 2, 2, 64, bi().with_window(Some(1))),
        case(1, 1, 8, 1, 128, bi()),
        case(1, 140, 8, 1, 64, bi().with_window(Some(200))),
    ];
    check_all(&cases, 2000, &BOTH);
}

#[test]
fn cache_steps_with_more_keys_than_queries_match_oracle() {
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(2, 1, 8, 1, 64, c()).keys(50),
        case(1, 5, 4, 2, 128, sl(64)).keys(130),
        case(1, 17, 2, 2, 64, bi().with_window(Some(20))).keys(150),
        case(1, 70, 2, 1, 64, c()).keys(200),
        case(1, 130, 4, 1, 128, sl(33)).keys(300),
        case(1, 1, 2, 2, 64, sl(1)).keys(9),
    ];
    check_all(&cases, 3000, &BOTH);
}

#[test]
fn other_head_dims_run_the_cuda_core_kernels() {
    let (c, sl, bi) = (DotSpec::causal, DotSpec::sliding, DotSpec::bidirectional);
    let cases = [
        case(1, 29, 4, 2, 32, c()),
        case(1, 40, 2, 1, 96, sl(9)),
        case(1, 23, 2, 2, 256, bi()),
        case(1, 31, 2, 1, 16, c()).value_dim(40),
        case(1, 19, 4, 4, 64, c()).value_dim(32),
        case(2, 9, 2, 1, 200, c()).keys(20),
        case(1, 50, 8, 1, 3, c()),
        case(1, 70, 2, 2, 128, bi().with_window(Some(7))).value_dim(256),
    ];
    check_all(&cases, 4000, &BOTH);
}

#[test]
fn misaligned_views_run_the_cuda_core_kernels() {
    let Some(dev) = cuda() else { return };
    let cases = [
        case(1, 45, 4, 2, 64, DotSpec::causal()),
        case(1, 30, 2, 2, 128, DotSpec::sliding(7)).keys(40),
    ];
    let mut failures = vec![];
    for (t, c) in cases.iter().enumerate() {
        failures.extend(check_case(&dev, c, 5000 + t as u64, DType::BF16, 3));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn results_are_deterministic() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    for c in [
        case(1, 200, 8, 1, 64, DotSpec::causal()),
        case(1, 100, 4, 2, 128, DotSpec::sliding(40)),
    ] {
        let x = Data::new(&c, 6, DType::BF16);
        let dout = common::random(c.b * c.nq * c.hq * c.dv, 1.0, &mut StdRng::seed_from_u64(7));
        let a = run_op(&dev, &c, &x, &dout, DType::BF16, 0)?;
        let b = run_op(&dev, &c, &x, &dout, DType::BF16, 0)?;
        anyhow::ensure!(
            a.o == b.o && a.lse == b.lse,
            "forward differs between two runs"
        );
        for (t, (ga, gb)) in a.grads.iter().zip(&b.grads).enumerate() {
            anyhow::ensure!(ga == gb, "gradient {t} differs between two runs ({c:?})");
        }
    }
    Ok(())
}

#[test]
fn unsupported_dtypes_and_head_dims_are_clear_errors() -> anyhow::Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let spec = DotSpec::causal();
    for dtype in [DType::F16, DType::F64] {
        let t = Tensor::ones((1, 4, 2, 8), DType::F32, &dev)?.to_dtype(dtype)?;
        let e = dot_attn(&t, &t, &t, &spec)
            .expect_err("no CUDA kernel")
            .to_string();
        assert!(
            e.contains(&format!("{dtype:?}")) && e.contains("bf16 or f32"),
            "{e}"
        );
        assert!(!has_fused_kernel(&dev, dtype, 8, 8));
    }
    let t = Tensor::ones((1, 4, 2, 320), DType::BF16, &dev)?;
    let e = dot_attn(&t, &t, &t, &spec)
        .expect_err("D too large")
        .to_string();
    assert!(e.contains("D = 320"), "{e}");
    assert!(!has_fused_kernel(&dev, DType::BF16, 320, 320));
    assert!(has_fused_kernel(&dev, DType::BF16, 64, 64));
    assert!(has_fused_kernel(&dev, DType::F32, 7, 200));
    Ok(())
}
