//! Running a planned launch ([`crate::kernels::Launch`]): load its kernel, check its shared
//! memory, push the arguments, launch, name the kernel in any error. Every attention launch
//! goes through [`Planned::run`].

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Result, Shape, Tensor};
use cudarc::driver::{CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};

use super::buffers::{cuda_err, output_poisoned, wrap_tensor, Element};
use super::module::{self, Family, Kernel};
use super::tma::TensorMap;
use crate::kernels::{DeviceLimits, Launch};

/// What the choice of kernels reads of a call's first input: its dtype, its device and the
/// device's limits.
pub(crate) fn target(s: &CudaStorage) -> Result<(DType, &CudaDevice, DeviceLimits)> {
    use candle_core::backend::BackendStorage;
    let dev = s.device();
    Ok((s.dtype(), dev, module::limits(dev)?))
}

/// A launch whose kernel is loaded on the device, ready to run.
pub(crate) struct Planned {
    kernel: Kernel,
    cfg: LaunchConfig,
    symbol: Cow<'static, str>,
}

impl Planned {
    /// Loads the kernel of `launch` on `dev`; an error where its shared memory is more than the
    /// device gives one block of it.
    pub(crate) fn new(dev: &CudaDevice, launch: &Launch) -> Result<Planned> {
        let cfg = LaunchConfig {
            grid_dim: launch.grid,
            block_dim: (launch.threads(), 1, 1),
            shared_mem_bytes: launch.smem as u32,
        };
        Planned::named(dev, launch.kernel.family, launch.symbol(), cfg)
    }

    /// Loads kernel `symbol` of `family` on `dev` for a launch of `cfg` (the fused ops' and MoE
    /// kernels, which are not in the attention table); an error where its shared memory is more
    /// than the device gives one block of it.
    pub(crate) fn named(
        dev: &CudaDevice,
        family: Family,
        symbol: impl Into<Cow<'static, str>>,
        cfg: LaunchConfig,
    ) -> Result<Planned> {
        let symbol = symbol.into();
        let kernel = module::kernel(dev, family, &symbol)?;
        let smem = cfg.shared_mem_bytes as usize;
        if smem > kernel.max_smem {
            candle_core::bail!(
                "{symbol}: needs {smem} bytes of shared memory, the device allows {}",
                kernel.max_smem
            );
        }
        Ok(Planned {
            kernel,
            cfg,
            symbol,
        })
    }

    /// The kernel's symbol.
    pub(crate) fn symbol(&self) -> &str {
        &self.symbol
    }

    /// Launches the kernel on `stream` with the arguments `push` adds.
    ///
    /// # Safety
    /// `push` adds the kernel's parameters in order and of its types, every buffer holds the
    /// elements the kernel indexes for the shape it is given, and the planned grid covers every
    /// element of its outputs.
    pub(crate) unsafe fn run<'a>(
        &'a self,
        stream: &'a Arc<CudaStream>,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<()> {
        let mut args = stream.launch_builder(&self.kernel.func);
        push(&mut args);
        // SAFETY: this function's contract.
        unsafe { args.launch(self.cfg) }.map_err(|e| cuda_err(&self.symbol, e))?;
        Ok(())
    }
}

/// Loads kernel `$name` of `$family` on `$dev` and launches it with `$cfg` and the given
/// arguments (device addresses and values, in the kernel's parameter order), through
/// [`Planned`]. The fused ops' and the MoE launch code use it; each call site passes the
/// kernel's parameters in order, with buffers sized for the shape it passes.
#[macro_export]
#[doc(hidden)]
macro_rules! launch_in_family {
    ($family:expr, $dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let planned = $crate::cuda::launch::Planned::named($dev, $family, $name, $cfg)?;
        // SAFETY: every call site passes the kernel's parameters in order, with buffers sized
        // for the shape it passes (checked from the tensors' layouts).
        unsafe {
            planned.run(&$dev.cuda_stream(), |b| {
                $( cudarc::driver::PushKernelArg::arg(b, $arg); )*
            })
        }?;
    }};
}

/// Runs a forward kernel of signature `(const T* inputs..., T* o, float* lse, S shape)` (every
/// forward of both attention ops has it), followed by the tensor maps `maps` of the kernels
/// that load through the TMA ([`crate::kernels::tma::kv_map_rows`]; empty for the others):
/// allocates o (`o_shape`, in T) and lse (`lse_shape`, f32), NaN-filled when `poison`; returns
/// o as candle storage with its shape, and lse.
///
/// # Safety
/// `planned`'s kernel has that signature with these input counts and element type T, every
/// input holds the elements the kernel indexes for `shape`, and the planned grid covers every
/// row of o and lse.
pub(crate) unsafe fn forward<T: Element, S: DeviceRepr>(
    dev: &CudaDevice,
    planned: &Planned,
    poison: bool,
    inputs: &[&CudaView<'_, T>],
    shape: &S,
    maps: &[TensorMap],
    (o_shape, lse_shape): (Shape, Shape),
) -> Result<(CudaStorage, Shape, Tensor)> {
    let stream = dev.cuda_stream();
    let mut o = output_poisoned::<T>(&stream, o_shape.elem_count(), "o", poison)?;
    let mut lse = output_poisoned::<f32>(&stream, lse_shape.elem_count(), "lse", poison)?;
    // SAFETY: the arguments are the kernel's (o and lse sized here from their shapes); the
    // rest is this function's contract.
    unsafe {
        planned.run(&stream, |args| {
            for x in inputs {
                args.arg(*x);
            }
            args.arg(&mut o).arg(&mut lse).arg(shape);
            for m in maps {
                args.arg(m);
            }
        })
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(o, dev.clone()),
        o_shape,
        wrap_tensor(lse, dev, lse_shape),
    ))
}
