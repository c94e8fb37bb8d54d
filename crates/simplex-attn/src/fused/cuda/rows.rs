//! Launches of the row-wise fused ops: RMSNorm (with the residual add), SwiGLU, and the
//! cross-entropy rows.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Result, Storage, Tensor};

use super::{addr, alloc, cfg, storage_addr, symbol, tensor_addr, vec_ok, THREADS};

/// What the RMSNorm forward produces.
pub(crate) struct NormOut {
    pub(crate) h: Option<CudaStorage>,
    pub(crate) y: CudaStorage,
    pub(crate) rstd: Tensor,
}

pub(crate) fn norm_forward(
    x: &CudaStorage,
    lx: &Layout,
    a: Option<(&CudaStorage, &Layout)>,
    w: &CudaStorage,
    lw: &Layout,
    eps: f64,
) -> Result<NormOut> {
    let op = "rms_norm";
    let (rows, c) = crate::fused::rows_cols(op, lx.shape())?;
    let dev = x.device().clone();
    let dt = x.dtype();
    let name = symbol(dt, op, ["rms_norm_fwd_bf16", "rms_norm_fwd_f32"])?;
    let xa = addr(x, lx, op, "x")?;
    let wa = addr(w, lw, op, "weight")?;
    let aa = a
        .map(|(s, l)| addr(s, l, op, "residual"))
        .transpose()?
        .unwrap_or(0);
    let h = a.map(|_| alloc(&dev, dt, rows * c, "h")).transpose()?;
    let y = alloc(&dev, dt, rows * c, "y")?;
    let rstd = alloc(&dev, DType::F32, rows, "rstd")?;
    let ha = h
        .as_ref()
        .map(|h| storage_addr(h, rows * c, op, "h"))
        .transpose()?
        .unwrap_or(0);
    let (ya, ra) = (
        storage_addr(&y, rows * c, op, "y")?,
        storage_addr(&rstd, rows, op, "rstd")?,
    );
    let vec = vec_ok(&[xa, wa, aa, ha, ya], &[c], dt);
    let (r, cc, e) = (rows as i32, c as i32, eps as f32);
    launch!(&dev, name, cfg(rows.div_ceil(8), THREADS, 0)?; &xa, &aa, &wa, &ha, &ya, &ra, &r, &cc, &e, &vec);
    let rstd = Tensor::from_storage(
        Storage::Cuda(rstd),
        rows,
        candle_core::op::BackpropOp::none(),
        false,
    );
    Ok(NormOut { h, y, rstd })
}

/// Blocks of the RMSNorm backward (a function of the shape only, so dw sums in a fixed order).
fn norm_bwd_blocks(rows: usize) -> usize {
    rows.div_ceil(4).clamp(1, 528)
}

pub(crate) fn norm_backward(
    dy: &Tensor,
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    plus: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let op = "rms_norm backward";
    let (rows, c) = crate::fused::rows_cols(op, h.shape())?;
    let Some(dev) = h.device().as_cuda_device().ok().cloned() else {
        candle_core::bail!("{op}: not on the CUDA device")
    };
    let dt = h.dtype();
    let bwd = symbol(dt, op, ["rms_norm_bwd_bf16", "rms_norm_bwd_f32"])?;
    let dw_sum = symbol(dt, op, ["rms_norm_dw_bf16", "rms_norm_dw_f32"])?;
    let (dya, ha, wa, ra) = (
        tensor_addr(dy, op, "dy")?,
        tensor_addr(h, op, "h")?,
        tensor_addr(w, op, "weight")?,
        tensor_addr(rstd, op, "rstd")?,
    );
    // the gradient added to dh (null: none), like h
    let pa_plus = match plus {
        Some(p) => tensor_addr(p, op, "the added gradient")?,
        None => 0u64,
    };
    let blocks = norm_bwd_blocks(rows);
    let warps = (THREADS / 32) as usize;
    let dh = alloc(&dev, dt, rows * c, "dh")?;
    let part = alloc(&dev, DType::F32, blocks * c, "dw partials")?;
    let dw = alloc(&dev, dt, c, "dw")?;
    let (dha, pa, dwa) = (
        storage_addr(&dh, rows * c, op, "dh")?,
        storage_addr(&part, blocks * c, op, "partials")?,
        storage_addr(&dw, c, op, "dw")?,
    );
    let vec = match plus {
        Some(_) => vec_ok(&[dya, ha, wa, dha, pa_plus], &[c], dt),
        None => vec_ok(&[dya, ha, wa, dha], &[c], dt),
    };
    let (r, cc, nb) = (rows as i32, c as i32, blocks as i32);
    launch!(&dev, bwd, cfg(blocks, THREADS, warps * c * 4)?; &dya, &ha, &wa, &ra, &pa_plus, &dha, &pa, &r, &cc, &vec);
    launch!(&dev, dw_sum, cfg(c.div_ceil(256), 256, 0)?; &pa, &dwa, &nb, &cc);
    drop(part);
    Ok((
        Tensor::from_storage(
            Storage::Cuda(dh),
            h.shape().clone(),
            candle_core::op::BackpropOp::none(),
            false,
        ),
        Tensor::from_storage(
            Storage::Cuda(dw),
            c,
            candle_core::op::BackpropOp::none(),
            false,
        ),
    ))
}

pub(crate) fn swiglu_forward(s: &CudaStorage, l: &Layout, h: usize) -> Result<CudaStorage> {
    let op = "swiglu";
    let (rows, _) = crate::fused::rows_cols(op, l.shape())?;
    let dev = s.device().clone();
    let dt = s.dtype();
    let ga = addr(s, l, op, "gu")?;
    let out = alloc(&dev, dt, rows * h, "out")?;
    let oa = storage_addr(&out, rows * h, op, "out")?;
    let vec = vec_ok(&[ga, oa], &[h], dt);
    let (r, hh) = (rows as i64, h as i32);
    let n = rows * h.div_ceil(8);
    launch!(&dev, symbol(dt, op, ["swiglu_fwd_bf16", "swiglu_fwd_f32"])?, cfg(n.div_ceil(256), 256, 0)?; &ga, &oa, &r, &hh, &vec);
    Ok(out)
}

pub(crate) fn swiglu_backward(gu: &Tensor, dout: &Tensor, h: usize) -> Result<Tensor> {
    let op = "swiglu backward";
    let (rows, _) = crate::fused::rows_cols(op, gu.shape())?;
    let Some(dev) = gu.device().as_cuda_device().ok().cloned() else {
        candle_core::bail!("{op}: not on the CUDA device")
    };
    let dt = gu.dtype();
    let (ga, da) = (tensor_addr(gu, op, "gu")?, tensor_addr(dout, op, "dout")?);
    let d = alloc(&dev, dt, rows * 2 * h, "dgu")?;
    let dga = storage_addr(&d, rows * 2 * h, op, "dgu")?;
    let vec = vec_ok(&[ga, da, dga], &[h], dt);
    let (r, hh) = (rows as i64, h as i32);
    let n = rows * h.div_ceil(8);
    launch!(&dev, symbol(dt, op, ["swiglu_bwd_bf16", "swiglu_bwd_f32"])?, cfg(n.div_ceil(256), 256, 0)?; &ga, &da, &dga, &r, &hh, &vec);
    Ok(Tensor::from_storage(
        Storage::Cuda(d),
        gu.shape().clone(),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

pub(crate) fn xent_rows(
    z: &CudaStorage,
    lz: &Layout,
    ids: &CudaStorage,
    li: &Layout,
    inv: &CudaStorage,
    linv: &Layout,
    ignore: Option<u32>,
) -> Result<(CudaStorage, Tensor)> {
    let op = "cross_entropy";
    let (rows, v) = lz.shape().dims2()?;
    let dev = z.device().clone();
    let dt = z.dtype();
    if inv.dtype() != DType::F32 || ids.dtype() != DType::U32 {
        candle_core::bail!("{op} on CUDA: targets must be u32 and 1/n f32")
    }
    let (za, ia, va) = (
        addr(z, lz, op, "logits")?,
        addr(ids, li, op, "targets")?,
        addr(inv, linv, op, "1/n")?,
    );
    let dz = alloc(&dev, dt, rows * v, "dz")?;
    let loss = alloc(&dev, DType::F32, rows, "loss rows")?;
    let (dza, la) = (
        storage_addr(&dz, rows * v, op, "dz")?,
        storage_addr(&loss, rows, op, "loss")?,
    );
    let (vv, ig, has) = (v as i32, ignore.unwrap_or(0), i32::from(ignore.is_some()));
    let threads = if v >= 1024 { 256 } else { 128 };
    launch!(&dev, symbol(dt, op, ["xent_rows_bf16", "xent_rows_f32"])?, cfg(rows, threads, 0)?; &za, &ia, &va, &dza, &la, &vv, &ig, &has);
    let loss = Tensor::from_storage(
        Storage::Cuda(loss),
        rows,
        candle_core::op::BackpropOp::none(),
        false,
    );
    Ok((dz, loss))
}
