//! The candle op of dot-product attention: validation, dtype handling, autograd.
//!
//! q, k, v are exactly the three inputs of a `CustomOp3`, so no packing is needed. The
//! log-sum-exp the backward needs is kept by the op instance (it is not a differentiable
//! output) and also returned to the caller.

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType,
};

use super::cpu::{self, DotProblem, DotSaved};
use super::spec::{DotCall, DotDims, DotSpec};
use crate::cpu::Real;
use crate::cpu_data::{cpu_slice, with_cpu_slices};
use crate::inputs::{compute_dtype, lse_for_backward, saved_lse, store_lse, LseSlot};
use crate::AttnError;

/// Output of [`dot_attn`].
#[derive(Debug, Clone)]
pub struct DotOutput {
    /// `[B,Nq,Hq,Dv]`, the dtype of the inputs; differentiable.
    pub o: Tensor,
    /// `[B,Nq,Hq]`, natural-log log-sum-exp of the scaled logits, f32 (f64 for f64 inputs);
    /// not differentiable.
    pub lse: Tensor,
}

/// Dot-product attention of `q [B,Nq,Hq,D]` over `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`
/// (`Nk >= Nq`, the queries being the last `Nq` positions).
///
/// Inputs: f32, f64, bf16 or f16 (bf16/f16 are computed in f32 on the CPU), one device, any
/// strides. On CUDA (feature `cuda`) bf16 and f32 with head dims up to 256: tensor cores for
/// bf16 D = Dv in {64, 128}, CUDA-core kernels otherwise (`spec.kernels` chooses among them:
/// [`crate::kernels::dispatch::dot`]); f16 and f64 are an error there. Gradients flow to q, k
/// and v through candle's autograd. Errors name the offending shape, option or dtype.
pub fn dot_attn(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: &DotSpec,
) -> Result<DotOutput, AttnError> {
    let dims = spec.dims(q.dims(), k.dims(), v.dims())?;
    let dtype = q.dtype();
    let compute = compute_dtype(q, &[("k", k), ("v", v)])?;
    let up = |t: &Tensor| t.to_dtype(compute)?.contiguous();
    let (q, k, v) = (up(q)?, up(k)?, up(v)?);
    let lse = Arc::new(Mutex::new(None));
    let op = DotOp {
        call: spec.call(dims),
        lse: lse.clone(),
    };
    let o = q.apply_op3(&k, &v, op)?.to_dtype(dtype)?;
    let lse = saved_lse(&lse)?;
    Ok(DotOutput { o, lse })
}

/// One dot-product attention call run outside autograd, kept for its backward: what a layer
/// that computes its own gradients (`crate::fused::dot_attention_layer`) calls.
pub struct DotAttnCall {
    op: DotOp,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
}

impl DotAttnCall {
    /// Runs the forward of [`dot_attn`] on `q`, `k`, `v` (in the dtype the kernels compute in:
    /// f32/f64, or bf16 on CUDA; no graph is recorded).
    pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, spec: &DotSpec) -> Result<Self, AttnError> {
        let dims = spec.dims(q.dims(), k.dims(), v.dims())?;
        compute_dtype(q, &[("k", k), ("v", v)])?;
        let (q, k, v) = (
            q.detach().contiguous()?,
            k.detach().contiguous()?,
            v.detach().contiguous()?,
        );
        let op = DotOp {
            call: spec.call(dims),
            lse: Arc::new(Mutex::new(None)),
        };
        let o = q.apply_op3_no_bwd(&k, &v, &op)?;
        Ok(DotAttnCall { op, q, k, v, o })
    }

    /// The output `[B,Nq,Hq,Dv]`.
    pub fn o(&self) -> &Tensor {
        &self.o
    }

    /// `(dq, dk, dv)` for the output gradient `dout`.
    pub fn backward(&self, dout: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let dout = dout.to_dtype(self.o.dtype())?;
        let (dq, dk, dv) = self.op.bwd(&self.q, &self.k, &self.v, &self.o, &dout)?;
        let none =
            || candle_core::Error::Msg("dot attention backward: a gradient is missing".into());
        Ok((
            dq.ok_or_else(none)?,
            dk.ok_or_else(none)?,
            dv.ok_or_else(none)?,
        ))
    }
}

/// The custom op on `(q, k, v)`.
struct DotOp {
    call: DotCall,
    /// The forward's log-sum-exp `[B,Nq,Hq]`, for the backward.
    lse: LseSlot,
}

impl DotOp {
    /// Stores the forward's log-sum-exp.
    fn save_lse(&self, lse: Tensor) -> candle_core::Result<()> {
        store_lse(&self.lse, lse)
    }

    fn problem<'a, T: Real>(&self, q: &'a [T], k: &'a [T], v: &'a [T]) -> DotProblem<'a, T> {
        DotProblem {
            dims: self.call.dims,
            keys: self.call.keys,
            scale: T::from_f64(self.call.scale),
            q,
            k,
            v,
        }
    }

    fn cpu_fwd_typed<T: Real + WithDType>(
        &self,
        (q, lq): (&CpuStorage, &Layout),
        (k, lk): (&CpuStorage, &Layout),
        (v, lv): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            cpu_slice::<T>(q, lq, "dot attention", "q")?,
            cpu_slice::<T>(k, lk, "dot attention", "k")?,
            cpu_slice::<T>(v, lv, "dot attention", "v")?,
        );
        let (o, lse) = cpu::forward(&self.problem(q, k, v));
        let DotDims {
            batch,
            seq_q,
            heads_q,
            dv,
            ..
        } = self.call.dims;
        self.save_lse(Tensor::from_vec(
            lse,
            (batch, seq_q, heads_q),
            &Device::Cpu,
        )?)?;
        Ok((
            T::to_cpu_storage_owned(o),
            Shape::from((batch, seq_q, heads_q, dv)),
        ))
    }

    fn cpu_bwd_typed<T: Real + WithDType>(
        &self,
        [q, k, v, o, dout, lse]: [&Tensor; 6],
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let names = ["q", "k", "v", "o", "dout", "lse"];
        with_cpu_slices::<T, _, 6>("dot attention", [q, k, v, o, dout, lse], names, |slices| {
            let p = self.problem(slices[0], slices[1], slices[2]);
            let saved = DotSaved {
                o: slices[3],
                lse: slices[5],
                dout: slices[4],
            };
            let g = cpu::backward(&p, &saved);
            let dev = Device::Cpu;
            Ok((
                Tensor::from_vec(g.dq, q.shape(), &dev)?,
                Tensor::from_vec(g.dk, k.shape(), &dev)?,
                Tensor::from_vec(g.dv, v.shape(), &dev)?,
            ))
        })
    }
}

impl CustomOp3 for DotOp {
    fn name(&self) -> &'static str {
        "dot-attention"
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
            other => {
                candle_core::bail!("dot attention on the CPU computes in f32 or f64, got {other:?}")
            }
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
        let (o, shape, lse) = super::cuda::forward(&self.call, [(s1, l1), (s2, l2), (s3, l3)])?;
        self.save_lse(lse)?;
        Ok((o, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = lse_for_backward(&self.lse, "dot attention: backward before forward")?;
        let dout = dout.contiguous()?;
        let args = [q, k, v, o, &dout, &lse];
        let (dq, dk, dv) = match (q.device(), q.dtype()) {
            (Device::Cpu, DType::F32) => self.cpu_bwd_typed::<f32>(args)?,
            (Device::Cpu, DType::F64) => self.cpu_bwd_typed::<f64>(args)?,
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), _) => super::cuda::backward(&self.call, args)?,
            (dev, dt) => candle_core::bail!(
                "dot attention backward: no kernel for {dt:?} on {:?}",
                dev.location()
            ),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
