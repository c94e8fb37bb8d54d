//! RMSNorm over the last dim, alone or after a residual add:
//!
//! ```text
//! rstd_r = 1 / sqrt(mean_c h[r,c]^2 + eps)        y[r,c] = h[r,c] * rstd_r * w[c]
//! backward, xhat = h * rstd, g = dy * w:
//!   dh[r,c] = rstd_r * (g[r,c] - xhat[r,c] * mean_c(g[r,:] * xhat[r,:]))
//!   dw[c]   = sum_r dy[r,c] * xhat[r,c]
//! ```
//! [`add_rms_norm`] computes `h = x + a` and `y` in one pass over the rows. candle ops have one
//! output, so it is two ops: `ResidualAdd(x, a) -> h` (its forward also computes y and rstd and
//! leaves them in a slot; its backward passes dh to x and a) and `Norm(h, w) -> y` (its forward
//! takes y from the slot; its backward is RMSNorm's). The statistics are f32 (f64 for f64).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, WithDType, D};
use rayon::prelude::*;

use super::{compute_dtype, cpu_data, cpu_tensor, poisoned, put, rows_cols, same_as, slot, Slot};
use crate::cpu::Real;

/// `x / sqrt(mean(x^2, last dim) + eps) * w` for `x [.., C]`, `w [C]`; differentiable in both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let (x, w, dtype) = prepare("rms_norm", x, None, w, eps)?;
    let op = Norm {
        eps,
        rstd: slot(),
        ready: None,
    };
    x.apply_op2(&w, op)?.to_dtype(dtype)
}

/// `h = x + a` and `y = rms_norm(h, w, eps)` in one pass; returns `(h, y)`, both
/// differentiable (in x, a and w).
pub fn add_rms_norm(
    x: &Tensor,
    a: &Tensor,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (x, w, dtype) = prepare("add_rms_norm", x, Some(a), w, eps)?;
    let (h, y, rstd) = residual_add(&x, a, &w, eps)?;
    let norm = Norm {
        eps,
        rstd,
        ready: Some(y),
    };
    let y = h.apply_op2(&w, norm)?;
    Ok((h.to_dtype(dtype)?, y.to_dtype(dtype)?))
}

/// What [`rms_norm_saved`] keeps for [`rms_norm_grads`]: the normalized rows' input `h` and
/// their `rstd` (in the compute dtype; f32 statistics).
#[derive(Debug, Clone)]
pub struct NormSaved {
    /// `x + a` (or `x`), the rows the norm saw.
    pub h: Tensor,
    /// `1 / sqrt(mean(h^2) + eps)` per row.
    pub rstd: Tensor,
}

/// The forward of [`add_rms_norm`] (with `a`) or [`rms_norm`] (without) outside autograd, for
/// callers that run the backward themselves ([`rms_norm_grads`]): `(h, y, saved)` with
/// `h = x + a` (or `x`) and `y = rms_norm(h)`, both in x's dtype. No graph is recorded.
pub fn rms_norm_saved(
    x: &Tensor,
    a: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, NormSaved)> {
    let (x, w, dtype) = prepare("rms_norm", &x.detach(), a, &w.detach(), eps)?;
    let (h, y, rstd) = match a {
        Some(a) => {
            let (h, y, rstd) = residual_add(&x, &a.detach(), &w, eps)?;
            let y = super::take(&y, "the normalized rows of add_rms_norm")?;
            let y = super::owned_tensor(y, h.shape());
            (h, y, rstd)
        }
        None => {
            let rstd = slot();
            let op = Norm {
                eps,
                rstd: rstd.clone(),
                ready: None,
            };
            (x.clone(), x.apply_op2(&w, op)?, rstd)
        }
    };
    let rstd = super::take(&rstd, "rms_norm's rstd")?;
    Ok((
        h.to_dtype(dtype)?,
        y.to_dtype(dtype)?,
        NormSaved { h, rstd },
    ))
}

/// `(plus + dh, dw)` of the norm [`rms_norm_saved`] ran, from `dy` (outside autograd), in
/// the dtypes of `dy` and `w`. `plus`, a gradient like h (the residual stream's), is added to
/// dh in the same pass on CUDA.
pub fn rms_norm_grads(
    dy: &Tensor,
    saved: &NormSaved,
    w: &Tensor,
    plus: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (dtype, wdtype) = (dy.dtype(), w.dtype());
    let wc = w.to_dtype(saved.h.dtype())?.contiguous()?;
    let dy = dy.to_dtype(saved.h.dtype())?.contiguous()?;
    let (dh, dw) = backward(&dy, &saved.h, &wc, &saved.rstd, plus)?;
    Ok((dh.to_dtype(dtype)?, dw.to_dtype(wdtype)?))
}

/// The plain candle-op RMSNorm (statistics in f32, or f64 for f64 inputs): the reference.
pub fn rms_norm_twin(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let xf = if dtype == DType::F64 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    y.to_dtype(dtype)?.broadcast_mul(w)
}

/// The plain candle-op residual add and RMSNorm: the reference of [`add_rms_norm`].
pub fn add_rms_norm_twin(
    x: &Tensor,
    a: &Tensor,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let h = (x + a)?;
    let y = rms_norm_twin(&h, w, eps)?;
    Ok((h, y))
}

/// Validates the inputs; returns x and w contiguous in the compute dtype and x's dtype.
fn prepare(
    op: &str,
    x: &Tensor,
    a: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, DType)> {
    let (_, c) = rows_cols(op, x.shape())?;
    if w.dims() != [c] {
        candle_core::bail!(
            "{op}: weight {:?} must be [{c}] for x {:?}",
            w.dims(),
            x.dims()
        )
    }
    if let Some(a) = a {
        if a.dims() != x.dims() {
            candle_core::bail!("{op}: residual {:?} must match x {:?}", a.dims(), x.dims())
        }
        same_as(op, "the residual", a, x)?;
    }
    same_as(op, "the weight", w, x)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("{op}: eps = {eps} must be finite and >= 0")
    }
    let compute = compute_dtype(op, x)?;
    Ok((
        x.to_dtype(compute)?.contiguous()?,
        w.to_dtype(compute)?.contiguous()?,
        x.dtype(),
    ))
}

/// `h = ResidualAdd(x, a)` (x, w prepared), with the normalized rows y and their rstd left in
/// the returned slots.
fn residual_add(
    x: &Tensor,
    a: &Tensor,
    w: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Slot<Storage>, Slot<Tensor>)> {
    let a = a.to_dtype(x.dtype())?.contiguous()?;
    let (y, rstd) = (slot(), slot());
    let add = ResidualAdd {
        w: w.clone(),
        eps,
        y: y.clone(),
        rstd: rstd.clone(),
    };
    Ok((x.apply_op2(&a, add)?, y, rstd))
}

/// `ResidualAdd(x, a) -> h`; computes y and rstd too (see the module doc).
struct ResidualAdd {
    w: Tensor,
    eps: f64,
    y: Slot<Storage>,
    rstd: Slot<Tensor>,
}

/// `Norm(h, w) -> y`: computes it, or takes it from `ready` (after [`ResidualAdd`]).
struct Norm {
    eps: f64,
    rstd: Slot<Tensor>,
    ready: Option<Slot<Storage>>,
}

impl CustomOp2 for ResidualAdd {
    fn name(&self) -> &'static str {
        "fused-residual-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (wg, lw) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*wg else {
            candle_core::bail!("add_rms_norm: the weight is not on the CPU")
        };
        let (rows, c) = rows_cols("add_rms_norm", lx.shape())?;
        let (h, y, rstd) = match x {
            CpuStorage::F32(_) => cpu_forward::<f32>(x, lx, Some((a, la)), w, lw, self.eps)?,
            CpuStorage::F64(_) => cpu_forward::<f64>(x, lx, Some((a, la)), w, lw, self.eps)?,
            _ => candle_core::bail!("add_rms_norm: CPU inputs must be f32 or f64 here"),
        };
        put(&self.y, Storage::Cpu(y))?;
        put(&self.rstd, rstd.reshape(rows)?)?;
        let _ = c;
        Ok((h.expect("the residual form returns h"), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (wg, lw) = self.w.storage_and_layout();
        let Storage::Cuda(w) = &*wg else {
            candle_core::bail!("add_rms_norm: the weight is not on the CUDA device")
        };
        let out = super::cuda::norm_forward(x, lx, Some((a, la)), w, lw, self.eps)?;
        put(&self.y, Storage::Cuda(out.y))?;
        put(&self.rstd, out.rstd)?;
        Ok((
            out.h.expect("the residual form returns h"),
            lx.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _a: &Tensor,
        _h: &Tensor,
        dh: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dh.clone()), Some(dh.clone())))
    }
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let Some(ready) = &self.ready {
            return match super::take(ready, "the normalized rows of add_rms_norm")? {
                Storage::Cpu(y) => Ok((y, lx.shape().clone())),
                _ => candle_core::bail!("add_rms_norm: y is not on the CPU"),
            };
        }
        let (rows, _) = rows_cols("rms_norm", lx.shape())?;
        let (_, y, rstd) = match x {
            CpuStorage::F32(_) => cpu_forward::<f32>(x, lx, None, w, lw, self.eps)?,
            CpuStorage::F64(_) => cpu_forward::<f64>(x, lx, None, w, lw, self.eps)?,
            _ => candle_core::bail!("rms_norm: CPU inputs must be f32 or f64 here"),
        };
        put(&self.rstd, rstd.reshape(rows)?)?;
        Ok((y, lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        if let Some(ready) = &self.ready {
            return match super::take(ready, "the normalized rows of add_rms_norm")? {
                Storage::Cuda(y) => Ok((y, lx.shape().clone())),
                _ => candle_core::bail!("add_rms_norm: y is not on the CUDA device"),
            };
        }
        let out = super::cuda::norm_forward(x, lx, None, w, lw, self.eps)?;
        put(&self.rstd, out.rstd)?;
        Ok((out.y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let rstd = super::peek(&self.rstd, "rms_norm's saved rstd")?;
        let dy = dy.contiguous()?;
        let (dh, dw) = backward(&dy, h, w, &rstd, None)?;
        Ok((Some(dh), Some(dw)))
    }
}

/// `(plus + dh, dw)` from `dy`, the forward's input `h`, `w` and `rstd`; `plus` (like h) is
/// a gradient added to dh in the same pass (on CUDA; the residual stream's), none if `None`.
fn backward(
    dy: &Tensor,
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    plus: Option<&Tensor>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = "rms_norm backward";
    let (rows, c) = rows_cols(op, h.shape())?;
    let dy = dy.to_dtype(h.dtype())?;
    let plus = match plus {
        Some(p) if p.dims() != h.dims() => {
            candle_core::bail!(
                "{op}: the added gradient {:?} must be like h {:?}",
                p.dims(),
                h.dims()
            )
        }
        Some(p) => Some(p.to_dtype(h.dtype())?.contiguous()?),
        None => None,
    };
    let cpu = |(dh, dw): (Tensor, Tensor)| -> candle_core::Result<(Tensor, Tensor)> {
        match &plus {
            Some(p) => Ok(((dh + p)?, dw)),
            None => Ok((dh, dw)),
        }
    };
    match h.device() {
        candle_core::Device::Cpu => match h.dtype() {
            DType::F32 => cpu(cpu_backward::<f32>(&dy, h, w, rstd, rows, c)?),
            DType::F64 => cpu(cpu_backward::<f64>(&dy, h, w, rstd, rows, c)?),
            dt => candle_core::bail!("{op}: {dt:?} on the CPU"),
        },
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => super::cuda::norm_backward(&dy, h, w, rstd, plus.as_ref()),
        _ => candle_core::bail!("{op}: unsupported device"),
    }
}

type Forward = (Option<CpuStorage>, CpuStorage, Tensor);

/// CPU forward: `(h if a residual is given, y, rstd [rows])`.
fn cpu_forward<T: Real + WithDType>(
    x: &CpuStorage,
    lx: &Layout,
    a: Option<(&CpuStorage, &Layout)>,
    w: &CpuStorage,
    lw: &Layout,
    eps: f64,
) -> candle_core::Result<Forward> {
    let op = "rms_norm";
    let (rows, c) = rows_cols(op, lx.shape())?;
    let x = cpu_data::<T>(x, lx, op, "x")?;
    let w = cpu_data::<T>(w, lw, op, "weight")?;
    let a = a
        .map(|(a, la)| cpu_data::<T>(a, la, op, "residual"))
        .transpose()?;
    let mut h = a.map(|_| poisoned::<T>(rows * c));
    let mut y = poisoned::<T>(rows * c);
    let mut rstd = poisoned::<T>(rows);
    let eps = <T as Real>::from_f64(eps);
    let row = |r: usize, hr: Option<&mut [T]>, yr: &mut [T], s: &mut T| {
        let xr = &x[r * c..(r + 1) * c];
        let src: &[T] = match (a, hr) {
            (Some(a), Some(hr)) => {
                for ((h, &x), &a) in hr.iter_mut().zip(xr).zip(&a[r * c..(r + 1) * c]) {
                    *h = x + a;
                }
                hr
            }
            _ => xr,
        };
        let ms = crate::cpu::real::dot(src, src) / <T as Real>::from_f64(c as f64);
        *s = <T as Real>::from_f64(1.0 / Real::to_f64(ms + eps).sqrt());
        for ((y, &v), &w) in yr.iter_mut().zip(src).zip(w) {
            *y = v * *s * w;
        }
    };
    match &mut h {
        Some(h) => h
            .par_chunks_mut(c)
            .zip(y.par_chunks_mut(c))
            .zip(rstd.par_iter_mut())
            .enumerate()
            .for_each(|(r, ((hr, yr), s))| row(r, Some(hr), yr, s)),
        None => y
            .par_chunks_mut(c)
            .zip(rstd.par_iter_mut())
            .enumerate()
            .for_each(|(r, (yr, s))| row(r, None, yr, s)),
    }
    Ok((
        h.map(T::to_cpu_storage_owned),
        T::to_cpu_storage_owned(y),
        cpu_tensor(rstd, rows),
    ))
}

/// Rows per partial sum of dw (a fixed split: the sum's order does not depend on threads).
const DW_ROWS: usize = 64;

/// CPU backward: `(dh, dw)`.
fn cpu_backward<T: Real + WithDType>(
    dy: &Tensor,
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    rows: usize,
    c: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = "rms_norm backward";
    let shape = h.shape().clone();
    super::with_cpu::<T, _, 4>(
        op,
        [dy, h, w, rstd],
        ["dy", "h", "weight", "rstd"],
        |[dy, h, w, rstd]| {
            let mut dh = poisoned::<T>(rows * c);
            let inv_c = <T as Real>::from_f64(1.0 / c as f64);
            let partials: Vec<Vec<T>> = dh
                .par_chunks_mut(DW_ROWS * c)
                .enumerate()
                .map(|(blk, out)| {
                    let mut dw = vec![T::ZERO; c];
                    for (k, dhr) in out.chunks_mut(c).enumerate() {
                        let r = blk * DW_ROWS + k;
                        let (dyr, hr, s) =
                            (&dy[r * c..(r + 1) * c], &h[r * c..(r + 1) * c], rstd[r]);
                        let mut gx = T::ZERO;
                        for i in 0..c {
                            let xhat = hr[i] * s;
                            gx += dyr[i] * w[i] * xhat;
                            dw[i] += dyr[i] * xhat;
                        }
                        let mean = gx * inv_c;
                        for i in 0..c {
                            dhr[i] = s * (dyr[i] * w[i] - hr[i] * s * mean);
                        }
                    }
                    dw
                })
                .collect();
            let mut dw = vec![T::ZERO; c];
            for p in &partials {
                for (d, &x) in dw.iter_mut().zip(p) {
                    *d += x;
                }
            }
            Ok((cpu_tensor(dh, shape), cpu_tensor(dw, c)))
        },
    )
}
