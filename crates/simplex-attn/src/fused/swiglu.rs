//! SwiGLU on one gate|up product:
//!
//! ```text
//! gu [.., 2H] = [g | u]        out [.., H] = silu(g) * u,   silu(g) = g * sigmoid(g)
//! backward: dg = dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),   du = dout * silu(g)
//! ```

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{compute_dtype, cpu_data, poisoned, rows_cols};
use crate::cpu::Real;

/// `silu(gu[.., :H]) * gu[.., H:]` for `gu [.., 2H]`; differentiable.
pub fn swiglu(gu: &Tensor) -> candle_core::Result<Tensor> {
    let h = check(gu)?;
    let dtype = gu.dtype();
    let x = gu.to_dtype(compute_dtype("swiglu", gu)?)?.contiguous()?;
    x.apply_op1(SwiGlu { h })?.to_dtype(dtype)
}

/// The plain candle-op SwiGLU (two narrows, silu, a product): the reference.
pub fn swiglu_twin(gu: &Tensor) -> candle_core::Result<Tensor> {
    let h = check(gu)?;
    let last = gu.rank() - 1;
    gu.narrow(last, 0, h)?.silu()? * gu.narrow(last, h, h)?
}

fn check(gu: &Tensor) -> candle_core::Result<usize> {
    let (_, w) = rows_cols("swiglu", gu.shape())?;
    if w % 2 != 0 {
        candle_core::bail!(
            "swiglu: the last dim of {:?} must be even (gate | up)",
            gu.dims()
        )
    }
    Ok(w / 2)
}

struct SwiGlu {
    h: usize,
}

fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (T::ZERO - g).exp())
}

fn cpu_forward<T: Real + WithDType>(gu: &[T], h: usize) -> Vec<T> {
    let rows = gu.len() / (2 * h);
    let mut out = poisoned::<T>(rows * h);
    out.par_chunks_mut(h)
        .zip(gu.par_chunks(2 * h))
        .for_each(|(o, x)| {
            for j in 0..h {
                let g = x[j];
                o[j] = g * sigmoid(g) * x[h + j];
            }
        });
    out
}

fn cpu_backward<T: Real + WithDType>(gu: &[T], dout: &[T], h: usize) -> Vec<T> {
    let mut d = poisoned::<T>(gu.len());
    d.par_chunks_mut(2 * h)
        .zip(gu.par_chunks(2 * h))
        .zip(dout.par_chunks(h))
        .for_each(|((d, x), dy)| {
            for j in 0..h {
                let (g, u) = (x[j], x[h + j]);
                let s = sigmoid(g);
                d[j] = dy[j] * u * s * (T::ONE + g * (T::ONE - s));
                d[h + j] = dy[j] * g * s;
            }
        });
    d
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        *dims.last_mut().expect("checked rank") = self.h;
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(cpu_forward(cpu_data::<f32>(s, l, "swiglu", "gu")?, self.h))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(cpu_forward(cpu_data::<f64>(s, l, "swiglu", "gu")?, self.h))
            }
            _ => candle_core::bail!("swiglu: CPU inputs must be f32 or f64 here"),
        };
        Ok((out, Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        *dims.last_mut().expect("checked rank") = self.h;
        Ok((
            super::cuda::swiglu_forward(s, l, self.h)?,
            Shape::from(dims),
        ))
    }

    fn bwd(&self, gu: &Tensor, _o: &Tensor, dout: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(swiglu_grad(gu, dout, self.h)?))
    }
}

/// `silu(gu[.., :h]) * gu[.., h:]` without recording a graph (`gu` contiguous, in the compute
/// dtype).
pub(crate) fn swiglu_no_grad(gu: &Tensor, h: usize) -> candle_core::Result<Tensor> {
    gu.apply_op1_no_bwd(&SwiGlu { h })
}

fn cpu_grad<T: Real + WithDType>(
    gu: &Tensor,
    dout: &Tensor,
    h: usize,
) -> candle_core::Result<Tensor> {
    super::with_cpu::<T, _, 2>("swiglu backward", [gu, dout], ["gu", "dout"], |[x, dy]| {
        Ok(super::cpu_tensor(
            cpu_backward(x, dy, h),
            gu.shape().clone(),
        ))
    })
}

/// The gradient of `gu [.., 2h]` from the output's gradient `dout [.., h]`.
pub(crate) fn swiglu_grad(gu: &Tensor, dout: &Tensor, h: usize) -> candle_core::Result<Tensor> {
    let dout = dout.to_dtype(gu.dtype())?.contiguous()?;
    let d = match gu.device() {
        Device::Cpu => match gu.dtype() {
            DType::F32 => cpu_grad::<f32>(gu, &dout, h)?,
            DType::F64 => cpu_grad::<f64>(gu, &dout, h)?,
            dt => candle_core::bail!("swiglu backward: {dt:?} on the CPU"),
        },
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::cuda::swiglu_backward(gu, &dout, h)?,
        _ => candle_core::bail!("swiglu backward: unsupported device"),
    };
    Ok(d)
}
