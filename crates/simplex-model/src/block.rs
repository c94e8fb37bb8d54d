//! The pre-norm decoder block: `x += attn(norm(x)); x += mlp(norm(x))`, with each residual
//! add done by the next norm in the same pass (fused `add_rms_norm`).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::attention::DotAttention;
use crate::cache::LayerCache;
use crate::config::{Config, LayerKind};
use crate::error::Result;
use crate::init::residual_std;
use crate::mlp::Mlp;
use crate::moe::{MoeMlp, MoeStats};
use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::simplicial::SimplicialAttention;

/// The attention sublayer of a block.
#[derive(Debug, Clone)]
pub enum Attention {
    /// D or L.
    Dot(DotAttention),
    /// S.
    Simplicial(SimplicialAttention),
}

impl Attention {
    /// `x [B, N, C]` at positions `pos..`, optionally through the layer's cache.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        match self {
            Attention::Dot(a) => a.forward(x, pos, cache),
            Attention::Simplicial(a) => a.forward(x, pos, cache),
        }
    }
}

/// The feed-forward sublayer of a block.
#[derive(Debug, Clone)]
pub enum FeedForward {
    /// One SwiGLU MLP.
    Dense(Mlp),
    /// Routed SwiGLU experts (and optional shared ones).
    Experts(MoeMlp),
}

impl FeedForward {
    /// `x [.., C]` through the sublayer, with the routing statistics of an MoE layer.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Option<MoeStats>)> {
        Ok(match self {
            FeedForward::Dense(m) => (m.forward(x)?, None),
            FeedForward::Experts(m) => {
                let (y, stats) = m.forward(x)?;
                (y, Some(stats))
            }
        })
    }
}

/// The residual stream between sublayers: the stream `x` and the output of the last
/// sublayer, not yet added (the next norm adds it in the same pass).
#[derive(Debug, Clone)]
pub struct Stream {
    /// The residual stream before the pending addition.
    pub x: Tensor,
    /// The last sublayer's output, to be added to `x`.
    pub delta: Option<Tensor>,
}

impl Stream {
    /// The stream of `x` with nothing pending.
    pub fn new(x: Tensor) -> Self {
        Stream { x, delta: None }
    }

    /// `(x + delta, norm(x + delta))` in one fused pass.
    pub fn normed(&self, norm: &RmsNorm) -> Result<(Tensor, Tensor)> {
        Ok(norm.forward_residual(&self.x, self.delta.as_ref())?)
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct Block {
    kind: LayerKind,
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: FeedForward,
}

impl Block {
    /// Layer `index` with weights under `vb`: `attn_norm`, `attn.{qkv,o}`, `mlp_norm`, and
    /// `mlp.{gate_up,down}` (dense) or `mlp.{router,experts,shared}` (an MoE layer).
    pub fn new(
        cfg: &Config,
        index: usize,
        kind: LayerKind,
        rope: Option<&Rope>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let attn = match kind {
            LayerKind::Dot | LayerKind::Local => {
                Attention::Dot(DotAttention::new(cfg, kind, rope.cloned(), vb.pp("attn"))?)
            }
            LayerKind::Simplicial => {
                Attention::Simplicial(SimplicialAttention::new(cfg, vb.pp("attn"))?)
            }
        };
        Ok(Block {
            kind,
            attn_norm: RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("attn_norm"))?,
            attn,
            mlp_norm: RmsNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("mlp_norm"))?,
            mlp: match cfg.moe.as_ref().filter(|m| m.applies_to(index)) {
                Some(m) => FeedForward::Experts(MoeMlp::new(
                    m,
                    cfg.d_model,
                    cfg.mlp_hidden,
                    residual_std(cfg.n_layers()),
                    vb.pp("mlp"),
                )?),
                None => FeedForward::Dense(Mlp::new(
                    cfg.d_model,
                    cfg.mlp_hidden,
                    residual_std(cfg.n_layers()),
                    vb.pp("mlp"),
                )?),
            },
        })
    }

    /// Runs the layer's attention (and MoE products) through the CUDA kernels `kernels`
    /// chooses.
    pub fn set_kernels(&mut self, kernels: simplex_attn::Kernels) {
        match &mut self.attn {
            Attention::Dot(a) => a.set_kernels(kernels),
            Attention::Simplicial(a) => a.set_kernels(kernels),
        }
        if let FeedForward::Experts(m) = &mut self.mlp {
            m.set_products(kernels.moe);
        }
    }

    /// The layer kind.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }

    /// Whether the feed-forward sublayer is MoE.
    pub fn is_moe(&self) -> bool {
        matches!(self.mlp, FeedForward::Experts(_))
    }

    /// The stream at positions `pos..pos+N` (`[B, N, C]`) through the block:
    ///
    /// ```text
    /// (h, y) = add_rms_norm(x, delta);  a = attn(y)
    /// (h2, y2) = add_rms_norm(h, a);    m = mlp(y2)      -> Stream { x: h2, delta: m }
    /// ```
    /// with the routing statistics when the MLP is MoE.
    pub fn forward(
        &self,
        s: &Stream,
        pos: usize,
        cache: Option<&mut LayerCache>,
    ) -> Result<(Stream, Option<MoeStats>)> {
        let (h, y) = s.normed(&self.attn_norm)?;
        let a = self.attn.forward(&y, pos, cache)?;
        let (h2, y2) = self.mlp_norm.forward_residual(&h, Some(&a))?;
        let (m, stats) = self.mlp.forward(&y2)?;
        Ok((
            Stream {
                x: h2,
                delta: Some(m),
            },
            stats,
        ))
    }
}

/// The blocks of `cfg.pattern`, bottom to top, under `vb.pp("layers.{i}")` (with the RoPE
/// tables of the D/L layers when the config has them).
pub fn build_blocks(cfg: &Config, vb: &VarBuilder) -> Result<Vec<Block>> {
    let layers = cfg.layers();
    let dot = layers
        .iter()
        .any(|k| matches!(k, LayerKind::Dot | LayerKind::Local));
    let rope = if dot && cfg.rope {
        Some(Rope::new(
            cfg.dot_heads().dim,
            cfg.max_seq_len,
            cfg.rope_theta,
            vb.device(),
        )?)
    } else {
        None
    };
    layers
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Block::new(cfg, i, kind, rope.as_ref(), vb.pp(format!("layers.{i}"))))
        .collect()
}
