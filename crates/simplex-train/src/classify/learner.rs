//! A task model, its f32 weights and AdamW: one update on a batch, and evaluation of a split.
//!
//! ```text
//! update:   loss = classification_loss(model(x), y)      mean CE over labeled positions
//!           g *= min(1, clip / |g|);  AdamW(g, lr)
//! evaluate: predictions = argmax_k model(x)[b, i, k];  per-token accuracy, exact match, loss
//! ```

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use simplex_model::task::predictions;
use simplex_model::{classification_loss, fused_params, Config, TaskModel};

use crate::classify::batches::{eval_batches, to_tensors};
use crate::error::{Result, TrainError};
use crate::init::{named_vars, SeededInit};
use crate::optim::{AdamWParams, Optimizer};
use crate::tasks::{Example, Score};

/// A score plus the mean loss over the labeled positions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Per-token and exact-match counts.
    pub score: Score,
    /// Mean cross-entropy per labeled position (nats).
    pub loss: f64,
}

/// What one update measured.
#[derive(Debug, Clone, Copy)]
pub struct TaskUpdate {
    /// The batch's loss before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// A task model with f32 weights created by seeded init, and its optimizer.
pub struct TaskLearner {
    model: TaskModel,
    device: Device,
    /// The optimizer (f32 masters and moments; the model's weights are its working copies).
    pub opt: Optimizer,
}

impl TaskLearner {
    /// A model of `cfg` with `classes` classes, weights drawn from `seed`, a fresh AdamW.
    pub fn new(
        cfg: &Config,
        classes: usize,
        seed: u64,
        hp: AdamWParams,
        device: &Device,
    ) -> Result<Self> {
        let (vars, vb) = SeededInit::builder(seed, device, &fused_params(cfg));
        TaskModel::new(cfg, classes, vb)?;
        let params = named_vars(&vars)
            .ok_or_else(|| TrainError::setting("model", "variables", "lock poisoned"))?;
        let opt = Optimizer::new(params, DType::F32, hp)?;
        let vb = VarBuilder::from_varmap(&opt.working_vars(), DType::F32, device);
        Ok(TaskLearner {
            model: TaskModel::new(cfg, classes, vb)?,
            device: device.clone(),
            opt,
        })
    }

    /// The model (its weights are the optimizer's parameters).
    pub fn model(&self) -> &TaskModel {
        &self.model
    }

    /// Parameters, counted from the variables.
    pub fn param_count(&self) -> u64 {
        self.opt.param_count()
    }

    /// One AdamW update at `lr` on the examples `idx` (one length), gradients clipped to global
    /// norm `clip` (0: off); `step` (1-based) names the update in a divergence error.
    pub fn update(
        &mut self,
        examples: &[Example],
        idx: &[usize],
        lr: f64,
        clip: f64,
        step: usize,
    ) -> Result<TaskUpdate> {
        let (x, y) = to_tensors(examples, idx, &self.device)?;
        let loss = classification_loss(&self.model.forward(&x)?, &y)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: value as f32,
            });
        }
        let g = loss.backward()?;
        self.opt.gather(&g, false)?;
        self.opt.step(lr, clip)?;
        let grad_norm = self.opt.grad_norm()?.to_vec1::<f32>()?[0] as f64;
        Ok(TaskUpdate {
            loss: value,
            grad_norm,
        })
    }

    /// Scores the model on `examples` in batches of at most `batch`.
    pub fn evaluate(&self, examples: &[Example], batch: usize) -> Result<Evaluation> {
        evaluate(&self.model, examples, batch)
    }
}

/// Scores `model` on `examples` (batches of at most `batch` examples of one length): per-token
/// accuracy and exact match over the labeled positions, and the mean loss.
pub fn evaluate(model: &TaskModel, examples: &[Example], batch: usize) -> Result<Evaluation> {
    let device = model.device().clone();
    let mut score = Score::default();
    let (mut nats, mut labeled) = (0f64, 0usize);
    for idx in eval_batches(examples, batch) {
        let (x, y) = to_tensors(examples, &idx, &device)?;
        let logits = model.forward(&x)?;
        let n_labeled = idx
            .iter()
            .flat_map(|&i| &examples[i].labels)
            .filter(|&&l| l != crate::tasks::IGNORE)
            .count();
        if n_labeled > 0 {
            let loss = classification_loss(&logits, &y)?.to_scalar::<f32>()? as f64;
            nats += loss * n_labeled as f64;
            labeled += n_labeled;
        }
        let pred = predictions(&logits)?.to_vec2::<u32>()?;
        for (row, &i) in pred.iter().zip(&idx) {
            score.add(row, &examples[i].labels);
        }
    }
    Ok(Evaluation {
        score,
        loss: if labeled > 0 {
            nats / labeled as f64
        } else {
            0.0
        },
    })
}
