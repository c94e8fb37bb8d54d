//! Launches of the dot-product attention backward (shapes of [`crate::dot::DotSpec`]):
//!
//! ```text
//! delta [B,Nq,Hq]    = rowsum(o * dout)         dot_attn_simple.cu   (in the wgmma dq kernel
//!                                                for the wgmma kernels)
//! dq    [B,Nq,Hq,D]  per block of queries       dot_attn_bwd_wgmma.cu (or dot_attn_bwd_dq.cu,
//!                                                dot_attn_simple.cu)
//! dk, dv [B,Nk,Hkv,*] per block of keys, summed  dot_attn_bwd_wgmma.cu (or dot_attn_bwd_dkv.cu,
//!                     over the G heads of a group dot_attn_simple.cu)
//! ```
//! Deterministic: no atomics; every block owns the gradient rows it writes, so two runs give the
//! same bits.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{Layout, Result, Storage, Tensor};
use cudarc::driver::PushKernelArg;

use super::dot::{aligned, choose, err, load, persistent_grid, view, DotKernelShape};
use super::module::Family;
use super::{blocks, cuda_storages, launch_config, output, Elem, Element};
use crate::dot::plan::{
    dkv_smem, dq_smem, simple_smem, wgmma_dkv_smem, wgmma_dq_smem, wgmma_key_items,
    wgmma_row_items, DotKernel, BWD_THREADS, DKV_KEYS, DQ_QUERIES, SIMPLE_ROWS, SIMPLE_THREADS,
    WGMMA_THREADS,
};
use crate::dot::{DotDims, DotOp};

/// The backward on CUDA: (dq like q, dk like k, dv like v) in the input dtype, from
/// `[q, k, v, o, dout, lse]`.
pub(crate) fn dot_backward(op: &DotOp, ts: [&Tensor; 6]) -> Result<(Tensor, Tensor, Tensor)> {
    let ts = ts.map(|t| t.contiguous());
    let [q, k, v, o, dout, lse] = ts;
    let ts = [q?, k?, v?, o?, dout?, lse?];
    let dtype = ts[0].dtype();
    let names = ["q", "k", "v", "o", "dout", "lse"];
    let guards = ts.each_ref().map(|t| t.storage_and_layout());
    let st = cuda_storages("dot attention", names, &guards)?;
    // q, k, v and dout feed cp.async in the tensor-core kernels; o only the delta pre-pass
    let all_aligned = [0, 1, 2, 4].iter().all(|&t| aligned(st[t].1, dtype));
    let kernel = choose(op, dtype, all_aligned)?;
    let (dq, dk, dv) = match Elem::of(dtype)? {
        Elem::Bf16 => backward_typed::<half::bf16>(op, kernel, st)?,
        Elem::F32 => backward_typed::<f32>(op, kernel, st)?,
    };
    let wrap = |s: CudaStorage, t: &Tensor| {
        Tensor::from_storage(
            Storage::Cuda(s),
            t.shape().clone(),
            BackpropOp::none(),
            false,
        )
    };
    Ok((wrap(dq, &ts[0]), wrap(dk, &ts[1]), wrap(dv, &ts[2])))
}

fn backward_typed<T: Element>(
    op: &DotOp,
    kernel: DotKernel,
    st: [(&CudaStorage, &Layout); 6],
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let DotDims {
        batch: b,
        seq_q: nq,
        seq_k: nk,
        heads_q: hq,
        heads_kv: hkv,
        d,
        dv,
    } = op.dims;
    let shape = DotKernelShape::new(op)?;
    let (nqd, nkd, nkv, nqv) = (
        b * nq * hq * d,
        b * nk * hkv * d,
        b * nk * hkv * dv,
        b * nq * hq * dv,
    );
    let qv = view::<T>(st[0].0, st[0].1, "q", nqd)?;
    let kv = view::<T>(st[1].0, st[1].1, "k", nkd)?;
    let vv = view::<T>(st[2].0, st[2].1, "v", nkv)?;
    let ov = view::<T>(st[3].0, st[3].1, "o", nqv)?;
    let dov = view::<T>(st[4].0, st[4].1, "dout", nqv)?;
    let lsev = view::<f32>(st[5].0, st[5].1, "lse", b * nq * hq)?;
    let dev = st[0].0.device().clone();
    let stream = dev.cuda_stream();
    let dt = T::NAME;

    // delta = rowsum(o * dout): a pre-pass, except for the wgmma kernels, whose dq kernel
    // computes it (and writes it for their dk/dv kernel, which runs after it)
    let wgmma = matches!(kernel, DotKernel::Wgmma { .. });
    let mut delta = output::<f32>(&stream, b * nq * hq, "delta")?;
    if !wgmma {
        let name = format!("dot_bwd_delta_{dt}");
        let cfg = launch_config((blocks(b * nq * hq, SIMPLE_ROWS)?, 1, 1), SIMPLE_THREADS, 0);
        let func = load(&dev, Family::DotSimple, &name, 0)?;
        let mut launch = stream.launch_builder(&func.func);
        launch.arg(&ov).arg(&dov).arg(&mut delta).arg(&shape);
        // SAFETY: (const T* o, const T* dout, float* delta, DotShape) as the kernel declares; o
        // and dout hold B*Nq*Hq*Dv elements, delta B*Nq*Hq, one warp per row covers every row.
        unsafe { launch.launch(cfg) }.map_err(|e| err(&name, e))?;
    }

    let (dq_name, dkv_name, dq_cfg, dkv_cfg, dq_family, dkv_family) = match kernel {
        DotKernel::Wgmma { d } if dt == "bf16" => (
            format!("dot_bwd_dq_wgmma_bf16_d{d}"),
            format!("dot_bwd_dkv_wgmma_bf16_d{d}"),
            launch_config(
                persistent_grid(&dev, wgmma_row_items(nq, hq, hkv, b))?,
                WGMMA_THREADS,
                wgmma_dq_smem(d),
            ),
            launch_config(
                persistent_grid(&dev, wgmma_key_items(nk, hkv, b))?,
                WGMMA_THREADS,
                wgmma_dkv_smem(d),
            ),
            Family::DotBackwardWgmma,
            Family::DotBackwardWgmma,
        ),
        DotKernel::TensorCore { d } if dt == "bf16" => (
            format!("dot_bwd_dq_bf16_d{d}"),
            format!("dot_bwd_dkv_bf16_d{d}"),
            launch_config(
                (blocks(nq, DQ_QUERIES)?, hq as u32, b as u32),
                BWD_THREADS,
                dq_smem(d),
            ),
            launch_config(
                (blocks(nk, DKV_KEYS)?, hkv as u32, b as u32),
                BWD_THREADS,
                dkv_smem(d),
            ),
            Family::DotBackwardQuery,
            Family::DotBackwardKey,
        ),
        DotKernel::Wgmma { .. } | DotKernel::TensorCore { .. } => {
            candle_core::bail!("dot attention: the tensor-core kernels take bf16, got {dt}")
        }
        DotKernel::Simple { width } => (
            format!("dot_bwd_dq_simple_{dt}_w{width}"),
            format!("dot_bwd_dkv_simple_{dt}_w{width}"),
            launch_config(
                (blocks(b * nq * hq, SIMPLE_ROWS)?, 1, 1),
                SIMPLE_THREADS,
                simple_smem(2, width),
            ),
            launch_config(
                (blocks(b * nk * hkv, SIMPLE_ROWS)?, 1, 1),
                SIMPLE_THREADS,
                simple_smem(2, width),
            ),
            Family::DotSimple,
            Family::DotSimple,
        ),
    };

    // dq
    let func = load(&dev, dq_family, &dq_name, dq_cfg.shared_mem_bytes as usize)?;
    let mut dq = output::<T>(&stream, nqd, "dq")?;
    let mut launch = stream.launch_builder(&func.func);
    launch.arg(&qv).arg(&kv).arg(&vv).arg(&dov);
    if wgmma {
        launch.arg(&ov).arg(&lsev).arg(&mut delta);
    } else {
        launch.arg(&lsev).arg(&delta);
    }
    launch.arg(&mut dq).arg(&shape);
    // SAFETY: (q, k, v, dout, lse, delta, dq, DotShape) as the kernel declares, and for the
    // wgmma kernel (q, k, v, dout, o, lse, delta (written: every row), dq, DotShape); every view
    // holds the counts it indexes (checked by `view`), and the grid covers all B * Nq * Hq rows
    // of dq and delta (the persistent wgmma CTAs between them).
    unsafe { launch.launch(dq_cfg) }.map_err(|e| err(&dq_name, e))?;

    // dk, dv
    let func = load(
        &dev,
        dkv_family,
        &dkv_name,
        dkv_cfg.shared_mem_bytes as usize,
    )?;
    let mut dk = output::<T>(&stream, nkd, "dk")?;
    let mut dvs = output::<T>(&stream, nkv, "dv")?;
    let mut launch = stream.launch_builder(&func.func);
    launch
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&dov)
        .arg(&lsev)
        .arg(&delta);
    launch.arg(&mut dk).arg(&mut dvs).arg(&shape);
    // SAFETY: (q, k, v, dout, lse, delta, dk, dv, DotShape) as the kernel declares; every view
    // holds the counts it indexes, and the grid covers all B * Nk * Hkv key rows of dk and dv
    // (the persistent wgmma CTAs between them).
    unsafe { launch.launch(dkv_cfg) }.map_err(|e| err(&dkv_name, e))?;

    let wrap = |s| CudaStorage::wrap_cuda_slice::<T>(s, dev.clone());
    Ok((wrap(dq), wrap(dk), wrap(dvs)))
}
