//! The float64 oracle: 2-simplicial attention written as plainly as the math, one loop per
//! index of the einsum. Every fast path (CPU, CUDA) is tested against these functions.
//!
//! Layouts are those of [`crate::AttnSpec`]: `q [B,N,Hq,D]`, `k1 k2 [B,N,Hkv,D]`, `v1 v2 [B,N,Hkv,Dv]`,
//! `o [B,N,Hq,Dv]`, `lse [B,N,Hq]`, all row-major.
//!
//! ```text
//! A[i,j,k] = scale * logit(q_i, k1_j, k2_k + k2_bias)      trilinear or sum of 3x3 determinants
//! P[i,j,k] = exp(A[i,j,k] - lse[i]),  lse[i] = log sum_{j,k} exp A[i,j,k]   over the windows of i
//! O[i]     = sum_{j,k} P[i,j,k] * v1_j ∘ (v2_k + v2_bias)
//! ```
//! The backward follows section 3 of the spec: `dS = P * (dP - D)`, `D[i] = O[i] . dO[i]`.

use crate::spec::{AttnSpec, Dims, Variant};

/// Forward result of the oracle.
#[derive(Debug, Clone)]
pub struct ReferenceOutput {
    /// `[B,N,Hq,Dv]`
    pub o: Vec<f64>,
    /// `[B,N,Hq]`, natural log
    pub lse: Vec<f64>,
}

/// Gradients of a scalar loss with respect to the five inputs.
#[derive(Debug, Clone)]
pub struct ReferenceGrads {
    /// `[B,N,Hq,D]`
    pub dq: Vec<f64>,
    /// `[B,N,Hkv,D]`
    pub dk1: Vec<f64>,
    /// `[B,N,Hkv,D]`
    pub dk2: Vec<f64>,
    /// `[B,N,Hkv,Dv]`
    pub dv1: Vec<f64>,
    /// `[B,N,Hkv,Dv]`
    pub dv2: Vec<f64>,
}

/// The five inputs of one call, as float64 slices.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// `[B,N,Hq,D]`
    pub q: &'a [f64],
    /// `[B,N,Hkv,D]`
    pub k1: &'a [f64],
    /// `[B,N,Hkv,D]`
    pub k2: &'a [f64],
    /// `[B,N,Hkv,Dv]`
    pub v1: &'a [f64],
    /// `[B,N,Hkv,Dv]`
    pub v2: &'a [f64],
}

/// `det[a; b; c]` of three 3-vectors.
pub fn det3(a: &[f64], b: &[f64], c: &[f64]) -> f64 {
    a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
        + a[2] * (b[0] * c[1] - b[1] * c[0])
}

fn cross(a: &[f64], b: &[f64]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// The unscaled logit of one triple.
fn logit(variant: Variant, q: &[f64], k1: &[f64], k2: &[f64]) -> f64 {
    match variant {
        Variant::Trilinear => (0..q.len()).map(|l| q[l] * k1[l] * k2[l]).sum(),
        Variant::Determinant => (0..q.len() / 3)
            .map(|c| {
                let r = 3 * c..3 * c + 3;
                det3(&q[r.clone()], &k1[r.clone()], &k2[r])
            })
            .sum(),
    }
}

/// Adds `w * d logit / d(q, k1, k2)` of one triple into `gq, gk1, gk2`.
fn add_logit_grads(
    variant: Variant,
    w: f64,
    (q, k1, k2): (&[f64], &[f64], &[f64]),
    gq: &mut [f64],
    gk1: &mut [f64],
    gk2: &mut [f64],
) {
    match variant {
        Variant::Trilinear => {
            for l in 0..q.len() {
                gq[l] += w * k1[l] * k2[l];
                gk1[l] += w * q[l] * k2[l];
                gk2[l] += w * q[l] * k1[l];
            }
        }
        Variant::Determinant => {
            // d det(a,b,c)/da = b x c, /db = c x a, /dc = a x b.
            for c in 0..q.len() / 3 {
                let r = 3 * c..3 * c + 3;
                let (a, b, cc) = (&q[r.clone()], &k1[r.clone()], &k2[r.clone()]);
                let (da, db, dc) = (cross(b, cc), cross(cc, a), cross(a, b));
                for t in 0..3 {
                    gq[3 * c + t] += w * da[t];
                    gk1[3 * c + t] += w * db[t];
                    gk2[3 * c + t] += w * dc[t];
                }
            }
        }
    }
}

/// Row offset of `[b, t, h, :]` in a `[B, N, H, width]` tensor.
fn at(dims: &Dims, b: usize, t: usize, h: usize, heads: usize, width: usize) -> usize {
    ((b * dims.seq + t) * heads + h) * width
}

/// One (batch, query, head) problem: the window pairs with their probabilities.
struct QueryPairs {
    pairs: Vec<(usize, usize)>,
    probs: Vec<f64>,
    lse: f64,
}

fn query_pairs(
    spec: &AttnSpec,
    dims: &Dims,
    x: &Inputs,
    k2b: &[f64],
    (b, i, h): (usize, usize, usize),
) -> QueryPairs {
    let (d, hq, hkv) = (dims.d, dims.heads_q, dims.heads_kv);
    let g = h / dims.group();
    let win = spec.windows(dims.seq);
    let scale = spec.scale_for(d);
    let qi = &x.q[at(dims, b, i, h, hq, d)..][..d];
    let mut pairs = Vec::new();
    let mut logits = Vec::new();
    for j in win.range1(i) {
        let k1j = &x.k1[at(dims, b, j, g, hkv, d)..][..d];
        for k in win.range2(i) {
            let k2k = &k2b[at(dims, b, k, g, hkv, d)..][..d];
            pairs.push((j, k));
            logits.push(scale * logit(spec.variant, qi, k1j, k2k));
        }
    }
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|a| (a - m).exp()).sum();
    let lse = m + sum.ln();
    let probs = logits.iter().map(|a| (a - lse).exp()).collect();
    QueryPairs { pairs, probs, lse }
}

fn biased(x: &[f64], bias: f64) -> Vec<f64> {
    x.iter().map(|v| v + bias).collect()
}

/// The oracle forward: `O` and `lse` (shapes in the module doc).
pub fn simplicial_attn_reference(spec: &AttnSpec, dims: &Dims, x: &Inputs) -> ReferenceOutput {
    let (n, hq, hkv, dv) = (dims.seq, dims.heads_q, dims.heads_kv, dims.dv);
    let k2b = biased(x.k2, spec.k2_bias);
    let v2b = biased(x.v2, spec.v2_bias);
    let mut o = vec![0.0; dims.batch * n * hq * dv];
    let mut lse = vec![0.0; dims.batch * n * hq];
    for b in 0..dims.batch {
        for i in 0..n {
            for h in 0..hq {
                let g = h / dims.group();
                let qp = query_pairs(spec, dims, x, &k2b, (b, i, h));
                let out = &mut o[at(dims, b, i, h, hq, dv)..][..dv];
                for (&(j, k), p) in qp.pairs.iter().zip(&qp.probs) {
                    let v1j = &x.v1[at(dims, b, j, g, hkv, dv)..][..dv];
                    let v2k = &v2b[at(dims, b, k, g, hkv, dv)..][..dv];
                    for c in 0..dv {
                        out[c] += p * v1j[c] * v2k[c];
                    }
                }
                lse[(b * n + i) * hq + h] = qp.lse;
            }
        }
    }
    ReferenceOutput { o, lse }
}

/// The oracle backward: gradients of `sum(dout * O)` with respect to q, k1, k2, v1, v2.
pub fn simplicial_attn_backward_reference(
    spec: &AttnSpec,
    dims: &Dims,
    x: &Inputs,
    dout: &[f64],
) -> ReferenceGrads {
    let (n, hq, hkv, d, dv) = (dims.seq, dims.heads_q, dims.heads_kv, dims.d, dims.dv);
    let k2b = biased(x.k2, spec.k2_bias);
    let v2b = biased(x.v2, spec.v2_bias);
    let scale = spec.scale_for(d);
    let mut gr = ReferenceGrads {
        dq: vec![0.0; x.q.len()],
        dk1: vec![0.0; x.k1.len()],
        dk2: vec![0.0; x.k2.len()],
        dv1: vec![0.0; x.v1.len()],
        dv2: vec![0.0; x.v2.len()],
    };
    for b in 0..dims.batch {
        for i in 0..n {
            for h in 0..hq {
                let g = h / dims.group();
                let qp = query_pairs(spec, dims, x, &k2b, (b, i, h));
                let qo = at(dims, b, i, h, hq, d);
                let doi = &dout[at(dims, b, i, h, hq, dv)..][..dv];
                // O[i] recomputed, then D[i] = O[i] . dO[i]
                let mut oi = vec![0.0; dv];
                for (&(j, k), p) in qp.pairs.iter().zip(&qp.probs) {
                    for c in 0..dv {
                        oi[c] += p
                            * x.v1[at(dims, b, j, g, hkv, dv) + c]
                            * v2b[at(dims, b, k, g, hkv, dv) + c];
                    }
                }
                let big_d: f64 = (0..dv).map(|c| oi[c] * doi[c]).sum();
                for (&(j, k), &p) in qp.pairs.iter().zip(&qp.probs) {
                    let (j1, k2o) = (at(dims, b, j, g, hkv, d), at(dims, b, k, g, hkv, d));
                    let (jv, kv) = (at(dims, b, j, g, hkv, dv), at(dims, b, k, g, hkv, dv));
                    let mut dp = 0.0;
                    for c in 0..dv {
                        let (v1c, v2c) = (x.v1[jv + c], v2b[kv + c]);
                        dp += doi[c] * v1c * v2c;
                        gr.dv1[jv + c] += p * doi[c] * v2c;
                        gr.dv2[kv + c] += p * doi[c] * v1c;
                    }
                    let ds = p * (dp - big_d) * scale;
                    let mut gq = vec![0.0; d];
                    let mut gk1 = vec![0.0; d];
                    let mut gk2 = vec![0.0; d];
                    add_logit_grads(
                        spec.variant,
                        ds,
                        (&x.q[qo..qo + d], &x.k1[j1..j1 + d], &k2b[k2o..k2o + d]),
                        &mut gq,
                        &mut gk1,
                        &mut gk2,
                    );
                    for l in 0..d {
                        gr.dq[qo + l] += gq[l];
                        gr.dk1[j1 + l] += gk1[l];
                        gr.dk2[k2o + l] += gk2[l];
                    }
                }
            }
        }
    }
    gr
}

/// Plain float64 dot-product attention of `nq` queries over `nk` keys, with a mask:
/// `O[i] = sum_m softmax_m(scale * q_i . key_m) value_m` over the `m` with `allowed(i, m)`.
/// Returns `(O [nq, dv], lse [nq])`. Used to check the pair-grid identity.
pub fn dot_attention_reference(
    q: &[f64],
    keys: &[f64],
    values: &[f64],
    (nq, nk, d, dv): (usize, usize, usize, usize),
    scale: f64,
    allowed: impl Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut o = vec![0.0; nq * dv];
    let mut lse = vec![0.0; nq];
    for i in 0..nq {
        let ms: Vec<usize> = (0..nk).filter(|&m| allowed(i, m)).collect();
        let s: Vec<f64> = ms
            .iter()
            .map(|&m| scale * (0..d).map(|l| q[i * d + l] * keys[m * d + l]).sum::<f64>())
            .collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        lse[i] = mx + s.iter().map(|a| (a - mx).exp()).sum::<f64>().ln();
        for (&m, a) in ms.iter().zip(&s) {
            let p = (a - lse[i]).exp();
            for c in 0..dv {
                o[i * dv + c] += p * values[m * dv + c];
            }
        }
    }
    (o, lse)
}
