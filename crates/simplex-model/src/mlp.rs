//! SwiGLU MLP: `y = W_down (silu(W_gate x) * (W_up x))`, `[.., C] -> [.., C]` through `H`.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::init::linear;

/// The gated MLP of every block.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// `gate, up [H, C]`, `down [C, H]`; `out_std` is the init scale of `down` (a residual output).
    pub fn new(
        d_model: usize,
        hidden: usize,
        out_std: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Mlp {
            gate: linear(d_model, hidden, crate::init::STD, vb.pp("gate"))?,
            up: linear(d_model, hidden, crate::init::STD, vb.pp("up"))?,
            down: linear(hidden, d_model, out_std, vb.pp("down"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = (self.gate.forward(x)?.silu()? * self.up.forward(x)?)?;
        self.down.forward(&h)
    }
}
