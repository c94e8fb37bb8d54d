//! One optimizer update:
//!
//! ```text
//! for each of grad_accum micro-batches x, y [B, N]:
//!     loss_k = cross_entropy(model(x), y)                f32 logits (bf16 compute under autocast)
//!     g     += grad(loss_k / grad_accum)                 f32, summed per parameter
//! g *= min(1, grad_clip / |g|)                           global norm over all parameters
//! AdamW(g, lr)                                           f32 master weights
//! ```
//! Under bf16 autocast the model is rebuilt from the masters each update: its weights are
//! bf16 casts that are part of the autograd graph, so gradients land on the f32 masters.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use simplex_model::{Config, Model};

use crate::config::{Precision, TrainConfig};
use crate::data::Batcher;
use crate::error::{Result, TrainError};
use crate::init::{named_vars, CastFrom, SeededInit};
use crate::optim::{clip_scale, global_norm, AdamW, AdamWParams};

/// What one update measured.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// Mean loss of its micro-batches (nats per token).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The model's f32 master weights, their optimizer, and how to compute with them.
pub struct Learner {
    cfg: Config,
    precision: Precision,
    device: Device,
    vars: VarMap,
    model_f32: Model,
    /// The optimizer (its parameters are the master weights, sorted by name).
    pub opt: AdamW,
}

impl Learner {
    /// Creates the master weights with seeded init and a fresh AdamW.
    pub fn new(cfg: &Config, train: &TrainConfig, device: &Device) -> Result<Self> {
        let (vars, vb) = SeededInit::builder(train.seed, device);
        let model_f32 = Model::new(cfg, vb)?;
        let params = named_vars(&vars)
            .ok_or_else(|| TrainError::setting("model", "variables", "lock poisoned"))?;
        let hp = AdamWParams {
            beta1: train.beta1,
            beta2: train.beta2,
            eps: train.eps,
            weight_decay: train.weight_decay,
        };
        Ok(Learner {
            cfg: cfg.clone(),
            precision: train.precision,
            device: device.clone(),
            vars,
            model_f32,
            opt: AdamW::new(params, hp)?,
        })
    }

    /// The model to compute with: the f32 one, or bf16 casts of the current masters.
    pub fn model(&self) -> Result<Model> {
        match self.precision {
            Precision::F32 => Ok(self.model_f32.clone()),
            Precision::Bf16 => {
                let vb = VarBuilder::from_backend(
                    Box::new(CastFrom {
                        vars: self.vars.clone(),
                    }),
                    DType::BF16,
                    self.device.clone(),
                );
                Ok(Model::new(&self.cfg, vb)?)
            }
        }
    }

    /// One update at learning rate `lr` on the next `grad_accum` batches of `batcher`;
    /// `step` (1-based) names the update in a divergence error.
    pub fn update(
        &mut self,
        batcher: &mut Batcher,
        t: &TrainConfig,
        lr: f64,
        step: u64,
    ) -> Result<Update> {
        let model = self.model()?;
        let (b, n, dev) = (t.batch_size, t.seq_len, &self.device);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params().len()];
        let mut loss_sum = 0f64;
        for _ in 0..t.grad_accum {
            let (x, y) = batcher.next_batch(b)?;
            let x = Tensor::from_vec(x, (b, n), dev)?;
            let y = Tensor::from_vec(y, b * n, dev)?;
            let logits = model.forward(&x)?;
            let v = logits.dim(2)?;
            let logits = logits.to_dtype(DType::F32)?.reshape((b * n, v))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let scaled = if t.grad_accum > 1 {
                (loss / t.grad_accum as f64)?
            } else {
                loss
            };
            let g = scaled.backward()?;
            for (slot, (_, var)) in grads.iter_mut().zip(self.opt.params()) {
                if let Some(gi) = g.get(var.as_tensor()) {
                    let gi = gi.to_dtype(DType::F32)?;
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gi)?,
                        None => gi,
                    });
                }
            }
        }
        let loss = loss_sum / t.grad_accum as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step as usize,
                loss: loss as f32,
            });
        }
        let grads: Vec<Tensor> = grads
            .into_iter()
            .zip(self.opt.params())
            .map(|(g, (_, p))| g.map_or_else(|| p.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let grad_norm = global_norm(&grads)?;
        self.opt
            .step(&grads, lr, clip_scale(grad_norm, t.grad_clip))?;
        Ok(Update { loss, grad_norm })
    }
}
