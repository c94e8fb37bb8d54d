//! The dot-product forward on CUDA: o `[B,Nq,Hq,Dv]` and lse `[B,Nq,Hq]` from
//! `q [B,Nq,Hq,D]`, `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`, by the kernel
//! [`crate::kernels::dispatch::dot::forward`] picks (every forward has the signature
//! `(q, k, v, o, lse, DotShape)`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result, Shape, Tensor};

use super::{aligned, kv_maps, DotCall, DotKernelShape};
use crate::cuda::launch::{self, Planned};
use crate::cuda::tma::{self as cuda_tma, TensorMap};
use crate::cuda::{typed_views, Element};
use crate::kernels::{dispatch, tma, Elem, Kernel};

/// The forward on CUDA: o in the input dtype, its shape, and lse (f32).
pub(crate) fn forward(
    call: &DotCall,
    inputs: [(&CudaStorage, &Layout); 3],
) -> Result<(CudaStorage, Shape, Tensor)> {
    let (dtype, dev, limits) = launch::target(inputs[0].0)?;
    let all_aligned = inputs.iter().all(|(_, l)| aligned(l, dtype));
    let plan = dispatch::dot::forward(&call.dims, dtype, all_aligned, &call.kernels, &limits)?;
    let planned = Planned::new(dev, &plan)?;
    let kernel = plan.kernel.kernel;
    match Elem::of(dtype, "dot attention")? {
        Elem::Bf16 => forward_typed::<half::bf16>(call, &planned, kernel, inputs),
        Elem::F32 => forward_typed::<f32>(call, &planned, kernel, inputs),
    }
}

fn forward_typed<T: Element>(
    call: &DotCall,
    planned: &Planned,
    kernel: Kernel,
    inputs: [(&CudaStorage, &Layout); 3],
) -> Result<(CudaStorage, Shape, Tensor)> {
    let d = call.dims;
    let (b, nq, hq) = (d.batch, d.seq_q, d.heads_q);
    let shape = DotKernelShape::new(call)?;
    let [nq_d, nk_d, nk_dv, _] = d.lens();
    let [qv, kv, vv] = typed_views::<T, 3>(
        "dot attention",
        inputs,
        ["q", "k", "v"],
        [nq_d, nk_d, nk_dv],
    )?;
    let dev = inputs[0].0.device();
    let mut maps = kv_maps(dev, &d, tma::kv_map_rows(kernel), [&kv, &vv])?;
    if matches!(kernel, Kernel::DotFwdWgmma { .. }) {
        // the wgmma forward takes q's map after K's and V's, read where a box fits
        maps.push(match tma::fwd_q_box(kernel, d.group()) {
            Some(qbox) => cuda_tma::bf16_rows(&dev.cuda_stream(), &qv, [b, nq, hq, d.d], qbox)?,
            None => TensorMap::unused(),
        });
    }
    // SAFETY: every dot-product forward takes (const T* q, const T* k, const T* v, T* o, float*
    // lse, DotShape), then K's and V's tensor maps where it loads through them, and q's for
    // the wgmma forward (`maps`, of the kernel's boxes; q's unused where `fwd_q_box` gives no
    // box: the kernel makes the same test); the dispatch picked a kernel of the inputs' dtype;
    // the views hold the element counts the kernel indexes (checked by `typed_views`), and the
    // grid covers every (query, head) row of o and lse (all Nq * G rows of every K/V head and
    // batch: in blocks of 64 for the one-warpgroup kernel at D = 64, walked by the persistent
    // wgmma kernel's CTAs at D = 128; all B * Nq * Hq rows for the CUDA-core one).
    unsafe {
        launch::forward(
            dev,
            planned,
            call.kernels.poison_outputs,
            &[&qv, &kv, &vv],
            &shape,
            &maps,
            (Shape::from((b, nq, hq, d.dv)), Shape::from((b, nq, hq))),
        )
    }
}
