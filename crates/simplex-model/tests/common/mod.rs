//! Shared helpers of the model tests: small configs, seeded weights, comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{rngs::StdRng, Rng, SeedableRng};
use simplex_model::{Cache, Config, Model, SimplicialConfig, SimplicialVariant};

/// A config small enough for finite differences: windows shorter than the test sequences.
pub fn small_cfg(pattern: &str, variant: SimplicialVariant, rotate: bool) -> Config {
    Config {
        vocab_size: 19,
        d_model: 12,
        pattern: pattern.to_string(),
        heads_q: 4,
        heads_kv: Some(2),
        head_dim: Some(4),
        window: 3,
        simplicial: SimplicialConfig {
            heads_q: Some(2),
            heads_kv: Some(1),
            head_dim: Some(6),
            w1: 4,
            w2: 2,
            variant,
            rotate,
        },
        mlp_hidden: 20,
        rope_theta: 100.0,
        tie_embeddings: false,
        norm_eps: 1e-5,
        max_seq_len: 32,
        bidirectional: false,
        rope: true,
        moe: None,
    }
}

/// Sets every variable to seeded values: N(0, std^2), norm gains 1 + N(0, 0.1^2).
pub fn randomize(vm: &VarMap, std: f64, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let (mean, s) = if name.contains("norm") {
            (1.0, 0.1)
        } else {
            (0.0, std)
        };
        let v: Vec<f64> = (0..n).map(|_| mean + s * normal(&mut rng)).collect();
        var.set(&Tensor::from_vec(v, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(1e-12..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// A model with seeded weights.
pub fn build(cfg: &Config, dtype: DType, std: f64, seed: u64) -> anyhow::Result<(VarMap, Model)> {
    let vm = VarMap::new();
    let model = Model::new(cfg, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu))?;
    randomize(&vm, std, seed)?;
    Ok((vm, model))
}

/// Seeded tokens `[b, n]` below `vocab`.
pub fn tokens(b: usize, n: usize, vocab: usize, seed: u64) -> anyhow::Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t: Vec<u32> = (0..b * n)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    Ok(Tensor::from_vec(t, (b, n), &Device::Cpu)?)
}

/// Asserts `|got - want| <= atol + rtol * max|want|`; names the worst index.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut worst = (0usize, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        if (g - w).abs() > worst.1 {
            worst = (i, (g - w).abs());
        }
    }
    let tol = atol + rtol * scale;
    assert!(
        worst.1 <= tol,
        "{what}: worst index {}: got {}, want {}, |err| {:.3e} > tol {:.3e}",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1,
        tol
    );
}

/// A tensor as a flat f64 vector.
pub fn flat(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// The GPU; None (the test is skipped) where there is none, unless `SIMPLEX_REQUIRE_CUDA=1`
/// (gpu-bundle/run.sh sets it).
pub fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
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

/// Feeds `toks [B, N]` in the chunks `steps` (summing to N) through a KV cache and compares each
/// chunk's logits with the matching rows of the full forward (`tol` relative and absolute).
pub fn check_cached_decoding(
    model: &Model,
    toks: &Tensor,
    steps: &[usize],
    tol: f64,
) -> anyhow::Result<()> {
    let full = model.forward(toks)?;
    let mut cache = Cache::new(model.config());
    let mut pos = 0;
    for &n in steps {
        let got = model.forward_step(&toks.narrow(1, pos, n)?, &mut cache)?;
        let want = full.narrow(1, pos, n)?;
        assert_close(
            &format!("logits of positions {pos}..{}", pos + n),
            &flat(&got)?,
            &flat(&want)?,
            tol,
            tol,
        );
        pos += n;
    }
    assert_eq!(cache.pos(), toks.dim(1)?);
    Ok(())
}
