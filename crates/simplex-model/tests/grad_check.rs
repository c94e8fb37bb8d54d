//! Gradient check of every layer: candle autograd (through the fused attention ops' backward)
//! against central finite differences in float64, on tiny sizes with windows shorter than the
//! sequence.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, build, flat, normal, randomize, small_cfg, tokens};
use rand::{rngs::StdRng, seq::index::sample, SeedableRng};
use simplex_model::attention::DotAttention;
use simplex_model::block::{Block, Stream};
use simplex_model::mlp::Mlp;
use simplex_model::norm::RmsNorm;
use simplex_model::rope::Rope;
use simplex_model::simplicial::SimplicialAttention;
use simplex_model::{Config, LayerKind, SimplicialVariant, TokenBatch};

const EPS: f64 = 1e-5;

/// Compares autograd gradients of `loss` with central differences at up to `per` seeded
/// entries of each variable.
fn grad_check(
    what: &str,
    vars: &[(String, Var)],
    loss: impl Fn() -> anyhow::Result<Tensor>,
    per: usize,
) -> anyhow::Result<()> {
    let grads = loss()?.backward()?;
    let scalar = || -> anyhow::Result<f64> { Ok(loss()?.to_scalar::<f64>()?) };
    let mut rng = StdRng::seed_from_u64(17);
    for (name, var) in vars {
        let g = match grads.get(var) {
            Some(g) => flat(g)?,
            None => vec![0.0; var.elem_count()],
        };
        let orig = flat(var.as_tensor())?;
        let picks = sample(&mut rng, orig.len(), per.min(orig.len())).into_vec();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for &i in &picks {
            let at = |delta: f64| -> anyhow::Result<f64> {
                let mut v = orig.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                scalar()
            };
            let fd = (at(EPS)? - at(-EPS)?) / (2.0 * EPS);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu)?)?;
            got.push(g[i]);
            want.push(fd);
        }
        assert_close(
            &format!("{what}: d/d {name} at {picks:?}"),
            &got,
            &want,
            1e-6,
            1e-9,
        );
    }
    Ok(())
}

/// A seeded f64 variable of `shape` with standard normal entries.
fn input(shape: &[usize], seed: u64) -> anyhow::Result<Var> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| normal(&mut rng)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        v,
        shape,
        &Device::Cpu,
    )?)?)
}

/// The layer's variables (sorted by name) plus the input `x`.
fn vars_of(vm: &VarMap, x: &Var) -> anyhow::Result<Vec<(String, Var)>> {
    let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.push(("x".into(), x.clone()));
    Ok(v)
}

/// Gradient check of `layer(x)` through the loss `sum(layer(x) * r)`, `x [2, 9, 12]`.
fn check_layer<L>(
    what: &str,
    make: impl FnOnce(VarBuilder) -> anyhow::Result<L>,
    fwd: impl Fn(&L, &Tensor) -> anyhow::Result<Tensor>,
) -> anyhow::Result<()> {
    let vm = VarMap::new();
    let layer = make(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu))?;
    randomize(&vm, 0.4, 3)?;
    let x = input(&[2, 9, 12], 4)?;
    let r = input(&[2, 9, 12], 5)?.as_tensor().detach();
    let loss = || -> anyhow::Result<Tensor> { Ok((fwd(&layer, x.as_tensor())? * &r)?.sum_all()?) };
    grad_check(what, &vars_of(&vm, &x)?, loss, 6)
}

fn cfg(variant: SimplicialVariant, rotate: bool) -> Config {
    small_cfg("DLS", variant, rotate)
}

fn rope() -> anyhow::Result<Rope> {
    Ok(Rope::new(4, 32, 100.0, &Device::Cpu)?)
}

#[test]
fn rms_norm() -> anyhow::Result<()> {
    check_layer(
        "rmsnorm",
        |vb| Ok(RmsNorm::new(12, 1e-5, vb)?),
        |l, x| Ok(l.forward(x)?),
    )
}

#[test]
fn swiglu_mlp() -> anyhow::Result<()> {
    check_layer(
        "mlp",
        |vb| Ok(Mlp::new(12, 20, 0.4, vb)?),
        |l, x| Ok(l.forward(x)?),
    )
}

#[test]
fn causal_dot_attention_with_rope() -> anyhow::Result<()> {
    let c = cfg(SimplicialVariant::Trilinear, false);
    check_layer(
        "D",
        |vb| Ok(DotAttention::new(&c, LayerKind::Dot, Some(rope()?), vb)?),
        |l, x| Ok(l.forward(x, 0, None)?),
    )
}

#[test]
fn sliding_window_dot_attention_with_rope() -> anyhow::Result<()> {
    let c = cfg(SimplicialVariant::Trilinear, false);
    check_layer(
        "L",
        |vb| Ok(DotAttention::new(&c, LayerKind::Local, Some(rope()?), vb)?),
        |l, x| Ok(l.forward(x, 0, None)?),
    )
}

#[test]
fn simplicial_attention_trilinear() -> anyhow::Result<()> {
    let c = cfg(SimplicialVariant::Trilinear, false);
    check_layer(
        "S trilinear",
        |vb| Ok(SimplicialAttention::new(&c, vb)?),
        |l, x| Ok(l.forward(x, 0, None)?),
    )
}

#[test]
fn simplicial_attention_determinant_rotated() -> anyhow::Result<()> {
    let c = cfg(SimplicialVariant::Determinant, true);
    check_layer(
        "S determinant",
        |vb| Ok(SimplicialAttention::new(&c, vb)?),
        |l, x| Ok(l.forward(x, 0, None)?),
    )
}

#[test]
fn decoder_blocks() -> anyhow::Result<()> {
    let c = cfg(SimplicialVariant::Trilinear, false);
    for kind in [LayerKind::Dot, LayerKind::Simplicial] {
        check_layer(
            &format!("block {kind:?}"),
            |vb| Ok(Block::new(&c, 0, kind, Some(&rope()?), vb)?),
            |l, x| {
                // a pending delta in, as between blocks: both residual adds are fused
                let s = Stream {
                    x: x.clone(),
                    delta: Some((x * 0.5)?),
                };
                let out = l.forward(&s, 0, None)?.0;
                Ok((out.x + out.delta.expect("a block leaves its MLP output pending"))?)
            },
        )?;
    }
    Ok(())
}

#[test]
fn whole_model_cross_entropy() -> anyhow::Result<()> {
    for (c, tied) in [
        (cfg(SimplicialVariant::Trilinear, false), false),
        (cfg(SimplicialVariant::Determinant, false), true),
    ] {
        let c = Config {
            tie_embeddings: tied,
            ..c
        };
        let (vm, model) = build(&c, DType::F64, 0.4, 9)?;
        let toks = tokens(2, 9, c.vocab_size, 10)?;
        let targets = tokens(2, 9, c.vocab_size, 11)?.flatten_all()?;
        let loss = || -> anyhow::Result<Tensor> {
            let logits = model.forward(&toks)?.reshape((18, c.vocab_size))?;
            Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
        };
        let data = vm.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        grad_check(&format!("model tied={tied}"), &vars, loss, 3)?;
        // the fused head + loss of training: the same value and gradients
        let ids =
            |t: &Tensor| -> anyhow::Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<u32>()?) };
        let batch = TokenBatch::new(&ids(&toks)?, &ids(&targets)?, (2, 9), &c, &Device::Cpu)?;
        let fused = || -> anyhow::Result<Tensor> { Ok(model.loss(&batch)?) };
        let (a, b) = (loss()?.to_scalar::<f64>()?, fused()?.to_scalar::<f64>()?);
        assert!(
            (a - b).abs() < 1e-10 * a.abs(),
            "model.loss {b} vs cross_entropy(forward) {a}"
        );
        grad_check(&format!("model.loss tied={tied}"), &vars, fused, 3)?;
    }
    Ok(())
}
