//! The slow twin of [`super::dot_attn`], built from candle tensor ops: the `[B, Hq, Nq, Nk]`
//! scores are materialized, masked and soft-maxed (in f32 at least), so gradients come from
//! candle's autograd. For tests, and for devices that have no fused kernel yet (it runs wherever
//! candle's matmul and elementwise ops do).

use candle_core::{DType, Tensor, D};

use super::spec::DotSpec;
use crate::AttnError;

/// `[B,N,Hkv,X]` to `[B,Hq,N,X]`, query head h reading K/V head h / G.
fn to_query_heads(x: &Tensor, group: usize) -> candle_core::Result<Tensor> {
    let (b, n, hkv, w) = x.dims4()?;
    x.transpose(1, 2)?
        .unsqueeze(2)?
        .expand((b, hkv, group, n, w))?
        .reshape((b, hkv * group, n, w))
}

/// Returns `(o [B,Nq,Hq,Dv], lse [B,Nq,Hq])` (shapes of `dot::spec`), differentiable in q, k, v;
/// `o` has the dtype of q, `lse` is f32 (f64 for f64 inputs).
pub fn dot_attn_slow(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: &DotSpec,
) -> Result<(Tensor, Tensor), AttnError> {
    let dims = spec.dims(q.dims(), k.dims(), v.dims())?;
    let (nq, nk, g) = (dims.seq_q, dims.seq_k, dims.group());
    let dtype = q.dtype();
    let compute = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let qh = q.transpose(1, 2)?.contiguous()?; // [B,Hq,Nq,D]
    let (kh, vh) = (to_query_heads(k, g)?, to_query_heads(v, g)?);
    let s = qh
        .matmul(&kh.transpose(2, 3)?.contiguous()?)?
        .to_dtype(compute)?;
    let s = (s * spec.scale_for(dims.d))?;
    let keys = spec.keys(&dims);
    let mask: Vec<f32> = (0..nq)
        .flat_map(|i| {
            let r = keys.range(i);
            (0..nk).map(move |j| {
                if r.contains(&j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (nq, nk), q.device())?.to_dtype(compute)?;
    let s = s.broadcast_add(&mask)?;
    let m = s.max_keepdim(D::Minus1)?.detach();
    let lse = (s.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?;
    let p = s.broadcast_sub(&lse)?.exp()?.to_dtype(dtype)?;
    let o = p.matmul(&vh.contiguous()?)?.transpose(1, 2)?.contiguous()?;
    Ok((o, lse.squeeze(3)?.transpose(1, 2)?.contiguous()?))
}
