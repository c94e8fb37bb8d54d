//! Fast CPU forward: for each query, the pair logits of a (j-tile, k-tile) are one matrix
//! product, `S = (q ∘ k1_j) @ K2_tile^T`, with the query heads that share a K/V head stacked into
//! the rows (`M = G * tj`), then an online softmax per head and `PV = P @ V2_tile`,
//! `acc_h += sum_j v1_j ∘ PV[(h, j)]`.
//!
//! ```text
//! rows r = h * tj + jj     (h < G query heads of one K/V head, jj < tj positions of the j-tile)
//! A  [M, D]   = scale * q_h ∘ k1_{j0+jj}
//! S  [M, tk]  = A @ K2[k0 .. k0+tk]^T            gemm, 2 M tk D FLOPs
//! P           = exp(S - m_h), rescaling acc_h and l_h when the running max m_h grows
//! PV [M, Dv]  = P @ V2[k0 .. k0+tk]               gemm, 2 M tk Dv FLOPs
//! ```
//! Memory beyond the output: per task `M (D + tk + Dv)` scratch, so O(seq * heads * Dv) overall.
//! Parallel over blocks of query rows (rayon); deterministic for any thread count.

use super::matmul::{matmul, Mat};
use super::real::{add_product, max_of, product, scale_in_place, Real};
use super::{Problem, Tiles};

/// Query rows per parallel task.
const QUERY_BLOCK: usize = 4;

struct Scratch<T> {
    qs: Vec<T>,
    a: Vec<T>,
    s: Vec<T>,
    pv: Vec<T>,
    acc: Vec<T>,
    m: Vec<T>,
    l: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(p: &Problem<T>, t: Tiles) -> Self {
        let (g, d, dv) = (p.dims.group(), p.dims.d, p.dims.dv);
        let rows = g * t.tj;
        Scratch {
            qs: vec![T::ZERO; g * d],
            a: vec![T::ZERO; rows * d],
            s: vec![T::ZERO; rows * t.tk],
            pv: vec![T::ZERO; rows * dv],
            acc: vec![T::ZERO; g * dv],
            m: vec![T::NEG_INF; g],
            l: vec![T::ZERO; g],
        }
    }
}

/// Computes `o [B,N,Hq,Dv]` and `lse [B,N,Hq]`.
pub fn forward<T: Real>(p: &Problem<T>) -> (Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let (b, n, hq, dv) = (p.dims.batch, p.dims.seq, p.dims.heads_q, p.dims.dv);
    let tiles = Tiles::choose(&p.dims, &p.win);
    let mut o = vec![T::NAN; b * n * hq * dv];
    let mut lse = vec![T::NAN; b * n * hq];
    o.par_chunks_mut(QUERY_BLOCK * hq * dv)
        .zip(lse.par_chunks_mut(QUERY_BLOCK * hq))
        .enumerate()
        .for_each(|(c, (o, lse))| {
            let rows = c * QUERY_BLOCK..(c * QUERY_BLOCK + lse.len() / hq);
            forward_rows_fast(p, tiles, rows, o, lse);
        });
    (o, lse)
}

super::multiversion!(fn forward_rows_fast => forward_rows(
    p: &Problem<T>,
    t: Tiles,
    rows: std::ops::Range<usize>,
    o: &mut [T],
    lse: &mut [T]
) -> ());

/// Forward of the global query rows `rows` (row = b * N + i) into `o`, `lse` (those rows only).
#[inline(always)]
fn forward_rows<T: Real>(
    p: &Problem<T>,
    t: Tiles,
    rows: std::ops::Range<usize>,
    o: &mut [T],
    lse: &mut [T],
) {
    let Problem {
        dims, win, scale, ..
    } = *p;
    let (n, hq, hkv, d, dv, g) = (
        dims.seq,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
        dims.group(),
    );
    let mut sc = Scratch::new(p, t);
    let first = rows.start;
    for row in rows {
        let (b, i) = (row / n, row % n);
        let (r1, r2) = (win.range1(i), win.range2(i));
        for kv in 0..hkv {
            // q of the G heads of this K/V head, pre-scaled
            let q0 = (row * hq + kv * g) * d;
            sc.qs.copy_from_slice(&p.q[q0..q0 + g * d]);
            scale_in_place(&mut sc.qs, scale);
            sc.acc.fill(T::ZERO);
            sc.m.fill(T::NEG_INF);
            sc.l.fill(T::ZERO);
            let kv_row = |pos: usize, width: usize| ((b * n + pos) * hkv + kv) * width;
            for j0 in r1.clone().step_by(t.tj) {
                let tj = t.tj.min(r1.end - j0);
                let m_rows = g * tj;
                for h in 0..g {
                    for jj in 0..tj {
                        let k1j = &p.k1[kv_row(j0 + jj, d)..][..d];
                        product(
                            &mut sc.a[(h * tj + jj) * d..][..d],
                            &sc.qs[h * d..][..d],
                            k1j,
                        );
                    }
                }
                for k0 in r2.clone().step_by(t.tk) {
                    let tk = t.tk.min(r2.end - k0);
                    let k2 = &p.k2[kv_row(k0, d)..];
                    let v2 = &p.v2[kv_row(k0, dv)..];
                    matmul(
                        &mut sc.s,
                        tk,
                        Mat::rows(&sc.a, m_rows, d, d),
                        Mat::transposed(k2, d, tk, hkv * d),
                        false,
                    );
                    // online softmax, per head over its tj * tk block of S
                    for h in 0..g {
                        let block = &mut sc.s[h * tj * tk..(h + 1) * tj * tk];
                        let m_new = {
                            let mt = max_of(block);
                            if mt > sc.m[h] {
                                mt
                            } else {
                                sc.m[h]
                            }
                        };
                        let corr = (sc.m[h] - m_new).exp();
                        let sum = T::exp_sub_sum(block, m_new);
                        sc.l[h] = sc.l[h] * corr + sum;
                        if corr != T::ONE {
                            scale_in_place(&mut sc.acc[h * dv..(h + 1) * dv], corr);
                        }
                        sc.m[h] = m_new;
                    }
                    matmul(
                        &mut sc.pv,
                        dv,
                        Mat::rows(&sc.s, m_rows, tk, tk),
                        Mat::rows(v2, tk, dv, hkv * dv),
                        false,
                    );
                    for h in 0..g {
                        for jj in 0..tj {
                            let v1j = &p.v1[kv_row(j0 + jj, dv)..][..dv];
                            let pv = &sc.pv[(h * tj + jj) * dv..][..dv];
                            add_product(&mut sc.acc[h * dv..(h + 1) * dv], v1j, pv);
                        }
                    }
                }
            }
            let local = row - first;
            for h in 0..g {
                let head = kv * g + h;
                let inv = T::ONE / sc.l[h];
                let out = &mut o[(local * hq + head) * dv..][..dv];
                out.copy_from_slice(&sc.acc[h * dv..(h + 1) * dv]);
                scale_in_place(out, inv);
                lse[local * hq + head] = sc.m[h] + sc.l[h].ln();
            }
        }
    }
}
