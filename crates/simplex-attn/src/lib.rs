//! 2-simplicial (trilinear) attention for candle: a query attends to pairs of keys.
//!
//! ```text
//! A[i,j,k] = scale * sum_l q[i,l] k1[j,l] k2[k,l]      (or the determinant form)
//! O[i]     = sum_{j,k} softmax_{(j,k)}(A[i])[j,k] * v1[j] ∘ v2[k]
//! ```
//! over `j`, `k` in two windows of query `i` (causal sliding windows or bidirectional), with
//! grouped-query attention (several query heads per K/V head).
//!
//! * [`simplicial_attn`]: the candle op (CPU; CUDA behind the `cuda` feature), with backward.
//! * [`reference`](mod@reference): the float64 oracle every kernel is tested against.
//! * [`cpu`]: the fast multi-threaded CPU kernels on plain slices.
//! * [`AttnSpec`]: windows, variant, scale, biases and the kernel choice, validated with the
//!   shapes in one place.
//! * [`kernels`]: which CUDA kernel runs a call: the caller's choice ([`Kernels`], automatic by
//!   default), the list of compiled kernels and the pure function of the shape that picks them.
//! * [`dot`]: dot-product attention laid out the same way (oracle, CPU kernels, op [`dot_attn`]).
//! * [`fused`]: the model's other fused ops with backward (RMSNorm, heads + RoPE, SwiGLU,
//!   linear cross-entropy) and the flat multi-tensor AdamW.
//! * [`moe`]: mixture-of-experts routing, row permutation and grouped products with backward.

// Kernels and the oracle loop over indices the way the einsum is written.
#![allow(clippy::needless_range_loop)]

pub mod bench;
pub mod cpu;
mod cpu_data;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod determinant;
pub mod dot;
mod error;
pub mod fused;
mod inputs;
pub mod kernels;
pub mod moe;
mod op;
pub mod reference;
pub mod slow;
mod spec;

pub use dot::{dot_attn, DotOutput, DotSpec};
pub use error::AttnError;
pub use kernels::Kernels;
pub use op::{simplicial_attn, SimplicialAttnCall, SimplicialOutput};
pub use spec::{AttnSpec, Dims, Variant, Windows};
