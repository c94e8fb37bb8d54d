//! Weight initialization: normal with std 0.02 (GPT-2), residual output projections scaled by
//! `1 / sqrt(2 * n_layers)`, norms at 1.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

/// Std of every projection and of the embedding.
pub const STD: f64 = 0.02;

/// Std of the projections that write into the residual stream.
pub fn residual_std(n_layers: usize) -> f64 {
    STD / (2.0 * n_layers.max(1) as f64).sqrt()
}

/// A bias-free linear layer's `weight [out, in]`, drawn from N(0, std^2).
pub fn linear_weight(
    d_in: usize,
    d_out: usize,
    std: f64,
    vb: VarBuilder,
) -> candle_core::Result<Tensor> {
    vb.get_with_hints(
        (d_out, d_in),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}
