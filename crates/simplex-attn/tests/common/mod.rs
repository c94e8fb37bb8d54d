//! Shared test helpers: seeded inputs and cases (2-simplicial and dot-product), and comparisons
//! that print the worst index.
#![allow(dead_code)]

use candle_core::DType;
use rand::{rngs::StdRng, Rng, SeedableRng};
use simplex_attn::dot::{DotDims, DotInputs};
use simplex_attn::{AttnSpec, Dims, DotSpec, Kernels, Variant};

/// `kernels` with every output poisoned (NaN) before its kernel runs, so that a test sees any
/// element a kernel leaves unwritten: what the GPU tests pass with each call.
pub fn poisoned(kernels: Kernels) -> Kernels {
    Kernels {
        poison_outputs: true,
        ..kernels
    }
}

/// One test shape.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub b: usize,
    pub n: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
    pub spec: AttnSpec,
}

impl Case {
    pub fn new(b: usize, n: usize, hq: usize, hkv: usize, d: usize, spec: AttnSpec) -> Case {
        Case {
            b,
            n,
            hq,
            hkv,
            d,
            dv: d,
            spec,
        }
    }
    pub fn dims(&self) -> Dims {
        self.spec
            .dims(
                &self.q_shape(),
                &self.k_shape(),
                &self.k_shape(),
                &self.v_shape(),
                &self.v_shape(),
            )
            .expect("valid case")
    }
    pub fn q_shape(&self) -> [usize; 4] {
        [self.b, self.n, self.hq, self.d]
    }
    pub fn k_shape(&self) -> [usize; 4] {
        [self.b, self.n, self.hkv, self.d]
    }
    pub fn v_shape(&self) -> [usize; 4] {
        [self.b, self.n, self.hkv, self.dv]
    }
}

/// The dims of a 2-simplicial call: B, N, Hq, Hkv, D, Dv.
pub fn dims(b: usize, n: usize, hq: usize, hkv: usize, d: usize, dv: usize) -> Dims {
    Dims {
        batch: b,
        seq: n,
        heads_q: hq,
        heads_kv: hkv,
        d,
        dv,
    }
}

/// Random inputs of a case, uniform in [-amp, amp], seeded.
pub struct Data {
    pub q: Vec<f64>,
    pub k1: Vec<f64>,
    pub k2: Vec<f64>,
    pub v1: Vec<f64>,
    pub v2: Vec<f64>,
}

pub fn random(len: usize, amp: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-amp..amp)).collect()
}

impl Data {
    pub fn new(c: &Case, seed: u64) -> Data {
        let mut rng = StdRng::seed_from_u64(seed);
        let nq: usize = c.q_shape().iter().product();
        let nk: usize = c.k_shape().iter().product();
        let nv: usize = c.v_shape().iter().product();
        // amplitudes that give logits of order one at every D
        let amp = (3.0 / (c.d as f64).sqrt()).sqrt().max(0.5) * 1.5;
        Data {
            q: random(nq, amp, &mut rng),
            k1: random(nk, amp, &mut rng),
            k2: random(nk, amp, &mut rng),
            v1: random(nv, 1.0, &mut rng),
            v2: random(nv, 1.0, &mut rng),
        }
    }
    pub fn inputs(&self) -> simplex_attn::reference::Inputs<'_> {
        simplex_attn::reference::Inputs {
            q: &self.q,
            k1: &self.k1,
            k2: &self.k2,
            v1: &self.v1,
            v2: &self.v2,
        }
    }
}

/// Asserts `|got - want| <= atol + rtol * max|want|` everywhere; names the worst index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut worst = (0usize, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite(),
            "{what}: element {i} is {g} (want {w}): not written or overflowed"
        );
        let e = (g - w).abs();
        if e > worst.1 {
            worst = (i, e);
        }
    }
    let tol = atol + rtol * scale;
    assert!(
        worst.1 <= tol,
        "{what}: worst index {}: got {}, want {}, |err| {:.3e} > tol {:.3e} (max|want| {:.3e})",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        tol,
        scale
    );
}

/// The shapes every fast path is checked on: odd lengths, seq 1, window 1, windows longer than
/// the sequence, GQA ratios 1..8, D in {3, 6, 16, 33, 64}, causal and bidirectional, both
/// variants, biases.
pub fn cases() -> Vec<Case> {
    let causal = AttnSpec::causal;
    let bi = AttnSpec::bidirectional;
    let det = Variant::Determinant;
    vec![
        Case::new(1, 1, 1, 1, 3, causal(1, 1)),
        Case::new(2, 1, 4, 2, 16, causal(5, 3)),
        Case::new(1, 7, 1, 1, 16, causal(1, 1)),
        Case::new(1, 9, 2, 1, 6, causal(1, 4)),
        Case::new(1, 13, 3, 3, 33, causal(4, 1)),
        Case::new(2, 11, 8, 1, 16, causal(3, 5)),
        Case::new(1, 17, 6, 2, 64, causal(40, 100)),
        Case::new(1, 21, 5, 5, 3, causal(8, 8)),
        Case::new(1, 10, 7, 1, 6, causal(2, 9)),
        Case::new(1, 12, 4, 4, 16, bi()),
        Case::new(2, 9, 4, 1, 6, bi().with_windows(Some(2), Some(3))),
        Case::new(1, 8, 2, 2, 33, bi().with_windows(None, Some(1))),
        Case::new(1, 15, 4, 2, 6, causal(6, 4).with_variant(det)),
        Case::new(1, 9, 3, 1, 3, bi().with_variant(det)),
        Case::new(1, 14, 2, 1, 16, causal(5, 7).with_biases(1.0 / 16.0, 1.0)),
        Case::new(1, 11, 2, 2, 16, causal(3, 3).with_scale(0.7)),
        Case {
            b: 1,
            n: 10,
            hq: 4,
            hkv: 2,
            d: 16,
            dv: 5,
            spec: causal(4, 6),
        },
        // more rows than one tile (G * tj > 256) and more keys than one tile (tk > 128)
        Case::new(1, 300, 8, 1, 6, causal(40, 150)),
    ]
}

/// The CUDA device for the GPU tests; None (the test is skipped) where there is none, unless
/// `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) if std::env::var("SIMPLEX_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("SIMPLEX_REQUIRE_CUDA=1 but no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// One dot-product attention shape: `q [b, nq, hq, d]`, `k [b, nk, hkv, d]`,
/// `v [b, nk, hkv, dv]`.
#[derive(Debug, Clone, Copy)]
pub struct DotCase {
    pub b: usize,
    pub nq: usize,
    pub nk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
    pub spec: DotSpec,
}

/// `n` queries and `n` keys, Dv = D.
pub fn dot_case(b: usize, n: usize, hq: usize, hkv: usize, d: usize, spec: DotSpec) -> DotCase {
    DotCase {
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

impl DotCase {
    /// The same queries after `nk - nq` cached keys.
    pub fn keys(self, nk: usize) -> DotCase {
        DotCase { nk, ..self }
    }
    pub fn value_dim(self, dv: usize) -> DotCase {
        DotCase { dv, ..self }
    }
    pub fn shapes(&self) -> [[usize; 4]; 3] {
        [
            [self.b, self.nq, self.hq, self.d],
            [self.b, self.nk, self.hkv, self.d],
            [self.b, self.nk, self.hkv, self.dv],
        ]
    }
    pub fn dims(&self) -> DotDims {
        let [q, k, v] = self.shapes();
        self.spec.dims(&q, &k, &v).expect("valid case")
    }
}

/// Seeded inputs of a dot case; logits of order a few at every D.
pub struct DotData {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
}

impl DotData {
    pub fn new(c: &DotCase, seed: u64) -> DotData {
        let mut rng = StdRng::seed_from_u64(seed);
        let [q, k, v] = c.shapes().map(|s| s.iter().product::<usize>());
        let amp = 2.0 / (c.d as f64).sqrt().sqrt();
        DotData {
            q: random(q, amp, &mut rng),
            k: random(k, amp, &mut rng),
            v: random(v, 1.0, &mut rng),
        }
    }
    pub fn inputs(&self) -> DotInputs<'_> {
        DotInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
        }
    }
}

/// Rounds every value to what `dtype` stores, so the oracle sees the kernel's inputs.
pub fn round_to(v: &mut [f64], dtype: DType) {
    for e in v.iter_mut() {
        *e = match dtype {
            DType::BF16 => half::bf16::from_f64(*e).to_f64(),
            DType::F32 => *e as f32 as f64,
            _ => *e,
        };
    }
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Tolerances of one comparison of the GPU tests: relative L2, and the worst element against
/// atol + rtol * max|want|.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub rel_l2: f64,
    pub rtol: f64,
    pub atol: f64,
}

/// (forward, backward) tolerances of a dtype; bf16: the rounding of o, P, dS and the gradients
/// (2^-9 relative) dominates.
pub fn tolerances(dtype: DType) -> (Tol, Tol) {
    let tol = |rel_l2, rtol, atol| Tol { rel_l2, rtol, atol };
    match dtype {
        DType::BF16 => (tol(1e-2, 2e-2, 1e-3), tol(1.5e-2, 3e-2, 1e-3)),
        _ => (tol(2e-5, 1e-4, 1e-6), tol(1e-4, 4e-4, 4e-6)),
    }
}

/// Compares and returns a printable line; Err when over tolerance or not finite.
///
/// `floor` stands in for max|want| where the reference is exactly zero: with a single key (dot)
/// or a single (j, k) pair (2-simplicial) per query, dP = delta, so the query and key gradients
/// vanish; the kernels compute delta from the stored, rounded o (as FlashAttention does) and
/// return rounding noise there, which is measured against the call's largest gradient instead.
pub fn compare(
    what: &str,
    got: &[f64],
    want: &[f64],
    tol: Tol,
    floor: f64,
) -> Result<String, String> {
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

/// Compares o and lse (the first two, forward tolerance of `dtype`) and the gradients (the
/// rest, backward tolerance, zero references measured against the largest reference gradient);
/// prints every comparison and returns the failing ones.
pub fn compare_outputs(
    tag: &str,
    names: &[&str],
    gots: &[&[f64]],
    wants: &[&[f64]],
    dtype: DType,
) -> Vec<String> {
    let (tf, tb) = tolerances(dtype);
    let floor = wants[2..].iter().map(|g| max_abs(g)).fold(0.0, f64::max);
    let mut failures = vec![];
    for (t, ((name, g), w)) in names.iter().zip(gots).zip(wants).enumerate() {
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

/// Runs `check` on every case (seeds `seed`, `seed + 1`, ...) in every dtype on the CUDA device
/// (skipped without one) and fails listing all failing comparisons.
#[cfg(feature = "cuda")]
pub fn check_all_cuda<C>(
    cases: &[C],
    seed: u64,
    dtypes: &[DType],
    check: impl Fn(&candle_core::Device, &C, u64, DType) -> Vec<String>,
) {
    let Some(dev) = cuda() else { return };
    let mut failures = vec![];
    for &dtype in dtypes {
        for (t, c) in cases.iter().enumerate() {
            failures.extend(check(&dev, c, seed + t as u64, dtype));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing comparisons:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
