//! `Model::training_grads` (the backward written out, without candle's autograd) against
//! autograd through the same fused ops: the loss and every weight's gradient, on the CPU in f32
//! and f64, for dot-product and trilinear 2-simplicial layers with sliding windows, GQA and
//! RoPE, tied and untied heads; and `None` for the layers it does not cover (the determinant
//! form, MoE).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, build, flat, small_cfg, tokens};
use simplex_model::{Config, MoeConfig, SimplicialVariant, TokenBatch};

fn ids(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1()?)
}

/// Compares the written-out gradients of `scale * loss` with autograd's, weight by weight.
fn check(cfg: &Config, dtype: DType, scale: f64, rtol: f64) -> anyhow::Result<()> {
    let (b, n) = (3, 11);
    let (vm, model) = build(cfg, dtype, 0.3, 5)?;
    assert!(model.has_written_out_backward(), "{}", cfg.pattern);
    let toks = tokens(b, n, cfg.vocab_size, 8)?;
    let targets = tokens(b, n, cfg.vocab_size, 9)?;
    let batch = TokenBatch::new(&ids(&toks)?, &ids(&targets)?, (b, n), cfg, &Device::Cpu)?;
    let (loss, grads) = model
        .training_grads(&batch, scale)?
        .expect("these layers have a written-out backward");
    let want_loss = model.training_loss(&batch)?.total;
    let want = (&want_loss * scale)?.backward()?;
    assert_close(
        &format!("{} loss", cfg.pattern),
        &flat(&loss)?,
        &flat(&want_loss)?,
        rtol,
        0.0,
    );
    let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        let want = want.get(var).expect("autograd reaches every weight");
        let got = grads
            .get(var)
            .unwrap_or_else(|| panic!("no written-out gradient for {name}"));
        assert_eq!(got.dims(), var.dims(), "{name}");
        let what = format!("{} d/d {name}", cfg.pattern);
        assert_close(&what, &flat(got)?, &flat(want)?, rtol, 0.0);
        assert!(flat(want)?.iter().any(|x| *x != 0.0), "{what}: all zero");
    }
    Ok(())
}

#[test]
fn written_out_gradients_equal_autograds() -> anyhow::Result<()> {
    let base = small_cfg("DLDL", SimplicialVariant::Trilinear, false);
    check(&base, DType::F64, 1.0, 1e-9)?;
    check(&base, DType::F32, 0.25, 1e-4)?;
    let tied = Config {
        tie_embeddings: true,
        rope: false,
        pattern: "DD".into(),
        ..base.clone()
    };
    check(&tied, DType::F64, 0.5, 1e-9)?;
    let simplicial = small_cfg("DSLS", SimplicialVariant::Trilinear, false);
    check(&simplicial, DType::F64, 1.0, 1e-9)?;
    check(&simplicial, DType::F32, 0.5, 1e-4)?;
    Ok(())
}

#[test]
fn layers_without_a_written_out_backward_give_none() -> anyhow::Result<()> {
    let with_s = small_cfg("DS", SimplicialVariant::Determinant, false);
    let moe = Config {
        moe: Some(MoeConfig::new(4, 2)),
        ..small_cfg("DD", SimplicialVariant::Trilinear, false)
    };
    for cfg in [with_s, moe] {
        let (_, model) = build(&cfg, DType::F32, 0.3, 5)?;
        assert!(!model.has_written_out_backward(), "{}", cfg.pattern);
        let t = ids(&tokens(2, 7, cfg.vocab_size, 1)?)?;
        let batch = TokenBatch::new(&t, &t, (2, 7), &cfg, &Device::Cpu)?;
        assert!(
            model.training_grads(&batch, 1.0)?.is_none(),
            "{}",
            cfg.pattern
        );
    }
    Ok(())
}
