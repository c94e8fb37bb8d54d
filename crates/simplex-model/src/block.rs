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
use crate::moe::{MoeMlp, MoeSaved, MoeStats};
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

/// What [`FeedForward::forward_saved`] keeps for [`FeedForward::grads`].
enum FeedForwardSaved {
    Dense(simplex_attn::fused::MlpSaved),
    Experts(Box<MoeSaved>),
}

impl FeedForward {
    /// The forward outside autograd (see [`Block::forward_saved`]).
    fn forward_saved(&self, x: &Tensor) -> Result<(Tensor, Option<MoeStats>, FeedForwardSaved)> {
        Ok(match self {
            FeedForward::Dense(m) => {
                let (y, saved) = m.forward_saved(x)?;
                (y, None, FeedForwardSaved::Dense(saved))
            }
            FeedForward::Experts(m) => {
                let (y, stats, saved) = m.forward_saved(x)?;
                (y, Some(stats), FeedForwardSaved::Experts(Box::new(saved)))
            }
        })
    }

    /// `dx` and the weights' gradients ([`FeedForward::weights`]' order) from `dy`; `aux` are
    /// the factors of an MoE layer's balance and z-losses (see [`MoeMlp::grads`]).
    fn grads(
        &self,
        saved: FeedForwardSaved,
        dy: &Tensor,
        aux: (f64, f64),
    ) -> Result<(Tensor, Vec<Tensor>)> {
        Ok(match (self, saved) {
            (FeedForward::Dense(m), FeedForwardSaved::Dense(s)) => {
                let (dx, dw) = m.grads(s, dy)?;
                (dx, dw.into())
            }
            (FeedForward::Experts(m), FeedForwardSaved::Experts(s)) => m.grads(*s, dy, aux)?,
            _ => {
                return Err(crate::error::ModelError::Input(
                    "FeedForward::grads: the saved forward is of another kind of layer".into(),
                ))
            }
        })
    }

    /// The sublayer's weights, in the order of [`FeedForward::grads`].
    fn weights(&self) -> Vec<&Tensor> {
        match self {
            FeedForward::Dense(m) => m.weights().into(),
            FeedForward::Experts(m) => m.weights(),
        }
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

/// What [`Block::forward_saved`] keeps for [`Block::backward_saved`]: each fused op's saved
/// state.
pub struct BlockSaved {
    attn_norm: simplex_attn::fused::NormSaved,
    attn: simplex_attn::fused::AttentionLayerSaved,
    mlp_norm: simplex_attn::fused::NormSaved,
    mlp: FeedForwardSaved,
}

impl Attention {
    /// The training forward outside autograd (see [`Block::forward_saved`]).
    fn forward_saved(
        &self,
        x: &Tensor,
    ) -> Result<Option<(Tensor, simplex_attn::fused::AttentionLayerSaved)>> {
        match self {
            Attention::Dot(a) => a.forward_saved(x),
            Attention::Simplicial(a) => a.forward_saved(x),
        }
    }

    /// `(dx, [d qkv, d o])` for a forward of [`Attention::forward_saved`].
    fn grads(
        &self,
        saved: simplex_attn::fused::AttentionLayerSaved,
        dy: &Tensor,
    ) -> Result<(Tensor, [Tensor; 2])> {
        match self {
            Attention::Dot(a) => a.grads(saved, dy),
            Attention::Simplicial(a) => a.grads(saved, dy),
        }
    }

    /// `[qkv, o]`, in the order of [`Attention::grads`].
    fn weights(&self) -> [&Tensor; 2] {
        match self {
            Attention::Dot(a) => a.weights(),
            Attention::Simplicial(a) => a.weights(),
        }
    }
}

impl Block {
    /// Whether [`Block::forward_saved`] runs this block for inputs of `dtype` on `device`:
    /// dot-product attention that the fused op runs there, or trilinear 2-simplicial attention
    /// without rotation (the feed-forward sublayer, dense or MoE, always has one).
    pub fn has_written_out_backward(
        &self,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> bool {
        match &self.attn {
            Attention::Dot(a) => a.has_fused_layer(device, dtype),
            Attention::Simplicial(a) => a.has_written_out_backward(),
        }
    }

    /// The training forward of [`Block::forward`] (positions from 0, no cache) outside
    /// autograd, keeping what [`Block::backward_saved`] needs, with the routing statistics
    /// (values) of an MoE layer; `None` where the block is not made of ops with a written-out
    /// backward throughout ([`Block::has_written_out_backward`]).
    #[allow(clippy::type_complexity)]
    pub fn forward_saved(
        &self,
        s: &Stream,
    ) -> Result<Option<(Stream, BlockSaved, Option<MoeStats>)>> {
        let (h, y, attn_norm) = self.attn_norm.forward_saved(&s.x, s.delta.as_ref())?;
        let Some((a, attn_saved)) = self.attn.forward_saved(&y)? else {
            return Ok(None);
        };
        let (h2, y2, mlp_norm) = self.mlp_norm.forward_saved(&h, Some(&a))?;
        let (m, stats, mlp_saved) = self.mlp.forward_saved(&y2)?;
        let saved = BlockSaved {
            attn_norm,
            attn: attn_saved,
            mlp_norm,
            mlp: mlp_saved,
        };
        Ok(Some((
            Stream {
                x: h2,
                delta: Some(m),
            },
            saved,
            stats,
        )))
    }

    /// The backward of [`Block::forward_saved`]: from `d_out`, the gradient of the output
    /// stream's sum `x + delta` (what the next norm differentiates), the gradient of the input
    /// stream's sum; each weight's gradient is handed to `grad(weight, gradient)`. `moe_aux`
    /// are the factors of an MoE layer's balance and z-losses in the differentiated loss.
    ///
    /// ```text
    /// dy2 = mlp'(d_out);     dh2 = d_out + norm2'(dy2)      (h2 = h + a feeds the next norm)
    /// dy = attn'(dh2);       dh = dh2 + norm1'(dy)          (each sum in the norm's pass)
    /// ```
    pub fn backward_saved(
        &self,
        saved: BlockSaved,
        d_out: &Tensor,
        moe_aux: (f64, f64),
        grad: &mut dyn FnMut(&Tensor, Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (dy2, dw_mlp) = self.mlp.grads(saved.mlp, d_out, moe_aux)?;
        for (w, g) in self.mlp.weights().into_iter().zip(dw_mlp) {
            grad(w, g)?;
        }
        let (dh2, dw) = self.mlp_norm.grads(&dy2, &saved.mlp_norm, Some(d_out))?;
        grad(self.mlp_norm.weight(), dw)?;
        let (dy, dw_attn) = self.attn.grads(saved.attn, &dh2)?;
        for (w, g) in self.attn.weights().into_iter().zip(dw_attn) {
            grad(w, g)?;
        }
        let (dh, dw) = self.attn_norm.grads(&dy, &saved.attn_norm, Some(&dh2))?;
        grad(self.attn_norm.weight(), dw)?;
        Ok(dh)
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
