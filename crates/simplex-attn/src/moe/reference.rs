//! Plain candle-op versions of the MoE path, the references the tests hold the ops to.

use candle_core::{Device, Result, Tensor, D};

/// [`super::grouped_matmul`] as one candle product per group (narrow, matmul, cat), with the
/// offsets read to the host: the reference of the grouped product and its gradients.
pub fn grouped_matmul_twin(x: &Tensor, w: &Tensor, offsets: &Tensor) -> Result<Tensor> {
    let (m, _) = x.dims2()?;
    let (e, n, _) = w.dims3()?;
    let off = offsets.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
    let mut parts = Vec::with_capacity(e + 1);
    for g in 0..e {
        let (a, b) = (off[g] as usize, off[g + 1] as usize);
        if b > a {
            let we = w.get(g)?;
            parts.push(x.narrow(0, a, b - a)?.matmul(&we.t()?)?);
        }
    }
    let end = off[e] as usize;
    if end < m {
        parts.push(Tensor::zeros((m - end, n), x.dtype(), x.device())?);
    }
    Tensor::cat(&parts, 0)
}

/// The routed experts' output computed token by token:
///
/// ```text
/// out[t] = sum_j weights[t, j] * down_e (silu(gate_e x_t) * (up_e x_t)),   e = experts[t, j]
/// ```
///
/// with `gate_up [E, 2H, C]` (gate rows first), `down [E, C, H]`, and an assignment skipped
/// when its expert already took `capacity` earlier assignments (in the order `t k + j`).
/// Candle ops only, differentiable in `x`, `weights` and both weights: the reference of the
/// whole routed path (permute, grouped products, SwiGLU, combine).
pub fn moe_reference(
    x: &Tensor,
    experts: &[u32],
    weights: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    capacity: Option<usize>,
) -> Result<Tensor> {
    let (t, _) = x.dims2()?;
    let (_, k) = weights.dims2()?;
    let (e, h2, _) = gate_up.dims3()?;
    let h = h2 / 2;
    let mut taken = vec![0usize; e];
    let mut rows = Vec::with_capacity(t);
    for tok in 0..t {
        let xt = x.narrow(0, tok, 1)?;
        let mut acc = xt.zeros_like()?;
        for j in 0..k {
            let ex = experts[tok * k + j] as usize;
            if capacity.is_some_and(|c| taken[ex] >= c) {
                continue;
            }
            taken[ex] += 1;
            let gu = xt.matmul(&gate_up.get(ex)?.t()?)?;
            let act = (gu.narrow(D::Minus1, 0, h)?.silu()? * gu.narrow(D::Minus1, h, h)?)?;
            let y = act.matmul(&down.get(ex)?.t()?)?;
            let wj = weights
                .narrow(0, tok, 1)?
                .narrow(1, j, 1)?
                .to_dtype(x.dtype())?;
            acc = (acc + y.broadcast_mul(&wj)?)?;
        }
        rows.push(acc);
    }
    Tensor::cat(&rows, 0)
}
