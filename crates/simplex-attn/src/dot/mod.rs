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
//! * [`reference`](mod@reference): the float64 oracle, forward and backward.
//! * [`cpu`]: the flash-style fused CPU kernels on plain slices.
//! * [`slow`]: the twin built from candle tensor ops (tests; devices without a fused kernel).
//! * [`DotSpec`]: causality, window, scale and the kernel choice, validated with the shapes in
//!   one place.
//! * [`has_fused_kernel`]: whether a device and dtype have a fused kernel; [`plan`]: the tile
//!   arithmetic the CUDA kernels share with their tests. Which CUDA kernel runs a call is
//!   [`crate::kernels::dispatch::dot`] ([`DotKernel`]); its launch code is `dot::cuda`.
//! * [`bench`](mod@bench): the `dot-*` rows of `simplex bench attn`.

pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod op;
pub mod plan;
pub mod reference;
pub mod slow;
mod spec;

pub use crate::kernels::dispatch::dot::DotKernel;
pub use op::{dot_attn, DotAttnCall, DotOutput};
pub use plan::has_fused_kernel;
pub use reference::{dot_attn_backward_reference, dot_attn_reference, DotGrads, DotInputs};
pub use slow::dot_attn_slow;
#[cfg(feature = "cuda")]
use spec::DotCall;
pub use spec::{DotDims, DotSpec, KeyRanges};
