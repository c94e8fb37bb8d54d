//! Whole sublayers as one op each, whose backward is written out (no autograd inside):
//!
//! ```text
//! swiglu_mlp:           y = swiglu(x W_gu^T) W_down^T
//!   backward            dh = dy W_down,  dW_down = dy^T h,  dgu = swiglu'(gu, dh),
//!                       dx = dgu W_gu,   dW_gu = dgu^T x
//! dot_attention_layer:  q, k, v = split + RoPE (x W_qkv^T);  o = attn(q, k, v);  y = o W_o^T
//!   backward            do = dy W_o,  dW_o = dy^T o,  dq, dk, dv = attn'(do),
//!                       dqkv = merge + inverse RoPE (dq, dk, dv),  dx = dqkv W_qkv,
//!                       dW_qkv = dqkv^T x
//! ```
//! Why: candle 0.11's backward adds every gradient into a fresh zero tensor, once per edge of
//! the graph (a reshape, a transpose and each input of each op is an edge). Built from separate
//! ops, an MLP and an attention sublayer are about twenty such edges on activations as large as
//! `[tokens, 2H]`; as one op each they are one edge (x) plus the weights. The forward keeps
//! the intermediates (gu, h; the heads and the attention output) for the backward, as the
//! composed version's graph does. `*_twin` are the composed versions, the references of the
//! tests. Inputs `[.., C]` (contiguous), weights `[out, in]`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::heads::{split_no_grad, HeadSplit};
use super::{compute_dtype, put, rows_cols, same_as, slot, split_heads, swiglu, take, HeadPart};
use super::{swiglu_grad, swiglu_no_grad};
use super::{RopeTables, Slot};
use crate::dot::{dot_attn, DotAttnCall, DotSpec};
use crate::{AttnSpec, SimplicialAttnCall};

/// `x [.., C] @ w^T` for `w [O, C]`: one matrix product over all leading positions
/// (`[T, C] @ [C, O]`, so the weight's gradient is one product too); differentiable.
pub fn project(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, c) = rows_cols("project", x.shape())?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    x.reshape((rows, c))?.matmul(&w.t()?)?.reshape(dims)
}

/// `x [.., K] @ w^T` (`w [N, K]`) at the storage level: an owned result for an op's forward.
fn project_storage<S: BackendStorage>(
    x: &S,
    lx: &Layout,
    w: &S,
    lw: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let (rows, k) = rows_cols("project", lx.shape())?;
    let (n, kw) = lw.shape().dims2()?;
    if kw != k {
        candle_core::bail!(
            "project: x {:?} and w {:?} do not fit",
            lx.shape(),
            lw.shape()
        )
    }
    let lx2 = Layout::contiguous_with_offset((rows, k), lx.start_offset());
    let lwt = lw.transpose(0, 1)?;
    let out = x.matmul(w, (1, rows, n, k), &lx2, &lwt)?;
    let mut dims = lx.shape().dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Ok((out, Shape::from(dims)))
}

use super::owned_tensor as tensor;

fn check_weights(op: &str, x: &Tensor, ws: [(&str, &Tensor, usize); 2]) -> candle_core::Result<()> {
    for (name, w, cols) in ws {
        if w.rank() != 2 || w.dim(1)? != cols {
            candle_core::bail!("{op}: {name} {:?} must be [_, {cols}]", w.dims())
        }
        same_as(op, name, w, x)?;
    }
    Ok(())
}

/// The SwiGLU MLP `swiglu(x W_gu^T) W_down^T` as one op: `x [.., C]`, `w_gate_up [2H, C]` (the
/// gate rows, then the up rows), `w_down [C, H]`; differentiable in all three.
pub fn swiglu_mlp(x: &Tensor, w_gate_up: &Tensor, w_down: &Tensor) -> candle_core::Result<Tensor> {
    let op = "swiglu_mlp";
    let h = check_mlp(op, x, w_gate_up, w_down)?;
    let dtype = x.dtype();
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.to_dtype(compute)?.contiguous();
    let mlp = Mlp { h, saved: slot() };
    up(x)?
        .apply_op3(&up(w_gate_up)?, &up(w_down)?, mlp)?
        .to_dtype(dtype)
}

/// The hidden size H of an MLP with these weights, or an error naming the shape that does not
/// fit.
fn check_mlp(
    op: &str,
    x: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
) -> candle_core::Result<usize> {
    let (_, c) = rows_cols(op, x.shape())?;
    let h2 = w_gate_up.dim(0)?;
    if h2 % 2 != 0 {
        candle_core::bail!(
            "{op}: w_gate_up {:?} needs an even row count",
            w_gate_up.dims()
        )
    }
    check_weights(
        op,
        x,
        [("w_gate_up", w_gate_up, c), ("w_down", w_down, h2 / 2)],
    )?;
    if w_down.dim(0)? != c {
        candle_core::bail!("{op}: w_down {:?} must be [{c}, {}]", w_down.dims(), h2 / 2)
    }
    Ok(h2 / 2)
}

/// What [`swiglu_mlp_saved`] keeps for [`swiglu_mlp_grads`]: the op's inputs and
/// intermediates in the compute dtype.
pub struct MlpSaved {
    h: usize,
    x: Tensor,
    w: [Tensor; 2],
    gu_h: (Tensor, Tensor),
}

/// The forward of [`swiglu_mlp`] outside autograd (no graph is recorded), for callers that
/// run the backward themselves with [`swiglu_mlp_grads`].
pub fn swiglu_mlp_saved(
    x: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
) -> candle_core::Result<(Tensor, MlpSaved)> {
    let op = "swiglu_mlp";
    let h = check_mlp(op, x, w_gate_up, w_down)?;
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.detach().to_dtype(compute)?.contiguous();
    let (xc, wguc, wdc) = (up(x)?, up(w_gate_up)?, up(w_down)?);
    let saved = slot();
    let mlp = Mlp {
        h,
        saved: saved.clone(),
    };
    let y = xc.apply_op3(&wguc, &wdc, mlp)?;
    let gu_h = take(&saved, "the MLP's saved activations")?;
    let saved = MlpSaved {
        h,
        x: xc,
        w: [wguc, wdc],
        gu_h,
    };
    Ok((y.to_dtype(x.dtype())?, saved))
}
/// `(dx, dw_gate_up, dw_down)` of the MLP [`swiglu_mlp_saved`] ran, from `dy` (outside
/// autograd), in the dtype of `dy`.
pub fn swiglu_mlp_grads(
    saved: MlpSaved,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dtype = dy.dtype();
    let [wgu, wd] = &saved.w;
    let (dx, dwgu, dwd) = mlp_backward(saved.h, saved.gu_h, &saved.x, wgu, wd, dy)?;
    Ok((
        dx.to_dtype(dtype)?,
        dwgu.to_dtype(dtype)?,
        dwd.to_dtype(dtype)?,
    ))
}

/// The MLP's backward: `(dx, dW_gu, dW_down)` from its input, weights, saved `(gu, h)` and
/// `dy`.
fn mlp_backward(
    hidden: usize,
    (gu, h): (Tensor, Tensor),
    x: &Tensor,
    wgu: &Tensor,
    wd: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (rows, c) = rows_cols("swiglu_mlp backward", x.shape())?;
    let dy = dy.to_dtype(x.dtype())?.reshape((rows, c))?;
    let h2 = h.reshape((rows, hidden))?;
    let dh = dy.matmul(wd)?;
    let dwd = dy.t()?.matmul(&h2)?;
    let dgu = swiglu_grad(&gu, &dh.reshape(h.shape())?, hidden)?;
    let dgu2 = dgu.reshape((rows, 2 * hidden))?;
    let dx = dgu2.matmul(wgu)?.reshape(x.shape())?;
    let dwgu = dgu2.t()?.matmul(&x.reshape((rows, c))?)?;
    Ok((dx, dwgu, dwd))
}

/// The composed SwiGLU MLP (a product, [`swiglu`], a product; autograd): the reference.
pub fn swiglu_mlp_twin(
    x: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
) -> candle_core::Result<Tensor> {
    project(&swiglu(&project(x, w_gate_up)?)?, w_down)
}

/// The MLP op; the forward leaves `(gu, h)` for the backward.
struct Mlp {
    h: usize,
    saved: Slot<(Tensor, Tensor)>,
}

impl Mlp {
    fn forward<S: BackendStorage + 'static>(
        &self,
        (x, lx): (&S, &Layout),
        (wgu, lwgu): (&S, &Layout),
        (wd, lwd): (&S, &Layout),
        wrap: impl Fn(S) -> Storage,
    ) -> candle_core::Result<(S, Shape)> {
        let (gu, gu_shape) = project_storage(x, lx, wgu, lwgu)?;
        let gu = tensor(wrap(gu), gu_shape);
        let h = swiglu_no_grad(&gu, self.h)?;
        let out = {
            let (hs, lh) = h.storage_and_layout();
            let hs = unwrap_storage::<S>(&hs)?;
            project_storage(hs, lh, wd, lwd)?
        };
        put(&self.saved, (gu, h))?;
        Ok(out)
    }
}

/// The backend storage inside a storage of the same device kind.
pub(crate) fn unwrap_storage<S: BackendStorage + 'static>(s: &Storage) -> candle_core::Result<&S> {
    let any: &dyn std::any::Any = match s {
        Storage::Cpu(c) => c,
        #[cfg(feature = "cuda")]
        Storage::Cuda(c) => c,
        _ => candle_core::bail!("fused layer: unsupported device"),
    };
    any.downcast_ref::<S>()
        .ok_or_else(|| candle_core::Error::Msg("fused layer: inputs on different devices".into()))
}

impl CustomOp3 for Mlp {
    fn name(&self) -> &'static str {
        "fused-swiglu-mlp"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        wgu: &CpuStorage,
        lwgu: &Layout,
        wd: &CpuStorage,
        lwd: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, lx), (wgu, lwgu), (wd, lwd), Storage::Cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        wgu: &candle_core::CudaStorage,
        lwgu: &Layout,
        wd: &candle_core::CudaStorage,
        lwd: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.forward((x, lx), (wgu, lwgu), (wd, lwd), Storage::Cuda)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wgu: &Tensor,
        wd: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = take(&self.saved, "the MLP's saved activations")?;
        let (dx, dwgu, dwd) = mlp_backward(self.h, saved, x, wgu, wd, dy)?;
        Ok((Some(dx), Some(dwgu), Some(dwd)))
    }
}

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
