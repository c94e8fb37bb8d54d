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

use super::cuda_err;

/// One `kernels/*.cu` file: one cubin, one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// `kernels/simplicial_fwd.cu`
    Forward,
    /// `kernels/simplicial_fwd_wgmma.cu` (tensor-core forward, bf16, D = Dv in {64, 128})
    ForwardWgmma,
    /// `kernels/simplicial_fwd_offsets.cu` (tensor-core forward stepping over window-1 offsets)
    ForwardOffsets,
    /// `kernels/simplicial_fwd_producer.cu` (tensor-core forward with a producer warpgroup)
    ForwardProducer,
    /// `kernels/simplicial_bwd_dq.cu` (delta pre-pass and dq)
    BackwardQuery,
    /// `kernels/simplicial_bwd_dkv.cu` (dk, dv of one key/value set)
    BackwardKey,
    /// `kernels/simplicial_bwd_mma.cu` (tensor-core backward, bf16, D = Dv in {32, 64, 96, 128})
    BackwardMma,
    /// `kernels/simplicial_bwd_wgmma.cu` (wgmma backward, bf16, D = Dv in {64, 128})
    BackwardWgmma,
    /// `kernels/simplicial_bwd_offsets.cu` (offset-walk dq and dk1/dv1 passes, bf16, D = 64)
    BackwardOffsets,
    /// `kernels/simplicial_bwd_producer.cu` (dk2, dv2 with a producer warpgroup, bf16, D = Dv
    /// in {64, 128}, G a multiple of 64)
    BackwardProducer,
    /// `kernels/dot_attn_fwd.cu` (dot-product forward, tensor cores)
    DotForward,
    /// `kernels/dot_attn_bwd_dq.cu` (dot-product dq, tensor cores)
    DotBackwardQuery,
    /// `kernels/dot_attn_bwd_dkv.cu` (dot-product dk, dv, tensor cores)
    DotBackwardKey,
    /// `kernels/dot_attn_simple.cu` (dot-product delta pre-pass; CUDA-core forward, dq, dk/dv)
    DotSimple,
    /// `kernels/fused_ops.cu` (the model's fused ops: RMSNorm, split heads + RoPE, SwiGLU,
    /// cross-entropy rows, flat AdamW)
    FusedOps,
    /// `kernels/dot_attn_fwd_wgmma.cu` (dot-product forward, Hopper wgmma)
    DotForwardWgmma,
    /// `kernels/dot_attn_bwd_wgmma.cu` (dot-product dq and dk, dv, Hopper wgmma)
    DotBackwardWgmma,
    /// `kernels/moe.cu` (mixture of experts: routing, row moves, grouped products)
    Moe,
}

impl Family {
    fn cubin(self) -> &'static [u8] {
        match self {
            Family::Forward => include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_fwd.cubin")),
            Family::ForwardWgmma => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_fwd_wgmma.cubin"))
            }
            Family::ForwardOffsets => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_fwd_offsets.cubin"))
            }
            Family::ForwardProducer => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_fwd_producer.cubin"))
            }
            Family::BackwardQuery => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_dq.cubin"))
            }
            Family::BackwardKey => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_dkv.cubin"))
            }
            Family::BackwardMma => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_mma.cubin"))
            }
            Family::BackwardWgmma => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_wgmma.cubin"))
            }
            Family::BackwardOffsets => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_offsets.cubin"))
            }
            Family::BackwardProducer => {
                include_bytes!(concat!(env!("OUT_DIR"), "/simplicial_bwd_producer.cubin"))
            }
            Family::DotForward => include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_fwd.cubin")),
            Family::DotBackwardQuery => {
                include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_bwd_dq.cubin"))
            }
            Family::DotBackwardKey => {
                include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_bwd_dkv.cubin"))
            }
            Family::DotSimple => {
                include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_simple.cubin"))
            }
            Family::FusedOps => include_bytes!(concat!(env!("OUT_DIR"), "/fused_ops.cubin")),
            Family::DotForwardWgmma => {
                include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_fwd_wgmma.cubin"))
            }
            Family::DotBackwardWgmma => {
                include_bytes!(concat!(env!("OUT_DIR"), "/dot_attn_bwd_wgmma.cubin"))
            }
            Family::Moe => include_bytes!(concat!(env!("OUT_DIR"), "/moe.cubin")),
        }
    }

    fn file(self) -> &'static str {
        match self {
            Family::Forward => "kernels/simplicial_fwd.cu",
            Family::ForwardWgmma => "kernels/simplicial_fwd_wgmma.cu",
            Family::ForwardOffsets => "kernels/simplicial_fwd_offsets.cu",
            Family::ForwardProducer => "kernels/simplicial_fwd_producer.cu",
            Family::BackwardQuery => "kernels/simplicial_bwd_dq.cu",
            Family::BackwardKey => "kernels/simplicial_bwd_dkv.cu",
            Family::BackwardMma => "kernels/simplicial_bwd_mma.cu",
            Family::BackwardWgmma => "kernels/simplicial_bwd_wgmma.cu",
            Family::BackwardOffsets => "kernels/simplicial_bwd_offsets.cu",
            Family::BackwardProducer => "kernels/simplicial_bwd_producer.cu",
            Family::DotForward => "kernels/dot_attn_fwd.cu",
            Family::DotBackwardQuery => "kernels/dot_attn_bwd_dq.cu",
            Family::DotBackwardKey => "kernels/dot_attn_bwd_dkv.cu",
            Family::DotSimple => "kernels/dot_attn_simple.cu",
            Family::FusedOps => "kernels/fused_ops.cu",
            Family::DotForwardWgmma => "kernels/dot_attn_fwd_wgmma.cu",
            Family::DotBackwardWgmma => "kernels/dot_attn_bwd_wgmma.cu",
            Family::Moe => "kernels/moe.cu",
        }
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
}

static CACHE: OnceLock<Mutex<HashMap<DeviceId, Loaded>>> = OnceLock::new();

/// The kernel `name` of `family` on `dev`, loading its module on first use.
pub(crate) fn kernel(dev: &CudaDevice, family: Family, name: &str) -> Result<Kernel> {
    let mut cache = CACHE.get_or_init(Default::default).lock().map_err(|_| {
        candle_core::Error::Msg("simplicial attention: module cache poisoned".into())
    })?;
    let loaded = cache.entry(dev.id()).or_default();
    if let Some(k) = loaded.kernels.get(name) {
        return Ok(k.clone());
    }
    let ctx = dev.cuda_stream().context().clone();
    let module = match loaded.modules.get(&family) {
        Some(m) => m.clone(),
        None => {
            let m = ctx
                .load_module(Ptx::from_binary(family.cubin().to_vec()))
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
}
