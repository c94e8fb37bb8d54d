//! Launch of the dot-product attention forward: o `[B,Nq,Hq,Dv]` and lse `[B,Nq,Hq]` from
//! `q [B,Nq,Hq,D]`, `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]` (shapes of [`crate::dot::DotSpec`]).
//!
//! [`DotKernel::choose`] and [`DotKernel::forward`] pick the kernels: tensor cores for bf16,
//! D = Dv in {64, 128} (`kernels/dot_attn_fwd_wgmma.cu` at D = 128, `kernels/dot_attn_fwd.cu`,
//! mma.sync, at D = 64 and whenever the op asks for [`crate::dot::DotTensorCores::MmaSync`]) or
//! `kernels/dot_attn_simple.cu` (CUDA cores, bf16 or f32, head dims up to 256). The backward is in [`super::dot_backward`]; the tile sizes in [`crate::dot::plan`].

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaStream, CudaView, DeviceRepr, PushKernelArg};

use super::module::{self, Family, Kernel};
use super::{blocks, launch_config, output, tensor_core_kernels, typed_view, Elem, Element};
use crate::dot::plan::{
    fwd_smem, simple_smem, wgmma_fwd_smem, wgmma_grid, wgmma_row_items, DotKernel, FWD_QUERIES,
    FWD_THREADS, SIMPLE_ROWS, SIMPLE_THREADS, WGMMA_THREADS,
};
use crate::dot::{DotDims, DotOp};

/// The launch shape every dot-product kernel takes by value; mirrors `struct DotShape` in
/// `kernels/dot_attn.cuh` field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct DotKernelShape {
    batch: i32,
    seq_q: i32,
    seq_k: i32,
    heads_q: i32,
    heads_kv: i32,
    d: i32,
    dv: i32,
    causal: i32,
    window: i32,
    scale: f32,
}

// SAFETY: a #[repr(C)] struct of 4-byte plain values, the layout of `DotShape` in dot_attn.cuh.
unsafe impl DeviceRepr for DotKernelShape {}

impl DotKernelShape {
    /// The shape of `op`, after checking that the kernels' 32-bit row indices and grid
    /// dimensions hold it.
    pub(super) fn new(op: &DotOp) -> Result<DotKernelShape> {
        let DotDims {
            batch,
            seq_q,
            seq_k,
            heads_q,
            heads_kv,
            d,
            dv,
        } = op.dims;
        let rows = |n: usize, h: usize| {
            batch
                .checked_mul(n)
                .and_then(|x| x.checked_mul(h))
                .is_some_and(|x| x <= i32::MAX as usize)
        };
        if !rows(seq_q, heads_q) || !rows(seq_k, heads_kv) || seq_k > 1 << 30 {
            candle_core::bail!(
                "dot attention on CUDA: B * Nq * Hq = {batch} * {seq_q} * {heads_q} and \
                 B * Nk * Hkv = {batch} * {seq_k} * {heads_kv} must be under 2^31 (and Nk under 2^30)"
            );
        }
        if batch > 65535 || heads_q > 65535 {
            candle_core::bail!(
                "dot attention on CUDA: batch {batch} and heads_q {heads_q} must be at most 65535"
            );
        }
        let i = |x: usize| x as i32; // in range: each is at most one of the products above
        Ok(DotKernelShape {
            batch: i(batch),
            seq_q: i(seq_q),
            seq_k: i(seq_k),
            heads_q: i(heads_q),
            heads_kv: i(heads_kv),
            d: i(d),
            dv: i(dv),
            causal: i32::from(op.keys.causal),
            window: i(op.keys.w),
            scale: op.scale as f32,
        })
    }
}

/// True when the view starts on a 16-byte boundary (the tensor-core kernels copy 16-byte
/// chunks with cp.async; candle's buffers themselves are 256-byte aligned).
pub(super) fn aligned(l: &Layout, dtype: DType) -> bool {
    (l.start_offset() * dtype.size_in_bytes()).is_multiple_of(16)
}

/// The kernels for a call of `op`, or a clear error.
pub(super) fn choose(op: &DotOp, dtype: DType, aligned: bool) -> Result<DotKernel> {
    Ok(DotKernel::choose(
        dtype,
        op.dims.d,
        op.dims.dv,
        aligned,
        tensor_core_kernels(),
        op.tensor_cores,
    )?)
}

/// The persistent grid of a wgmma kernel over `items` work items on `dev`
/// ([`wgmma_grid`]: one CTA per multiprocessor at most).
pub(super) fn persistent_grid(dev: &CudaDevice, items: usize) -> Result<(u32, u32, u32)> {
    let sms = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| err("reading the multiprocessor count", e))?;
    let x = wgmma_grid(items, sms.max(1) as usize);
    let x = u32::try_from(x)
        .map_err(|_| candle_core::Error::Msg(format!("dot attention: {x} blocks")))?;
    Ok((x, 1, 1))
}

/// A candle error for a failed CUDA call, naming what was being done.
pub(super) fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("dot attention CUDA: {what}: {e}"))
}

/// The contiguous data of a CUDA storage as a typed view of `len` elements.
pub(super) fn view<'a, T: Element>(
    s: &'a CudaStorage,
    l: &Layout,
    name: &str,
    len: usize,
) -> Result<CudaView<'a, T>> {
    typed_view("dot attention", s, l, name, len)
}

/// Loads kernel `name` of `family` and checks that `smem` dynamic bytes fit one block.
pub(super) fn load(dev: &CudaDevice, family: Family, name: &str, smem: usize) -> Result<Kernel> {
    let k = module::kernel(dev, family, name)?;
    if smem > k.max_smem {
        candle_core::bail!(
            "{name}: needs {smem} bytes of shared memory, the device allows {}",
            k.max_smem
        );
    }
    Ok(k)
}

/// The forward on CUDA: returns o in the input dtype and saves lse (f32) in the op.
pub(crate) fn dot_forward(
    op: &DotOp,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dtype = q.0.dtype();
    let all_aligned = [q.1, k.1, v.1].iter().all(|l| aligned(l, dtype));
    let kernel = choose(op, dtype, all_aligned)?.forward();
    match Elem::of(dtype)? {
        Elem::Bf16 => forward_typed::<half::bf16>(op, kernel, q, k, v),
        Elem::F32 => forward_typed::<f32>(op, kernel, q, k, v),
    }
}

fn forward_typed<T: Element>(
    op: &DotOp,
    kernel: DotKernel,
    (q, lq): (&CudaStorage, &Layout),
    (k, lk): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
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
    let dev = q.device().clone();
    let stream: Arc<CudaStream> = dev.cuda_stream();
    let (name, family, cfg) = match kernel {
        DotKernel::Wgmma { d } if T::NAME == "bf16" => (
            format!("dot_fwd_wgmma_bf16_d{d}"),
            Family::DotForwardWgmma,
            launch_config(
                persistent_grid(&dev, wgmma_row_items(nq, hq, hkv, b))?,
                WGMMA_THREADS,
                wgmma_fwd_smem(d),
            ),
        ),
        DotKernel::TensorCore { d } if T::NAME == "bf16" => (
            format!("dot_fwd_bf16_d{d}"),
            Family::DotForward,
            launch_config(
                (blocks(nq, FWD_QUERIES)?, hq as u32, b as u32),
                FWD_THREADS,
                fwd_smem(d),
            ),
        ),
        DotKernel::Wgmma { .. } | DotKernel::TensorCore { .. } => {
            candle_core::bail!(
                "dot attention: the tensor-core kernels take bf16, got {}",
                T::NAME
            )
        }
        DotKernel::Simple { width } => (
            format!("dot_fwd_simple_{}_w{width}", T::NAME),
            Family::DotSimple,
            launch_config(
                (blocks(b * nq * hq, SIMPLE_ROWS)?, 1, 1),
                SIMPLE_THREADS,
                simple_smem(1, width),
            ),
        ),
    };
    let func = load(&dev, family, &name, cfg.shared_mem_bytes as usize)?;
    let qv = view::<T>(q, lq, "q", b * nq * hq * d)?;
    let kv = view::<T>(k, lk, "k", b * nk * hkv * d)?;
    let vv = view::<T>(v, lv, "v", b * nk * hkv * dv)?;
    let mut o = output::<T>(&stream, b * nq * hq * dv, "o")?;
    let mut lse = output::<f32>(&stream, b * nq * hq, "lse")?;
    let mut launch = stream.launch_builder(&func.func);
    launch
        .arg(&qv)
        .arg(&kv)
        .arg(&vv)
        .arg(&mut o)
        .arg(&mut lse)
        .arg(&shape);
    // SAFETY: (const T* q, const T* k, const T* v, T* o, float* lse, DotShape) as the kernel
    // declares; the views hold the element counts the kernel indexes (checked by `view`), and
    // the grid covers every (query, head) row of o and lse (all Nq queries of every head and
    // batch for the mma.sync kernel; the persistent wgmma kernel's CTAs walk all Nq * G rows of
    // every K/V head and batch between them; all B * Nq * Hq rows for the simple one).
    unsafe { launch.launch(cfg) }.map_err(|e| err(&name, e))?;

    let lse = Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, dev.clone())),
        (b, nq, hq),
        BackpropOp::none(),
        false,
    );
    op.save_lse(lse)?;
    Ok((
        CudaStorage::wrap_cuda_slice(o, dev),
        Shape::from((b, nq, hq, dv)),
    ))
}
