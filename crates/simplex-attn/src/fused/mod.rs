//! Fused ops of the model around attention, each a candle custom op with its own backward, on
//! the CPU and (feature `cuda`) on CUDA, beside a plain candle-op twin that tests hold it to.
//!
//! | op | computes | saves for the backward |
//! | --- | --- | --- |
//! | [`rms_norm`] | `y = x / sqrt(mean(x^2) + eps) * w` over the last dim | `rstd` per row |
//! | [`add_rms_norm`] | `h = x + a`, `y = rms_norm(h)` in one pass; returns `(h, y)` | `rstd` per row |
//! | [`split_heads`] | one `[.., sum_p H_p * D]` projection output into contiguous `[B, N, H_p, D]` parts, RoPE on the chosen parts | nothing (the rotation is its own inverse's transpose) |
//! | [`swiglu`] | `silu(g) * u` of one `[.., 2H]` gate\|up product | its input |
//! | [`linear_cross_entropy`] | mean cross-entropy of `x @ w^T` against targets, rows in chunks | `dx`, `dw` (computed in the forward) |
//! | [`swiglu_mlp`] | the whole MLP sublayer `swiglu(x W_gu^T) W_down^T`, backward written out | `gu`, `h` |
//! | [`dot_attention_layer`] | the whole D attention sublayer (q\|k\|v product, split + RoPE, attention, output product) | the heads, `o`, lse |
//! | [`adamw`] | one multi-tensor AdamW update over flat f32 master / m / v buffers, writing the working copies, clipped by the global norm on the device | the optimizer state |
//!
//! They live in this crate because it is the one place that builds and loads our CUDA kernels
//! (`kernels/fused_ops.cu`, `build.rs`, `cuda::module`). The twins (`*_twin`) are the plain
//! candle-op versions the model used before; `tests/fused_vs_twin.rs` compares every output and
//! gradient on the CPU (and against finite differences), `tests/cuda_fused.rs` on the GPU.
//!
//! Inputs on the CPU are computed in their own precision for f32 and f64 and in f32 for bf16
//! and f16 (converted around the op); on CUDA the kernels take bf16 or f32 and accumulate in
//! f32. Every op wants contiguous inputs and makes them so.

pub mod adamw;
mod attention_layer;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod heads;
mod layers;
mod norm;
mod swiglu;
mod xent;

pub use attention_layer::{
    attention_layer_grads, dot_attention_layer, dot_attention_layer_saved,
    dot_attention_layer_twin, simplicial_attention_layer_saved, AttentionLayerSaved, DotLayer,
};
pub use heads::{split_heads, split_heads_twin, HeadPart, RopeTables};
pub(crate) use layers::unwrap_storage;
pub use layers::{
    project, swiglu_mlp, swiglu_mlp_grads, swiglu_mlp_saved, swiglu_mlp_twin, MlpSaved,
};
pub use norm::{
    add_rms_norm, add_rms_norm_twin, rms_norm, rms_norm_grads, rms_norm_saved, rms_norm_twin,
    NormSaved,
};
pub use swiglu::{swiglu, swiglu_twin};
pub(crate) use swiglu::{swiglu_grad, swiglu_no_grad};
pub use xent::{
    cross_entropy_twin, linear_cross_entropy, linear_cross_entropy_chunked,
    linear_cross_entropy_grads, linear_cross_entropy_twin, Targets, CHUNK_LOGITS,
};

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Storage, Tensor, WithDType};

use crate::cpu::Real;

/// A place where one op leaves a value for another (or for its own backward).
pub(crate) type Slot<T> = Arc<Mutex<Option<T>>>;

/// An empty slot.
pub(crate) fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

/// Stores `v` in `slot`.
pub(crate) fn put<T>(slot: &Slot<T>, v: T) -> candle_core::Result<()> {
    crate::inputs::fill_slot(slot, v)
}

/// Takes what `slot` holds; `what` names it in the error.
pub(crate) fn take<T>(slot: &Slot<T>, what: &str) -> candle_core::Result<T> {
    crate::inputs::take_slot(slot, &format!("fused op: {what} missing"))
}

/// A clone of what `slot` holds; `what` names it in the error.
pub(crate) fn peek<T: Clone>(slot: &Slot<T>, what: &str) -> candle_core::Result<T> {
    let g = slot
        .lock()
        .map_err(|_| candle_core::Error::Msg("fused op: slot poisoned by a panic".into()))?;
    g.clone()
        .ok_or_else(|| candle_core::Error::Msg(format!("fused op: {what} missing")))
}

/// The dtype the op computes in for `x`: f32/f64 as given on the CPU, bf16/f16 in f32 there;
/// bf16/f32 on CUDA. `op` names the op in the error.
pub(crate) fn compute_dtype(op: &str, x: &Tensor) -> candle_core::Result<DType> {
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32 | DType::F64) => Ok(x.dtype()),
        (Device::Cpu, DType::BF16 | DType::F16) => Ok(DType::F32),
        (Device::Cuda(_), DType::BF16 | DType::F32) => Ok(x.dtype()),
        (Device::Cuda(_), DType::F16) => Ok(DType::F32),
        (dev, dt) => candle_core::bail!(
            "{op}: inputs on {:?} in {dt:?} are not supported (CPU: f32, f64, bf16, f16; CUDA: bf16, f32, f16)",
            dev.location()
        ),
    }
}

/// Checks that `t` has `x`'s dtype and device; `op`, `name` go into the error.
pub(crate) fn same_as(op: &str, name: &str, t: &Tensor, x: &Tensor) -> candle_core::Result<()> {
    if t.dtype() != x.dtype() {
        candle_core::bail!("{op}: {name} is {:?} but x is {:?}", t.dtype(), x.dtype())
    }
    if !t.device().same_device(x.device()) {
        candle_core::bail!("{op}: {name} is on another device than x")
    }
    Ok(())
}

/// The contiguous data of a CPU storage as `&[T]`.
pub(crate) fn cpu_data<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    name: &str,
) -> candle_core::Result<&'a [T]> {
    crate::cpu_data::cpu_slice(s, l, op, name)
}

/// Calls `f` with the contiguous CPU data of `tensors` as `&[T]`.
pub(crate) fn with_cpu<T: WithDType, R, const N: usize>(
    op: &str,
    tensors: [&Tensor; N],
    names: [&str; N],
    f: impl FnOnce([&[T]; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    crate::cpu_data::with_cpu_slices(op, tensors, names, f)
}

/// A CPU tensor of `shape` from `data` (not differentiable).
pub(crate) fn cpu_tensor<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>) -> Tensor {
    owned_tensor(Storage::Cpu(T::to_cpu_storage_owned(data)), shape)
}

/// A tensor over an owned storage (not differentiable).
pub(crate) fn owned_tensor(s: Storage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(s, shape, candle_core::op::BackpropOp::none(), false)
}

/// `NaN`s of length `n`: CPU outputs start poisoned so that an element a kernel misses fails
/// the tests.
pub(crate) fn poisoned<T: Real>(n: usize) -> Vec<T> {
    vec![T::NAN; n]
}

/// Rows and last-dim width of `shape` (`[.., c]`); `op` names the op in the error.
pub(crate) fn rows_cols(op: &str, shape: &Shape) -> candle_core::Result<(usize, usize)> {
    let dims = shape.dims();
    match dims.split_last() {
        Some((&c, rest)) if c > 0 => Ok((rest.iter().product(), c)),
        _ => candle_core::bail!("{op}: input {dims:?} needs a non-empty last dim"),
    }
}
