//! The 2-simplicial forward on CUDA: o `[B,N,Hq,Dv]` and lse `[B,N,Hq]` from q, k1, k2, v1,
//! v2, by the kernel [`dispatch::simplicial::forward`] picks (every forward kernel has the
//! signature `(q, k1, k2, v1, v2, o, lse, Shape)`, the key/value sets in the kernels' order).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result, Shape, Tensor};

use super::launch::{self, Planned};
use super::shape::{key_value_views, view, KernelShape};
use crate::kernels::dispatch::{self, simplicial::exchange_sets};
use crate::kernels::{Elem, Launch};
use crate::spec::Call;

/// The forward on CUDA: o in the input dtype, its shape, and lse (f32). `inputs`: the storages
/// of q, k1, k2, v1, v2.
pub(crate) fn forward(
    call: &Call,
    inputs: [(&CudaStorage, &Layout); 5],
) -> Result<(CudaStorage, Shape, Tensor)> {
    let (dtype, _, limits) = launch::target(inputs[0].0)?;
    let launch =
        dispatch::simplicial::forward(&call.dims, &call.win, dtype, &call.kernels, &limits)?;
    match Elem::of(dtype, "simplicial attention")? {
        Elem::Bf16 => forward_typed::<half::bf16>(call, &launch, inputs),
        Elem::F32 => forward_typed::<f32>(call, &launch, inputs),
    }
}

fn forward_typed<T: super::Element>(
    call: &Call,
    launch: &Launch,
    [(q, lq), (k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)]: [(&CudaStorage, &Layout); 5],
) -> Result<(CudaStorage, Shape, Tensor)> {
    let d = call.dims;
    let (b, n, hq) = (d.batch, d.seq, d.heads_q);
    let ex = exchange_sets(&call.win);
    let shape = KernelShape::new(&d, &call.win, call.scale)?.oriented(ex);
    let dev = q.device();
    let planned = Planned::new(dev, launch)?;
    let [nq, nk, nv, _] = d.lens();
    let qv = view::<T>(q, lq, "q", nq)?;
    let [k1, k2, v1, v2] =
        key_value_views::<T>(ex, [(k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)], nk, nv)?;
    // SAFETY: every 2-simplicial forward takes (q, k1, k2, v1, v2, o, lse, Shape) of element
    // type T (the dispatch picked a kernel of the inputs' dtype); `view` checked the element
    // counts, the key/value sets and the shape are in the same orientation, and the planned
    // grid covers all N * G rows of every (K/V head, batch).
    unsafe {
        launch::forward(
            dev,
            &planned,
            call.kernels.poison_outputs,
            &[&qv, &k1, &k2, &v1, &v2],
            &shape,
            &[],
            (Shape::from((b, n, hq, d.dv)), Shape::from((b, n, hq))),
        )
    }
}
