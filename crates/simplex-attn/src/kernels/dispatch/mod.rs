//! The one place that maps a call to the kernels that run it: pure functions of the shape, the
//! input dtype, the caller's [`Kernels`] choice and the device's limits, unit-tested without a
//! GPU (`tests/kernel_dispatch.rs`). The CUDA launch code asks these and launches what they
//! return; it makes no choice of its own.
//!
//! * [`simplicial::forward`], [`simplicial::backward`]: 2-simplicial attention.
//! * [`dot::forward`], [`dot::backward`]: dot-product attention ([`dot::DotKernel`] names the
//!   kernel family).

pub mod dot;
pub mod simplicial;

use super::table::KernelInfo;
#[cfg(doc)]
use super::Kernels;
use crate::AttnError;

/// What the choice reads of the device: the dynamic shared memory one block may use and the
/// number of multiprocessors (the persistent kernels launch one block per multiprocessor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Bytes of dynamic shared memory one block may opt in to (the attention kernels have no
    /// static shared memory).
    pub max_smem: usize,
    /// Streaming multiprocessors.
    pub multiprocessors: usize,
}

impl DeviceLimits {
    /// An H100 or H200 (SXM): 227 KiB per block, 132 multiprocessors.
    pub const HOPPER: DeviceLimits = DeviceLimits {
        max_smem: 227 * 1024,
        multiprocessors: 132,
    };
}

/// One kernel launch: the kernel, its grid and its dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    /// The kernel ([`crate::kernels::TABLE`] entry).
    pub kernel: &'static KernelInfo,
    /// Blocks along x, y, z.
    pub grid: (u32, u32, u32),
    /// Dynamic shared memory per block, bytes.
    pub smem: usize,
}

impl Launch {
    /// The kernel's symbol.
    pub fn symbol(&self) -> &'static str {
        self.kernel.symbol
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        self.kernel.threads
    }
}

/// Grid size along one axis: ceil(n / per).
pub(crate) fn blocks(n: usize, per: usize) -> Result<u32, AttnError> {
    u32::try_from(n.div_ceil(per))
        .map_err(|_| AttnError::Shape(format!("attention on CUDA: {n} rows need too many blocks")))
}

/// A launch of `kernel` with grid (ceil(`units` / its rows), `y`, `z`).
fn launch(
    kernel: &'static KernelInfo,
    units: usize,
    (y, z): (usize, usize),
    smem: usize,
) -> Result<Launch, AttnError> {
    Ok(Launch {
        kernel,
        grid: (blocks(units, kernel.rows)?, y as u32, z as u32),
        smem,
    })
}

/// A launch of a persistent kernel over `items` work items: one block per multiprocessor (their
/// shared memory and 384 threads x 168 registers allow one), each taking items in the kernel's
/// snake order; fewer blocks when there are fewer items.
fn persistent(
    kernel: &'static KernelInfo,
    items: usize,
    dev: &DeviceLimits,
    smem: usize,
) -> Result<Launch, AttnError> {
    let x = items.min(dev.multiprocessors.max(1));
    let x = u32::try_from(x)
        .map_err(|_| AttnError::Shape(format!("dot attention on CUDA: {x} blocks")))?;
    Ok(Launch {
        kernel,
        grid: (x, 1, 1),
        smem,
    })
}
