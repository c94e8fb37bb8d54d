//! The task model: bidirectional layers see the whole sequence, without RoPE the model is
//! permutation-equivariant, the parameter count is exact, and the classification loss is the
//! mean cross-entropy over labeled positions only (IGNORE positions change nothing).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{flat, randomize, small_cfg, tokens};
use simplex_model::{
    classification_loss, Config, Model, SimplicialConfig, SimplicialVariant, TaskModel, IGNORE,
};

/// An encoder config: bidirectional, no RoPE, windows covering the whole sequence.
fn encoder(pattern: &str, variant: SimplicialVariant) -> Config {
    let c = small_cfg(pattern, variant, false);
    Config {
        bidirectional: true,
        rope: false,
        moe: None,
        window: 32,
        simplicial: SimplicialConfig {
            w1: 32,
            w2: 32,
            ..c.simplicial.clone()
        },
        ..c
    }
}

fn build(cfg: &Config, classes: usize, seed: u64) -> anyhow::Result<(VarMap, TaskModel)> {
    let vm = VarMap::new();
    let m = TaskModel::new(
        cfg,
        classes,
        VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu),
    )?;
    randomize(&vm, 0.4, seed)?;
    Ok((vm, m))
}

const KINDS: [(&str, SimplicialVariant); 4] = [
    ("D", SimplicialVariant::Trilinear),
    ("L", SimplicialVariant::Trilinear),
    ("S", SimplicialVariant::Trilinear),
    ("S", SimplicialVariant::Determinant),
];

#[test]
fn first_position_sees_the_last_token_only_when_bidirectional() -> anyhow::Result<()> {
    for (pattern, variant) in KINDS {
        for bidirectional in [true, false] {
            let cfg = Config {
                bidirectional,
                ..encoder(pattern, variant)
            };
            let (_, m) = build(&cfg, 3, 1)?;
            let a = Tensor::new(&[[1u32, 2, 3, 4, 5, 6]], &Device::Cpu)?;
            let b = Tensor::new(&[[1u32, 2, 3, 4, 5, 9]], &Device::Cpu)?;
            let first =
                |t: &Tensor| -> anyhow::Result<Vec<f64>> { flat(&m.forward(t)?.narrow(1, 0, 1)?) };
            let moved = first(&a)?
                .iter()
                .zip(first(&b)?)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert_eq!(
                moved > 1e-9,
                bidirectional,
                "{pattern} {variant:?} bidirectional={bidirectional}: position 0 moved by {moved}"
            );
        }
    }
    Ok(())
}

#[test]
fn without_rope_a_permutation_of_tokens_permutes_the_logits() -> anyhow::Result<()> {
    for (pattern, variant) in [KINDS[0], KINDS[2], KINDS[3]] {
        let cfg = encoder(&format!("{pattern}{pattern}"), variant);
        let (_, m) = build(&cfg, 3, 2)?;
        let order = [4usize, 0, 6, 2, 5, 1, 3];
        let x: Vec<u32> = vec![3, 7, 1, 18, 7, 11, 5];
        let px: Vec<u32> = order.iter().map(|&i| x[i]).collect();
        let lx = m.forward(&Tensor::new(x.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
        let lp = m.forward(&Tensor::new(px.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
        for (new, &old) in order.iter().enumerate() {
            let (a, b) = (flat(&lp.get(0)?.get(new)?)?, flat(&lx.get(0)?.get(old)?)?);
            common::assert_close(
                &format!("{pattern} {variant:?} row {new}"),
                &a,
                &b,
                1e-9,
                1e-12,
            );
        }
    }
    Ok(())
}

#[test]
fn param_count_matches_the_built_model() -> anyhow::Result<()> {
    for (pattern, variant) in [
        ("DS", SimplicialVariant::Determinant),
        ("LLS", SimplicialVariant::Trilinear),
    ] {
        let cfg = encoder(pattern, variant);
        let (vm, _) = build(&cfg, 5, 3)?;
        let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(TaskModel::param_count(&cfg, 5) as usize, built, "{pattern}");
    }
    Ok(())
}

#[test]
fn a_language_model_refuses_bidirectional_and_a_classifier_needs_two_classes() -> anyhow::Result<()>
{
    let cfg = encoder("DS", SimplicialVariant::Trilinear);
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let e = Model::new(&cfg, vb.clone()).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("bidirectional")),
        "{e:?}"
    );
    let e = TaskModel::new(&cfg, 1, vb).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("classes = 1")),
        "{e:?}"
    );
    Ok(())
}

/// `logits [1, 4, 3]`, positions 1 and 3 ignored.
fn logits_and_labels() -> anyhow::Result<(Vec<f64>, [u32; 4])> {
    let t = tokens(1, 12, 1000, 5)?.to_dtype(DType::F64)?;
    let l = flat(&((t / 250.0)? - 2.0)?)?;
    Ok((l, [2, IGNORE, 0, IGNORE]))
}

#[test]
fn loss_is_the_mean_cross_entropy_of_the_labeled_positions() -> anyhow::Result<()> {
    let (l, y) = logits_and_labels()?;
    let logits = Tensor::from_vec(l.clone(), (1, 4, 3), &Device::Cpu)?;
    let got =
        classification_loss(&logits, &Tensor::new(&[y], &Device::Cpu)?)?.to_scalar::<f32>()? as f64;
    let mut want = 0.0;
    for i in [0usize, 2] {
        let row = &l[3 * i..3 * i + 3];
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        want += lse - row[y[i] as usize];
    }
    want /= 2.0;
    assert!((got - want).abs() < 1e-5, "loss {got} vs hand {want}");
    Ok(())
}

#[test]
fn ignored_positions_change_neither_loss_nor_gradient() -> anyhow::Result<()> {
    let (l, y) = logits_and_labels()?;
    let labels = Tensor::new(&[y], &Device::Cpu)?;
    let run = |l: Vec<f64>| -> anyhow::Result<(f32, Vec<f64>)> {
        let v = Var::from_tensor(&Tensor::from_vec(l, (1, 4, 3), &Device::Cpu)?)?;
        let loss = classification_loss(v.as_tensor(), &labels)?;
        let g = loss.backward()?;
        let g = g
            .get(v.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no grad"))?;
        Ok((loss.to_scalar::<f32>()?, flat(g)?))
    };
    let (loss, grad) = run(l.clone())?;
    // other logits at the ignored positions 1 and 3
    let mut changed = l.clone();
    for j in [3, 4, 5, 9, 10, 11] {
        changed[j] = 7.0 - changed[j] * 3.0;
    }
    let (loss2, grad2) = run(changed)?;
    assert_eq!(
        loss, loss2,
        "loss moved with the logits of ignored positions"
    );
    assert_eq!(
        grad, grad2,
        "gradient moved with the logits of ignored positions"
    );
    for j in [3, 4, 5, 9, 10, 11] {
        assert_eq!(grad[j], 0.0, "gradient at ignored logit {j}");
    }
    // a labeled position does count
    let mut moved = l;
    moved[0] += 1.0;
    assert_ne!(run(moved)?.0, loss);
    // nothing labeled, or a label out of range: errors that say so
    let none = Tensor::new(&[[IGNORE; 4]], &Device::Cpu)?;
    let logits = Tensor::zeros((1, 4, 3), DType::F32, &Device::Cpu)?;
    let e = classification_loss(&logits, &none)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("no labeled")),
        "{e:?}"
    );
    let bad = Tensor::new(&[[0u32, 3, 1, IGNORE]], &Device::Cpu)?;
    let e = classification_loss(&logits, &bad)
        .err()
        .map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("label 3")), "{e:?}");
    Ok(())
}
