//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight`, over the last dim (`[.., C]`).
//!
//! Runs the fused op of `simplex_attn::fused` (its own backward; `rms_norm_twin` there is the
//! plain candle-op version it is tested against). [`RmsNorm::forward_residual`] adds the
//! residual in the same pass: the blocks hand each sublayer's output to the next norm, so no
//! residual add runs on its own (see `block.rs`).

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use simplex_attn::fused;

/// Root-mean-square normalization with a learned gain (initialized to 1).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Gain `weight [C]`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }

    /// `(h, norm(h))` with `h = x + delta`, in one pass; `(x, norm(x))` without a delta.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match delta {
            Some(d) => fused::add_rms_norm(x, d, &self.weight, self.eps),
            None => Ok((x.clone(), fused::rms_norm(x, &self.weight, self.eps)?)),
        }
    }
}

impl RmsNorm {
    /// [`RmsNorm::forward_residual`] outside autograd, with what [`RmsNorm::grads`] needs.
    pub fn forward_saved(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Tensor, fused::NormSaved)> {
        fused::rms_norm_saved(x, delta, &self.weight, self.eps)
    }

    /// `(plus + dh, d weight)` from `dy` for a forward of [`RmsNorm::forward_saved`]; `plus`
    /// (the residual stream's gradient, like h) is added in the same pass.
    pub fn grads(
        &self,
        dy: &Tensor,
        saved: &fused::NormSaved,
        plus: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        fused::rms_norm_grads(dy, saved, &self.weight, plus)
    }

    /// The gain `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        fused::rms_norm(x, &self.weight, self.eps)
    }
}
