//! Cross-entropy of a linear head, computed with its gradients in one pass over row chunks:
//!
//! ```text
//! for each chunk c of rows (at most CHUNK_LOGITS logits at a time):
//!     z = x_c @ w^T                           [rows, V], x's dtype (never all rows at once)
//!     lse_r = log sum_v exp z[r,v];  loss_r = lse_r - z[r, y_r]       (f32, per row)
//!     dz = (softmax(z) - onehot(y)) / n       written over z by the same kernel
//!     dx_c = dz @ w;   dw += dz^T @ x_c       (dw summed in f32, f64 for f64, over chunks)
//! loss = sum_r loss_r / n,   n = the targets that count (all, or those != ignore)
//! ```
//! The forward computes dx and dw, so the op's backward only scales them by the loss's
//! gradient. Rows whose target is the ignore index add nothing to the loss or the gradients.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::{compute_dtype, cpu_data, poisoned, put, slot, take, Slot};
use crate::cpu::Real;

/// At most this many logits (rows x vocabulary) exist at once.
pub const CHUNK_LOGITS: usize = 1 << 25;

/// The targets of a cross-entropy: `[T]` u32 class ids, optionally with an id that marks rows
/// to leave out.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// `[T]` u32.
    pub ids: &'a Tensor,
    /// Rows whose id is this add nothing (e.g. unlabeled positions).
    pub ignore: Option<u32>,
}

/// Mean cross-entropy of the logits `x @ w^T` (`x [T, C]`, `w [V, C]`) against `targets`, as a
/// scalar f32 tensor (f64 for f64 inputs); differentiable in x and w. The `[T, V]` logits exist only a chunk of rows
/// at a time. Targets must be `< V` (or the ignore id): out of range is an error on the CPU and
/// a NaN loss on CUDA.
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    targets: Targets<'_>,
) -> candle_core::Result<Tensor> {
    linear_cross_entropy_chunked(x, w, targets, CHUNK_LOGITS)
}

/// [`linear_cross_entropy`] with at most `chunk_logits` logits at a time (at least one row).
pub fn linear_cross_entropy_chunked(
    x: &Tensor,
    w: &Tensor,
    targets: Targets<'_>,
    chunk_logits: usize,
) -> candle_core::Result<Tensor> {
    let (loss, dx, dw) = linear_cross_entropy_grads(x, w, targets, chunk_logits)?;
    let saved = Saved {
        loss: slot(),
        dx,
        dw,
    };
    put(&saved.loss, loss)?;
    x.apply_op3(w, targets.ids, saved)
}

/// [`linear_cross_entropy_chunked`] outside autograd: `(loss, dx, dw)`, the mean loss (a
/// scalar, f32 or f64 for f64) and its gradients in x's and w's dtypes, for callers that run
/// the backward themselves. No graph is recorded.
pub fn linear_cross_entropy_grads(
    x: &Tensor,
    w: &Tensor,
    targets: Targets<'_>,
    chunk_logits: usize,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (t, _, v) = check(x, w, targets.ids)?;
    let compute = compute_dtype("linear_cross_entropy", x)?;
    let (xc, wc) = (
        x.detach().to_dtype(compute)?.contiguous()?,
        w.detach().to_dtype(compute)?.contiguous()?,
    );
    let ids = targets.ids.contiguous()?;
    let stat = if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let inv = inverse_count(&ids, targets.ignore, t, stat)?;
    let rows = (chunk_logits / v).clamp(1, t);
    let (mut dx_parts, mut dw, mut loss) = (Vec::new(), None::<Tensor>, None::<Tensor>);
    let wt = wc.t()?;
    for r0 in (0..t).step_by(rows) {
        let n = rows.min(t - r0);
        let x_c = xc.narrow(0, r0, n)?;
        let z = x_c.matmul(&wt)?;
        let (dz, loss_c) = xent_rows(&z, &ids.narrow(0, r0, n)?, &inv, targets.ignore)?;
        dx_parts.push(dz.matmul(&wc)?);
        let dw_c = dz.t()?.matmul(&x_c)?.to_dtype(stat)?;
        dw = Some(match dw {
            Some(acc) => (acc + dw_c)?,
            None => dw_c,
        });
        let s = loss_c.sum_all()?;
        loss = Some(match loss {
            Some(acc) => (acc + s)?,
            None => s,
        });
    }
    let dx = if dx_parts.len() == 1 {
        dx_parts.pop().expect("one chunk")
    } else {
        Tensor::cat(&dx_parts, 0)?
    };
    let loss = loss.expect("t > 0").to_dtype(stat)?;
    let loss = loss.broadcast_mul(&inv.reshape(())?)?;
    Ok((
        loss.reshape(())?,
        dx.to_dtype(x.dtype())?,
        dw.expect("t > 0").to_dtype(w.dtype())?,
    ))
}

/// The plain candle-op cross-entropy of `logits [T, V]` (computed in f32, or f64 for f64):
/// the reference. Mean over the rows whose target is not `ignore`.
pub fn cross_entropy_twin(logits: &Tensor, targets: Targets<'_>) -> candle_core::Result<Tensor> {
    let z = if logits.dtype() == DType::F64 {
        logits.clone()
    } else {
        logits.to_dtype(DType::F32)?
    };
    let max = z.max_keepdim(1)?;
    let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
    let ids = targets.ids;
    let keep = match targets.ignore {
        Some(ig) => ids.ne(ig)?,
        None => ids.ones_like()?.to_dtype(DType::U8)?,
    };
    let safe = keep.where_cond(ids, &ids.zeros_like()?)?;
    let picked = z.gather(&safe.unsqueeze(1)?, 1)?;
    let keep_f = keep.to_dtype(z.dtype())?.unsqueeze(1)?;
    let total = ((lse - picked)? * &keep_f)?.sum_all()?;
    let n = keep_f.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    total / n.max(1.0)
}

/// [`cross_entropy_twin`] of `x @ w^T` (the logits in x's dtype, as a linear head gives them).
pub fn linear_cross_entropy_twin(
    x: &Tensor,
    w: &Tensor,
    targets: Targets<'_>,
) -> candle_core::Result<Tensor> {
    check(x, w, targets.ids)?;
    cross_entropy_twin(&x.matmul(&w.t()?)?, targets)
}

fn check(x: &Tensor, w: &Tensor, ids: &Tensor) -> candle_core::Result<(usize, usize, usize)> {
    let op = "linear_cross_entropy";
    let (t, c) = x
        .dims2()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: x {:?} must be [T, C]", x.dims())))?;
    let (v, cw) = w
        .dims2()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: w {:?} must be [V, C]", w.dims())))?;
    if cw != c || t == 0 || v == 0 {
        candle_core::bail!(
            "{op}: x {:?} and w {:?} do not fit (x [T, C], w [V, C])",
            x.dims(),
            w.dims()
        )
    }
    if ids.dims() != [t] || ids.dtype() != DType::U32 {
        candle_core::bail!(
            "{op}: targets {:?} {:?} must be [{t}] u32",
            ids.dtype(),
            ids.dims()
        )
    }
    super::same_as(op, "w", w, x)?;
    if !ids.device().same_device(x.device()) {
        candle_core::bail!("{op}: targets are on another device than x")
    }
    Ok((t, c, v))
}

/// `1 / n` as a one-element tensor of `dtype` (f32, or f64 for f64 inputs): n = t, or the
/// count of ids != ignore (at least 1), counted on the device.
fn inverse_count(
    ids: &Tensor,
    ignore: Option<u32>,
    t: usize,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    match ignore {
        None => Tensor::new(&[1.0f64 / t as f64], ids.device())?.to_dtype(dtype),
        Some(ig) => {
            let n = ids.ne(ig)?.to_dtype(dtype)?.sum_all()?.maximum(1f64)?;
            n.recip()?.reshape(1)
        }
    }
}

/// `(dz, loss rows)` from logits `z [rows, V]`: dz in z's dtype, loss rows f32 (f64 for f64).
fn xent_rows(
    z: &Tensor,
    ids: &Tensor,
    inv: &Tensor,
    ignore: Option<u32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let rows_out = slot();
    let op = Xent {
        ignore,
        loss: rows_out.clone(),
    };
    let dz = z.apply_op3_no_bwd(ids, inv, &op)?;
    Ok((dz, take(&rows_out, "the cross-entropy's row losses")?))
}

/// The row kernel: dz over z, loss rows to a slot.
struct Xent {
    ignore: Option<u32>,
    loss: Slot<Tensor>,
}

fn cpu_rows<T: Real + WithDType>(
    z: &[T],
    ids: &[u32],
    inv: T,
    v: usize,
    ignore: Option<u32>,
) -> candle_core::Result<(Vec<T>, Vec<T>)> {
    if let Some(&bad) = ids.iter().find(|&&y| y as usize >= v && Some(y) != ignore) {
        candle_core::bail!("cross_entropy: target {bad} is outside the {v} classes")
    }
    let mut dz = poisoned::<T>(z.len());
    let mut loss = poisoned::<T>(ids.len());
    dz.par_chunks_mut(v)
        .zip(z.par_chunks(v))
        .zip(loss.par_iter_mut())
        .zip(ids.par_iter())
        .for_each(|(((d, zr), l), &y)| {
            if Some(y) == ignore {
                d.fill(T::ZERO);
                *l = T::ZERO;
                return;
            }
            let m = crate::cpu::real::max_of(zr);
            d.copy_from_slice(zr);
            let s = T::exp_sub_sum(d, m);
            let lse = m + s.ln();
            *l = lse - zr[y as usize];
            let scale = inv / s;
            for x in d.iter_mut() {
                *x *= scale;
            }
            d[y as usize] -= inv;
        });
    Ok((dz, loss))
}

impl CustomOp3 for Xent {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        lz: &Layout,
        ids: &CpuStorage,
        li: &Layout,
        inv: &CpuStorage,
        linv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "cross_entropy";
        let (rows, v) = lz.shape().dims2()?;
        let ids = cpu_data::<u32>(ids, li, op, "targets")?;
        let inv = match inv {
            CpuStorage::F64(_) => cpu_data::<f64>(inv, linv, op, "1/n")?[0],
            _ => cpu_data::<f32>(inv, linv, op, "1/n")?[0] as f64,
        };
        let (dz, loss) = match z {
            CpuStorage::F32(_) => {
                let (d, l) = cpu_rows(
                    cpu_data::<f32>(z, lz, op, "logits")?,
                    ids,
                    inv as f32,
                    v,
                    self.ignore,
                )?;
                (CpuStorage::F32(d), super::cpu_tensor(l, rows))
            }
            CpuStorage::F64(_) => {
                let (d, l) = cpu_rows(
                    cpu_data::<f64>(z, lz, op, "logits")?,
                    ids,
                    inv,
                    v,
                    self.ignore,
                )?;
                (CpuStorage::F64(d), super::cpu_tensor(l, rows))
            }
            _ => candle_core::bail!("cross_entropy: CPU logits must be f32 or f64 here"),
        };
        put(&self.loss, loss)?;
        Ok((dz, lz.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        z: &candle_core::CudaStorage,
        lz: &Layout,
        ids: &candle_core::CudaStorage,
        li: &Layout,
        inv: &candle_core::CudaStorage,
        linv: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (dz, loss) = super::cuda::xent_rows(z, lz, ids, li, inv, linv, self.ignore)?;
        put(&self.loss, loss)?;
        Ok((dz, lz.shape().clone()))
    }
}

/// The graph node of the loss: its forward returns the loss computed beforehand, its backward
/// the saved dx and dw scaled by the loss's gradient.
struct Saved {
    loss: Slot<Tensor>,
    dx: Tensor,
    dw: Tensor,
}

impl Saved {
    fn loss_storage(&self) -> candle_core::Result<Storage> {
        let loss = take(&self.loss, "the cross-entropy loss")?;
        let (s, _) = loss.storage_and_layout();
        Ok(match &*s {
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => {
                use candle_core::backend::BackendStorage;
                Storage::Cuda(c.try_clone(&Layout::contiguous(()))?)
            }
            #[allow(unreachable_patterns)]
            _ => candle_core::bail!("cross_entropy: unsupported device"),
        })
    }
}

impl CustomOp3 for Saved {
    fn name(&self) -> &'static str {
        "fused-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.loss_storage()? {
            Storage::Cpu(c) => Ok((c, Shape::from(()))),
            _ => candle_core::bail!("cross_entropy: the loss is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.loss_storage()? {
            Storage::Cuda(c) => Ok((c, Shape::from(()))),
            _ => candle_core::bail!("cross_entropy: the loss is not on the CUDA device"),
        }
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _ids: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let scale = |t: &Tensor| t.broadcast_mul(&g.to_dtype(t.dtype())?);
        Ok((Some(scale(&self.dx)?), Some(scale(&self.dw)?), None))
    }
}
