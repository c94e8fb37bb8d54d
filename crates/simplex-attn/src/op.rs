//! The candle op: validation, reduction to the trilinear kernel, autograd.
//!
//! candle 0.11 has custom ops with a backward only up to three inputs (`CustomOp3`), so the op
//! takes `(q, K, V)` with `K = cat[k1, k2]`, `V = cat[v1, v2]` along the batch axis
//! (`[2B,N,Hkv,X]`: the memory of a stack `[2,B,N,Hkv,X]`, k1 then k2); candle's `cat` carries
//! the gradients back to the five tensors. (A `stack` would add an unsqueeze per input, and
//! candle's backward pays a zero-fill and an add per graph edge.) The log-sum-exp the backward needs is
//! kept by the op instance (it is not a differentiable output) and also returned to the caller.
//! The determinant variant and the k2/v2 biases are candle ops applied before the kernel, so
//! autograd covers them too.

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType,
};

use crate::cpu::{self, Problem, Real, Saved};
use crate::cpu_data::{cpu_slice, with_cpu_slices};
use crate::inputs::{compute_dtype, lse_for_backward, saved_lse, store_lse, LseSlot};
use crate::spec::{AttnSpec, Dims, Variant, Windows};
use crate::{determinant, AttnError};

/// Output of [`simplicial_attn`].
#[derive(Debug, Clone)]
pub struct SimplicialOutput {
    /// `[B,N,Hq,Dv]`, the dtype of the inputs; differentiable.
    pub o: Tensor,
    /// `[B,N,Hq]`, natural-log log-sum-exp of the scaled logits, f32 (f64 for f64 inputs);
    /// not differentiable.
    pub lse: Tensor,
}

/// 2-simplicial attention of `q [B,N,Hq,D]` over `k1, k2 [B,N,Hkv,D]`, `v1, v2 [B,N,Hkv,Dv]`.
///
/// Inputs: f32, f64, bf16 or f16 (bf16/f16 are computed in f32 on the CPU), all on one device,
/// any strides. Gradients flow to all five inputs through candle's autograd. Errors name the
/// offending shape, option or dtype.
pub fn simplicial_attn(
    q: &Tensor,
    k1: &Tensor,
    k2: &Tensor,
    v1: &Tensor,
    v2: &Tensor,
    spec: &AttnSpec,
) -> Result<SimplicialOutput, AttnError> {
    let dims = spec.dims(q.dims(), k1.dims(), k2.dims(), v1.dims(), v2.dims())?;
    let dtype = q.dtype();
    let compute = compute_dtype(q, &[("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2)])?;
    let up = |t: &Tensor| t.to_dtype(compute);
    let (q, k1, k2, v1, v2) = (up(q)?, up(k1)?, up(k2)?, up(v1)?, up(v2)?);
    let k2 = if spec.k2_bias != 0.0 {
        (k2 + spec.k2_bias)?
    } else {
        k2
    };
    let v2 = if spec.v2_bias != 0.0 {
        (v2 + spec.v2_bias)?
    } else {
        v2
    };
    let (q, k1, k2) = match spec.variant {
        Variant::Trilinear => (q, k1, k2),
        Variant::Determinant => determinant::lift(&q, &k1, &k2)?,
    };
    let k = Tensor::cat(&[k1, k2], 0)?;
    let v = Tensor::cat(&[v1, v2], 0)?;
    let lse = Arc::new(Mutex::new(None));
    let op = SimplicialOp {
        dims: dims.with_d(q.dim(3)?),
        win: spec.windows(dims.seq),
        scale: spec.scale_for(dims.d),
        lse: lse.clone(),
    };
    let o = q.contiguous()?.apply_op3(&k, &v, op)?.to_dtype(dtype)?;
    let lse = saved_lse(&lse)?;
    Ok(SimplicialOutput { o, lse })
}

/// The custom op on `(q, K, V)`; see the module doc.
pub(crate) struct SimplicialOp {
    /// Dimensions as the kernel sees them (D doubled by the determinant lift).
    pub(crate) dims: Dims,
    /// Key ranges per query.
    pub(crate) win: Windows,
    /// Softmax scale.
    pub(crate) scale: f64,
    /// The forward's log-sum-exp `[B,N,Hq]` (f32, or f64 for f64 inputs), for the backward.
    pub(crate) lse: LseSlot,
}

impl SimplicialOp {
    /// Stores the forward's log-sum-exp.
    pub(crate) fn save_lse(&self, lse: Tensor) -> candle_core::Result<()> {
        store_lse(&self.lse, lse)
    }
}

impl SimplicialOp {
    fn problem<'a, T: Real>(&self, q: &'a [T], k: &'a [T], v: &'a [T]) -> Problem<'a, T> {
        let (k1, k2) = k.split_at(k.len() / 2);
        let (v1, v2) = v.split_at(v.len() / 2);
        Problem {
            dims: self.dims,
            win: self.win,
            scale: T::from_f64(self.scale),
            q,
            k1,
            k2,
            v1,
            v2,
        }
    }

    fn cpu_fwd_typed<T: Real + WithDType>(
        &self,
        (q, lq): (&CpuStorage, &Layout),
        (k, lk): (&CpuStorage, &Layout),
        (v, lv): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            cpu_slice::<T>(q, lq, "simplicial attention", "q")?,
            cpu_slice::<T>(k, lk, "simplicial attention", "k")?,
            cpu_slice::<T>(v, lv, "simplicial attention", "v")?,
        );
        let (o, lse) = cpu::forward(&self.problem(q, k, v));
        let Dims {
            batch,
            seq,
            heads_q,
            dv,
            ..
        } = self.dims;
        self.save_lse(Tensor::from_vec(lse, (batch, seq, heads_q), &Device::Cpu)?)?;
        Ok((
            T::to_cpu_storage_owned(o),
            Shape::from((batch, seq, heads_q, dv)),
        ))
    }

    fn cpu_bwd_typed<T: Real + WithDType>(
        &self,
        [q, k, v, o, dout, lse]: [&Tensor; 6],
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let names = ["q", "k", "v", "o", "dout", "lse"];
        with_cpu_slices::<T, _>(
            "simplicial attention",
            [q, k, v, o, dout, lse],
            names,
            |slices| {
                let p = self.problem(slices[0], slices[1], slices[2]);
                let saved = Saved {
                    o: slices[3],
                    lse: slices[5],
                    dout: slices[4],
                };
                let g = cpu::backward(&p, &saved);
                let dev = Device::Cpu;
                let dq = Tensor::from_vec(g.dq, q.shape(), &dev)?;
                let dk = Tensor::from_vec([g.dk1, g.dk2].concat(), k.shape(), &dev)?;
                let dv = Tensor::from_vec([g.dv1, g.dv2].concat(), v.shape(), &dev)?;
                Ok((dq, dk, dv))
            },
        )
    }
}

impl CustomOp3 for SimplicialOp {
    fn name(&self) -> &'static str {
        "simplicial-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => self.cpu_fwd_typed::<f32>((s1, l1), (s2, l2), (s3, l3)),
            DType::F64 => self.cpu_fwd_typed::<f64>((s1, l1), (s2, l2), (s3, l3)),
            other => candle_core::bail!(
                "simplicial attention on the CPU computes in f32 or f64, got {other:?}"
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::forward(self, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = lse_for_backward(&self.lse, "backward before forward")?;
        let dout = dout.contiguous()?;
        let args = [q, k, v, o, &dout, &lse];
        let (dq, dk, dv) = match (q.device(), q.dtype()) {
            (Device::Cpu, DType::F32) => self.cpu_bwd_typed::<f32>(args)?,
            (Device::Cpu, DType::F64) => self.cpu_bwd_typed::<f64>(args)?,
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), _) => crate::cuda::backward(self, args)?,
            (dev, dt) => candle_core::bail!(
                "simplicial attention backward: no kernel for {dt:?} on {:?}",
                dev.location()
            ),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
