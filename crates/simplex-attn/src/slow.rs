//! The slow twin built from candle tensor ops: 2-simplicial attention as ordinary dot-product
//! attention over the `N * N` pair keys `k1_j ∘ k2_k` with values `v1_j ∘ v2_k` and the
//! two-window mask (section 3 of the spec). Materializes `[B, Hq, N, N*N]` logits, so it is for
//! tests and small shapes only; candle's autograd gives its gradients, an independent check of
//! both the oracle and the op.

use crate::determinant;
use crate::spec::{AttnSpec, Variant};
use crate::AttnError;
use candle_core::{DType, Tensor, D};

/// `[B,N,Hkv,X]` to `[B,Hq,N,X]`, query head h reading K/V head h / G.
fn to_query_heads(x: &Tensor, group: usize) -> candle_core::Result<Tensor> {
    let (b, n, hkv, w) = x.dims4()?;
    x.unsqueeze(3)?
        .expand((b, n, hkv, group, w))?
        .reshape((b, n, hkv * group, w))?
        .transpose(1, 2)
}

/// Returns `(o [B,N,Hq,Dv], lse [B,N,Hq])`, differentiable in all five inputs.
pub fn simplicial_attn_slow(
    q: &Tensor,
    k1: &Tensor,
    k2: &Tensor,
    v1: &Tensor,
    v2: &Tensor,
    spec: &AttnSpec,
) -> Result<(Tensor, Tensor), AttnError> {
    let dims = spec.dims(q.dims(), k1.dims(), k2.dims(), v1.dims(), v2.dims())?;
    let (b, n, hq, dv, g) = (dims.batch, dims.seq, dims.heads_q, dims.dv, dims.group());
    let scale = spec.scale_for(dims.d);
    let k2 = (k2 + spec.k2_bias)?;
    let v2 = (v2 + spec.v2_bias)?;
    let (q, k1, k2) = match spec.variant {
        Variant::Trilinear => (q.clone(), k1.clone(), k2),
        Variant::Determinant => determinant::lift(q, k1, &k2)?,
    };
    let d = q.dim(3)?;
    let q = q.transpose(1, 2)?; // [B,Hq,N,D]
    let (k1, k2) = (to_query_heads(&k1, g)?, to_query_heads(&k2, g)?);
    let (v1, v2) = (to_query_heads(v1, g)?, to_query_heads(&v2, g)?);
    // pair keys and values [B,Hq,N*N,X], pair index j * N + k
    let pairs = |a: &Tensor, c: &Tensor, w: usize| -> candle_core::Result<Tensor> {
        a.unsqueeze(3)?
            .broadcast_mul(&c.unsqueeze(2)?)?
            .reshape((b, hq, n * n, w))
    };
    let keys = pairs(&k1, &k2, d)?;
    let values = pairs(&v1, &v2, dv)?;
    let logits = (q
        .contiguous()?
        .matmul(&keys.transpose(2, 3)?.contiguous()?)?
        * scale)?;
    let win = spec.windows(n);
    let mask: Vec<f64> = (0..n)
        .flat_map(|i| {
            (0..n * n).map(move |p| {
                let (j, k) = (p / n, p % n);
                if win.range1(i).contains(&j) && win.range2(i).contains(&k) {
                    0.0
                } else {
                    -1e30
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (n, n * n), q.device())?.to_dtype(q.dtype())?;
    let logits = logits.broadcast_add(&mask)?;
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + m)?;
    let p = logits.broadcast_sub(&lse)?.exp()?;
    let o = p.matmul(&values.contiguous()?)?.transpose(1, 2)?;
    let lse = lse.squeeze(3)?.transpose(1, 2)?;
    let lse = if lse.dtype() == DType::F64 {
        lse
    } else {
        lse.to_dtype(DType::F32)?
    };
    Ok((o, lse))
}
