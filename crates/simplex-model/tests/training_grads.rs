//! `Model::training_grads` (the backward written out, without candle's autograd) against
//! autograd through the same fused ops: the loss and every weight's gradient, on the CPU in f32
//! and f64, for dot-product and trilinear 2-simplicial layers with sliding windows, GQA and
//! RoPE, tied and untied heads, MoE layers (softmax and sigmoid routers, normalized or raw
//! gates, shared experts, a capacity that drops assignments, the balance and z-losses); and
//! `None` for the layers it does not cover (the determinant form); a saturated sigmoid router
//! (logits where e^-x overflows f32) keeps its gradients finite.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, build, flat, small_cfg, tokens};
use simplex_model::{Config, MoeConfig, RouterKind, SimplicialVariant, TokenBatch};

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
    let want_loss = model.training_loss(&batch)?;
    let want = (&want_loss.total * scale)?.backward()?;
    for (what, got, want) in [
        ("loss", &loss.total, &want_loss.total),
        ("lm loss", &loss.lm, &want_loss.lm),
    ] {
        let what = format!("{} {what}", cfg.pattern);
        assert_close(&what, &flat(got)?, &flat(want)?, rtol, 0.0);
    }
    match (&loss.moe, &want_loss.moe) {
        (Some(got), Some(want)) => {
            assert_close(
                "balance",
                &flat(&got.balance)?,
                &flat(&want.balance)?,
                rtol,
                0.0,
            );
            assert_close("z-loss", &flat(&got.z)?, &flat(&want.z)?, rtol, 0.0);
            let load = |t: &Tensor| -> anyhow::Result<Vec<u32>> { ids(t) };
            assert_eq!(load(&got.load)?, load(&want.load)?, "expert loads");
        }
        (None, None) => {}
        _ => panic!("{}: MoE statistics on one path only", cfg.pattern),
    }
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
fn written_out_moe_gradients_equal_autograds() -> anyhow::Result<()> {
    let base = small_cfg("DSDD", SimplicialVariant::Trilinear, false);
    let moe = |m: MoeConfig| Config {
        moe: Some(MoeConfig {
            balance_weight: 0.3,
            z_loss_weight: 0.2,
            ..m
        }),
        ..base.clone()
    };
    // softmax, normalized gates, every layer
    let softmax = moe(MoeConfig::new(4, 2));
    check(&softmax, DType::F64, 1.0, 1e-9)?;
    check(&softmax, DType::F32, 0.5, 1e-4)?;
    // sigmoid scores, raw gates, a shared expert, two MoE layers of four
    let sigmoid = moe(MoeConfig {
        router: RouterKind::Sigmoid,
        normalize: false,
        shared_experts: 1,
        expert_hidden: Some(6),
        layers: Some(vec![1, 3]),
        ..MoeConfig::new(5, 3)
    });
    check(&sigmoid, DType::F64, 0.5, 1e-9)?;
    check(&sigmoid, DType::F32, 1.0, 1e-4)?;
    // a capacity that drops assignments (33 tokens x 2 over 3 experts, 11 each), top-1 with a
    // normalized gate (its weight is 1: only the auxiliary losses move the router), no z-loss
    let capped = moe(MoeConfig {
        capacity_factor: Some(0.5),
        z_loss_weight: 0.0,
        ..MoeConfig::new(3, 2)
    });
    check(&capped, DType::F64, 1.0, 1e-9)?;
    let top1 = moe(MoeConfig::new(3, 1));
    check(&top1, DType::F64, 2.0, 1e-9)?;
    Ok(())
}

#[test]
fn layers_without_a_written_out_backward_give_none() -> anyhow::Result<()> {
    let cfg = small_cfg("DS", SimplicialVariant::Determinant, false);
    let (_, model) = build(&cfg, DType::F32, 0.3, 5)?;
    assert!(!model.has_written_out_backward(), "{}", cfg.pattern);
    let t = ids(&tokens(2, 7, cfg.vocab_size, 1)?)?;
    let batch = TokenBatch::new(&t, &t, (2, 7), &cfg, &Device::Cpu)?;
    assert!(
        model.training_grads(&batch, 1.0)?.is_none(),
        "{}",
        cfg.pattern
    );
    Ok(())
}

#[test]
fn saturated_sigmoid_router_gives_finite_gradients() -> anyhow::Result<()> {
    use candle_nn::{VarBuilder, VarMap};
    use simplex_model::moe::MoeMlp;
    // logits -95, -92, 3, 6 for every token: e^-x overflows f32 for the first two
    let cfg = MoeConfig {
        router: RouterKind::Sigmoid,
        ..MoeConfig::new(4, 2)
    };
    let (c, t) = (8, 5);
    let vm = VarMap::new();
    let mlp = MoeMlp::new(
        &cfg,
        c,
        8,
        0.1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    common::randomize(&vm, 0.3, 2)?;
    {
        let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let router = data.get("router.weight").expect("the router's weight");
        let mut w = vec![0f32; 4 * c];
        for (e, a) in [-95f32, -92.0, 3.0, 6.0].into_iter().enumerate() {
            w[e * c] = a;
        }
        router.set(&Tensor::from_vec(w, (4, c), &Device::Cpu)?)?;
    }
    let mut xv = flat(&tokens(t, c, 7, 4)?)?;
    for (i, v) in xv.iter_mut().enumerate() {
        *v = if i % c == 0 { 1.0 } else { *v / 7.0 - 0.5 };
    }
    let x = Tensor::from_vec(xv, (t, c), &Device::Cpu)?.to_dtype(DType::F32)?;
    let (y, stats) = mlp.forward(&x)?;
    let total = ((y.sum_all()? + stats.balance_loss)? + stats.z_loss)?;
    let want = total.backward()?;
    let (y2, _, saved) = mlp.forward_saved(&x)?;
    let (dx, dws) = mlp.grads(saved, &y2.ones_like()?, (1.0, 1.0))?;
    assert!(flat(&dx)?.iter().all(|v| v.is_finite()), "written out: dx");
    for (w, g) in mlp.weights().into_iter().zip(&dws) {
        let auto = want.get(w).expect("autograd reaches every weight");
        assert!(
            flat(auto)?.iter().all(|v| v.is_finite()),
            "autograd: not finite"
        );
        assert_close("saturated router", &flat(g)?, &flat(auto)?, 1e-4, 0.0);
    }
    Ok(())
}

#[test]
fn moe_backward_with_a_wrong_gradient_shape_is_an_error() -> anyhow::Result<()> {
    use candle_nn::{VarBuilder, VarMap};
    use simplex_model::moe::MoeMlp;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mlp = MoeMlp::new(&MoeConfig::new(4, 2), 8, 8, 0.1, vb)?;
    common::randomize(&vm, 0.3, 2)?;
    let x = Tensor::randn(0f32, 1.0, (5, 8), &Device::Cpu)?;
    let (_, _, saved) = mlp.forward_saved(&x)?;
    let bad = Tensor::ones((4, 8), DType::F32, &Device::Cpu)?;
    let err = mlp.grads(saved, &bad, (0.0, 0.0)).unwrap_err().to_string();
    assert!(
        err.contains("dy [4, 8]") && err.contains("5 tokens"),
        "{err}"
    );
    Ok(())
}
