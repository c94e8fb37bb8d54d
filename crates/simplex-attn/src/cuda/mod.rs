//! CUDA launch code of 2-simplicial attention (feature `cuda`), and the pieces every op's
//! launch code shares: the cubin cache ([`module`]), buffers and views, running a planned
//! launch.
//!
//! Shapes as in [`crate::spec`]: `q [B,N,Hq,D]`, `k1, k2 [B,N,Hkv,D]`, `v1, v2 [B,N,Hkv,Dv]`,
//! `o [B,N,Hq,Dv]`, `lse [B,N,Hq]` (f32, natural log). Which kernel runs is decided by
//! [`crate::kernels::dispatch`] (a pure function of the shape and the caller's
//! [`crate::Kernels`]); the code here loads and launches what it returns:
//!
//! * `forward`: o and lse, one launch.
//! * `backward`: the CUDA-core backward (delta, dq, dk/dv per key/value set);
//!   `backward_tc`: the tensor-core one (delta, q side, k side, rounding).
//!
//! The kernels take bf16 or f32 inputs and accumulate in f32; D and Dv up to
//! [`crate::kernels::MAX_HEAD_DIM`]. Kernels are sm_90a cubins (Hopper). Every CUDA call's
//! error becomes a candle error naming the kernel. Dot-product attention's launch code is
//! `crate::dot::cuda`.

mod backward;
mod backward_tc;
mod buffers;
mod forward;
pub(crate) mod launch;
pub(crate) mod module;
mod shape;
pub(crate) mod tma;

pub(crate) use backward::backward;
pub use buffers::retain_pool_memory;
pub(crate) use buffers::{
    cuda_err, cuda_storages, output, output_poisoned, typed_views, wrap_tensor, Element,
};
pub(crate) use forward::forward;
