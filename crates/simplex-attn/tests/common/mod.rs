//! Shared test helpers: seeded inputs, cases, and comparisons that print the worst index.
#![allow(dead_code)]

use rand::{rngs::StdRng, Rng, SeedableRng};
use simplex_attn::{AttnSpec, Dims, Variant};

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

/// The CUDA device for the GPU tests, with outputs poisoned (NaN) before every kernel; None (the
/// test is skipped) where there is none, unless `SIMPLEX_REQUIRE_CUDA=1` (gpu-bundle/run.sh).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(dev) => {
            simplex_attn::cuda::set_poison_outputs(true);
            Some(dev)
        }
        Err(e) if std::env::var("SIMPLEX_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("SIMPLEX_REQUIRE_CUDA=1 but no CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}
