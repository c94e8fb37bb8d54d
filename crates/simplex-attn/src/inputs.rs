//! Checks and plumbing shared by both attention ops: one dtype and device for all inputs, the
//! dtype the kernels compute in, and the slot through which a forward hands its lse out.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{CpuStorage, DType, Device, Shape, Tensor};

use crate::AttnError;

/// Where a forward kernel leaves its log-sum-exp, for the backward and for the caller.
pub(crate) type LseSlot = Arc<Mutex<Option<Tensor>>>;

/// Checks that `others` share q's dtype and device and returns the dtype the kernels compute in:
/// f32 and f64 as given, bf16 and f16 in f32 on the CPU and as given elsewhere.
pub(crate) fn compute_dtype(q: &Tensor, others: &[(&str, &Tensor)]) -> Result<DType, AttnError> {
    let dtype = q.dtype();
    for (name, t) in others {
        if t.dtype() != dtype {
            return Err(AttnError::Input(format!(
                "{name} is {:?} but q is {dtype:?}: all inputs must have one dtype",
                t.dtype()
            )));
        }
        if !t.device().same_device(q.device()) {
            return Err(AttnError::Input(format!(
                "{name} is on {:?} but q is on {:?}",
                t.device().location(),
                q.device().location()
            )));
        }
    }
    match (dtype, q.device()) {
        (DType::F32 | DType::F64, _) => Ok(dtype),
        (DType::BF16 | DType::F16, Device::Cpu) => Ok(DType::F32),
        (DType::BF16 | DType::F16, _) => Ok(dtype),
        (other, _) => Err(AttnError::Input(format!(
            "q is {other:?}: expected f32, f64, bf16 or f16"
        ))),
    }
}

/// The lse a forward left in `slot`.
pub(crate) fn saved_lse(slot: &LseSlot) -> Result<Tensor, AttnError> {
    lock_slot(slot)?
        .clone()
        .ok_or_else(|| AttnError::Input("the forward kernel did not produce lse".into()))
}

/// The contents of a slot through which one custom op hands tensors to another (or to the
/// caller), locked; a candle error if a panic poisoned it.
fn lock_slot<T>(slot: &Mutex<Option<T>>) -> candle_core::Result<MutexGuard<'_, Option<T>>> {
    slot.lock().map_err(|_| {
        candle_core::Error::Msg("simplicial attention: slot poisoned by a panic".into())
    })
}

/// Stores `value` in `slot` (inside a custom op, so a candle error).
pub(crate) fn fill_slot<T>(slot: &Mutex<Option<T>>, value: T) -> candle_core::Result<()> {
    *lock_slot(slot)? = Some(value);
    Ok(())
}

/// Takes what `slot` holds; `missing` is the error when it is empty.
pub(crate) fn take_slot<T>(slot: &Mutex<Option<T>>, missing: &str) -> candle_core::Result<T> {
    lock_slot(slot)?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(missing.into()))
}

/// Stores a forward's log-sum-exp in `slot` (inside a custom op, so a candle error).
pub(crate) fn store_lse(slot: &LseSlot, lse: Tensor) -> candle_core::Result<()> {
    fill_slot(slot, lse)
}

/// The lse the forward left in `slot`, for the backward; `missing` is the error when there is
/// none (a backward before its forward).
pub(crate) fn lse_for_backward(slot: &LseSlot, missing: &str) -> candle_core::Result<Tensor> {
    lock_slot(slot)?
        .clone()
        .ok_or_else(|| candle_core::Error::Msg(missing.into()))
}

/// The output of a custom op whose forward only marks a place in the autograd graph (the op's
/// query-keys handle, the bench's seed gradient): a one-element f32 zero on the CPU.
pub(crate) fn marker_cpu() -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![0.0]), Shape::from(1))
}

/// [`marker_cpu`] on the CUDA device of `like`.
#[cfg(feature = "cuda")]
pub(crate) fn marker_cuda(
    like: &candle_core::CudaStorage,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::{BackendDevice, BackendStorage};
    let zero = like.device().zeros_impl(&Shape::from(1), DType::F32)?;
    Ok((zero, Shape::from(1)))
}
