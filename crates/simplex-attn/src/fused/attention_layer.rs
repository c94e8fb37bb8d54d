//! The attention sublayer as one op whose backward is written out (no autograd inside), for
//! dot-product and 2-simplicial attention:
//!
//! ```text
//! dot_attention_layer:  q, k, v = split + RoPE (x W_qkv^T);  o = attn(q, k, v);  y = o W_o^T
//!   backward            do = dy W_o,  dW_o = dy^T o,  dq, dk, dv = attn'(do),
//!                       dqkv = merge + inverse RoPE (dq, dk, dv),  dx = dqkv W_qkv,
//!                       dW_qkv = dqkv^T x
//! ```
//! Why one op: layers.rs says (candle adds every gradient edge into a fresh zero tensor). The
//! forward keeps the heads and the attention output for the backward;
//! `dot_attention_layer_twin` is the composed version, the reference of the tests.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::heads::{split_no_grad, HeadSplit};
use super::layers::{check_weights, project, project_storage, unwrap_storage};
use super::owned_tensor as tensor;
use super::{compute_dtype, put, slot, split_heads, take, HeadPart};
use super::{RopeTables, Slot};
use crate::dot::{dot_attn, DotAttnCall, DotSpec};
use crate::{AttnSpec, SimplicialAttnCall};

/// One dot-product attention sublayer's shape and options.
#[derive(Debug, Clone)]
pub struct DotLayer {
    /// Query heads.
    pub heads_q: usize,
    /// Key/value heads.
    pub heads_kv: usize,
    /// Head dim.
    pub head_dim: usize,
    /// Causal or bidirectional, window, scale.
    pub spec: DotSpec,
    /// Rotary tables (applied to q and k) and the position of the first row, if any.
    pub rope: Option<(RopeTables, usize)>,
}

impl DotLayer {
    fn parts(&self) -> [HeadPart; 3] {
        let rot = self.rope.is_some();
        let part = |heads, rotate| HeadPart { heads, rotate };
        [
            part(self.heads_q, rot),
            part(self.heads_kv, rot),
            part(self.heads_kv, false),
        ]
    }

    fn rope(&self) -> Option<(&RopeTables, usize)> {
        self.rope.as_ref().map(|(t, p)| (t, *p))
    }
}

/// Dot-product attention as one op: `x [B, N, C]`, `w_qkv [(Hq + 2 Hkv) D, C]` (the q, k, v
/// rows), `w_o [C, Hq D]`; RoPE on q and k when the layer has tables. Differentiable in all
/// three.
pub fn dot_attention_layer(
    x: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    layer: &DotLayer,
) -> candle_core::Result<Tensor> {
    let op = "dot_attention_layer";
    check_attention_layer(op, x, w_qkv, w_o, layer.heads())?;
    let dtype = x.dtype();
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.to_dtype(compute)?.contiguous();
    let attn = Attention {
        layer: layer.clone(),
        saved: slot(),
    };
    up(x)?
        .apply_op3(&up(w_qkv)?, &up(w_o)?, attn)?
        .to_dtype(dtype)
}

/// What [`dot_attention_layer_saved`] and [`simplicial_attention_layer_saved`] keep for
/// [`attention_layer_grads`]: the sublayer's inputs in the compute dtype, the head split and
/// the attention call.
pub struct AttentionLayerSaved {
    x: Tensor,
    w: [Tensor; 2],
    attn: AttnSaved,
}

/// The forward of [`dot_attention_layer`] outside autograd (no graph is recorded), for
/// callers that run the backward themselves with [`attention_layer_grads`].
pub fn dot_attention_layer_saved(
    x: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    layer: &DotLayer,
) -> candle_core::Result<(Tensor, AttentionLayerSaved)> {
    let op = "dot_attention_layer";
    check_attention_layer(op, x, w_qkv, w_o, layer.heads())?;
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.detach().to_dtype(compute)?.contiguous();
    let (xc, wq, wo) = (up(x)?, up(w_qkv)?, up(w_o)?);
    let saved = slot();
    let attn = Attention {
        layer: layer.clone(),
        saved: saved.clone(),
    };
    let y = xc.apply_op3(&wq, &wo, attn)?;
    let attn = take(&saved, "the attention layer's saved activations")?;
    let saved = AttentionLayerSaved {
        x: xc,
        w: [wq, wo],
        attn,
    };
    Ok((y.to_dtype(x.dtype())?, saved))
}

/// `(dx, dw_qkv, dw_o)` of the sublayer [`dot_attention_layer_saved`] or
/// [`simplicial_attention_layer_saved`] ran, from `dy` (outside autograd), in the dtype of `dy`.
pub fn attention_layer_grads(
    saved: AttentionLayerSaved,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dtype = dy.dtype();
    let [wq, wo] = &saved.w;
    let (dx, dwq, dwo) = attention_backward(saved.attn, &saved.x, wq, wo, dy)?;
    Ok((
        dx.to_dtype(dtype)?,
        dwq.to_dtype(dtype)?,
        dwo.to_dtype(dtype)?,
    ))
}

/// The 2-simplicial attention sublayer outside autograd, for callers that run the backward
/// themselves with [`attention_layer_grads`]: `x [B, N, C]`, `w_qkv [(Hq + 4 Hkv) D, C]` (the
/// q, k1, k2, v1, v2 rows), `w_o [C, Hq D]`; `y = simplicial_attn(split(x W_qkv^T)) W_o^T`.
/// `None` where the attention call needs more than the kernels
/// ([`SimplicialAttnCall::forward`]: the determinant lift, biases).
pub fn simplicial_attention_layer_saved(
    x: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    (heads_q, heads_kv, head_dim): (usize, usize, usize),
    spec: &AttnSpec,
) -> candle_core::Result<Option<(Tensor, AttentionLayerSaved)>> {
    let op = "simplicial_attention_layer";
    let heads = (heads_q, heads_q + 4 * heads_kv, head_dim);
    let (b, n, _) = check_attention_layer(op, x, w_qkv, w_o, heads)?;
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.detach().to_dtype(compute)?.contiguous();
    let (xc, wq, wo) = (up(x)?, up(w_qkv)?, up(w_o)?);
    let qkv = project(&xc, &wq)?;
    let part = |heads| HeadPart {
        heads,
        rotate: false,
    };
    let kv = part(heads_kv);
    let (p, split) = split_no_grad(&qkv, head_dim, &[part(heads_q), kv, kv, kv, kv], None)?;
    drop(qkv);
    let Some(call) = SimplicialAttnCall::forward(&p[0], &p[1], &p[2], &p[3], &p[4], spec)? else {
        return Ok(None);
    };
    let y = project(&call.o().reshape((b, n, heads_q * head_dim))?, &wo)?;
    let saved = AttentionLayerSaved {
        x: xc,
        w: [wq, wo],
        attn: AttnSaved {
            split,
            call: LayerCall::Simplicial(call),
        },
    };
    Ok(Some((y.to_dtype(x.dtype())?, saved)))
}

/// An attention sublayer's backward: `(dx, dW_qkv, dW_o)` from its input, weights, saved
/// split and attention call, and `dy`.
fn attention_backward(
    s: AttnSaved,
    x: &Tensor,
    wqkv: &Tensor,
    wo: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (b, n, c) = x.dims3()?;
    let rows = b * n;
    let o = s.call.o();
    let (_, _, hq, d) = o.dims4()?;
    let dy = dy.to_dtype(x.dtype())?.reshape((rows, c))?;
    let do2 = dy.matmul(wo)?;
    let dwo = dy.t()?.matmul(&o.reshape((rows, hq * d))?)?;
    let parts = s.call.backward(&do2.reshape(o.shape())?)?;
    // the merge takes its device and dtype from the tensor it is given
    let dqkv = s.split.merge(&dy, parts.into_iter().map(Some).collect())?;
    let w = dqkv.dim(2)?;
    let dqkv2 = dqkv.reshape((rows, w))?;
    let dx = dqkv2.matmul(wqkv)?.reshape(x.shape())?;
    let dwqkv = dqkv2.t()?.matmul(&x.reshape((rows, c))?)?;
    Ok((dx, dwqkv, dwo))
}

/// Checks an attention sublayer's input `x [B, N, C]` and weights against its shape: `w_qkv`
/// of `qkv_heads` head blocks (q and every key/value part) of `head_dim` rows, `w_o [C, Hq D]`;
/// returns `(B, N, C)`.
fn check_attention_layer(
    op: &str,
    x: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    (heads_q, qkv_heads, head_dim): (usize, usize, usize),
) -> candle_core::Result<(usize, usize, usize)> {
    let (b, n, c) = x.dims3().map_err(|_| {
        candle_core::Error::Msg(format!("{op}: x {:?} must be [B, N, C]", x.dims()))
    })?;
    let (hq, d) = (heads_q, head_dim);
    check_weights(op, x, [("w_qkv", w_qkv, c), ("w_o", w_o, hq * d)])?;
    let want = qkv_heads * d;
    if w_qkv.dim(0)? != want || w_o.dim(0)? != c {
        candle_core::bail!(
            "{op}: w_qkv {:?} must be [{want}, {c}] and w_o {:?} [{c}, {}]",
            w_qkv.dims(),
            w_o.dims(),
            hq * d
        )
    }
    Ok((b, n, c))
}

impl DotLayer {
    /// `(Hq, Hq + 2 Hkv, D)`: the shape [`check_attention_layer`] checks.
    fn heads(&self) -> (usize, usize, usize) {
        let (hq, hkv) = (self.heads_q, self.heads_kv);
        (hq, hq + 2 * hkv, self.head_dim)
    }
}

/// The composed sublayer (a product, [`split_heads`], `dot_attn`, a product; autograd): the
/// reference.
pub fn dot_attention_layer_twin(
    x: &Tensor,
    w_qkv: &Tensor,
    w_o: &Tensor,
    layer: &DotLayer,
) -> candle_core::Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    let qkv = split_heads(
        &project(x, w_qkv)?,
        layer.head_dim,
        &layer.parts(),
        layer.rope(),
    )?;
    let o = dot_attn(&qkv[0], &qkv[1], &qkv[2], &layer.spec)?.o;
    project(&o.reshape((b, n, layer.heads_q * layer.head_dim))?, w_o)
}

/// What the attention op's forward keeps: the split (for its backward), the attention call.
struct AttnSaved {
    split: HeadSplit,
    call: LayerCall,
}

/// The attention call of a sublayer.
enum LayerCall {
    Dot(DotAttnCall),
    Simplicial(SimplicialAttnCall),
}

impl LayerCall {
    fn o(&self) -> &Tensor {
        match self {
            LayerCall::Dot(c) => c.o(),
            LayerCall::Simplicial(c) => c.o(),
        }
    }

    /// The gradients of the call's inputs (the split's parts, in order) for `dout`.
    fn backward(&self, dout: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        Ok(match self {
            LayerCall::Dot(c) => {
                let (dq, dk, dv) = c.backward(dout)?;
                vec![dq, dk, dv]
            }
            LayerCall::Simplicial(c) => c.backward(dout)?.to_vec(),
        })
    }
}

struct Attention {
    layer: DotLayer,
    saved: Slot<AttnSaved>,
}

impl Attention {
    fn forward<S: BackendStorage + 'static>(
        &self,
        (x, lx): (&S, &Layout),
        (wqkv, lw): (&S, &Layout),
        (wo, lwo): (&S, &Layout),
        wrap: impl Fn(S) -> Storage,
    ) -> candle_core::Result<(S, Shape)> {
        let (qkv, qkv_shape) = project_storage(x, lx, wqkv, lw)?;
        let qkv = tensor(wrap(qkv), qkv_shape);
        let (parts, split) = split_no_grad(
            &qkv,
            self.layer.head_dim,
            &self.layer.parts(),
            self.layer.rope(),
        )?;
        drop(qkv);
        let call = DotAttnCall::forward(&parts[0], &parts[1], &parts[2], &self.layer.spec)?;
        let (b, n, hq, d) = call.o().dims4()?;
        let o = call.o().reshape((b, n, hq * d))?;
        let out = {
            let (os, lo) = o.storage_and_layout();
            project_storage(unwrap_storage::<S>(&os)?, lo, wo, lwo)?
        };
        let call = LayerCall::Dot(call);
        put(&self.saved, AttnSaved { split, call })?;
        Ok(out)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-dot-attention-layer"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        wo: &CpuStorage,
        lwo: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, lx), (w, lw), (wo, lwo), Storage::Cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        wo: &candle_core::CudaStorage,
        lwo: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.forward((x, lx), (w, lw), (wo, lwo), Storage::Cuda)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wqkv: &Tensor,
        wo: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = take(&self.saved, "the attention layer's saved activations")?;
        let (dx, dwqkv, dwo) = attention_backward(s, x, wqkv, wo, dy)?;
        Ok((Some(dx), Some(dwqkv), Some(dwo)))
    }
}
