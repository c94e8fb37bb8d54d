//! A per-token classifier over the same blocks as the language model: the model of the reasoning
//! tasks that `simplex compare` trains.
//!
//! ```text
//! tokens [B, N] -> embed [B, N, C] -> blocks (pattern, bottom to top) -> RMSNorm
//!               -> W_cls x + b_cls                                      logits [B, N, K]
//! loss = mean over the labeled positions (b, i) of -log softmax(logits[b, i])[y[b, i]]
//! ```
//! `K` classes; a label [`IGNORE`] marks a position that carries no label (it adds nothing to the
//! loss and its gradient is zero). With `bidirectional = true` in the config every layer sees the
//! whole sequence (an encoder); with `rope = false` no layer sees positions, so the model is
//! permutation-equivariant. Weight names: `embed.weight`, `layers.{i}.*`, `norm.weight`,
//! `cls.weight`, `cls.bias`.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::embedding::TokenEmbedding;

use crate::block::{build_blocks, Block, Stream};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::info::ModelInfo;
use crate::init::STD;
use crate::model::check_tokens;
use crate::norm::RmsNorm;

/// The label of a position that is not scored.
pub const IGNORE: u32 = u32::MAX;

/// Embedding, blocks and a linear classification head per token.
#[derive(Debug, Clone)]
pub struct TaskModel {
    cfg: Config,
    classes: usize,
    embed: TokenEmbedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    cls: Linear,
}

impl TaskModel {
    /// Builds (or loads, depending on `vb`) a classifier into `classes` classes (>= 2); validates
    /// the config first. `tie_embeddings` plays no part (the head is its own).
    pub fn new(cfg: &Config, classes: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        if classes < 2 {
            return Err(ModelError::Input(format!(
                "classes = {classes}: a classifier needs at least 2"
            )));
        }
        if cfg.moe.is_some() {
            return Err(ModelError::Input(
                "config [moe]: task models have no mixture-of-experts layers (their loss has no \
                 router losses); drop the [moe] section"
                    .into(),
            ));
        }
        let c = cfg.d_model;
        let init = Init::Randn {
            mean: 0.0,
            stdev: STD,
        };
        let ew = vb.get_with_hints((cfg.vocab_size, c), "embed.weight", init)?;
        let w = vb.get_with_hints((classes, c), "cls.weight", init)?;
        let b = vb.get_with_hints(classes, "cls.bias", Init::Const(0.0))?;
        Ok(TaskModel {
            cfg: cfg.clone(),
            classes,
            embed: TokenEmbedding::new(ew),
            blocks: build_blocks(cfg, &vb)?,
            norm: RmsNorm::new(c, cfg.norm_eps, vb.pp("norm"))?,
            cls: Linear::new(w, Some(b)),
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device of its weights.
    pub fn device(&self) -> &Device {
        self.embed.weight().device()
    }

    /// Number of classes `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Every parameter of the model `TaskModel::new(cfg, classes, ..)` builds.
    pub fn param_count(cfg: &Config, classes: usize) -> u64 {
        let info = ModelInfo::new(cfg, cfg.max_seq_len);
        let (v, c, k) = (cfg.vocab_size as u64, cfg.d_model as u64, classes as u64);
        v * c + info.params_non_embedding + c * k + k
    }

    /// Logits `[B, N, K]` of `tokens [B, N]` (differentiable).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        check_tokens(tokens, 0, &self.cfg)?;
        let mut s = Stream::new(self.embed.forward(tokens)?);
        for block in &self.blocks {
            s = block.forward(&s, 0, None)?.0;
        }
        let (_, y) = s.normed(&self.norm)?;
        Ok(self.cls.forward(&y)?)
    }
}

/// Mean cross-entropy over the labeled positions: `logits [B, N, K]` (any float dtype, computed
/// in f32), `labels [B, N]` u32 in `0..K` or [`IGNORE`]. A scalar f32 tensor; an error when no
/// position is labeled or a label is out of range.
pub fn classification_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, n, k) = logits.dims3()?;
    if labels.dims() != [b, n] || labels.dtype() != DType::U32 {
        return Err(ModelError::Input(format!(
            "labels {:?} {:?} for logits [{b}, {n}, {k}]: expected u32 [{b}, {n}]",
            labels.dtype(),
            labels.dims()
        )));
    }
    let mask = labels.ne(IGNORE)?; // [B, N] u8
    let labeled = mask.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if labeled == 0.0 {
        return Err(ModelError::Input(format!(
            "labels [{b}, {n}]: no labeled position (all IGNORE)"
        )));
    }
    let y = mask.where_cond(labels, &labels.zeros_like()?)?;
    let top = y.max_all()?.to_scalar::<u32>()?;
    if top as usize >= k {
        return Err(ModelError::Input(format!(
            "label {top} is outside 0..{k} (the logits have {k} classes)"
        )));
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(2)?, 2)?.squeeze(2)?; // [B, N]
    let total = (picked * mask.to_dtype(DType::F32)?)?.sum_all()?;
    Ok((total.neg()? / labeled as f64)?)
}

/// The most likely class of every position: `logits [B, N, K]` -> u32 `[B, N]`.
pub fn predictions(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.argmax(D::Minus1)?)
}
