//! Launches of the backward: `kernels/simplicial_bwd_dq.cu` (delta pre-pass, dq) and
//! `kernels/simplicial_bwd_dkv.cu` (dk, dv of one key/value set), the latter once per set.
//!
//! ```text
//! delta [B,N,Hq]  = sum_c o * dout                       pre-pass
//! dq    [B,N,Hq,D]                                       one launch, rows as in the forward
//! dk1, dk2 [B,N,Hkv,D], dv1, dv2 [B,N,Hkv,Dv]           dkv launched for (k2,v2) owning, then
//!                                                        with the sets exchanged for (k1,v1)
//! ```
//! Deterministic: no atomics; every block owns the gradient rows it writes. bf16 calls that
//! `backward_mma` covers run the tensor-core kernels instead (unless SIMPLEX_DETERMINISTIC=1).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Result, Tensor};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::module::{self, Family};
use super::{
    blocks, check_smem, cuda_err, cuda_storages, exchange_sets, launch_config, oriented, output,
    variant, view, width, wrap_tensor, Elem, Element, KernelShape,
};
use crate::op::SimplicialOp;

const THREADS: u32 = 256;
/// Rows per block of the delta pre-pass (one warp each).
const DELTA_ROWS: usize = 8;
/// Rows per block and keys per tile of the dq kernel; must match `RB`, `TK` in
/// simplicial_bwd_dq.cu.
const DQ_ROWS: usize = 16;
const DQ_KEYS: usize = 64;
/// Owned keys per block and streamed rows per batch of the dkv kernel; must match `KB`, `RS` in
/// simplicial_bwd_dkv.cu.
const DKV_KEYS: usize = 32;
const DKV_ROWS: usize = 32;

fn dq_smem_bytes(d: usize, dv: usize) -> usize {
    4 * (DQ_KEYS * (d | 1)
        + DQ_KEYS * (dv | 1)
        + 2 * DQ_ROWS * d
        + 2 * DQ_ROWS * dv
        + DQ_ROWS * DQ_KEYS)
}

fn dkv_smem_bytes(d: usize, dv: usize) -> usize {
    let floats = DKV_KEYS * (d | 1)
        + DKV_KEYS * (dv | 1)
        + DKV_ROWS * (d + dv)
        + 2 * DKV_ROWS * (DKV_KEYS + 1)
        + 2 * DKV_ROWS;
    4 * floats + DKV_ROWS * (8 + 3 * 4)
}

/// The backward on CUDA from `[q, k1, k2, v1, v2, o, dout, lse]`: `[dq, dk1, dk2, dv1, dv2]`,
/// each like its input, in the input dtype.
pub(crate) fn backward(op: &SimplicialOp, ts: [&Tensor; 8]) -> Result<[Tensor; 5]> {
    if super::backward_mma::covers(op, ts[0].dtype()) {
        return super::backward_mma::backward(op, ts);
    }
    match Elem::of(ts[0].dtype())? {
        Elem::Bf16 => backward_typed::<half::bf16>(op, ts),
        Elem::F32 => backward_typed::<f32>(op, ts),
    }
}

fn backward_typed<T: Element>(op: &SimplicialOp, tensors: [&Tensor; 8]) -> Result<[Tensor; 5]> {
    let dims = op.dims;
    let (b, n, hq, hkv, d, dv) = (
        dims.batch,
        dims.seq,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
    );
    let shape = KernelShape::new(&dims, &op.win, op.scale)?;
    let names = ["q", "k1", "k2", "v1", "v2", "o", "dout", "lse"];
    let guards = tensors.map(|t| t.storage_and_layout());
    let st = cuda_storages("simplicial attention backward", names, &guards)?;
    let (nq, nk, nv, no) = (
        b * n * hq * d,
        b * n * hkv * d,
        b * n * hkv * dv,
        b * n * hq * dv,
    );
    let qv = view::<T>(st[0].0, st[0].1, "q", nq)?;
    let k1 = view::<T>(st[1].0, st[1].1, "k1", nk)?;
    let k2 = view::<T>(st[2].0, st[2].1, "k2", nk)?;
    let v1 = view::<T>(st[3].0, st[3].1, "v1", nv)?;
    let v2 = view::<T>(st[4].0, st[4].1, "v2", nv)?;
    let ov = view::<T>(st[5].0, st[5].1, "o", no)?;
    let dov = view::<T>(st[6].0, st[6].1, "dout", no)?;
    let lsev = view::<f32>(st[7].0, st[7].1, "lse", b * n * hq)?;

    let dev = st[0].0.device().clone();
    let stream = dev.cuda_stream();
    let dt = T::NAME;

    let delta = delta::<T>(&dev, &shape, &ov, &dov, b * n * hq)?;

    // dq
    let name = variant("simplicial_bwd_dq", dt, "d", width(d, "D")?);
    width(dv, "Dv")?;
    let kernel = module::kernel(&dev, Family::BackwardQuery, &name)?;
    let smem = dq_smem_bytes(d, dv);
    check_smem(&name, smem, kernel.max_smem, d, dv)?;
    let mut dq = output::<T>(&stream, nq, "dq")?;
    let cfg = launch_config(
        (blocks(n * (hq / hkv), DQ_ROWS)?, hkv as u32, b as u32),
        THREADS,
        smem,
    );
    // Like the forward, the dq kernel tiles its window 2: give it the larger window there.
    let ex = exchange_sets(&op.win);
    let ((qk1, qv1), (qk2, qv2)) = oriented(ex, (&k1, &v1), (&k2, &v2));
    let qshape = shape.oriented(ex);
    let mut launch = stream.launch_builder(&kernel.func);
    launch.arg(&qv).arg(qk1).arg(qk2).arg(qv1).arg(qv2);
    launch
        .arg(&dov)
        .arg(&lsev)
        .arg(&delta)
        .arg(&mut dq)
        .arg(&qshape);
    // SAFETY: the arguments follow the kernel's signature; the views hold the counts it indexes
    // (checked by `view`) and its grid covers all B * N * Hq rows of dq.
    unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(&name, e))?;

    // dk, dv: the dkv kernel owns its "k2" argument; run it for (k2, v2) and for (k1, v1).
    let name = variant(
        "simplicial_bwd_dkv",
        dt,
        "d",
        width(d.max(dv), "max(D, Dv)")?,
    );
    let kernel = module::kernel(&dev, Family::BackwardKey, &name)?;
    let smem = dkv_smem_bytes(d, dv);
    check_smem(&name, smem, kernel.max_smem, d, dv)?;
    let mut dk = [
        output::<T>(&stream, nk, "dk1")?,
        output::<T>(&stream, nk, "dk2")?,
    ];
    let mut dvs = [
        output::<T>(&stream, nv, "dv1")?,
        output::<T>(&stream, nv, "dv2")?,
    ];
    let cfg = launch_config((blocks(n, DKV_KEYS)?, hkv as u32, b as u32), THREADS, smem);
    for own_second in [true, false] {
        let (kp, ko, vp, vo, sh) = if own_second {
            (&k1, &k2, &v1, &v2, shape)
        } else {
            (&k2, &k1, &v2, &v1, shape.swapped())
        };
        let owned = usize::from(own_second);
        let (dko, dvo) = (&mut dk[owned], &mut dvs[owned]);
        let mut launch = stream.launch_builder(&kernel.func);
        launch
            .arg(&qv)
            .arg(kp)
            .arg(ko)
            .arg(vp)
            .arg(vo)
            .arg(&dov)
            .arg(&lsev)
            .arg(&delta);
        launch.arg(dko).arg(dvo).arg(&sh);
        // SAFETY: the arguments follow the kernel's signature; every view holds the counts it
        // indexes, and the grid covers all N keys of every (batch, K/V head) of the owned set.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(&name, e))?;
    }

    let [dk1, dk2] = dk;
    let [dv1, dv2] = dvs;
    Ok([
        wrap_tensor(dq, &dev, tensors[0].shape()),
        wrap_tensor(dk1, &dev, tensors[1].shape()),
        wrap_tensor(dk2, &dev, tensors[2].shape()),
        wrap_tensor(dv1, &dev, tensors[3].shape()),
        wrap_tensor(dv2, &dev, tensors[4].shape()),
    ])
}

/// The pre-pass `delta [B,N,Hq] = sum_c o * dout` (f32), shared by both backwards.
pub(super) fn delta<T: Element>(
    dev: &CudaDevice,
    shape: &KernelShape,
    o: &CudaView<'_, T>,
    dout: &CudaView<'_, T>,
    rows: usize,
) -> Result<CudaSlice<f32>> {
    let name = format!("simplicial_bwd_delta_{}", T::NAME);
    let stream = dev.cuda_stream();
    let kernel = module::kernel(dev, Family::BackwardQuery, &name)?;
    let mut delta = output::<f32>(&stream, rows, "delta")?;
    let cfg = launch_config((blocks(rows, DELTA_ROWS)?, 1, 1), THREADS, 0);
    let mut launch = stream.launch_builder(&kernel.func);
    launch.arg(o).arg(dout).arg(&mut delta).arg(shape);
    // SAFETY: (const T* o, const T* dout, float* delta, Shape) as the kernel declares; o and dout
    // hold B*N*Hq*Dv elements, delta B*N*Hq, and the grid covers every row.
    unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(&name, e))?;
    Ok(delta)
}
