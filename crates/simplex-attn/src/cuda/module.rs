//! Our cubins, embedded at build time and loaded once per candle CUDA device.
//!
//! build.rs compiles each `kernels/NAME.cu` to `$OUT_DIR/NAME.cubin` (sm_90a). candle's own
//! module cache takes PTX text only, so this is a second cache: per device, each kernel family's
//! module is loaded on first use, and each function's dynamic shared-memory limit is raised to
//! what the device allows one block (less the function's static shared memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::Result;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::buffers::cuda_err;
use crate::kernels::DeviceLimits;
pub(crate) use crate::kernels::Family;

/// The cubin build.rs compiled from a family's file.
fn cubin(family: Family) -> &'static [u8] {
    macro_rules! cubin {
        ($name:literal) => {
            include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".cubin"))
        };
    }
    match family {
        Family::Forward => cubin!("simplicial_fwd"),
        Family::ForwardWgmma => cubin!("simplicial_fwd_wgmma"),
        Family::ForwardOffsets => cubin!("simplicial_fwd_offsets"),
        Family::ForwardProducer => cubin!("simplicial_fwd_producer"),
        Family::BackwardQuery => cubin!("simplicial_bwd_dq"),
        Family::BackwardKey => cubin!("simplicial_bwd_dkv"),
        Family::BackwardMma => cubin!("simplicial_bwd_mma"),
        Family::BackwardWgmma => cubin!("simplicial_bwd_wgmma"),
        Family::BackwardOffsets => cubin!("simplicial_bwd_offsets"),
        Family::BackwardProducer => cubin!("simplicial_bwd_producer"),
        Family::DotForward => cubin!("dot_attn_fwd"),
        Family::DotSimple => cubin!("dot_attn_simple"),
        Family::DotForwardWgmma => cubin!("dot_attn_fwd_wgmma"),
        Family::DotBackwardWgmma => cubin!("dot_attn_bwd_wgmma"),
        Family::FusedOps => cubin!("fused_ops"),
        Family::Moe => cubin!("moe"),
    }
}

/// A loaded kernel and the most dynamic shared memory one block of it may use.
#[derive(Clone)]
pub(crate) struct Kernel {
    pub(crate) func: CudaFunction,
    pub(crate) max_smem: usize,
}

#[derive(Default)]
struct Loaded {
    modules: HashMap<Family, Arc<CudaModule>>,
    kernels: HashMap<String, Kernel>,
    limits: Option<DeviceLimits>,
}

static CACHE: OnceLock<Mutex<HashMap<DeviceId, Loaded>>> = OnceLock::new();

/// Runs `f` on the cache entry of `dev`.
fn with_cache<R>(dev: &CudaDevice, f: impl FnOnce(&mut Loaded) -> Result<R>) -> Result<R> {
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("CUDA kernels: module cache poisoned".into()))?;
    f(cache.entry(dev.id()).or_default())
}

/// The shared-memory limit and multiprocessor count of `dev` (read once per device).
pub(crate) fn limits(dev: &CudaDevice) -> Result<DeviceLimits> {
    with_cache(dev, |loaded| {
        if let Some(l) = loaded.limits {
            return Ok(l);
        }
        let ctx = dev.cuda_stream().context().clone();
        let attr = |a, what| {
            ctx.attribute(a)
                .map_err(|e| cuda_err(format!("reading the {what}"), e))
        };
        let l = DeviceLimits {
            max_smem: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                "shared-memory limit",
            )?
            .max(0) as usize,
            multiprocessors: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                "multiprocessor count",
            )?
            .max(1) as usize,
        };
        loaded.limits = Some(l);
        Ok(l)
    })
}

/// The kernel `name` of `family` on `dev`, loading its module on first use.
pub(crate) fn kernel(dev: &CudaDevice, family: Family, name: &str) -> Result<Kernel> {
    with_cache(dev, |loaded| {
        if let Some(k) = loaded.kernels.get(name) {
            return Ok(k.clone());
        }
        let ctx = dev.cuda_stream().context().clone();
        let module = match loaded.modules.get(&family) {
            Some(m) => m.clone(),
            None => {
                let m = ctx
                    .load_module(Ptx::from_binary(cubin(family).to_vec()))
                    .map_err(|e| cuda_err(format!("loading the cubin of {}", family.file()), e))?;
                loaded.modules.insert(family, m.clone());
                m
            }
        };
        let func = module
            .load_function(name)
            .map_err(|e| cuda_err(format!("{name} (in {})", family.file()), e))?;
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| cuda_err("reading the shared-memory limit", e))?;
        // static shared memory counts against the same limit
        let fixed = func
            .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(|e| cuda_err(format!("{name}: reading its static shared memory"), e))?;
        let optin = optin - fixed.max(0);
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            optin,
        )
        .map_err(|e| {
            cuda_err(
                format!("{name}: raising the shared-memory limit to {optin}"),
                e,
            )
        })?;
        let k = Kernel {
            func,
            max_smem: optin.max(0) as usize,
        };
        loaded.kernels.insert(name.to_string(), k.clone());
        Ok(k)
    })
}
