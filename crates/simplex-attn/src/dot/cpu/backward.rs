//! Fast CPU backward of dot-product attention: recomputes `P` tile by tile from the saved `lse`
//! (rows stacked as in the forward, `r = ii * G + h`, `M = G * tq`):
//!
//! ```text
//! Delta_r = O_r . dO_r                                        pre-pass
//! S  = Qs @ K^T,  P = exp(S - lse_r)   (0 outside the row's keys)       [M, tk]
//! dP = dOs @ V^T, dS = P * (dP - Delta_r)                               [M, tk]
//! pass 1 (a task owns a key block):    dV += P^T @ dOs,   dK += dS^T @ Qs     (Qs = scale q)
//! pass 2 (a task owns a query block):  dQ_r = scale * (dS @ K)_r
//! ```
//! Two passes recompute `S` and `dP` twice (7 products per tile pair instead of 5) but each
//! output row has exactly one owner: no atomics, no per-task key buffers, the same bits for any
//! thread count.

use rayon::prelude::*;

use super::forward::visible;
use super::{blocks, DotGrads, DotProblem, DotSaved, Tiles};
use crate::cpu::matmul::{matmul, Mat};
use crate::cpu::real::{dot, scale_in_place, Real};

/// Computes the gradients of `sum(dout * o)` with respect to q, k, v.
pub fn backward<T: Real>(p: &DotProblem<T>, saved: &DotSaved<T>) -> DotGrads<T> {
    let dims = p.dims;
    let (b, nq, nk, hq, hkv, d, dv) = (
        dims.batch,
        dims.seq_q,
        dims.seq_k,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
    );
    let t = Tiles::choose(&dims, &p.keys);
    let delta: Vec<T> = (0..b * nq * hq)
        .into_par_iter()
        .map(|r| {
            dot(
                &saved.o[r * dv..(r + 1) * dv],
                &saved.dout[r * dv..(r + 1) * dv],
            )
        })
        .collect();
    let mut g = DotGrads {
        dq: vec![T::NAN; b * nq * hq * d],
        dk: vec![T::NAN; b * nk * hkv * d],
        dv: vec![T::NAN; b * nk * hkv * dv],
    };
    let key_tasks: Vec<_> = blocks(&mut g.dk, nk, hkv * d, t.tk)
        .into_iter()
        .zip(blocks(&mut g.dv, nk, hkv * dv, t.tk))
        .collect();
    let pass = Pass {
        p,
        saved,
        delta: &delta,
        t,
    };
    key_tasks
        .into_par_iter()
        .for_each(|((b, j0, dk), (_, _, dv))| dkv_block_fast(&pass, b, j0, dk, dv));
    blocks(&mut g.dq, nq, hq * d, t.tq)
        .into_par_iter()
        .for_each(|(b, i0, dq)| dq_block_fast(&pass, b, i0, dq));
    g
}

/// What both passes read.
struct Pass<'a, T> {
    p: &'a DotProblem<'a, T>,
    saved: &'a DotSaved<'a, T>,
    /// `[B,Nq,Hq]`, `O . dO` per row
    delta: &'a [T],
    t: Tiles,
}

crate::cpu::multiversion!(fn dkv_block_fast => dkv_block(
    pass: &Pass<T>,
    b: usize,
    j0: usize,
    dk: &mut [T],
    dv: &mut [T]
) -> ());

crate::cpu::multiversion!(fn dq_block_fast => dq_block(
    pass: &Pass<T>,
    b: usize,
    i0: usize,
    dq: &mut [T]
) -> ());

/// Row inputs of `nb` queries from `i0` and one K/V head: scaled q, dO, lse, Delta.
struct Rows<T> {
    qs: Vec<T>,
    dos: Vec<T>,
    lse: Vec<T>,
    delta: Vec<T>,
}

impl<T: Real> Rows<T> {
    fn new(g: usize, tq: usize, d: usize, dv: usize) -> Self {
        Rows {
            qs: vec![T::ZERO; g * tq * d],
            dos: vec![T::ZERO; g * tq * dv],
            lse: vec![T::ZERO; g * tq],
            delta: vec![T::ZERO; g * tq],
        }
    }

    #[inline(always)]
    fn load(&mut self, pass: &Pass<T>, b: usize, i0: usize, nb: usize, kv: usize) {
        let Pass {
            p, saved, delta, ..
        } = *pass;
        let dims = p.dims;
        let (nq, hq, d, dv, g) = (dims.seq_q, dims.heads_q, dims.d, dims.dv, dims.group());
        for ii in 0..nb {
            let row = (b * nq + i0 + ii) * hq + kv * g;
            self.qs[ii * g * d..(ii + 1) * g * d].copy_from_slice(&p.q[row * d..(row + g) * d]);
            self.dos[ii * g * dv..(ii + 1) * g * dv]
                .copy_from_slice(&saved.dout[row * dv..(row + g) * dv]);
            self.lse[ii * g..(ii + 1) * g].copy_from_slice(&saved.lse[row..row + g]);
            self.delta[ii * g..(ii + 1) * g].copy_from_slice(&delta[row..row + g]);
        }
        scale_in_place(&mut self.qs[..nb * g * d], p.scale);
    }
}

/// For the rows of queries `i0..i0+nb` against keys `k0..k0+kt` of K/V head `kv`: `s = P`,
/// `ds = dS` (both `[G*nb, kt]`, zero outside each row's keys).
#[inline(always)]
fn probs_and_ds<T: Real>(
    p: &DotProblem<T>,
    rows: &Rows<T>,
    (b, i0, nb, kv): (usize, usize, usize, usize),
    (k0, kt): (usize, usize),
    s: &mut [T],
    ds: &mut [T],
) {
    let dims = p.dims;
    let (nk, hkv, d, dv, g) = (dims.seq_k, dims.heads_kv, dims.d, dims.dv, dims.group());
    let m_rows = g * nb;
    let key_row = ((b * nk + k0) * hkv + kv) * d;
    let val_row = ((b * nk + k0) * hkv + kv) * dv;
    let qs = Mat::rows(&rows.qs, m_rows, d, d);
    matmul(
        s,
        kt,
        qs,
        Mat::transposed(&p.k[key_row..], d, kt, hkv * d),
        false,
    );
    let dos = Mat::rows(&rows.dos, m_rows, dv, dv);
    matmul(
        ds,
        kt,
        dos,
        Mat::transposed(&p.v[val_row..], dv, kt, hkv * dv),
        false,
    );
    for r in 0..m_rows {
        let (a, e) = visible(p, i0 + r / g, k0, kt);
        let (srow, dsrow) = (&mut s[r * kt..(r + 1) * kt], &mut ds[r * kt..(r + 1) * kt]);
        for x in [&mut *srow, &mut *dsrow] {
            x[..a].fill(T::ZERO);
            x[e..].fill(T::ZERO);
        }
        T::exp_sub(&mut srow[a..e], rows.lse[r]);
        let dl = rows.delta[r];
        for (dp, &pr) in dsrow[a..e].iter_mut().zip(&srow[a..e]) {
            *dp = pr * (*dp - dl);
        }
    }
}

/// dk, dv of keys `j0..` (as many as `dk` holds) of batch `b`.
#[inline(always)]
fn dkv_block<T: Real>(pass: &Pass<T>, b: usize, j0: usize, dk: &mut [T], dv: &mut [T]) {
    let (p, t) = (pass.p, pass.t);
    let dims = p.dims;
    let (hkv, d, dvw, g) = (dims.heads_kv, dims.d, dims.dv, dims.group());
    let kt = dk.len() / (hkv * d);
    dk.fill(T::ZERO);
    dv.fill(T::ZERO);
    let queries = p.keys.queries_seeing(j0..j0 + kt);
    let mut rows = Rows::new(g, t.tq, d, dvw);
    let mut s = vec![T::ZERO; g * t.tq * kt];
    let mut ds = vec![T::ZERO; g * t.tq * kt];
    for kv in 0..hkv {
        for i0 in queries.clone().step_by(t.tq) {
            let nb = t.tq.min(queries.end - i0);
            let m_rows = g * nb;
            rows.load(pass, b, i0, nb, kv);
            probs_and_ds(p, &rows, (b, i0, nb, kv), (j0, kt), &mut s, &mut ds);
            let pt = Mat::transposed(&s, kt, m_rows, kt);
            matmul(
                &mut dv[kv * dvw..],
                hkv * dvw,
                pt,
                Mat::rows(&rows.dos, m_rows, dvw, dvw),
                true,
            );
            let dst = Mat::transposed(&ds, kt, m_rows, kt);
            matmul(
                &mut dk[kv * d..],
                hkv * d,
                dst,
                Mat::rows(&rows.qs, m_rows, d, d),
                true,
            );
        }
    }
}

/// dq of queries `i0..` (as many as `dq` holds) of batch `b`.
#[inline(always)]
fn dq_block<T: Real>(pass: &Pass<T>, b: usize, i0: usize, dq: &mut [T]) {
    let (p, t) = (pass.p, pass.t);
    let dims = p.dims;
    let (nk, hq, hkv, d, dv, g) = (
        dims.seq_k,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
        dims.group(),
    );
    let nb = dq.len() / (hq * d);
    let m_rows = g * nb;
    let (lo, hi) = (p.keys.range(i0).start, p.keys.range(i0 + nb - 1).end);
    let mut rows = Rows::new(g, nb, d, dv);
    let mut s = vec![T::ZERO; m_rows * t.tk];
    let mut ds = vec![T::ZERO; m_rows * t.tk];
    let mut acc = vec![T::ZERO; m_rows * d];
    for kv in 0..hkv {
        rows.load(pass, b, i0, nb, kv);
        acc.fill(T::ZERO);
        for k0 in (lo..hi).step_by(t.tk) {
            let kt = t.tk.min(hi - k0);
            probs_and_ds(p, &rows, (b, i0, nb, kv), (k0, kt), &mut s, &mut ds);
            let key_row = ((b * nk + k0) * hkv + kv) * d;
            let keys = Mat::rows(&p.k[key_row..], kt, d, hkv * d);
            matmul(&mut acc, d, Mat::rows(&ds, m_rows, kt, kt), keys, true);
        }
        for ii in 0..nb {
            let out = &mut dq[(ii * hq + kv * g) * d..][..g * d];
            out.copy_from_slice(&acc[ii * g * d..(ii + 1) * g * d]);
            scale_in_place(out, p.scale);
        }
    }
}
