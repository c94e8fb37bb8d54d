//! Device buffers for the launch code of every op: typed views of candle storages, fresh
//! outputs (NaN-filled when asked), gradients handed back to candle, and the memory pool.

use std::ops::Deref;
use std::sync::Arc;

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{Layout, Result, Storage};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtrMut, DeviceRepr};

use crate::kernels::POISON_BY_DEFAULT;

/// The element types the kernels are compiled for.
pub(crate) trait Element:
    candle_core::cuda_backend::CudaDType + DeviceRepr + candle_core::WithDType
{
}

impl Element for half::bf16 {}

impl Element for f32 {}

/// A candle error for a failed CUDA call, naming what was being done.
pub(crate) fn cuda_err(
    what: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA: {what}: {e}"))
}

/// The contiguous data of a CUDA storage as a typed view of `len` elements; `op` (which
/// attention) and `name` go into the errors.
pub(crate) fn typed_view<'a, T: Element>(
    op: &str,
    s: &'a CudaStorage,
    l: &Layout,
    name: &str,
    len: usize,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} on CUDA: {name} {:?} must be contiguous", l.shape())
    };
    if end - start != len {
        candle_core::bail!(
            "{op} on CUDA: {name} has {} elements, expected {len}",
            end - start
        );
    }
    s.as_cuda_slice::<T>()?
        .try_slice(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: {name} is out of its buffer")))
}

/// Typed views of `N` storages (`(storage, layout)` as [`cuda_storages`] gives them) of the
/// element counts `lens`, named `names` in the errors of `op`.
pub(crate) fn typed_views<'a, T: Element, const N: usize>(
    op: &str,
    st: [(&'a CudaStorage, &'a Layout); N],
    names: [&str; N],
    lens: [usize; N],
) -> Result<[CudaView<'a, T>; N]> {
    let mut views = Vec::with_capacity(N);
    for (((s, l), name), len) in st.into_iter().zip(names).zip(lens) {
        views.push(typed_view::<T>(op, s, l, name, len)?);
    }
    match views.try_into() {
        Ok(v) => Ok(v),
        Err(_) => unreachable!("one view per storage"),
    }
}

/// The CUDA storages and layouts behind `guards` (from `Tensor::storage_and_layout`); an error
/// naming the tensor (`op`: `name` ...) where one is not on the CUDA device.
pub(crate) fn cuda_storages<'a, G: Deref<Target = Storage>, const N: usize>(
    op: &str,
    names: [&str; N],
    guards: &'a [(G, &'a Layout); N],
) -> Result<[(&'a CudaStorage, &'a Layout); N]> {
    let mut st = Vec::with_capacity(N);
    for ((g, l), name) in guards.iter().zip(names) {
        match &**g {
            Storage::Cuda(s) => st.push((s, *l)),
            _ => candle_core::bail!("{op}: {name} is not on the CUDA device"),
        }
    }
    match st.try_into() {
        Ok(st) => Ok(st),
        Err(_) => unreachable!("one storage per guard"),
    }
}

/// A fresh device buffer for an output, NaN-filled when the build poisons outputs by default
/// ([`POISON_BY_DEFAULT`]; the fused ops).
pub(crate) fn output<T: Element>(
    stream: &Arc<CudaStream>,
    len: usize,
    name: &str,
) -> Result<CudaSlice<T>> {
    output_poisoned(stream, len, name, POISON_BY_DEFAULT)
}

/// A fresh device buffer for an output; NaN-filled when `poison` (so that a test sees any
/// element a kernel leaves unwritten).
pub(crate) fn output_poisoned<T: Element>(
    stream: &Arc<CudaStream>,
    len: usize,
    name: &str,
    poison: bool,
) -> Result<CudaSlice<T>> {
    // SAFETY: the kernels write every element of their outputs (the grids cover all rows and
    // keys); with poisoning on, the tests check that no NaN fill survives.
    let mut s =
        unsafe { stream.alloc::<T>(len) }.map_err(|e| cuda_err(format!("allocating {name}"), e))?;
    if poison && len > 0 {
        let bytes = s.num_bytes();
        let (ptr, _sync) = s.device_ptr_mut(stream);
        // SAFETY: ptr is the start of this allocation of exactly `bytes` bytes; 0xFF bytes are a
        // NaN in f32 and bf16.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }
            .map_err(|e| cuda_err(format!("poisoning {name}"), e))?;
    }
    Ok(s)
}

/// A device buffer as a (non-differentiable) candle tensor of `shape`: the gradients and lse
/// the launch code hands to candle.
pub(crate) fn wrap_tensor<T: Element>(
    s: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<candle_core::Shape>,
) -> candle_core::Tensor {
    candle_core::Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice::<T>(s, dev.clone())),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// Makes the device's stream-ordered memory pool keep the memory it has handed out once it is
/// freed (release threshold: unlimited), as PyTorch's caching allocator does. By default the
/// pool returns free memory to the driver at every synchronization, so the next allocations map
/// it again: measured on an H100, dot-product attention at a small LM layer took 0.424 ms
/// forward and 1.834 ms forward+backward with the default, 0.197 and 1.157 with this
/// (docs/kernels.md). Process-wide for the device; the CLI calls it when it opens one.
pub fn retain_pool_memory(dev: &CudaDevice) -> Result<()> {
    use cudarc::driver::{result, sys};
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| cuda_err("binding the context", e))?;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut threshold = u64::MAX;
    // SAFETY: the pool is the live device's current pool; the attribute is a u64 (cuuint64_t)
    // as the driver API documents, read from a live local.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())
            .map_err(|e| cuda_err("reading the memory pool", e))?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| cuda_err("setting the memory pool's release threshold", e))?;
    }
    Ok(())
}
