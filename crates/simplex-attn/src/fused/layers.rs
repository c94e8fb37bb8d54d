//! Whole sublayers as one op each, whose backward is written out (no autograd inside):
//!
//! ```text
//! swiglu_mlp:           y = swiglu(x W_gu^T) W_down^T
//!   backward            dh = dy W_down,  dW_down = dy^T h,  dgu = swiglu'(gu, dh),
//!                       dx = dgu W_gu,   dW_gu = dgu^T x
//! dot_attention_layer:  the attention sublayer (attention_layer.rs)
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

use super::{compute_dtype, put, rows_cols, same_as, slot, swiglu, take};
use super::{swiglu_grad, swiglu_no_grad, Slot};

/// `x [.., C] @ w^T` for `w [O, C]`: one matrix product over all leading positions
/// (`[T, C] @ [C, O]`, so the weight's gradient is one product too); differentiable.
pub fn project(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, c) = rows_cols("project", x.shape())?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    x.reshape((rows, c))?.matmul(&w.t()?)?.reshape(dims)
}

/// `x [.., K] @ w^T` (`w [N, K]`) at the storage level: an owned result for an op's forward.
pub(super) fn project_storage<S: BackendStorage>(
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

pub(super) fn check_weights(
    op: &str,
    x: &Tensor,
    ws: [(&str, &Tensor, usize); 2],
) -> candle_core::Result<()> {
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
