//! Dot-product attention blocks (D: whole prefix, L: sliding window; causal, or bidirectional
//! in an encoder), with RoPE unless the config turns it off:
//!
//! ```text
//! x [B, N, C] -> q [B, N, Hq, Dh], k, v [B, N, Hkv, Dh]     (Wq, Wk, Wv; RoPE on q and k)
//! o = dot_attn(q, k, v)   [B, N, Hq, Dh]  -> [B, N, Hq*Dh] -> Wo -> [B, N, C]
//! ```
//! With a cache, the keys and values of earlier positions are read from ring buffers and the
//! new queries sit at the end of the key sequence (the op's `Nk > Nq` case).

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use simplex_attn::dot::{dot_attn_slow, has_fused_kernel};
use simplex_attn::{dot_attn, DotSpec};

use crate::cache::LayerCache;
use crate::config::{Config, Heads, LayerKind};
use crate::error::{ModelError, Result};
use crate::init::{linear, residual_std, STD};
use crate::rope::Rope;

/// One D or L attention sublayer.
#[derive(Debug, Clone)]
pub struct DotAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: Heads,
    spec: DotSpec,
    rope: Option<Rope>,
}

impl DotAttention {
    /// Projections `q [Hq*Dh, C]`, `k, v [Hkv*Dh, C]`, `o [C, Hq*Dh]` under `vb`.
    pub fn new(cfg: &Config, kind: LayerKind, rope: Rope, vb: VarBuilder) -> Result<Self> {
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
            q: linear(c, h.q * h.dim, STD, vb.pp("q"))?,
            k: linear(c, h.kv * h.dim, STD, vb.pp("k"))?,
            v: linear(c, h.kv * h.dim, STD, vb.pp("v"))?,
            o: linear(h.q * h.dim, c, residual_std(cfg.n_layers()), vb.pp("o"))?,
            heads: h,
            spec,
            rope: cfg.rope.then_some(rope),
        })
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
        let mut q = self.q.forward(x)?.reshape((b, n, hq, dim))?;
        let mut k = self.k.forward(x)?.reshape((b, n, hkv, dim))?;
        if let Some(rope) = &self.rope {
            (q, k) = (rope.apply(&q, pos)?, rope.apply(&k, pos)?);
        }
        let v = self.v.forward(x)?.reshape((b, n, hkv, dim))?;
        let o = match cache {
            None => attend(&q, &k, &v, &self.spec)?,
            Some(LayerCache::Dot { k: kc, v: vc }) => {
                let (k, v) = (kc.extend(&k)?, vc.extend(&v)?);
                attend(&q, &k, &v, &self.spec)?
            }
            Some(_) => {
                return Err(ModelError::Input(
                    "a dot-product layer got a 2-simplicial cache".into(),
                ))
            }
        };
        Ok(self.o.forward(&o.reshape((b, n, hq * dim))?)?)
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
