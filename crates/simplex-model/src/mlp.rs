//! SwiGLU MLP: `y = W_down (silu(W_gate x) * (W_up x))`, `[.., C] -> [.., C]` through `H`.
//!
//! The gate and up projections are one product with `gate_up [2H, C]` (rows `0..H` the gate,
//! `H..2H` the up projection); the whole sublayer is one op with its backward written out
//! (`simplex_attn::fused::swiglu_mlp`).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use simplex_attn::fused;

use crate::init::linear_weight;

/// The gated MLP of every block.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_up: Tensor,
    down: Tensor,
}

impl Mlp {
    /// `gate_up [2H, C]`, `down [C, H]`; `out_std` is the init scale of `down` (a residual
    /// output).
    pub fn new(
        d_model: usize,
        hidden: usize,
        out_std: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Mlp {
            gate_up: linear_weight(d_model, 2 * hidden, crate::init::STD, vb.pp("gate_up"))?,
            down: linear_weight(hidden, d_model, out_std, vb.pp("down"))?,
        })
    }

    /// The forward outside autograd, with what [`Mlp::grads`] needs.
    pub fn forward_saved(&self, x: &Tensor) -> candle_core::Result<(Tensor, fused::MlpSaved)> {
        fused::swiglu_mlp_saved(x, &self.gate_up, &self.down)
    }

    /// `(dx, [d gate_up, d down])` from `dy` for a forward of [`Mlp::forward_saved`].
    pub fn grads(
        &self,
        saved: fused::MlpSaved,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, [Tensor; 2])> {
        let (dx, dgu, dd) = fused::swiglu_mlp_grads(saved, dy)?;
        Ok((dx, [dgu, dd]))
    }

    /// `[gate_up, down]`, in the order of [`Mlp::grads`].
    pub fn weights(&self) -> [&Tensor; 2] {
        [&self.gate_up, &self.down]
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        fused::swiglu_mlp(x, &self.gate_up, &self.down)
    }
}
