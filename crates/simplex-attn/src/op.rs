//! The candle op: validation, reduction to the trilinear kernel, autograd.
//!
//! candle 0.11 has custom ops with a backward only up to three inputs (`CustomOp3`), and the
//! layer has five. Two ops carry it: [`QueryKeys`] on `(q, k1, k2)` returns a one-element
//! handle, and [`SimplicialOp`] on `(handle, v1, v2)` computes `o`, reading q, k1, k2 from the
//! tensors it holds. Its backward computes all five gradients, returns dv1, dv2 (and a zero for
//! the handle) and leaves dq, dk1, dk2 in a slot that `QueryKeys`' backward (which candle runs
//! next: the handle is its output) returns. So no input is copied into a stacked buffer, and
//! each input costs candle's backward one gradient accumulation (a zero-fill and an add per
//! graph edge; concatenating the key and value sets cost two more edges per input and four
//! copies). The log-sum-exp the backward needs is kept by the op instance (it is not a
//! differentiable output) and also returned to the caller. The determinant variant and the
//! k2/v2 biases are candle ops applied before the kernel, so autograd covers them too.

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, WithDType,
};

use crate::cpu::{self, Problem, Real, Saved};
use crate::cpu_data::{cpu_slice, with_cpu_slices};
use crate::inputs::{
    compute_dtype, fill_slot, lse_for_backward, marker_cpu, saved_lse, store_lse, take_slot,
    LseSlot,
};
use crate::kernels::dispatch::simplicial::padded_head_dims;
use crate::spec::{AttnSpec, Call, Dims, Variant};
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
    // on CUDA, a call whose q/k and v head dims differ (the determinant lift) is zero-padded to
    // head dims the tensor cores take where that reaches them (`padded_head_dims`); the
    // output's padded columns are dropped, and autograd maps the gradients back through the
    // padding
    let (d, dv) = (q.dim(3)?, v1.dim(3)?);
    let padded = if q.device().is_cuda() {
        padded_head_dims(&Dims { d, dv, ..dims }, compute, &spec.kernels)
    } else {
        None
    };
    let pad = |t: Tensor, from: usize, to: Option<usize>| match to {
        Some(p) if p > from => t.pad_with_zeros(3, 0, p - from),
        _ => Ok(t),
    };
    let (pd, pdv) = (padded.map(|p| p.0), padded.map(|p| p.1));
    let (q, k1, k2) = (pad(q, d, pd)?, pad(k1, d, pd)?, pad(k2, d, pd)?);
    let (v1, v2) = (pad(v1, dv, pdv)?, pad(v2, dv, pdv)?);
    let (q, k1, k2) = (q.contiguous()?, k1.contiguous()?, k2.contiguous()?);
    let (v1, v2) = (v1.contiguous()?, v2.contiguous()?);
    let lse = Arc::new(Mutex::new(None));
    let key_grads = Arc::new(Mutex::new(None));
    let handle = q.apply_op3(
        &k1,
        &k2,
        QueryKeys {
            grads: key_grads.clone(),
        },
    )?;
    let op = SimplicialOp {
        call: spec.call(
            Dims {
                d: q.dim(3)?,
                dv: v1.dim(3)?,
                ..dims
            },
            dims.d,
        ),
        lse: lse.clone(),
        query_keys: [q, k1, k2],
        key_grads,
    };
    let o = handle.apply_op3(&v1, &v2, op)?;
    let o = if padded.is_some() {
        o.narrow(3, 0, dv)?
    } else {
        o
    };
    let o = o.to_dtype(dtype)?;
    let lse = saved_lse(&lse)?;
    Ok(SimplicialOutput { o, lse })
}

/// One 2-simplicial attention call run outside autograd, kept for its backward: what a layer
/// that computes its own gradients (`crate::fused::simplicial_attention_layer_saved`) calls.
/// It covers the calls the kernels run as given: trilinear logits, no biases, and on CUDA no
/// padding of differing head dims ([`SimplicialAttnCall::forward`] gives `None` for others).
pub struct SimplicialAttnCall {
    op: SimplicialOp,
    handle: Tensor,
    v: [Tensor; 2],
    o: Tensor,
}

impl SimplicialAttnCall {
    /// Runs the forward of [`simplicial_attn`] (no graph is recorded), or `None` where the call
    /// needs more than the kernels (the determinant lift, biases, padding): use
    /// [`simplicial_attn`] and autograd there.
    pub fn forward(
        q: &Tensor,
        k1: &Tensor,
        k2: &Tensor,
        v1: &Tensor,
        v2: &Tensor,
        spec: &AttnSpec,
    ) -> Result<Option<Self>, AttnError> {
        let dims = spec.dims(q.dims(), k1.dims(), k2.dims(), v1.dims(), v2.dims())?;
        let compute = compute_dtype(q, &[("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2)])?;
        let plain =
            spec.variant == Variant::Trilinear && spec.k2_bias == 0.0 && spec.v2_bias == 0.0;
        let padded =
            q.device().is_cuda() && padded_head_dims(&dims, compute, &spec.kernels).is_some();
        if !plain || padded || compute != q.dtype() {
            return Ok(None);
        }
        let up = |t: &Tensor| t.detach().contiguous();
        let (q, k1, k2, v1, v2) = (up(q)?, up(k1)?, up(k2)?, up(v1)?, up(v2)?);
        let op = SimplicialOp {
            call: spec.call(dims, dims.d),
            lse: Arc::new(Mutex::new(None)),
            query_keys: [q, k1, k2],
            key_grads: Arc::new(Mutex::new(None)),
        };
        let handle = Tensor::zeros(1, DType::F32, v1.device())?;
        let o = handle.apply_op3_no_bwd(&v1, &v2, &op)?;
        Ok(Some(SimplicialAttnCall {
            op,
            handle,
            v: [v1, v2],
            o,
        }))
    }

    /// The output `[B,N,Hq,Dv]`.
    pub fn o(&self) -> &Tensor {
        &self.o
    }

    /// `[dq, dk1, dk2, dv1, dv2]` for the output gradient `dout`.
    pub fn backward(&self, dout: &Tensor) -> candle_core::Result<[Tensor; 5]> {
        let dout = dout.to_dtype(self.o.dtype())?;
        let [v1, v2] = &self.v;
        let (_, dv1, dv2) = self.op.bwd(&self.handle, v1, v2, &self.o, &dout)?;
        let [dq, dk1, dk2] = take_slot(
            &self.op.key_grads,
            "simplicial attention: the backward left no (dq, dk1, dk2)",
        )?;
        let none = || {
            candle_core::Error::Msg("simplicial attention backward: a gradient is missing".into())
        };
        Ok([dq, dk1, dk2, dv1.ok_or_else(none)?, dv2.ok_or_else(none)?])
    }
}

/// Where [`SimplicialOp`]'s backward leaves (dq, dk1, dk2) for [`QueryKeys`]' backward.
type KeyGrads = Arc<Mutex<Option<[Tensor; 3]>>>;

/// The first of the two ops (see the module doc): `(q, k1, k2)` -> a one-element f32 zero, the
/// handle through which autograd reaches q, k1, k2. Its backward returns the gradients the
/// second op computed.
struct QueryKeys {
    grads: KeyGrads,
}

impl CustomOp3 for QueryKeys {
    fn name(&self) -> &'static str {
        "simplicial-attention-query-keys"
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
        Ok(marker_cpu())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::inputs::marker_cuda(s1)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dq, dk1, dk2] = take_slot(
            &self.grads,
            "simplicial attention: the backward of q, k1, k2 ran before the backward of o",
        )?;
        Ok((Some(dq), Some(dk1), Some(dk2)))
    }
}

/// The second of the two ops (see the module doc): `(handle, v1, v2)` -> `o`, with q, k1, k2
/// held here.
struct SimplicialOp {
    /// The call as the kernels see it (D doubled by the determinant lift).
    call: Call,
    /// The forward's log-sum-exp `[B,N,Hq]` (f32, or f64 for f64 inputs), for the backward.
    lse: LseSlot,
    /// q, k1, k2 (contiguous, in the compute dtype).
    query_keys: [Tensor; 3],
    /// The backward's (dq, dk1, dk2), for [`QueryKeys`].
    key_grads: KeyGrads,
}

impl SimplicialOp {
    /// Stores the forward's log-sum-exp.
    fn save_lse(&self, lse: Tensor) -> candle_core::Result<()> {
        store_lse(&self.lse, lse)
    }

    fn problem<'a, T: Real>(&self, [q, k1, k2, v1, v2]: [&'a [T]; 5]) -> Problem<'a, T> {
        Problem {
            dims: self.call.dims,
            win: self.call.win,
            scale: T::from_f64(self.call.scale),
            q,
            k1,
            k2,
            v1,
            v2,
        }
    }

    fn cpu_fwd_typed<T: Real + WithDType>(
        &self,
        (v1, l1): (&CpuStorage, &Layout),
        (v2, l2): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "simplicial attention";
        let [q, k1, k2] = &self.query_keys;
        let (v1, v2) = (
            cpu_slice::<T>(v1, l1, op, "v1")?,
            cpu_slice::<T>(v2, l2, op, "v2")?,
        );
        with_cpu_slices::<T, _, 3>(op, [q, k1, k2], ["q", "k1", "k2"], |[q, k1, k2]| {
            let (o, lse) = cpu::forward(&self.problem([q, k1, k2, v1, v2]));
            let Dims {
                batch,
                seq,
                heads_q,
                dv,
                ..
            } = self.call.dims;
            self.save_lse(Tensor::from_vec(lse, (batch, seq, heads_q), &Device::Cpu)?)?;
            Ok((
                T::to_cpu_storage_owned(o),
                Shape::from((batch, seq, heads_q, dv)),
            ))
        })
    }

    fn cpu_bwd_typed<T: Real + WithDType>(
        &self,
        [q, k1, k2, v1, v2, o, dout, lse]: [&Tensor; 8],
    ) -> candle_core::Result<[Tensor; 5]> {
        let names = ["q", "k1", "k2", "v1", "v2", "o", "dout", "lse"];
        with_cpu_slices::<T, _, 8>(
            "simplicial attention",
            [q, k1, k2, v1, v2, o, dout, lse],
            names,
            |[qs, k1s, k2s, v1s, v2s, os, douts, lses]| {
                let p = self.problem([qs, k1s, k2s, v1s, v2s]);
                let saved = Saved {
                    o: os,
                    lse: lses,
                    dout: douts,
                };
                let g = cpu::backward(&p, &saved);
                let dev = Device::Cpu;
                Ok([
                    Tensor::from_vec(g.dq, q.shape(), &dev)?,
                    Tensor::from_vec(g.dk1, k1.shape(), &dev)?,
                    Tensor::from_vec(g.dk2, k2.shape(), &dev)?,
                    Tensor::from_vec(g.dv1, v1.shape(), &dev)?,
                    Tensor::from_vec(g.dv2, v2.shape(), &dev)?,
                ])
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
        _: &CpuStorage,
        _: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match s2.dtype() {
            DType::F32 => self.cpu_fwd_typed::<f32>((s2, l2), (s3, l3)),
            DType::F64 => self.cpu_fwd_typed::<f64>((s2, l2), (s3, l3)),
            other => candle_core::bail!(
                "simplicial attention on the CPU computes in f32 or f64, got {other:?}"
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let guards = self.query_keys.each_ref().map(|t| t.storage_and_layout());
        let [q, k1, k2] =
            crate::cuda::cuda_storages("simplicial attention", ["q", "k1", "k2"], &guards)?;
        let (o, shape, lse) = crate::cuda::forward(&self.call, [q, k1, k2, (s2, l2), (s3, l3)])?;
        self.save_lse(lse)?;
        Ok((o, shape))
    }

    fn bwd(
        &self,
        handle: &Tensor,
        v1: &Tensor,
        v2: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = lse_for_backward(&self.lse, "backward before forward")?;
        let dout = dout.contiguous()?;
        let [q, k1, k2] = &self.query_keys;
        let args = [q, k1, k2, v1, v2, o, &dout, &lse];
        let [dq, dk1, dk2, dv1, dv2] = match (q.device(), q.dtype()) {
            (Device::Cpu, DType::F32) => self.cpu_bwd_typed::<f32>(args)?,
            (Device::Cpu, DType::F64) => self.cpu_bwd_typed::<f64>(args)?,
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), _) => crate::cuda::backward(&self.call, args)?,
            (dev, dt) => candle_core::bail!(
                "simplicial attention backward: no kernel for {dt:?} on {:?}",
                dev.location()
            ),
        };
        fill_slot(&self.key_grads, [dq, dk1, dk2])?;
        Ok((Some(handle.zeros_like()?), Some(dv1), Some(dv2)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::simplicial_attn;
    use crate::AttnSpec;

    fn inputs() -> candle_core::Result<[Tensor; 5]> {
        let dev = Device::Cpu;
        let r = |h: usize| Tensor::randn(0f32, 1.0, (2, 9, h, 8), &dev);
        Ok([r(4)?, r(2)?, r(2)?, r(2)?, r(2)?])
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>());
        d.expect("same shapes")
    }

    /// The two-op plumbing: the variables among the five inputs (here only k2, v1) get the
    /// gradients of an all-variable run, and a second backward over the same output gives them
    /// again.
    #[test]
    fn gradients_reach_each_variable_input_and_repeat() -> candle_core::Result<()> {
        let spec = AttnSpec::causal(3, 5);
        let x = inputs()?;
        let dout = Tensor::randn(0f32, 1.0, (2, 9, 4, 8), &Device::Cpu)?;
        let all = x.clone().map(|t| Var::from_tensor(&t).expect("var"));
        let o = simplicial_attn(&all[0], &all[1], &all[2], &all[3], &all[4], &spec)
            .expect("forward")
            .o;
        let full = (o * &dout)?.sum_all()?.backward()?;
        let (k2, v1) = (Var::from_tensor(&x[2])?, Var::from_tensor(&x[3])?);
        let o = simplicial_attn(&x[0], &x[1], &k2, &v1, &x[4], &spec)
            .expect("forward")
            .o;
        let loss = (o * &dout)?.sum_all()?;
        for _ in 0..2 {
            let part = loss.backward()?;
            assert_eq!(
                max_diff(part.get(&k2).unwrap(), full.get(&all[2]).unwrap()),
                0.0
            );
            assert_eq!(
                max_diff(part.get(&v1).unwrap(), full.get(&all[3]).unwrap()),
                0.0
            );
        }
        // every gradient of the full run is there and not zero
        for v in &all {
            let g = full.get(v).expect("a gradient for every input");
            assert!(g.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }
}
