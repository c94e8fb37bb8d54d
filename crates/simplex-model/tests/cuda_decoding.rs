//! On the GPU: KV-cache decoding (prefill, single tokens, chunks; the 2-simplicial layers'
//! `simplicial_step` of plain tensor ops) gives the logits of the full forward (the CUDA
//! kernels), for trilinear and rotated determinant layers, in f32. Part of the device check
//! (docs/gpu.md); needs `--features cuda`; without a GPU it skips and passes unless
//! `SIMPLEX_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{check_cached_decoding, gpu, randomize, small_cfg, tokens};
use simplex_model::{Model, SimplicialVariant};

/// Builds `pattern` on `dev` in f32 with seeded weights and checks cached decoding of two
/// sequences fed in the chunks `steps` against the full forward.
fn check(
    dev: &Device,
    pattern: &str,
    variant: SimplicialVariant,
    rotate: bool,
    steps: &[usize],
) -> anyhow::Result<()> {
    let cfg = small_cfg(pattern, variant, rotate);
    let vm = VarMap::new();
    let model = Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    randomize(&vm, 0.3, 11)?;
    let n: usize = steps.iter().sum();
    let toks = tokens(2, n, cfg.vocab_size, 12)?.to_device(dev)?;
    check_cached_decoding(&model, &toks, steps, 1e-4)
}

#[test]
fn cached_decoding_matches_the_full_forward_on_the_gpu() -> anyhow::Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    check(
        &dev,
        "DLS",
        SimplicialVariant::Trilinear,
        false,
        &[5, 1, 1, 1, 3, 1, 2, 1],
    )?;
    check(
        &dev,
        "SLDS",
        SimplicialVariant::Determinant,
        true,
        &[4, 1, 1, 2, 1, 5],
    )
}
