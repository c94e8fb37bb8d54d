//! Dot-product attention with a real backward, laid out like the 2-simplicial op:
//!
//! ```text
//! S[i,j] = scale * q_i . k_j,   O[i] = sum_j softmax_j(S[i]) v_j
//! ```
//! over the keys `j` of query `i` (causal, optionally a sliding window of `w` keys, or
//! bidirectional), with grouped-query attention (query head `h` reads K/V head `h / G`).
//!
//! * [`dot_attn`]: the candle op (CPU; CUDA behind the `cuda` feature), backward through
//!   autograd.
//! * [`reference`]: the float64 oracle, forward and backward.
//! * [`cpu`]: the flash-style fused CPU kernels on plain slices.
//! * [`slow`]: the twin built from candle tensor ops (tests; devices without a fused kernel).
//! * [`DotSpec`]: causality, window and scale, validated with the shapes in one place.
//! * [`DotKernel`], [`DotTensorCores`], [`has_fused_kernel`]: which CUDA kernels run a call
//!   ([`plan`]); [`dot_attn_with`] picks the tensor-core family explicitly.
//! * [`bench`]: the `dot-*` rows of `simplex bench attn`.

pub mod bench;
pub mod cpu;
mod op;
pub mod plan;
pub mod reference;
pub mod slow;
mod spec;

#[cfg(feature = "cuda")]
pub(crate) use op::DotOp;
pub use op::{dot_attn, dot_attn_with, DotAttnCall, DotOutput};
pub use plan::{has_fused_kernel, DotKernel, DotTensorCores};
pub use reference::{dot_attn_backward_reference, dot_attn_reference, DotGrads, DotInputs};
pub use slow::dot_attn_slow;
pub use spec::{DotDims, DotSpec, KeyRanges};
