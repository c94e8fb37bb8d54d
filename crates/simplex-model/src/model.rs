//! The decoder-only language model:
//!
//! ```text
//! tokens [B, N] -> embed [B, N, C] -> blocks (pattern, bottom to top) -> RMSNorm -> head [B, N, V]
//! ```
//! The head is the transposed embedding when `tie_embeddings`. Weight names: `embed.weight`,
//! `layers.{i}.{attn_norm, attn.*, mlp_norm, mlp.*}`, `norm.weight`, `lm_head.weight` (untied).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};
use simplex_attn::fused::{
    linear_cross_entropy, linear_cross_entropy_grads, project, Targets, CHUNK_LOGITS,
};

use crate::embedding::TokenEmbedding;

use crate::block::{build_blocks, Block, Stream};
use crate::cache::Cache;
use crate::config::Config;
use crate::decode::Decoder;
use crate::error::{ModelError, Result};
use crate::info::ModelInfo;
use crate::init::{linear_weight, STD};
use crate::moe::MoeStats;
use crate::norm::RmsNorm;
use crate::sample::Sampler;

/// A decoder-only LM with D, L and S layers.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: Config,
    embed: TokenEmbedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Tensor,
    dtype: DType,
}

/// A batch of next-token examples whose ids were checked on the host against a config:
/// `inputs [B, N]` and `targets [B * N]` (u32, on the model's device). Checking here costs no
/// device synchronization, unlike checking a device tensor, so the training paths take a
/// `TokenBatch` and check nothing on the device (the only way to make one is
/// [`TokenBatch::new`]).
#[derive(Debug, Clone)]
pub struct TokenBatch {
    inputs: Tensor,
    targets: Tensor,
}

impl TokenBatch {
    /// `inputs` and `targets` (`batch * seq` ids each, row-major) for a model of `cfg`, uploaded
    /// to `device`; an error names an id outside the vocabulary or a length that does not fit.
    pub fn new(
        inputs: &[u32],
        targets: &[u32],
        (batch, seq): (usize, usize),
        cfg: &Config,
        device: &Device,
    ) -> Result<Self> {
        let n = batch * seq;
        if n == 0 || inputs.len() != n || targets.len() != n {
            return Err(ModelError::Input(format!(
                "a batch of {batch} x {seq} needs {n} inputs and targets, got {} and {}",
                inputs.len(),
                targets.len()
            )));
        }
        if seq > cfg.max_seq_len {
            return Err(ModelError::Input(format!(
                "sequences of {seq} tokens exceed max_seq_len = {}",
                cfg.max_seq_len
            )));
        }
        if let Some(&bad) = inputs
            .iter()
            .chain(targets)
            .find(|&&t| t as usize >= cfg.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size = {})",
                cfg.vocab_size
            )));
        }
        Ok(TokenBatch {
            inputs: Tensor::from_slice(inputs, (batch, seq), device)?,
            targets: Tensor::from_slice(targets, n, device)?,
        })
    }

    /// `[B, N]` input ids.
    pub fn inputs(&self) -> &Tensor {
        &self.inputs
    }

    /// `[B * N]` target ids (the next token of each input position).
    pub fn targets(&self) -> &Tensor {
        &self.targets
    }
}

/// The loss of one training batch ([`Model::training_loss`]); all on the device.
#[derive(Debug, Clone)]
pub struct TrainingLoss {
    /// What the update differentiates: `lm` plus the weighted auxiliary losses.
    pub total: Tensor,
    /// Mean next-token cross-entropy (nats per token), a scalar f32.
    pub lm: Tensor,
    /// The MoE layers' auxiliary losses and loads, when the model has MoE layers.
    pub moe: Option<MoeLoss>,
}

/// The routing statistics of a batch over the MoE layers (not differentiable).
#[derive(Debug, Clone)]
pub struct MoeLoss {
    /// Mean load-balancing loss over the MoE layers (1 when balanced), unweighted.
    pub balance: Tensor,
    /// Mean router z-loss over the MoE layers, unweighted.
    pub z: Tensor,
    /// `[MoE layers, E]` u32: assignments routed to each expert, bottom layer first.
    pub load: Tensor,
}

impl Model {
    /// Builds (or loads, depending on `vb`) the model; validates the config first.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        if cfg.bidirectional {
            return Err(ModelError::Input(
                "config bidirectional = true: a language model is causal (its KV cache and \
                 next-token loss need it); a bidirectional encoder is a TaskModel"
                    .into(),
            ));
        }
        let (v, c) = (cfg.vocab_size, cfg.d_model);
        let ew = vb.get_with_hints(
            (v, c),
            "embed.weight",
            Init::Randn {
                mean: 0.0,
                stdev: STD,
            },
        )?;
        let embed = TokenEmbedding::new(ew.clone());
        let blocks = build_blocks(cfg, &vb)?;
        let head = if cfg.tie_embeddings {
            ew
        } else {
            linear_weight(c, v, STD, vb.pp("lm_head"))?
        };
        Ok(Model {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: RmsNorm::new(c, cfg.norm_eps, vb.pp("norm"))?,
            head,
            dtype: vb.dtype(),
        })
    }

    /// The model with its attention layers (and MoE products) run through the CUDA kernels
    /// `kernels` chooses (`Kernels::default()`, what [`Model::new`] gives: automatic per
    /// shape). For example `deterministic=on` makes the 2-simplicial backward bitwise
    /// repeatable; the CPU ignores it.
    pub fn with_kernels(mut self, kernels: simplex_attn::Kernels) -> Self {
        for b in &mut self.blocks {
            b.set_kernels(kernels);
        }
        self
    }

    /// The config it was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device its weights live on.
    pub fn device(&self) -> &Device {
        self.embed.weight().device()
    }

    /// The dtype it computes in (its weights' dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Parameter counts and FLOPs per token at sequence length `seq`.
    pub fn info(&self, seq: usize) -> ModelInfo {
        ModelInfo::new(&self.cfg, seq)
    }

    fn logits(&self, s: &Stream) -> Result<Tensor> {
        let (_, y) = s.normed(&self.norm)?;
        Ok(project(&y, &self.head)?)
    }

    /// The final normalized hidden states `[B, N, C]` of `tokens [B, N]` (positions `0..N`)
    /// and the routing statistics of the MoE layers, bottom to top.
    fn hidden(&self, tokens: &Tensor) -> Result<(Tensor, Vec<MoeStats>)> {
        let mut s = Stream::new(self.embed.forward(tokens)?);
        let mut stats = Vec::new();
        for block in &self.blocks {
            let (next, st) = block.forward(&s, 0, None)?;
            s = next;
            stats.extend(st);
        }
        Ok((s.normed(&self.norm)?.1, stats))
    }

    /// Logits `[B, N, V]` of `tokens [B, N]` (positions `0..N`, the fused ops; differentiable).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        check_tokens(tokens, 0, &self.cfg)?;
        Ok(project(&self.hidden(tokens)?.0, &self.head)?)
    }

    /// Mean next-token cross-entropy of `batch` (nats per token; a scalar f32 tensor on the
    /// device, differentiable). The head and the loss run as one fused op that never holds
    /// more than a chunk of the `[B * N, V]` logits.
    /// This is the language-model loss only; training adds the MoE layers' auxiliary losses
    /// ([`Model::training_loss`]).
    pub fn loss(&self, batch: &TokenBatch) -> Result<Tensor> {
        Ok(self.training_loss(batch)?.lm)
    }

    /// The loss a training update differentiates: the mean next-token cross-entropy plus, for
    /// MoE layers, `balance_weight` times the mean load-balancing loss and `z_loss_weight`
    /// times the mean router z-loss over the MoE layers.
    pub fn training_loss(&self, batch: &TokenBatch) -> Result<TrainingLoss> {
        let (y, stats) = self.hidden(&batch.inputs)?;
        let (b, n, c) = y.dims3()?;
        let targets = Targets {
            ids: &batch.targets,
            ignore: None,
        };
        let lm = linear_cross_entropy(&y.reshape((b * n, c))?, &self.head, targets)?;
        self.with_moe_losses(lm, &stats)
    }

    /// The training loss from the LM loss `lm` and the MoE layers' statistics (bottom to top):
    /// `lm` plus the weighted means of the auxiliary losses over the MoE layers.
    fn with_moe_losses(&self, lm: Tensor, stats: &[MoeStats]) -> Result<TrainingLoss> {
        let Some(moe) = self.cfg.moe.as_ref().filter(|_| !stats.is_empty()) else {
            return Ok(TrainingLoss {
                total: lm.clone(),
                lm,
                moe: None,
            });
        };
        let mean = |f: fn(&MoeStats) -> &Tensor| -> Result<Tensor> {
            let all: Vec<Tensor> = stats
                .iter()
                .map(|s| f(s).reshape(1))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::cat(&all, 0)?.mean_all()?.to_dtype(lm.dtype())?)
        };
        let balance = mean(|s| &s.balance_loss)?;
        let z = mean(|s| &s.z_loss)?;
        let total = ((&lm + (&balance * moe.balance_weight)?)? + (&z * moe.z_loss_weight)?)?;
        let loads: Vec<Tensor> = stats
            .iter()
            .map(|s| s.load.unsqueeze(0))
            .collect::<candle_core::Result<_>>()?;
        Ok(TrainingLoss {
            total,
            lm,
            moe: Some(MoeLoss {
                balance: balance.detach(),
                z: z.detach(),
                load: Tensor::cat(&loads, 0)?,
            }),
        })
    }

    /// The training loss of `batch` (as [`Model::training_loss`], values without a graph) and
    /// the gradients of `scale` times its total with respect to every weight, computed without
    /// candle's autograd: the forward keeps each fused op's saved state, and the backward runs
    /// the ops' written-out backward in reverse (head and loss, final norm, each block's
    /// feed-forward sublayer (dense, or MoE with its router and auxiliary losses), norms and
    /// attention, the embedding), adding each weight's gradient once (candle's backward adds
    /// every gradient into a fresh zero tensor, once per edge of its graph, a third of an
    /// update's elementwise work). The gradients are keyed by the weights, as
    /// [`Tensor::backward`] keys them, and equal its gradients of `scale * total` up to
    /// summation order.
    ///
    /// `None` where a layer has no written-out backward (the determinant form or rotation of
    /// 2-simplicial layers, dot-product attention no fused kernel takes): train those through
    /// [`Model::training_loss`] and autograd.
    pub fn training_grads(
        &self,
        batch: &TokenBatch,
        scale: f64,
    ) -> Result<Option<(TrainingLoss, GradStore)>> {
        let tokens = &batch.inputs; // checked on the host by TokenBatch::new
        if !self.has_written_out_backward() {
            return Ok(None);
        }
        let mut s = Stream::new(self.embed.forward_detached(tokens)?);
        let mut saved = Vec::with_capacity(self.blocks.len());
        let mut stats = Vec::new();
        for block in &self.blocks {
            let Some((next, sv, st)) = block.forward_saved(&s)? else {
                return Ok(None);
            };
            s = next;
            saved.push(sv);
            stats.extend(st);
        }
        let (_, y, norm_saved) = self.norm.forward_saved(&s.x, s.delta.as_ref())?;
        drop(s);
        let (b, n, c) = y.dims3()?;
        let targets = Targets {
            ids: &batch.targets,
            ignore: None,
        };
        let y2 = y.reshape((b * n, c))?;
        let (loss, dy, dhead) = linear_cross_entropy_grads(&y2, &self.head, targets, CHUNK_LOGITS)?;
        let (dy, dhead) = if scale == 1.0 {
            (dy, dhead)
        } else {
            ((dy * scale)?, (dhead * scale)?)
        };
        let mut grads = GradStore::default();
        let mut add = |w: &Tensor, g: Tensor| -> Result<()> {
            let g = match grads.remove(w) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(w, g);
            Ok(())
        };
        add(&self.head, dhead)?;
        let (mut d, dw) = self
            .norm
            .grads(&dy.reshape((b, n, c))?, &norm_saved, None)?;
        add(self.norm.weight(), dw)?;
        // each MoE layer's share of the weighted mean auxiliary losses
        let moe_aux = match &self.cfg.moe {
            Some(m) if !stats.is_empty() => {
                let per_layer = scale / stats.len() as f64;
                (m.balance_weight * per_layer, m.z_loss_weight * per_layer)
            }
            _ => (0.0, 0.0),
        };
        for (block, sv) in self.blocks.iter().zip(saved).rev() {
            d = block.backward_saved(sv, &d, moe_aux, &mut add)?;
        }
        add(self.embed.weight(), self.embed.weight_grad(tokens, &d)?)?;
        Ok(Some((self.with_moe_losses(loss, &stats)?, grads)))
    }

    /// Whether [`Model::training_grads`] covers this model: every block has a written-out
    /// backward for the model's dtype on its device.
    pub fn has_written_out_backward(&self) -> bool {
        let dev = self.device();
        self.blocks
            .iter()
            .all(|b| b.has_written_out_backward(dev, self.dtype))
    }

    /// Logits `[B, n, V]` of `n` new tokens `[B, n]` that follow what `cache` has seen; appends
    /// them to the cache. Use for the prompt (prefill) and then one token at a time.
    pub fn forward_step(&self, tokens: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let pos = cache.pos;
        let (_, n) = check_tokens(tokens, pos, &self.cfg)?;
        if cache.layers.len() != self.blocks.len() {
            return Err(ModelError::Input(format!(
                "the cache has {} layers, the model {}: build it with Cache::new(model.config())",
                cache.layers.len(),
                self.blocks.len()
            )));
        }
        cache.check_dtype(self.dtype)?;
        let mut s = Stream::new(self.embed.forward(tokens)?);
        for (block, lc) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            s = block.forward(&s, pos, Some(lc))?.0;
        }
        cache.pos += n;
        self.logits(&s)
    }

    /// Continues `prompt` by `max_new` tokens drawn by `sampler` (batch 1, KV cache). Past
    /// `max_seq_len` the context slides by the default shift ([`Decoder`]); a prompt longer
    /// than `max_seq_len` is cropped to its last `max_seq_len` tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(ModelError::Input(
                "empty prompt: generation needs at least one token".into(),
            ));
        }
        let mut out = Vec::with_capacity(max_new);
        if max_new == 0 {
            return Ok(out);
        }
        let (mut dec, mut logits) = Decoder::new(self, &[prompt], None)?;
        loop {
            let next = sampler.sample(&logits.get(0)?)?;
            out.push(next);
            if out.len() == max_new {
                return Ok(out);
            }
            logits = dec.step(&[next])?;
        }
    }
}

/// Checks `tokens` (`[B, N]`, integer) against the vocabulary and the positions `pos..pos+N`.
pub(crate) fn check_tokens(tokens: &Tensor, pos: usize, cfg: &Config) -> Result<(usize, usize)> {
    let (b, n) = tokens.dims2().map_err(|_| {
        ModelError::Input(format!("tokens {:?}: expected [batch, seq]", tokens.dims()))
    })?;
    if !matches!(tokens.dtype(), DType::U32 | DType::U8 | DType::I64) {
        return Err(ModelError::Input(format!(
            "tokens are {:?}: expected u32 (or u8, i64)",
            tokens.dtype()
        )));
    }
    if n == 0 || b == 0 {
        return Err(ModelError::Input(format!(
            "tokens {:?}: empty",
            tokens.dims()
        )));
    }
    if pos + n > cfg.max_seq_len {
        return Err(ModelError::Input(format!(
            "positions {pos}..{} exceed max_seq_len = {}",
            pos + n,
            cfg.max_seq_len
        )));
    }
    let max = tokens.to_dtype(DType::F64)?.max_all()?.to_scalar::<f64>()?;
    let min = tokens.to_dtype(DType::F64)?.min_all()?.to_scalar::<f64>()?;
    if min < 0.0 || max >= cfg.vocab_size as f64 {
        return Err(ModelError::Input(format!(
            "token id {} is outside the vocabulary (vocab_size = {})",
            if min < 0.0 { min } else { max },
            cfg.vocab_size
        )));
    }
    Ok((b, n))
}
