//! What `simplex bench moe` measures: the grouped products against one dense product of the
//! same total work (cuBLAS through candle on CUDA), and the routed expert path forward+backward
//! against a dense SwiGLU MLP with the same active width.
//!
//! FLOPs: a product of `[m, k] x [k, n]` is `2 m k n`; the grouped products count the rows
//! they multiply (`tokens * top_k` in total), the same as the dense product beside them.

use candle_core::{DType, Device, Tensor, Var};

use super::{
    combine, dispatch, grouped_matmul, grouped_matmul_backward, permute, routed_experts,
    routed_experts_twin, top_k, ExpertProducts,
};
use crate::bench::{time_it, Timing};
use crate::fused::swiglu_mlp;
use crate::AttnError;

/// The shape of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct MoeShape {
    /// Tokens in the batch.
    pub tokens: usize,
    /// Model width C.
    pub d_model: usize,
    /// Hidden width H of one expert.
    pub hidden: usize,
    /// Experts E.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
}

/// One timed operation and its dense twin.
#[derive(Debug, Clone)]
pub struct MoeRow {
    /// What was timed.
    pub name: &'static str,
    /// FLOPs of one call.
    pub flops: f64,
    /// Median seconds of our op.
    pub seconds: f64,
    /// Median seconds of the dense twin.
    pub dense_seconds: f64,
}

/// Times the grouped products (forward, input gradient, weight gradient) and the routed
/// path's forward+backward on `device` in `dtype`, each beside its dense twin; random inputs,
/// routing by the top-k of random scores (about even loads).
pub fn run(
    s: MoeShape,
    device: &Device,
    dtype: DType,
    reps: usize,
    seconds: f64,
) -> Result<Vec<MoeRow>, AttnError> {
    let (t, c, h, e, k) = (s.tokens, s.d_model, s.hidden, s.experts, s.top_k);
    let m = t * k;
    let rand = |shape: &[usize], std: f64| -> Result<Tensor, AttnError> {
        Ok(Tensor::randn(0f32, std as f32, shape, device)?.to_dtype(dtype)?)
    };
    let timing = Timing::host(reps, seconds);
    let scores = Tensor::randn(0f32, 1.0, (t, e), device)?;
    let ids = top_k(&scores, k)?;
    let d = dispatch(&ids, e, None)?;
    let x = rand(&[t, c], 1.0)?;
    let xp = permute(&x, &d)?;
    let gu = rand(&[e, 2 * h, c], 0.02)?;
    let dy = rand(&[m, 2 * h], 1.0)?;
    let dense_w = rand(&[2 * h, c], 0.02)?;
    let mut rows = Vec::new();
    let mut timed = |name: &'static str,
                     flops: f64,
                     ours: &mut dyn FnMut() -> Result<(), AttnError>,
                     dense: &mut dyn FnMut() -> Result<(), AttnError>|
     -> Result<(), AttnError> {
        let (a, _) = time_it(&timing, device, &mut *ours)?;
        let (b, _) = time_it(&timing, device, &mut *dense)?;
        rows.push(MoeRow {
            name,
            flops,
            seconds: a,
            dense_seconds: b,
        });
        Ok(())
    };
    let flops = 2.0 * (m * c * 2 * h) as f64;
    // y = x W_e^T against one [m, C] x [C, 2H] product
    timed(
        "grouped fwd",
        flops,
        &mut || {
            grouped_matmul(&xp, &gu, &d.offsets)?;
            Ok(())
        },
        &mut || {
            xp.matmul(&dense_w.t()?)?;
            Ok(())
        },
    )?;
    // dx = dy W_e and dW_e = dy_e^T x_e against dense products of the same work
    timed(
        "grouped dx + dw",
        2.0 * flops,
        &mut || {
            grouped_matmul_backward(&xp, &gu, &d.offsets, &dy)?;
            Ok(())
        },
        &mut || {
            dy.matmul(&dense_w)?;
            dy.t()?.matmul(&xp)?;
            Ok(())
        },
    )?;
    // the glue around the products: top-k, dispatch, permute and combine (dense: nothing)
    let yp = rand(&[m, c], 1.0)?;
    let w = Var::from_tensor(&Tensor::full(1.0 / k as f32, (t, k), device)?)?;
    timed(
        "routing + row moves",
        0.0,
        &mut || {
            let d = dispatch(&top_k(&scores, k)?, e, None)?;
            permute(&x, &d)?;
            combine(&yp, w.as_tensor(), &d)?;
            Ok(())
        },
        &mut || Ok(()),
    )?;
    // the routed path (top-k and dispatch of given scores, then the fused op, or its composed
    // twin: permute, gate_up, SwiGLU, down, combine) against a dense SwiGLU MLP of hidden k H,
    // forward and backward; the loss sums rows first (candle's sum over all elements at once
    // runs on one thread block)
    let xt = Var::from_tensor(&x)?;
    let wv = Var::from_tensor(&gu)?;
    let down = Var::from_tensor(&rand(&[e, c, h], 0.02)?)?;
    let dgu = Var::from_tensor(&rand(&[2 * k * h, c], 0.02)?)?;
    let ddown = Var::from_tensor(&rand(&[c, k * h], 0.02)?)?;
    let dout = rand(&[t, c], 1.0)?;
    let loss = |out: Tensor| -> Result<(), AttnError> {
        (out * &dout)?.sum_keepdim(1)?.sum_all()?.backward()?;
        Ok(())
    };
    let path_flops = 3.0 * 2.0 * (m * 3 * c * h) as f64;
    let mut dense = || {
        loss(swiglu_mlp(
            xt.as_tensor(),
            dgu.as_tensor(),
            ddown.as_tensor(),
        )?)
    };
    for (name, products) in [
        (
            "routed experts f+b, grouped kernels",
            Some(ExpertProducts::Grouped),
        ),
        (
            "routed experts f+b, cuBLAS per expert",
            Some(ExpertProducts::PerExpert),
        ),
        ("routed experts f+b, composed ops", None),
    ] {
        timed(
            name,
            path_flops,
            &mut || {
                let d = dispatch(&top_k(&scores, k)?, e, None)?;
                let (x, w, gu, dn) = (
                    xt.as_tensor(),
                    w.as_tensor(),
                    wv.as_tensor(),
                    down.as_tensor(),
                );
                loss(match products {
                    Some(p) => routed_experts(x, w, gu, dn, &d.with_products(p))?,
                    None => routed_experts_twin(x, w, gu, dn, &d)?,
                })
            },
            &mut dense,
        )?;
    }
    Ok(rows)
}
