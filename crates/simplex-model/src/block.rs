//! The pre-norm decoder block: `x += attn(norm(x)); x += mlp(norm(x))`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::attention::DotAttention;
use crate::cache::LayerCache;
use crate::config::{Config, LayerKind};
use crate::error::Result;
use crate::init::residual_std;
use crate::mlp::Mlp;
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

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct Block {
    kind: LayerKind,
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// Weights under `vb`: `attn_norm`, `attn.*`, `mlp_norm`, `mlp.{gate,up,down}`.
    pub fn new(cfg: &Config, kind: LayerKind, rope: &Rope, vb: VarBuilder) -> Result<Self> {
        let attn = match kind {
            LayerKind::Dot | LayerKind::Local => {
                Attention::Dot(DotAttention::new(cfg, kind, rope.clone(), vb.pp("attn"))?)
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
            mlp: Mlp::new(
                cfg.d_model,
                cfg.mlp_hidden,
                residual_std(cfg.n_layers()),
                vb.pp("mlp"),
            )?,
        })
    }

    /// The layer kind.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }

    /// `x [B, N, C]` at positions `pos..pos+N`.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.attn_norm.forward(x)?, pos, cache)?)?;
        Ok((&x + self.mlp.forward(&self.mlp_norm.forward(&x)?)?)?)
    }
}

/// The blocks of `cfg.pattern`, bottom to top, under `vb.pp("layers.{i}")` (with the RoPE
/// tables of the D/L layers; a head dim of 0 in an S-only model gives empty tables).
pub fn build_blocks(cfg: &Config, vb: &VarBuilder) -> Result<Vec<Block>> {
    let rope = Rope::new(
        cfg.dot_heads().dim,
        cfg.max_seq_len,
        cfg.rope_theta,
        vb.dtype(),
        vb.device(),
    )?;
    cfg.layers()
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Block::new(cfg, kind, &rope, vb.pp(format!("layers.{i}"))))
        .collect()
}
