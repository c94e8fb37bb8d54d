//! The 2-simplicial backward on CUDA, as [`dispatch::simplicial::backward`] plans it: the
//! CUDA-core kernels here (`kernels/simplicial_bwd_dq.cu`: delta pre-pass, dq;
//! `kernels/simplicial_bwd_dkv.cu`: dk, dv of one key/value set, launched once per set), the
//! tensor-core ones in [`super::backward_tc`].
//!
//! ```text
//! delta [B,N,Hq]  = sum_c o * dout                       pre-pass
//! dq    [B,N,Hq,D]                                       one launch, rows as in the forward
//! dk1, dk2 [B,N,Hkv,D], dv1, dv2 [B,N,Hkv,Dv]           dkv launched for (k2,v2) owning, then
//!                                                        with the sets exchanged for (k1,v1)
//! ```
//! The CUDA-core backward is deterministic: no atomics; every block owns the gradient rows it
//! writes.

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{Layout, Result, Tensor};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::buffers::{cuda_storages, output_poisoned, typed_views, wrap_tensor, Element};
use super::launch::{self, Planned};
use super::shape::{oriented, KernelShape};
use crate::kernels::dispatch::simplicial::{self, exchange_sets, Backward};
use crate::kernels::{Elem, Launch};
use crate::spec::{Call, Dims};

/// The backward on CUDA from `[q, k1, k2, v1, v2, o, dout, lse]`: `[dq, dk1, dk2, dv1, dv2]`,
/// each like its input, in the input dtype.
pub(crate) fn backward(call: &Call, tensors: [&Tensor; 8]) -> Result<[Tensor; 5]> {
    let wide = simplicial::backward_value_dim(&call.dims, tensors[0].dtype(), &call.kernels);
    if let Some(wide) = wide {
        return backward_values_padded(call, tensors, wide);
    }
    let names = ["q", "k1", "k2", "v1", "v2", "o", "dout", "lse"];
    let guards = tensors.map(|t| t.storage_and_layout());
    let st = cuda_storages("simplicial attention backward", names, &guards)?;
    let (dtype, dev, limits) = launch::target(st[0].0)?;
    let plan = simplicial::backward(&call.dims, &call.win, dtype, &call.kernels, &limits)?;
    Ok(match (plan, Elem::of(dtype, "simplicial attention")?) {
        (Backward::Core { delta, dq, dkv }, Elem::Bf16) => wrap_grads(
            dev,
            core::<half::bf16>(call, dev, &st, [&delta, &dq, &dkv])?,
            &tensors,
        ),
        (Backward::Core { delta, dq, dkv }, Elem::F32) => wrap_grads(
            dev,
            core::<f32>(call, dev, &st, [&delta, &dq, &dkv])?,
            &tensors,
        ),
        (Backward::TensorCore { delta, q, k, round }, _) => {
            let grads = super::backward_tc::backward(call, dev, &st, [&delta, &q, &k, &round])?;
            wrap_grads(dev, grads, &tensors)
        }
    })
}

/// The backward of a call whose values are narrower than its keys (the producer forward's
/// D = 128, Dv = 64) as the call with v1, v2, o and dout zero-padded to `wide` columns, which
/// the tensor-core backward takes: zero value columns change no logit, no probability and no
/// delta (o's padded columns are zero, and so are dout's), so dq, dk1, dk2 are the narrow
/// call's, and dv1, dv2 are its own in their first Dv columns.
fn backward_values_padded(
    call: &Call,
    [q, k1, k2, v1, v2, o, dout, lse]: [&Tensor; 8],
    wide: usize,
) -> Result<[Tensor; 5]> {
    let dv = call.dims.dv;
    let pad = |t: &Tensor| t.pad_with_zeros(3, 0, wide - dv)?.contiguous();
    let (v1, v2, o, dout) = (pad(v1)?, pad(v2)?, pad(o)?, pad(dout)?);
    let wide_call = Call {
        dims: Dims {
            dv: wide,
            ..call.dims
        },
        ..*call
    };
    let [dq, dk1, dk2, dv1, dv2] = backward(&wide_call, [q, k1, k2, &v1, &v2, &o, &dout, lse])?;
    let narrow = |t: Tensor| t.narrow(3, 0, dv)?.contiguous();
    Ok([dq, dk1, dk2, narrow(dv1)?, narrow(dv2)?])
}

/// `[dq, dk1, dk2, dv1, dv2]` as tensors shaped like `[q, k1, k2, v1, v2]`.
fn wrap_grads<T: Element>(
    dev: &CudaDevice,
    grads: [CudaSlice<T>; 5],
    like: &[&Tensor; 8],
) -> [Tensor; 5] {
    let mut i = 0;
    grads.map(|g| {
        let t = wrap_tensor(g, dev, like[i].shape());
        i += 1;
        t
    })
}

/// Views of the backward's inputs, the key/value sets in the caller's order.
pub(super) struct Inputs<'a, T> {
    pub(super) q: CudaView<'a, T>,
    pub(super) k: [CudaView<'a, T>; 2],
    pub(super) v: [CudaView<'a, T>; 2],
    pub(super) o: CudaView<'a, T>,
    pub(super) dout: CudaView<'a, T>,
    pub(super) lse: CudaView<'a, f32>,
}

impl<'a, T: Element> Inputs<'a, T> {
    /// Views of `[q, k1, k2, v1, v2, o, dout, lse]`, their element counts checked for `call`.
    pub(super) fn new(call: &Call, st: &[(&'a CudaStorage, &'a Layout); 8]) -> Result<Self> {
        let [nq, nk, nv, no] = call.dims.lens();
        let op = "simplicial attention";
        let [q, k1, k2, v1, v2, o, dout] = typed_views::<T, 7>(
            op,
            [st[0], st[1], st[2], st[3], st[4], st[5], st[6]],
            ["q", "k1", "k2", "v1", "v2", "o", "dout"],
            [nq, nk, nk, nv, nv, no, no],
        )?;
        let rows = no / call.dims.dv;
        let [lse] = typed_views::<f32, 1>(op, [st[7]], ["lse"], [rows])?;
        Ok(Inputs {
            q,
            k: [k1, k2],
            v: [v1, v2],
            o,
            dout,
            lse,
        })
    }
}

/// The pre-pass `delta [B,N,Hq] = sum_c o * dout` (f32), shared by both backwards.
pub(super) fn delta<T: Element>(
    dev: &CudaDevice,
    launch: &Launch,
    shape: &KernelShape,
    x: &Inputs<'_, T>,
    poison: bool,
) -> Result<CudaSlice<f32>> {
    let stream = dev.cuda_stream();
    let planned = Planned::new(dev, launch)?;
    let mut delta = output_poisoned::<f32>(&stream, x.lse.len(), "delta", poison)?;
    // SAFETY: (const T* o, const T* dout, float* delta, Shape) as the kernel declares; o and dout
    // hold B*N*Hq*Dv elements, delta B*N*Hq, and the grid covers every row.
    unsafe {
        planned.run(&stream, |a| {
            a.arg(&x.o).arg(&x.dout).arg(&mut delta).arg(shape);
        })
    }?;
    Ok(delta)
}

/// The CUDA-core backward: delta, dq, then dk/dv for (k2, v2) owning and for (k1, v1).
fn core<T: Element>(
    call: &Call,
    dev: &CudaDevice,
    st: &[(&CudaStorage, &Layout); 8],
    [delta, dq, dkv]: [&Launch; 3],
) -> Result<[CudaSlice<T>; 5]> {
    let d = call.dims;
    let poison = call.kernels.poison_outputs;
    let shape = KernelShape::new(&d, &call.win, call.scale)?;
    let x = Inputs::<T>::new(call, st)?;
    let stream = dev.cuda_stream();
    let delta = self::delta::<T>(dev, delta, &shape, &x, poison)?;
    let (nk, nv) = (x.k[0].len(), x.v[0].len());
    let out = |len, name| output_poisoned::<T>(&stream, len, name, poison);

    // dq: like the forward, the dq kernel tiles its window 2: give it the larger window there
    let planned = Planned::new(dev, dq)?;
    let mut dq = out(x.q.len(), "dq")?;
    let ex = exchange_sets(&call.win);
    let ((qk1, qv1), (qk2, qv2)) = oriented(ex, (&x.k[0], &x.v[0]), (&x.k[1], &x.v[1]));
    let qshape = shape.oriented(ex);
    // SAFETY: (q, k1, k2, v1, v2, dout, lse, delta, dq, Shape) as the kernel declares; the views
    // hold the counts it indexes and its grid covers all B * N * Hq rows of dq.
    unsafe {
        planned.run(&stream, |a| {
            a.arg(&x.q).arg(qk1).arg(qk2).arg(qv1).arg(qv2);
            a.arg(&x.dout)
                .arg(&x.lse)
                .arg(&delta)
                .arg(&mut dq)
                .arg(&qshape);
        })
    }?;

    // dk, dv: the dkv kernel owns its "k2" argument; run it for (k2, v2) and for (k1, v1)
    let planned = Planned::new(dev, dkv)?;
    let mut dk = [out(nk, "dk1")?, out(nk, "dk2")?];
    let mut dvs = [out(nv, "dv1")?, out(nv, "dv2")?];
    for own_second in [true, false] {
        let owned = usize::from(own_second);
        let other = 1 - owned;
        let sh = if own_second { shape } else { shape.swapped() };
        let (dko, dvo) = (&mut dk[owned], &mut dvs[owned]);
        let (kp, ko, vp, vo) = (&x.k[other], &x.k[owned], &x.v[other], &x.v[owned]);
        // SAFETY: (q, k1, k2, v1, v2, dout, lse, delta, dk2, dv2, Shape) as the kernel declares
        // (the owned set second); every view holds the counts it indexes, and the grid covers
        // all N keys of every (K/V head, batch) of the owned set.
        unsafe {
            planned.run(&stream, |a| {
                a.arg(&x.q).arg(kp).arg(ko).arg(vp).arg(vo);
                a.arg(&x.dout)
                    .arg(&x.lse)
                    .arg(&delta)
                    .arg(dko)
                    .arg(dvo)
                    .arg(&sh);
            })
        }?;
    }
    let [dk1, dk2] = dk;
    let [dv1, dv2] = dvs;
    Ok([dq, dk1, dk2, dv1, dv2])
}
