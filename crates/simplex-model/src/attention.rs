//! Dot-product attention blocks (D: whole prefix, L: sliding window; causal, or bidirectional
//! in an encoder), with RoPE unless the config turns it off:
//!
//! ```text
//! x [B, N, C] -> q [B, N, Hq, Dh], k, v [B, N, Hkv, Dh]     (one product with W_qkv, then
//!                                                             the fused split with RoPE on q, k)
//! o = dot_attn(q, k, v)   [B, N, Hq, Dh]  -> [B, N, Hq*Dh] -> Wo -> [B, N, C]
//! ```
//! Without a cache the sublayer runs as one op with its backward written out
//! (`simplex_attn::fused::dot_attention_layer`). With a cache, the keys and values of earlier
//! positions are read from ring buffers and the new queries sit at the end of the key sequence
//! (the op's `Nk > Nq` case).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use simplex_attn::dot::{dot_attn_slow, has_fused_kernel};
use simplex_attn::fused::{
    attention_layer_grads, dot_attention_layer, dot_attention_layer_saved, project, split_heads,
    AttentionLayerSaved, DotLayer, HeadPart,
};
use simplex_attn::{dot_attn, DotSpec, Kernels};

use crate::cache::LayerCache;
use crate::config::{Config, Heads, LayerKind};
use crate::error::{ModelError, Result};
use crate::init::{linear_weight, residual_std, STD};
use crate::rope::Rope;

/// One D or L attention sublayer.
#[derive(Debug, Clone)]
pub struct DotAttention {
    qkv: Tensor,
    o: Tensor,
    heads: Heads,
    spec: DotSpec,
    rope: Option<Rope>,
}

impl DotAttention {
    /// Projections `qkv [(Hq + 2 Hkv) * Dh, C]` (the q, k and v rows, in that order) and
    /// `o [C, Hq*Dh]` under `vb`.
    pub fn new(cfg: &Config, kind: LayerKind, rope: Option<Rope>, vb: VarBuilder) -> Result<Self> {
        let h = cfg.dot_heads();
        let c = cfg.d_model;
        let base = if cfg.bidirectional {
            DotSpec::bidirectional()
        } else {
            DotSpec::causal()
        };
        let spec = match kind {
            LayerKind::Local => base.with_window(Some(cfg.window)),
            _ => base,
        };
        Ok(DotAttention {
            qkv: linear_weight(c, (h.q + 2 * h.kv) * h.dim, STD, vb.pp("qkv"))?,
            o: linear_weight(h.q * h.dim, c, residual_std(cfg.n_layers()), vb.pp("o"))?,
            heads: h,
            spec,
            rope: if cfg.rope { rope } else { None },
        })
    }

    /// Runs the attention through the CUDA kernels `kernels` chooses (the default: automatic).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.spec = self.spec.with_kernels(kernels);
    }

    /// `x [B, N, C]` at positions `pos..pos+N`; with a cache, attends to the cached positions
    /// too and appends the new keys and values.
    pub fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let Heads {
            q: hq,
            kv: hkv,
            dim,
        } = self.heads;
        if let (None, Some(layer)) = (&cache, self.fused_layer(x, pos)) {
            // the whole sublayer as one op (training and prefill without a cache)
            return Ok(dot_attention_layer(x, &self.qkv, &self.o, &layer)?);
        }
        let rotate = self.rope.is_some();
        let part = |heads, rotate| HeadPart { heads, rotate };
        let parts = [part(hq, rotate), part(hkv, rotate), part(hkv, false)];
        let rope = self.rope.as_ref().map(|r| (r.tables(), pos));
        let qkv = split_heads(&project(x, &self.qkv)?, dim, &parts, rope)?;
        let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
        let o = match cache {
            None => attend(q, k, v, &self.spec)?,
            Some(LayerCache::Dot { k: kc, v: vc }) => {
                let (k, v) = (kc.extend(k)?, vc.extend(v)?);
                attend(q, &k, &v, &self.spec)?
            }
            Some(_) => {
                return Err(ModelError::Input(
                    "a dot-product layer got a 2-simplicial cache".into(),
                ))
            }
        };
        Ok(project(&o.reshape((b, n, hq * dim))?, &self.o)?)
    }

    /// The sublayer as the fused op runs it for `x` at positions `pos..` without a cache, or
    /// `None` where no fused kernel takes its head dim, dtype and device.
    fn fused_layer(&self, x: &Tensor, pos: usize) -> Option<DotLayer> {
        let dim = self.heads.dim;
        self.has_fused_layer(x.device(), x.dtype())
            .then(|| DotLayer {
                heads_q: self.heads.q,
                heads_kv: self.heads.kv,
                head_dim: dim,
                spec: self.spec,
                rope: self.rope.as_ref().map(|r| (r.tables().clone(), pos)),
            })
    }

    /// Whether the fused op runs the sublayer (without a cache) for inputs of `dtype` on
    /// `device`: a fused attention kernel takes its head dim there.
    pub fn has_fused_layer(&self, device: &candle_core::Device, dtype: candle_core::DType) -> bool {
        has_fused_kernel(device, dtype, self.heads.dim, self.heads.dim)
    }

    /// The training forward (positions from 0, no cache) outside autograd, with what
    /// [`DotAttention::grads`] needs; `None` where the fused op does not run the sublayer.
    pub fn forward_saved(&self, x: &Tensor) -> Result<Option<(Tensor, AttentionLayerSaved)>> {
        match self.fused_layer(x, 0) {
            Some(layer) => Ok(Some(dot_attention_layer_saved(
                x, &self.qkv, &self.o, &layer,
            )?)),
            None => Ok(None),
        }
    }

    /// `(dx, [d qkv, d o])` from `dy` for a forward of [`DotAttention::forward_saved`].
    pub fn grads(&self, saved: AttentionLayerSaved, dy: &Tensor) -> Result<(Tensor, [Tensor; 2])> {
        let (dx, dqkv, dout) = attention_layer_grads(saved, dy)?;
        Ok((dx, [dqkv, dout]))
    }

    /// `[qkv, o]`, in the order of [`DotAttention::grads`].
    pub fn weights(&self) -> [&Tensor; 2] {
        [&self.qkv, &self.o]
    }
}

/// The fused op where it has a kernel (the CPU; CUDA for bf16/f32 with head dims up to 256 when
/// simplex-attn is built with `cuda`); elsewhere the op's slow twin, which materializes the
/// `[B, Hq, Nq, Nk]` scores.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, spec: &DotSpec) -> Result<Tensor> {
    if has_fused_kernel(q.device(), q.dtype(), q.dim(3)?, v.dim(3)?) {
        Ok(dot_attn(q, k, v, spec)?.o)
    } else {
        Ok(dot_attn_slow(q, k, v, spec)?.0)
    }
}
