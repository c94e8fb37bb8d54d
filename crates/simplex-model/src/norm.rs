//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * weight`, over the last dim (`[.., C]`).
//!
//! Built from plain tensor ops (candle-nn's fused `rms_norm` has no backward).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

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
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // statistics in f32 at least (bf16 activations)
        let dtype = x.dtype();
        let xf = if dtype == DType::F64 {
            x.clone()
        } else {
            x.to_dtype(DType::F32)?
        };
        let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xf.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        y.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}
