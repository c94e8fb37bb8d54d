//! Which CUDA kernel runs a call, in three places, all plain Rust (compiled and tested without
//! the `cuda` feature or a GPU):
//!
//! * [`Kernels`]: the choice a caller passes with the call (a field of [`crate::AttnSpec`] and
//!   [`crate::DotSpec`]; `Kernels::default()` is automatic throughout).
//! * [`table`]: every compiled kernel (symbol, `.cu` file, threads, rows per block, shared
//!   memory), checked against the `.cu` sources by `tests/kernel_sources.rs`.
//! * [`dispatch`]: the pure functions from (shape, dtype, choice, device limits) to the
//!   launches, tested for representative shapes by `tests/kernel_dispatch.rs`.
//!
//! docs/kernels.md describes each kernel, when the automatic choice takes it, and its measured
//! speed.

mod choice;
pub mod dispatch;
pub mod smem;
pub mod table;
pub mod tma;

pub use choice::{
    DotBackwardKernels, ExpertProducts, ForwardVariant, Kernels, OffsetsBackward, WgmmaBackward,
    POISON_BY_DEFAULT,
};
pub use dispatch::{DeviceLimits, Launch};
pub use smem::{partner_positions, SmemArgs, Window1};
pub use table::{Elem, Family, Kernel, KernelInfo, Smem, TABLE};

/// The largest head dim (D of q/k, Dv of v) the CUDA kernels take.
pub const MAX_HEAD_DIM: usize = 256;

/// The limits [`dispatch`] reads of `device`: measured on a CUDA device (feature `cuda`), an
/// H100/H200's ([`DeviceLimits::HOPPER`]) for any other device (nothing is launched there).
pub fn device_limits(device: &candle_core::Device) -> Result<DeviceLimits, crate::AttnError> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => Ok(crate::cuda::module::limits(dev)?),
        _ => Ok(DeviceLimits::HOPPER),
    }
}
