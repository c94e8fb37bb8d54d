//! The float64 oracle of dot-product attention, one loop per index of the math. The fast CPU
//! kernels (and, later, CUDA) are tested against these functions.
//!
//! Layouts of [`super::DotSpec`]: `q [B,Nq,Hq,D]`, `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`,
//! `o [B,Nq,Hq,Dv]`, `lse [B,Nq,Hq]`, row-major.
//!
//! ```text
//! S[i,j] = scale * q_i . k_j                         j in the keys of query i
//! P[i,j] = exp(S[i,j] - lse[i]),  lse[i] = log sum_j exp S[i,j]
//! O[i]   = sum_j P[i,j] v_j
//! dP[i,j] = dO_i . v_j,  dS = P * (dP - D_i),  D_i = O_i . dO_i
//! dq_i = scale sum_j dS[i,j] k_j,  dk_j = scale sum_i dS[i,j] q_i,  dv_j = sum_i P[i,j] dO_i
//! ```

#![allow(clippy::needless_range_loop)] // the oracle loops over indices, like the math

use super::spec::{DotDims, DotSpec};
use crate::reference::ReferenceOutput;

/// The three inputs of one call, as float64 slices.
#[derive(Debug, Clone, Copy)]
pub struct DotInputs<'a> {
    /// `[B,Nq,Hq,D]`
    pub q: &'a [f64],
    /// `[B,Nk,Hkv,D]`
    pub k: &'a [f64],
    /// `[B,Nk,Hkv,Dv]`
    pub v: &'a [f64],
}

/// Gradients of a scalar loss with respect to q, k, v.
#[derive(Debug, Clone)]
pub struct DotGrads<T> {
    /// `[B,Nq,Hq,D]`
    pub dq: Vec<T>,
    /// `[B,Nk,Hkv,D]`
    pub dk: Vec<T>,
    /// `[B,Nk,Hkv,Dv]`
    pub dv: Vec<T>,
}

/// Offsets of one (batch, query, head): q row, o row, lse index, and the row maker for keys.
struct Index {
    dims: DotDims,
}

impl Index {
    fn q(&self, b: usize, i: usize, h: usize, width: usize) -> usize {
        ((b * self.dims.seq_q + i) * self.dims.heads_q + h) * width
    }
    fn k(&self, b: usize, j: usize, h: usize, width: usize) -> usize {
        ((b * self.dims.seq_k + j) * self.dims.heads_kv + h / self.dims.group()) * width
    }
}

/// Probabilities of query `(b, i, h)` over its keys, and its log-sum-exp.
fn probs(
    spec: &DotSpec,
    dims: &DotDims,
    x: &DotInputs,
    (b, i, h): (usize, usize, usize),
) -> (Vec<(usize, f64)>, f64) {
    let at = Index { dims: *dims };
    let d = dims.d;
    let scale = spec.scale_for(d);
    let qi = &x.q[at.q(b, i, h, d)..][..d];
    let s: Vec<(usize, f64)> = spec
        .keys(dims)
        .range(i)
        .map(|j| {
            let kj = &x.k[at.k(b, j, h, d)..][..d];
            (j, scale * (0..d).map(|l| qi[l] * kj[l]).sum::<f64>())
        })
        .collect();
    let m = s.iter().map(|&(_, a)| a).fold(f64::NEG_INFINITY, f64::max);
    let lse = m + s.iter().map(|&(_, a)| (a - m).exp()).sum::<f64>().ln();
    (
        s.into_iter().map(|(j, a)| (j, (a - lse).exp())).collect(),
        lse,
    )
}

/// The oracle forward: `O` and `lse`.
pub fn dot_attn_reference(spec: &DotSpec, dims: &DotDims, x: &DotInputs) -> ReferenceOutput {
    let at = Index { dims: *dims };
    let (nq, hq, dv) = (dims.seq_q, dims.heads_q, dims.dv);
    let mut o = vec![0.0; dims.batch * nq * hq * dv];
    let mut lse = vec![0.0; dims.batch * nq * hq];
    for b in 0..dims.batch {
        for i in 0..nq {
            for h in 0..hq {
                let (p, l) = probs(spec, dims, x, (b, i, h));
                let out = &mut o[at.q(b, i, h, dv)..][..dv];
                for (j, pj) in p {
                    let vj = &x.v[at.k(b, j, h, dv)..][..dv];
                    for c in 0..dv {
                        out[c] += pj * vj[c];
                    }
                }
                lse[at.q(b, i, h, 1)] = l;
            }
        }
    }
    ReferenceOutput { o, lse }
}

/// The oracle backward: gradients of `sum(dout * O)` with respect to q, k, v.
pub fn dot_attn_backward_reference(
    spec: &DotSpec,
    dims: &DotDims,
    x: &DotInputs,
    dout: &[f64],
) -> DotGrads<f64> {
    let at = Index { dims: *dims };
    let (nq, hq, d, dv) = (dims.seq_q, dims.heads_q, dims.d, dims.dv);
    let scale = spec.scale_for(d);
    let mut g = DotGrads {
        dq: vec![0.0; x.q.len()],
        dk: vec![0.0; x.k.len()],
        dv: vec![0.0; x.v.len()],
    };
    for b in 0..dims.batch {
        for i in 0..nq {
            for h in 0..hq {
                let (p, _) = probs(spec, dims, x, (b, i, h));
                let qo = at.q(b, i, h, d);
                let doi = &dout[at.q(b, i, h, dv)..][..dv];
                let mut oi = vec![0.0; dv];
                for &(j, pj) in &p {
                    for c in 0..dv {
                        oi[c] += pj * x.v[at.k(b, j, h, dv) + c];
                    }
                }
                let big_d: f64 = (0..dv).map(|c| oi[c] * doi[c]).sum();
                for &(j, pj) in &p {
                    let (ko, vo) = (at.k(b, j, h, d), at.k(b, j, h, dv));
                    let dp: f64 = (0..dv).map(|c| doi[c] * x.v[vo + c]).sum();
                    for c in 0..dv {
                        g.dv[vo + c] += pj * doi[c];
                    }
                    let ds = pj * (dp - big_d) * scale;
                    for l in 0..d {
                        g.dq[qo + l] += ds * x.k[ko + l];
                        g.dk[ko + l] += ds * x.q[qo + l];
                    }
                }
            }
        }
    }
    g
}
