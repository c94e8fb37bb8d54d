//! The two ways an update computes its gradients (`step::Backward`): the written-out backward
//! (`Model::training_grads`, dot-product and trilinear 2-simplicial layers, MoE layers) and candle's
//! autograd give the same updates (f32 on the CPU, up to the order of additions), gradient
//! accumulation included.

use candle_core::{DType, Device, Tensor};
use simplex_model::Config;
use simplex_train::config::{Precision, TrainOverrides};
use simplex_train::step::{Backward, Learner, MicroBatches};
use simplex_train::TrainConfig;

/// Seeded micro-batches of random tokens.
struct Random {
    state: u64,
    vocab: u32,
    seq: usize,
}

impl MicroBatches for Random {
    fn next_batch(&mut self, b: usize) -> simplex_train::Result<(Vec<u32>, Vec<u32>)> {
        let mut next = || {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.state >> 33) % self.vocab as u64) as u32
        };
        let n = b * self.seq;
        let x: Vec<u32> = (0..n).map(|_| next()).collect();
        let y: Vec<u32> = (0..n).map(|_| next()).collect();
        Ok((x, y))
    }
}

fn cfg(pattern: &str) -> anyhow::Result<Config> {
    let mut c = Config::preset("tiny")?;
    c.pattern = pattern.into();
    c.max_seq_len = 16;
    Ok(c)
}

/// `pattern` with MoE feed-forward layers (4 experts, top-2, a shared expert).
fn moe_cfg(pattern: &str) -> anyhow::Result<Config> {
    let mut c = cfg(pattern)?;
    c.moe = Some(simplex_model::MoeConfig {
        shared_experts: 1,
        ..simplex_model::MoeConfig::new(4, 2)
    });
    Ok(c)
}

/// The losses of three updates and the master weights after them.
fn run(
    cfg: &Config,
    backward: Backward,
) -> anyhow::Result<(Vec<f64>, std::collections::HashMap<String, Tensor>)> {
    let o = TrainOverrides {
        batch_size: Some(2),
        seq_len: Some(16),
        grad_accum: Some(2),
        precision: Some(Precision::F32),
        ..TrainOverrides::default()
    };
    let mut t = TrainConfig::resolve(&o, cfg.max_seq_len, false)?;
    // AdamW's first updates are lr * g / (|g| + eps): with the default eps an element whose
    // gradient is near zero moves by about lr whatever its sign and size, so rounding in
    // summation order shows up as whole steps; a larger eps keeps the update proportional to
    // small gradients and the comparison about the gradients
    t.eps = 1e-4;
    let mut learner = Learner::new(cfg, &t, &Device::Cpu)?.with_backward(backward);
    let mut data = Random {
        state: 7,
        vocab: cfg.vocab_size as u32,
        seq: t.seq_len,
    };
    let mut losses = vec![];
    for _ in 0..3 {
        losses.push(learner.update(&mut data, &t, 1e-3)?.read()?.0);
    }
    Ok((losses, learner.opt.master_weights()?))
}

fn max_rel(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let s = b.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(d / s.max(1e-12))
}

#[test]
fn written_out_and_autograd_updates_agree() -> anyhow::Result<()> {
    for c in [cfg("DD")?, cfg("DS")?, moe_cfg("DS")?] {
        let pattern = format!("{}{}", c.pattern, if c.moe.is_some() { " MoE" } else { "" });
        let (la, wa) = run(&c, Backward::Auto)?;
        let (lb, wb) = run(&c, Backward::Autograd)?;
        for (x, y) in la.iter().zip(&lb) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs(),
                "{pattern}: loss {x} vs {y}"
            );
        }
        assert_eq!(wa.len(), wb.len());
        for (name, a) in &wa {
            let b = &wb[name];
            assert_eq!(a.dtype(), DType::F32);
            let r = max_rel(a, b)?;
            assert!(r <= 1e-5, "{pattern}: {name} differs by {r:e} (relative)");
        }
    }
    Ok(())
}
