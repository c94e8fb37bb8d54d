//! Launch code of the fused ops' kernels (`kernels/fused_ops.cu`): one function per op and
//! direction, the shapes checked here, element types bf16 and f32 (each kernel compiled as
//! `NAME_bf16` and `NAME_f32`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Storage, Tensor};
use cudarc::driver::{DevicePtr, LaunchConfig};

const THREADS: u32 = 256;

/// The symbol, of `[bf16 symbol, f32 symbol]`, of the kernel compiled for `dtype`.
fn symbol(dtype: DType, op: &str, [bf16, f32]: [&'static str; 2]) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok(bf16),
        DType::F32 => Ok(f32),
        other => candle_core::bail!("{op} on CUDA: {other:?} inputs; the kernels take bf16 or f32"),
    }
}

/// The device address of the first element of a contiguous view (bf16, f32 or u32).
pub(crate) fn addr(s: &CudaStorage, l: &Layout, op: &str, name: &str) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} on CUDA: {name} {:?} must be contiguous", l.shape())
    };
    let stream = s.device().cuda_stream();
    let (base, size) = match s.dtype() {
        DType::BF16 => (s.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0, 2),
        DType::F32 => (s.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
        DType::U32 => (s.as_cuda_slice::<u32>()?.device_ptr(&stream).0, 4),
        other => candle_core::bail!("{op} on CUDA: {name} is {other:?}"),
    };
    Ok(base + (start * size) as u64)
}

/// [`addr`] of a tensor on the CUDA device.
pub(crate) fn tensor_addr(t: &Tensor, op: &str, name: &str) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => addr(c, l, op, name),
        _ => candle_core::bail!("{op}: {name} is not on the CUDA device"),
    }
}

/// Whether 16-byte accesses of 8 elements are aligned for every address and row width.
fn vec_ok(addrs: &[u64], widths: &[usize], dtype: DType) -> i32 {
    let ok = addrs.iter().all(|a| a % 16 == 0)
        && widths
            .iter()
            .all(|w| w % 8 == 0 && (w * dtype.size_in_bytes()).is_multiple_of(16));
    i32::from(ok)
}

/// A fresh buffer of `len` elements of `dtype` (NaN-filled when the crate poisons outputs).
fn alloc(dev: &CudaDevice, dtype: DType, len: usize, name: &str) -> Result<CudaStorage> {
    let stream = dev.cuda_stream();
    Ok(match dtype {
        DType::BF16 => CudaStorage::wrap_cuda_slice(
            crate::cuda::output::<half::bf16>(&stream, len, name)?,
            dev.clone(),
        ),
        DType::F32 => CudaStorage::wrap_cuda_slice(
            crate::cuda::output::<f32>(&stream, len, name)?,
            dev.clone(),
        ),
        other => candle_core::bail!("fused op on CUDA: cannot allocate {other:?}"),
    })
}

fn storage_addr(s: &CudaStorage, len: usize, op: &str, name: &str) -> Result<u64> {
    addr(s, &Layout::contiguous(len), op, name)
}

fn cfg(blocks: usize, threads: u32, smem: usize) -> Result<LaunchConfig> {
    let grid = u32::try_from(blocks.max(1))
        .map_err(|_| candle_core::Error::Msg(format!("fused op: {blocks} blocks are too many")))?;
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

/// Loads kernel `name` of `kernels/fused_ops.cu` and launches it ([`crate::launch_in_family`]).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {
        $crate::launch_in_family!($crate::cuda::module::Family::FusedOps, $dev, $name, $cfg; $($arg),*)
    };
}

mod adamw;
mod heads;
mod rows;

pub(crate) use adamw::FlatBuffers;
pub(crate) use heads::{split_heads_backward, split_heads_forward};
pub(crate) use rows::{norm_backward, norm_forward, swiglu_backward, swiglu_forward, xent_rows};
