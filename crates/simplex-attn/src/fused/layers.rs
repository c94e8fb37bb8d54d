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

/// A tensor over an owned storage.
fn tensor(s: Storage, shape: Shape) -> Tensor {
    Tensor::from_storage(s, shape, candle_core::op::BackpropOp::none(), false)
}

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
    let dtype = x.dtype();
    let compute = compute_dtype(op, x)?;
    let up = |t: &Tensor| t.to_dtype(compute)?.contiguous();
    let mlp = Mlp {
        h: h2 / 2,
        saved: slot(),
    };
    up(x)?
        .apply_op3(&up(w_gate_up)?, &up(w_down)?, mlp)?
        .to_dtype(dtype)
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
        let (gu, h) = take(&self.saved, "the MLP's saved activations")?;
        let (rows, c) = rows_cols("swiglu_mlp backward", x.shape())?;
        let dy = dy.to_dtype(x.dtype())?.reshape((rows, c))?;
        let h2 = h.reshape((rows, self.h))?;
        let dh = dy.matmul(wd)?;
        let dwd = dy.t()?.matmul(&h2)?;
        let dgu = swiglu_grad(&gu, &dh.reshape(h.shape())?, self.h)?;
        let dgu2 = dgu.reshape((rows, 2 * self.h))?;
        let dx = dgu2.matmul(wgu)?.reshape(x.shape())?;
        let dwgu = dgu2.t()?.matmul(&x.reshape((rows, c))?)?;
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
    let (_, _, c) = x.dims3().map_err(|_| {
        candle_core::Error::Msg(format!("{op}: x {:?} must be [B, N, C]", x.dims()))
    })?;
    let (hq, d) = (layer.heads_q, layer.head_dim);
    check_weights(op, x, [("w_qkv", w_qkv, c), ("w_o", w_o, hq * d)])?;
    let want = (hq + 2 * layer.heads_kv) * d;
    if w_qkv.dim(0)? != want || w_o.dim(0)? != c {
        candle_core::bail!(
            "{op}: w_qkv {:?} must be [{want}, {c}] and w_o {:?} [{c}, {}]",
            w_qkv.dims(),
            w_o.dims(),
            hq * d
        )
    }
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
    call: DotAttnCall,
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
        let (b, n, c) = x.dims3()?;
        let rows = b * n;
        let o = s.call.o();
        let (_, _, hq, d) = o.dims4()?;
        let dy = dy.to_dtype(x.dtype())?.reshape((rows, c))?;
        let do2 = dy.matmul(wo)?;
        let dwo = dy.t()?.matmul(&o.reshape((rows, hq * d))?)?;
        let (dq, dk, dv) = s.call.backward(&do2.reshape(o.shape())?)?;
        // the merge takes its device and dtype from the tensor it is given
        let dqkv = s.split.merge(&dy, vec![Some(dq), Some(dk), Some(dv)])?;
        let w = dqkv.dim(2)?;
        let dqkv2 = dqkv.reshape((rows, w))?;
        let dx = dqkv2.matmul(wqkv)?.reshape(x.shape())?;
        let dwqkv = dqkv2.t()?.matmul(&x.reshape((rows, c))?)?;
        Ok((Some(dx), Some(dwqkv), Some(dwo)))
    }
}
