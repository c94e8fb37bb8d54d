//! On the GPU: `Model::training_grads` (the written-out backward) against candle's autograd
//! through the same CUDA kernels, the loss, the MoE statistics and every weight's gradient, in
//! f32 (CUDA-core kernels; equal up to summation order) and bf16 (the kernels training runs;
//! equal within bf16 rounding of the gradient sums), for dot-product and trilinear
//! 2-simplicial layers, dense and MoE (softmax and sigmoid routers, a shared expert, a capacity
//! that drops assignments). Part of the device check (docs/gpu.md); needs `--features cuda`;
//! without a GPU it skips and passes unless `SIMPLEX_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, flat, gpu, randomize, tokens};
use simplex_model::{Config, Model, MoeConfig, RouterKind, TokenBatch};

fn cfg(pattern: &str, moe: Option<MoeConfig>) -> anyhow::Result<Config> {
    let mut c = Config::preset("tiny")?;
    c.pattern = pattern.into();
    c.max_seq_len = 64;
    c.moe = moe.map(|m| MoeConfig {
        balance_weight: 0.3,
        z_loss_weight: 0.2,
        ..m
    });
    Ok(c)
}

/// Compares the written-out gradients of `scale * total` with autograd's on the GPU.
fn check(cfg: &Config, dtype: DType, rtol: f64) -> anyhow::Result<()> {
    let Some(dev) = gpu() else {
        return Ok(());
    };
    let vm = VarMap::new();
    let model = Model::new(cfg, VarBuilder::from_varmap(&vm, dtype, &dev))?;
    randomize(&vm, 0.05, 3)?;
    assert!(model.has_written_out_backward(), "{}", cfg.pattern);
    let (b, n) = (2, 61);
    let ids = |seed| -> anyhow::Result<Vec<u32>> {
        Ok(tokens(b, n, cfg.vocab_size, seed)?
            .flatten_all()?
            .to_vec1()?)
    };
    let batch = TokenBatch::new(&ids(1)?, &ids(2)?, (b, n), cfg, &dev)?;
    let scale = 0.5;
    let (loss, grads) = model
        .training_grads(&batch, scale)?
        .expect("these layers have a written-out backward");
    let want_loss = model.training_loss(&batch)?;
    let want = (&want_loss.total * scale)?.backward()?;
    let what = format!("{} {dtype:?} moe={}", cfg.pattern, cfg.moe.is_some());
    assert_close(
        &format!("{what} loss"),
        &flat(&loss.total)?,
        &flat(&want_loss.total)?,
        rtol,
        0.0,
    );
    if let (Some(got), Some(want)) = (&loss.moe, &want_loss.moe) {
        let load = |t: &Tensor| -> anyhow::Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1()?) };
        assert_eq!(load(&got.load)?, load(&want.load)?, "{what}: expert loads");
        assert_close(
            &format!("{what} balance"),
            &flat(&got.balance)?,
            &flat(&want.balance)?,
            rtol,
            0.0,
        );
    }
    assert_eq!(loss.moe.is_some(), cfg.moe.is_some(), "{what}");
    let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for (name, var) in data.iter() {
        let want = want.get(var).expect("autograd reaches every weight");
        let got = grads
            .get(var)
            .unwrap_or_else(|| panic!("{what}: no written-out gradient for {name}"));
        assert_eq!(got.dims(), var.dims(), "{name}");
        assert_eq!(got.dtype(), var.dtype(), "{name}");
        assert_close(
            &format!("{what} d/d {name}"),
            &flat(got)?,
            &flat(want)?,
            rtol,
            0.0,
        );
    }
    Ok(())
}

#[test]
fn dense_layers_on_the_gpu() -> anyhow::Result<()> {
    let c = cfg("DS", None)?;
    check(&c, DType::F32, 1e-4)?;
    check(&c, DType::BF16, 3e-2)
}

#[test]
fn moe_layers_on_the_gpu() -> anyhow::Result<()> {
    let softmax = cfg(
        "DS",
        Some(MoeConfig {
            shared_experts: 1,
            ..MoeConfig::new(8, 2)
        }),
    )?;
    check(&softmax, DType::F32, 1e-4)?;
    check(&softmax, DType::BF16, 3e-2)?;
    let sigmoid = cfg(
        "DD",
        Some(MoeConfig {
            router: RouterKind::Sigmoid,
            normalize: false,
            capacity_factor: Some(0.75),
            ..MoeConfig::new(4, 2)
        }),
    )?;
    check(&sigmoid, DType::F32, 1e-4)?;
    check(&sigmoid, DType::BF16, 3e-2)
}
