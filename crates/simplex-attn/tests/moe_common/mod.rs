//! Shared by `tests/moe.rs` (CPU) and `tests/cuda_moe.rs` (GPU): the routed expert path run
//! through the MoE ops, and the per-token reference it is held to.

#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};

use super::common::assert_close;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simplex_attn::moe::{
    self, dispatch, moe_reference, routed_experts, routed_experts_twin, ExpertProducts,
};

/// One shape: tokens, model width, expert hidden width, experts, experts per token, capacity,
/// and experts that the scores never pick (they receive no token).
#[derive(Debug, Clone)]
pub struct MoeCase {
    pub name: &'static str,
    pub t: usize,
    pub c: usize,
    pub h: usize,
    pub e: usize,
    pub k: usize,
    pub capacity: Option<usize>,
    pub unused: Vec<usize>,
}

pub fn cases(big: bool) -> Vec<MoeCase> {
    let case = |name, t, c, h, e, k, capacity, unused: &[usize]| MoeCase {
        name,
        t,
        c,
        h,
        e,
        k,
        capacity,
        unused: unused.to_vec(),
    };
    let mut v = vec![
        case("odd widths", 7, 5, 3, 4, 2, None, &[]),
        case("one token", 1, 8, 8, 3, 1, None, &[]),
        case("capacity drops", 33, 16, 24, 8, 2, Some(5), &[]),
        case("idle experts, k = 3", 40, 24, 16, 6, 3, None, &[1, 4]),
        case("every expert", 9, 8, 8, 3, 3, None, &[]),
    ];
    if big {
        v.push(case("tensor-core tiles", 300, 64, 136, 8, 2, None, &[6]));
        v.push(case(
            "tiles and capacity",
            260,
            128,
            64,
            4,
            2,
            Some(90),
            &[],
        ));
    }
    v
}

/// Inputs of one case, in f64 on the host.
pub struct MoeData {
    pub x: Vec<f64>,
    pub scores: Vec<f32>,
    pub weights: Vec<f64>,
    pub gate_up: Vec<f64>,
    pub down: Vec<f64>,
    pub dout: Vec<f64>,
}

impl MoeData {
    /// Scores on a coarse grid (many ties); the unused experts score far below the rest.
    pub fn new(c: &MoeCase, seed: u64) -> MoeData {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut r = |n: usize, amp: f64| -> Vec<f64> {
            (0..n).map(|_| rng.random_range(-amp..amp)).collect()
        };
        let x = r(c.t * c.c, 1.0);
        let grid = r(c.t * c.e, 1.0);
        let scores = grid
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if c.unused.contains(&(i % c.e)) {
                    -10.0
                } else {
                    ((v * 2.0).round() / 2.0) as f32
                }
            })
            .collect();
        let weights = r(c.t * c.k, 1.0).iter().map(|v| 0.5 + 0.5 * v).collect();
        let gate_up = r(c.e * 2 * c.h * c.c, 1.0 / (c.c as f64).sqrt());
        let down = r(c.e * c.c * c.h, 1.0 / (c.h as f64).sqrt());
        let dout = r(c.t * c.c, 1.0);
        MoeData {
            x,
            scores,
            weights,
            gate_up,
            down,
            dout,
        }
    }
}

impl MoeData {
    /// The same data with every float rounded to `dtype` (so that a run in `dtype` and the
    /// f64 reference see the same inputs).
    pub fn rounded(&self, dtype: DType) -> MoeData {
        let r = |v: &[f64]| -> Vec<f64> {
            Tensor::from_slice(v, v.len(), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F64)?.to_vec1())
                .expect("rounding on the CPU")
        };
        MoeData {
            x: r(&self.x),
            scores: self.scores.clone(),
            weights: r(&self.weights),
            gate_up: r(&self.gate_up),
            down: r(&self.down),
            dout: r(&self.dout),
        }
    }
}

/// Output and gradients (x, weights, gate_up, down) of `sum(out * dout)`, all as f64 vectors,
/// and the routing: expert ids and per-expert loads.
pub struct MoeRun {
    pub out: Vec<f64>,
    pub grads: Vec<Vec<f64>>,
    pub ids: Vec<u32>,
    pub counts: Vec<u32>,
    pub offsets: Vec<u32>,
}

impl MoeRun {
    /// Asserts `self`'s output and four gradients equal `want`'s to `rtol` (relative L2; the
    /// worst element to `rtol / 100` of the largest), naming `name` in a failure.
    pub fn assert_close_to(&self, want: &MoeRun, name: &str, rtol: f64) {
        assert_close(
            &format!("{name}: out"),
            &self.out,
            &want.out,
            rtol,
            rtol * 1e-2,
        );
        for (n, (g, w)) in ["x", "weights", "gate_up", "down"]
            .iter()
            .zip(self.grads.iter().zip(&want.grads))
        {
            assert_close(&format!("{name}: d{n}"), g, w, rtol, rtol * 1e-2);
        }
    }
}

fn to_host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// Which implementation of the routed path a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`routed_experts`]: one op with a written-out backward (what the model runs), its
    /// products chosen automatically.
    Fused,
    /// [`routed_experts`] with the grouped product kernels forced.
    FusedGrouped,
    /// [`routed_experts`] with one cuBLAS product per expert forced (CUDA).
    FusedPerExpert,
    /// [`routed_experts_twin`]: permute, grouped products, SwiGLU, combine through autograd.
    Composed,
    /// [`moe_reference`]: a loop over tokens in candle ops, with the ids of the same routing.
    Reference,
}

/// The paths a run on the CPU compares (the product choice applies to CUDA only).
pub const PATHS: [Path; 2] = [Path::Fused, Path::Composed];

/// The paths a run on CUDA compares.
pub const CUDA_PATHS: [Path; 4] = [
    Path::Fused,
    Path::FusedGrouped,
    Path::FusedPerExpert,
    Path::Composed,
];

/// The routed path on `dev` in `dtype` through `path`.
pub fn run(c: &MoeCase, d: &MoeData, dev: &Device, dtype: DType, path: Path) -> Result<MoeRun> {
    let var = |v: &[f64], shape: &[usize]| -> Result<Var> {
        Var::from_tensor(
            &Tensor::from_slice(v, shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(dev)?,
        )
    };
    let x = var(&d.x, &[c.t, c.c])?;
    let w = var(&d.weights, &[c.t, c.k])?;
    let gu = var(&d.gate_up, &[c.e, 2 * c.h, c.c])?;
    let dn = var(&d.down, &[c.e, c.c, c.h])?;
    let scores = Tensor::from_slice(&d.scores, (c.t, c.e), &Device::Cpu)?.to_device(dev)?;
    let ids = moe::top_k(&scores, c.k)?;
    let disp = dispatch(&ids, c.e, c.capacity)?;
    let ids_host = ids
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let out = match path {
        Path::Reference => moe_reference(&x, &ids_host, &w, &gu, &dn, c.capacity)?,
        Path::Composed => routed_experts_twin(&x, &w, &gu, &dn, &disp)?,
        Path::Fused => routed_experts(&x, &w, &gu, &dn, &disp)?,
        Path::FusedGrouped => {
            let disp = disp.clone().with_products(ExpertProducts::Grouped);
            routed_experts(&x, &w, &gu, &dn, &disp)?
        }
        Path::FusedPerExpert => {
            let disp = disp.clone().with_products(ExpertProducts::PerExpert);
            routed_experts(&x, &w, &gu, &dn, &disp)?
        }
    };
    let dout = Tensor::from_slice(&d.dout, (c.t, c.c), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?;
    let loss = (&out * &dout)?.sum_all()?;
    let g = loss.backward()?;
    let grads = [&x, &w, &gu, &dn]
        .iter()
        .map(|v| to_host(g.get(v.as_tensor()).expect("every input has a gradient")))
        .collect::<Result<Vec<_>>>()?;
    Ok(MoeRun {
        out: to_host(&out)?,
        grads,
        ids: ids_host,
        counts: disp.counts.to_device(&Device::Cpu)?.to_vec1::<u32>()?,
        offsets: disp.offsets.to_device(&Device::Cpu)?.to_vec1::<u32>()?,
    })
}
