//! Fast CPU forward of dot-product attention: per task (batch b, queries i0..i0+tq) and K/V head,
//!
//! ```text
//! rows r = ii * G + h                  (ii < tq queries, h < G heads of one K/V head), M = G * tq
//! Qs [M, D]   = scale * q[b, i0+ii, kv*G+h]
//! for each key tile k0..k0+tk that a query of the block sees:
//!   S  [M, tk] = Qs @ K[k0..k0+tk]^T                  gemm, 2 M tk D FLOPs
//!   entries outside each row's keys -> 0; inside: P = exp(S - m_r), m_r the running row max,
//!   rescaling acc_r and l_r by exp(m_old - m_new) when it grows
//!   acc [M, Dv] += P @ V[k0..k0+tk]                   gemm, 2 M tk Dv FLOPs
//! o = acc / l,  lse = m + ln l
//! ```

use rayon::prelude::*;

use super::{blocks, DotProblem, Tiles};
use crate::cpu::matmul::{matmul, Mat};
use crate::cpu::real::{max_of, scale_in_place, Real};

/// Computes `o [B,Nq,Hq,Dv]` and `lse [B,Nq,Hq]`.
pub fn forward<T: Real>(p: &DotProblem<T>) -> (Vec<T>, Vec<T>) {
    let (b, nq, hq, dv) = (p.dims.batch, p.dims.seq_q, p.dims.heads_q, p.dims.dv);
    let t = Tiles::choose(&p.dims, &p.keys);
    let mut o = vec![T::NAN; b * nq * hq * dv];
    let mut lse = vec![T::NAN; b * nq * hq];
    let tasks: Vec<_> = blocks(&mut o, nq, hq * dv, t.tq)
        .into_iter()
        .zip(blocks(&mut lse, nq, hq, t.tq))
        .collect();
    tasks
        .into_par_iter()
        .for_each(|((b, i0, o), (_, _, lse))| forward_block_fast(p, t, b, i0, o, lse));
    (o, lse)
}

crate::cpu::multiversion!(fn forward_block_fast => forward_block(
    p: &DotProblem<T>,
    t: Tiles,
    b: usize,
    i0: usize,
    o: &mut [T],
    lse: &mut [T]
) -> ());

/// The columns `a..e` of a key tile `k0..k0+kt` that query `i` sees (`a == e`: none).
#[inline(always)]
pub(super) fn visible(p: &DotProblem<impl Real>, i: usize, k0: usize, kt: usize) -> (usize, usize) {
    let r = p.keys.range(i);
    let a = r.start.clamp(k0, k0 + kt) - k0;
    let e = r.end.clamp(k0, k0 + kt) - k0;
    (a, e.max(a))
}

/// Forward of queries `i0..` of batch `b` (as many as `lse` holds) into `o`, `lse`.
#[inline(always)]
fn forward_block<T: Real>(
    p: &DotProblem<T>,
    t: Tiles,
    b: usize,
    i0: usize,
    o: &mut [T],
    lse: &mut [T],
) {
    let dims = p.dims;
    let (nq, nk, hq, hkv, d, dv, g) = (
        dims.seq_q,
        dims.seq_k,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
        dims.group(),
    );
    let nb = lse.len() / hq;
    let m_rows = g * nb;
    let (lo, hi) = (p.keys.range(i0).start, p.keys.range(i0 + nb - 1).end);
    let mut qs = vec![T::ZERO; m_rows * d];
    let mut s = vec![T::ZERO; m_rows * t.tk];
    let mut acc = vec![T::ZERO; m_rows * dv];
    let mut m = vec![T::NEG_INF; m_rows];
    let mut l = vec![T::ZERO; m_rows];
    for kv in 0..hkv {
        for ii in 0..nb {
            let q0 = ((b * nq + i0 + ii) * hq + kv * g) * d;
            qs[ii * g * d..(ii + 1) * g * d].copy_from_slice(&p.q[q0..q0 + g * d]);
        }
        scale_in_place(&mut qs, p.scale);
        acc.fill(T::ZERO);
        m.fill(T::NEG_INF);
        l.fill(T::ZERO);
        for k0 in (lo..hi).step_by(t.tk) {
            let kt = t.tk.min(hi - k0);
            let key_row = ((b * nk + k0) * hkv + kv) * d;
            let val_row = ((b * nk + k0) * hkv + kv) * dv;
            matmul(
                &mut s,
                kt,
                Mat::rows(&qs, m_rows, d, d),
                Mat::transposed(&p.k[key_row..], d, kt, hkv * d),
                false,
            );
            for r in 0..m_rows {
                let (a, e) = visible(p, i0 + r / g, k0, kt);
                let row = &mut s[r * kt..(r + 1) * kt];
                row[..a].fill(T::ZERO);
                row[e..].fill(T::ZERO);
                if a == e {
                    continue;
                }
                let seg = &mut row[a..e];
                let m_new = {
                    let mt = max_of(seg);
                    if mt > m[r] {
                        mt
                    } else {
                        m[r]
                    }
                };
                // m[r] = -inf before the first visible key: corr = exp(-inf) = 0
                let corr = (m[r] - m_new).exp();
                let sum = T::exp_sub_sum(seg, m_new);
                l[r] = l[r] * corr + sum;
                if corr != T::ONE {
                    scale_in_place(&mut acc[r * dv..(r + 1) * dv], corr);
                }
                m[r] = m_new;
            }
            matmul(
                &mut acc,
                dv,
                Mat::rows(&s, m_rows, kt, kt),
                Mat::rows(&p.v[val_row..], kt, dv, hkv * dv),
                true,
            );
        }
        for ii in 0..nb {
            for h in 0..g {
                let r = ii * g + h;
                let head = kv * g + h;
                let out = &mut o[(ii * hq + head) * dv..][..dv];
                out.copy_from_slice(&acc[r * dv..(r + 1) * dv]);
                scale_in_place(out, T::ONE / l[r]);
                lse[ii * hq + head] = m[r] + l[r].ln();
            }
        }
    }
}
