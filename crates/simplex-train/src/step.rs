//! One optimizer update:
//!
//! ```text
//! for each of grad_accum micro-batches x, y [B, N] (this rank's, of W ranks):
//!     loss_k = cross_entropy(model(x), y)          fused head + loss, f32 statistics
//!              (+ the MoE layers' weighted balance and z losses)
//!     grad  (+)= grad(loss_k / (grad_accum W))     the written-out backward where the model
//!                                                  has one (Model::training_grads), else
//!                                                  autograd; gathered into one flat f32 buffer
//!                                                  (W > 1: into buckets, ddp/buckets.rs)
//! W > 1: grad = sum over ranks                     all-reduce, bucket by bucket
//! g *= min(1, grad_clip / |g|)                     global norm, on the device
//! AdamW(g, lr)                                     f32 masters; writes the working copies
//! ```
//! The model is built once on the optimizer's working copies (bf16 under `precision = bf16`,
//! else f32): its weights are candle variables, so their gradients are what the update needs
//! and nothing is cast per update. No value is read back to the host during an update: the
//! loss and the gradient norm stay on the device until the trainer logs them.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use simplex_model::{fused_params, Config, Model, MoeLoss, TokenBatch};

use crate::config::{Precision, TrainConfig};
use crate::data::Batcher;
use crate::ddp::{Collective, GradReducer, RankBatcher, Solo};
use crate::error::{Result, TrainError};
use crate::init::{named_vars, SeededInit};
use crate::optim::{AdamWParams, Optimizer};

/// Where an update's micro-batches come from: a [`Batcher`] (one process) or a
/// [`RankBatcher`] (one rank's share of each global batch).
pub trait MicroBatches {
    /// The next micro-batch of `b` windows: `(inputs, targets)`, row-major `[b, seq]`.
    fn next_batch(&mut self, b: usize) -> Result<(Vec<u32>, Vec<u32>)>;
}

impl MicroBatches for Batcher<'_> {
    fn next_batch(&mut self, b: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        Batcher::next_batch(self, b)
    }
}

impl MicroBatches for RankBatcher<'_> {
    fn next_batch(&mut self, b: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        RankBatcher::next_batch(self, b)
    }
}

/// What one update leaves on the device: read it with [`Update::read`] when logging.
#[derive(Debug, Clone)]
pub struct Update {
    /// Mean loss of its micro-batches (nats per token), a one-element f32 tensor.
    pub loss: Tensor,
    /// Global gradient norm before clipping, a one-element f32 tensor.
    pub grad_norm: Tensor,
    /// The MoE layers' auxiliary losses and expert loads of the last micro-batch.
    pub moe: Option<MoeLoss>,
}

impl Update {
    /// `(loss, grad_norm)` as numbers (waits for the device).
    pub fn read(&self) -> Result<(f64, f64)> {
        let l = self.loss.flatten_all()?.to_vec1::<f32>()?[0] as f64;
        let g = self.grad_norm.flatten_all()?.to_vec1::<f32>()?[0] as f64;
        Ok((l, g))
    }
}

/// How an update computes its gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backward {
    /// The written-out backward of [`Model::training_grads`] where the model has one
    /// (dot-product or trilinear 2-simplicial attention, dense or MoE feed-forward layers),
    /// else candle's autograd.
    #[default]
    Auto,
    /// candle's autograd always (the reference, and what the determinant form uses).
    Autograd,
}

impl std::fmt::Display for Backward {
    /// `auto` or `autograd`, as [`Backward::from_str`](std::str::FromStr::from_str) reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backward::Auto => "auto",
            Backward::Autograd => "autograd",
        })
    }
}

impl std::str::FromStr for Backward {
    type Err = String;

    /// `auto` or `autograd`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Backward::Auto),
            "autograd" => Ok(Backward::Autograd),
            other => Err(format!(
                "unknown backward {other:?}: expected auto or autograd"
            )),
        }
    }
}

/// The model on its working copies, and the optimizer that owns its weights.
pub struct Learner {
    cfg: Config,
    device: Device,
    model: Model,
    backward: Backward,
    /// The optimizer (f32 masters, moments, the working copies).
    pub opt: Optimizer,
    /// Gradient buckets summed over the ranks (data-parallel runs only).
    reducer: Option<GradReducer>,
}

impl Learner {
    /// Creates the master weights with seeded init (the same seed gives the same weights on any
    /// device), the working copies in the run's precision, the model on them and AdamW.
    pub fn new(cfg: &Config, train: &TrainConfig, device: &Device) -> Result<Self> {
        let (vars, vb) = SeededInit::builder(train.seed, device, &fused_params(cfg));
        Model::new(cfg, vb)?;
        let params = named_vars(&vars).ok_or_else(|| {
            crate::error::TrainError::setting("model", "variables", "lock poisoned")
        })?;
        let hp = AdamWParams {
            beta1: train.beta1,
            beta2: train.beta2,
            eps: train.eps,
            weight_decay: train.weight_decay,
        };
        let dtype = match train.precision {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        };
        let opt = Optimizer::new(params, dtype, hp)?;
        let vb = VarBuilder::from_varmap(&opt.working_vars(), dtype, device);
        let model = Model::new(cfg, vb)?;
        Ok(Learner {
            cfg: cfg.clone(),
            device: device.clone(),
            model,
            backward: Backward::Auto,
            opt,
            reducer: None,
        })
    }

    /// The learner computing its gradients as `backward` says.
    pub fn with_backward(mut self, backward: Backward) -> Self {
        self.backward = backward;
        self
    }

    /// The learner with its model's attention run through the CUDA kernels `kernels` chooses
    /// ([`Model::with_kernels`]).
    pub fn with_kernels(mut self, kernels: simplex_attn::Kernels) -> Self {
        self.model = self.model.with_kernels(kernels);
        self
    }

    /// Sums the gradients over data-parallel ranks from now on, in buckets of `bucket_bytes`.
    pub fn distribute(&mut self, bucket_bytes: usize) -> Result<()> {
        self.reducer = Some(GradReducer::new(&self.opt.param_lens(), bucket_bytes)?);
        Ok(())
    }

    /// The model (its weights are the optimizer's working copies).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// One update at learning rate `lr` on the next `grad_accum` batches of `batcher`.
    pub fn update(
        &mut self,
        batcher: &mut dyn MicroBatches,
        t: &TrainConfig,
        lr: f64,
    ) -> Result<Update> {
        let solo = Solo::new(self.device.clone());
        self.update_ranked(batcher, t, lr, &solo)
    }

    /// One update at learning rate `lr` on this rank's next `grad_accum` batches of `batcher`
    /// (a [`RankBatcher`]), the gradients summed over the ranks of `comm`
    /// ([`Learner::distribute`] first when there are several). The loss is this rank's (the
    /// trainer averages the ranks' when it logs).
    pub fn update_ranked(
        &mut self,
        batcher: &mut dyn MicroBatches,
        t: &TrainConfig,
        lr: f64,
        comm: &dyn Collective,
    ) -> Result<Update> {
        if comm.world() > 1 && self.reducer.is_none() {
            return Err(TrainError::distributed(
                comm.rank(),
                "a data-parallel update needs Learner::distribute first",
            ));
        }
        let (b, n) = (t.batch_size, t.seq_len);
        let parts_per_update = t.grad_accum * comm.world();
        let mut loss_sum: Option<Tensor> = None;
        let mut moe = None;
        for k in 0..t.grad_accum {
            let (x, y) = batcher.next_batch(b)?;
            let batch = TokenBatch::new(&x, &y, (b, n), &self.cfg, &self.device)?;
            let scale = 1.0 / parts_per_update as f64;
            let written_out = match self.backward {
                Backward::Auto => self.model.training_grads(&batch, scale)?,
                Backward::Autograd => None,
            };
            let (parts, grads) = match written_out {
                Some(pg) => pg,
                None => {
                    let parts = self.model.training_loss(&batch)?;
                    let grads = if parts_per_update > 1 {
                        (&parts.total / parts_per_update as f64)?.backward()?
                    } else {
                        parts.total.backward()?
                    };
                    (parts, grads)
                }
            };
            moe = parts.moe;
            match &mut self.reducer {
                Some(r) => r.add(&self.opt.grads_of(&grads), k > 0, &self.device)?,
                None => self.opt.gather(&grads, k > 0)?,
            }
            let loss = parts.lm.detach();
            loss_sum = Some(match loss_sum {
                Some(s) => (s + loss)?,
                None => loss,
            });
        }
        if let Some(r) = &mut self.reducer {
            let summed = r.reduce(comm)?;
            self.opt.gather_tensors(&summed, false)?;
        }
        self.opt.step(lr, t.grad_clip)?;
        let loss = (loss_sum.expect("grad_accum >= 1") / t.grad_accum as f64)?;
        Ok(Update {
            loss: loss.reshape(1)?,
            grad_norm: self.opt.grad_norm()?,
            moe,
        })
    }
}
