//! 2-simplicial attention blocks (S layers; causal windows, or `|i - j| < w1, |i - k| < w2` in a
//! bidirectional encoder):
//!
//! ```text
//! x [B, N, C] -> q [B, N, Hq, Dh], k1, k2, v1, v2 [B, N, Hkv, Dh]     (one product with W_qkv,
//!                                                                      then the fused split)
//! o = simplicial_attn(q, k1, k2, v1, v2; w1, w2)  [B, N, Hq, Dh] -> Wo -> [B, N, C]
//! ```
//! No RoPE (the trilinear form is not rotation invariant); the determinant variant can rotate
//! 3-chunks by position instead (`simplicial.rotate`, see `rope.rs`).
//!
//! Cached decoding keeps ring buffers of the last w1 (k1, v1) and w2 (k2, v2) positions. The
//! first call on an empty cache runs the fused op on the whole prompt; later calls compute the
//! pair attention of their few queries with plain tensor ops over the cached windows
//! ([`simplicial_step`]).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use simplex_attn::fused::{
    attention_layer_grads, project, simplicial_attention_layer_saved, split_heads,
    AttentionLayerSaved, HeadPart,
};
use simplex_attn::{determinant, simplicial_attn, AttnSpec, Kernels, Variant};

use crate::cache::LayerCache;
use crate::config::{Config, Heads, SimplicialVariant};
use crate::error::{ModelError, Result};
use crate::init::{linear_weight, residual_std, STD};
use crate::rope::ChunkRotation;

/// One S attention sublayer.
#[derive(Debug, Clone)]
pub struct SimplicialAttention {
    qkv: Tensor,
    o: Tensor,
    heads: Heads,
    spec: AttnSpec,
    rotation: Option<ChunkRotation>,
}

impl SimplicialAttention {
    /// Projections `qkv [(Hq + 4 Hkv) * Dh, C]` (the q, k1, k2, v1, v2 rows, in that order) and
    /// `o [C, Hq*Dh]` under `vb`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.simplicial_heads();
        let s = &cfg.simplicial;
        let c = cfg.d_model;
        let rotation = if s.rotate && s.variant == SimplicialVariant::Determinant {
            Some(ChunkRotation::new(
                h.dim,
                cfg.max_seq_len,
                cfg.rope_theta,
                vb.dtype(),
                vb.device(),
            )?)
        } else {
            None
        };
        Ok(SimplicialAttention {
            qkv: linear_weight(c, (h.q + 4 * h.kv) * h.dim, STD, vb.pp("qkv"))?,
            o: linear_weight(h.q * h.dim, c, residual_std(cfg.n_layers()), vb.pp("o"))?,
            heads: h,
            spec: if cfg.bidirectional {
                AttnSpec::bidirectional().with_windows(Some(s.w1), Some(s.w2))
            } else {
                AttnSpec::causal(s.w1, s.w2)
            }
            .with_variant(s.variant.into()),
            rotation,
        })
    }

    /// Runs the attention through the CUDA kernels `kernels` chooses (the default: automatic).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.spec = self.spec.with_kernels(kernels);
    }

    /// `x [B, N, C]` at positions `pos..pos+N`; with a cache, attends to the cached windows too
    /// and appends the new keys and values.
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
        let part = |heads| HeadPart {
            heads,
            rotate: false,
        };
        let parts = [part(hq), part(hkv), part(hkv), part(hkv), part(hkv)];
        let mut p = split_heads(&project(x, &self.qkv)?, dim, &parts, None)?.into_iter();
        let mut next = || p.next().expect("five parts");
        let (mut q, mut k1, mut k2, v1, v2) = (next(), next(), next(), next(), next());
        if let Some(rot) = &self.rotation {
            (q, k1, k2) = (
                rot.apply(&q, pos)?,
                rot.apply(&k1, pos)?,
                rot.apply(&k2, pos)?,
            );
        }
        let o = match cache {
            None => simplicial_attn(&q, &k1, &k2, &v1, &v2, &self.spec)?.o,
            Some(LayerCache::Simplicial {
                k1: c1,
                v1: cv1,
                k2: c2,
                v2: cv2,
            }) => {
                if c1.is_empty() {
                    let o = simplicial_attn(&q, &k1, &k2, &v1, &v2, &self.spec)?.o;
                    for (ring, x) in [(c1, &k1), (cv1, &v1), (c2, &k2), (cv2, &v2)] {
                        ring.push(x)?;
                    }
                    o
                } else {
                    let (k1, v1) = (c1.extend(&k1)?, cv1.extend(&v1)?);
                    let (k2, v2) = (c2.extend(&k2)?, cv2.extend(&v2)?);
                    simplicial_step(&q, &k1, &k2, &v1, &v2, &self.spec)?
                }
            }
            Some(_) => {
                return Err(ModelError::Input(
                    "a 2-simplicial layer got a dot-product cache".into(),
                ))
            }
        };
        Ok(project(&o.reshape((b, n, hq * dim))?, &self.o)?)
    }

    /// Whether [`SimplicialAttention::forward_saved`] runs the sublayer: trilinear logits
    /// without position rotation (the kernels' call as it is).
    pub fn has_written_out_backward(&self) -> bool {
        self.spec.variant == Variant::Trilinear && self.rotation.is_none()
    }

    /// The training forward (no cache) outside autograd, with what
    /// [`SimplicialAttention::grads`] needs; `None` where the sublayer needs autograd (the
    /// determinant lift, rotation).
    pub fn forward_saved(&self, x: &Tensor) -> Result<Option<(Tensor, AttentionLayerSaved)>> {
        if !self.has_written_out_backward() {
            return Ok(None);
        }
        let Heads { q, kv, dim } = self.heads;
        Ok(simplicial_attention_layer_saved(
            x,
            &self.qkv,
            &self.o,
            (q, kv, dim),
            &self.spec,
        )?)
    }

    /// `(dx, [d qkv, d o])` from `dy` for a forward of
    /// [`SimplicialAttention::forward_saved`].
    pub fn grads(&self, saved: AttentionLayerSaved, dy: &Tensor) -> Result<(Tensor, [Tensor; 2])> {
        let (dx, dqkv, dout) = attention_layer_grads(saved, dy)?;
        Ok((dx, [dqkv, dout]))
    }

    /// `[qkv, o]`, in the order of [`SimplicialAttention::grads`].
    pub fn weights(&self) -> [&Tensor; 2] {
        [&self.qkv, &self.o]
    }
}

/// `[B, L, Hkv, X]` to `[B, Hq, L, X]`, query head `h` reading K/V head `h / G`.
fn to_query_heads(x: &Tensor, group: usize) -> Result<Tensor> {
    let (b, l, hkv, w) = x.dims4()?;
    Ok(x.transpose(1, 2)?
        .unsqueeze(2)?
        .expand((b, hkv, group, l, w))?
        .reshape((b, hkv * group, l, w))?)
}

/// 2-simplicial attention of the last `n` positions with plain tensor ops: `q [B, n, Hq, D]`,
/// `k1, v1 [B, L1, Hkv, .]`, `k2, v2 [B, L2, Hkv, .]`, the queries being the last `n`
/// positions of both key sequences (causal windows of `spec`). Materializes the `[n, L1, L2]`
/// pair logits per head: for decode steps and short chunks.
pub fn simplicial_step(
    q: &Tensor,
    k1: &Tensor,
    k2: &Tensor,
    v1: &Tensor,
    v2: &Tensor,
    spec: &AttnSpec,
) -> Result<Tensor> {
    let (b, n, hq, d) = q.dims4()?;
    let (l1, l2, hkv, dv) = (k1.dim(1)?, k2.dim(1)?, k1.dim(2)?, v1.dim(3)?);
    let g = hq / hkv;
    let scale = spec.scale_for(d);
    let (q, k1, k2) = match spec.variant {
        Variant::Trilinear => (q.clone(), k1.clone(), k2.clone()),
        Variant::Determinant => determinant::lift(q, k1, k2)?,
    };
    let dk = q.dim(3)?;
    let q = q.transpose(1, 2)?.contiguous()?; // [B, Hq, n, D']
    let (k1, k2) = (to_query_heads(&k1, g)?, to_query_heads(&k2, g)?);
    let (v1, v2) = (to_query_heads(v1, g)?, to_query_heads(v2, g)?);
    // logits[b, h, i, j, k] = scale * sum_l q[i,l] k1[j,l] k2[k,l], as [B, Hq, n*L1, L2]
    let qk1 = q
        .unsqueeze(3)?
        .broadcast_mul(&k1.unsqueeze(2)?)?
        .reshape((b, hq, n * l1, dk))?;
    let logits = (qk1.matmul(&k2.transpose(2, 3)?.contiguous()?)? * scale)?;
    // query i sits at position (L - n + i) of each key sequence
    let win = |w: Option<usize>, l: usize, i: usize, j: usize| {
        let p = l - n + i;
        j <= p && p - j < w.unwrap_or(usize::MAX)
    };
    let mask: Vec<f64> = (0..n)
        .flat_map(|i| {
            (0..l1 * l2).map(move |jk| {
                let (j, k) = (jk / l2, jk % l2);
                if win(spec.w1, l1, i, j) && win(spec.w2, l2, i, k) {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (n, l1 * l2), q.device())?.to_dtype(logits.dtype())?;
    let logits = logits.reshape((b, hq, n, l1 * l2))?.broadcast_add(&mask)?;
    let p = candle_nn::ops::softmax_last_dim(&logits)?.reshape((b, hq, n * l1, l2))?;
    // O[i] = sum_j v1_j ∘ (sum_k P[i,j,k] v2_k)
    let pv2 = p.matmul(&v2.contiguous()?)?.reshape((b, hq, n, l1, dv))?;
    let o = pv2.broadcast_mul(&v1.unsqueeze(2)?)?.sum(3)?; // [B, Hq, n, Dv]
    Ok(o.transpose(1, 2)?.contiguous()?)
}
