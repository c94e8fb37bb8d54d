//! Fast CPU backward: recomputes `P` tile by tile from the saved `lse` and forms the five
//! gradients with six matrix products per (j-tile, k-tile), rows stacked as in the forward
//! (`r = h * tj + jj`, `M = G * tj`):
//!
//! ```text
//! A  = scale * q_h ∘ k1_j          B  = dO_h ∘ v1_j                    [M, D], [M, Dv]
//! S  = A @ K2^T,  P = exp(S - lse_h)                                   [M, tk]
//! dP = B @ V2^T,  dS = P * (dP - D_h),  D_h = O_h . dO_h               [M, tk]
//! dV2[k] += (P^T @ B)[k]           C  = P @ V2:  dV1[j] += sum_h dO_h ∘ C[(h,j)]
//! E  = dS @ K2:  dQ_h += scale * sum_j k1_j ∘ E[(h,j)],  dK1[j] += sum_h (scale q_h) ∘ E[(h,j)]
//! dK2[k] += (dS^T @ A)[k]
//! ```
//! Parallel over blocks of queries; each block accumulates dK1, dV1, dK2, dV2 for the keys its
//! windows reach in private buffers, which are then summed in block order: no atomics, and the
//! same bits for any thread count (block sizes depend on the shapes only).

use super::matmul::{matmul, Mat};
use super::real::{add_product, dot, product, scale_in_place, Real};
use super::{Problem, Tiles};

/// Saved forward results and the incoming gradient.
pub struct Saved<'a, T> {
    /// `[B,N,Hq,Dv]`
    pub o: &'a [T],
    /// `[B,N,Hq]`
    pub lse: &'a [T],
    /// `[B,N,Hq,Dv]`
    pub dout: &'a [T],
}

/// Gradients of the kernel's inputs.
pub struct Grads<T> {
    /// `[B,N,Hq,D]`
    pub dq: Vec<T>,
    /// `[B,N,Hkv,D]`
    pub dk1: Vec<T>,
    /// `[B,N,Hkv,D]`
    pub dk2: Vec<T>,
    /// `[B,N,Hkv,Dv]`
    pub dv1: Vec<T>,
    /// `[B,N,Hkv,Dv]`
    pub dv2: Vec<T>,
}

/// Key-side gradients of one query block, for keys `lo1..` (window 1) and `lo2..` (window 2).
struct Partial<T> {
    b: usize,
    lo1: usize,
    lo2: usize,
    dk1: Vec<T>,
    dv1: Vec<T>,
    dk2: Vec<T>,
    dv2: Vec<T>,
}

/// Queries per block: at least the widest window (so private buffers are at most about twice
/// the block), at most N/8 (so there are blocks for every thread), and at least 16.
fn query_block(p: &Problem<impl Real>) -> usize {
    let span = p.win.w1.max(p.win.w2);
    span.min(p.dims.seq.div_ceil(8)).max(16)
}

/// Computes the gradients of `sum(dout * o)` with respect to q, k1, k2, v1, v2.
pub fn backward<T: Real>(p: &Problem<T>, saved: &Saved<T>) -> Grads<T> {
    use rayon::prelude::*;
    let Problem { dims, .. } = *p;
    let (b, n, hq, hkv, d, dv) = (
        dims.batch,
        dims.seq,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
    );
    let tiles = Tiles::choose(&dims, &p.win);
    let qb = query_block(p);
    let blocks_per_batch = n.div_ceil(qb);
    let mut dq = vec![T::NAN; b * n * hq * d];
    // one chunk of dq per (batch, block): chunks never cross a batch
    let mut chunks: Vec<(usize, usize, &mut [T])> = Vec::new();
    for (bi, batch) in dq.chunks_mut(n * hq * d).enumerate() {
        for (c, chunk) in batch.chunks_mut(qb * hq * d).enumerate() {
            chunks.push((bi, c * qb, chunk));
        }
    }
    debug_assert_eq!(chunks.len(), b * blocks_per_batch);
    let partials: Vec<Partial<T>> = chunks
        .into_par_iter()
        .map(|(bi, i0, dq)| {
            let i1 = i0 + dq.len() / (hq * d);
            backward_block_fast(p, saved, tiles, bi, i0..i1, dq)
        })
        .collect();
    let mut g = Grads {
        dq,
        dk1: vec![T::ZERO; b * n * hkv * d],
        dk2: vec![T::ZERO; b * n * hkv * d],
        dv1: vec![T::ZERO; b * n * hkv * dv],
        dv2: vec![T::ZERO; b * n * hkv * dv],
    };
    for part in &partials {
        let add = |dst: &mut [T], src: &[T], lo: usize, width: usize| {
            let start = (part.b * n + lo) * hkv * width;
            for (x, &y) in dst[start..start + src.len()].iter_mut().zip(src) {
                *x += y;
            }
        };
        add(&mut g.dk1, &part.dk1, part.lo1, d);
        add(&mut g.dv1, &part.dv1, part.lo1, dv);
        add(&mut g.dk2, &part.dk2, part.lo2, d);
        add(&mut g.dv2, &part.dv2, part.lo2, dv);
    }
    g
}

super::multiversion!(fn backward_block_fast => backward_block(
    p: &Problem<T>,
    saved: &Saved<T>,
    t: Tiles,
    b: usize,
    queries: std::ops::Range<usize>,
    dq: &mut [T]
) -> Partial<T>);

struct Scratch<T> {
    qs: Vec<T>,
    dqacc: Vec<T>,
    big_d: Vec<T>,
    a: Vec<T>,
    bm: Vec<T>,
    s: Vec<T>,
    dp: Vec<T>,
    c: Vec<T>,
    e: Vec<T>,
}

#[inline(always)]
fn backward_block<T: Real>(
    p: &Problem<T>,
    saved: &Saved<T>,
    t: Tiles,
    b: usize,
    queries: std::ops::Range<usize>,
    dq: &mut [T],
) -> Partial<T> {
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
    let (i0, last) = (queries.start, queries.end - 1);
    let (lo1, hi1) = (win.range1(i0).start, win.range1(last).end);
    let (lo2, hi2) = (win.range2(i0).start, win.range2(last).end);
    let mut part = Partial {
        b,
        lo1,
        lo2,
        dk1: vec![T::ZERO; (hi1 - lo1) * hkv * d],
        dv1: vec![T::ZERO; (hi1 - lo1) * hkv * dv],
        dk2: vec![T::ZERO; (hi2 - lo2) * hkv * d],
        dv2: vec![T::ZERO; (hi2 - lo2) * hkv * dv],
    };
    let rows = g * t.tj;
    let mut sc = Scratch {
        qs: vec![T::ZERO; g * d],
        dqacc: vec![T::ZERO; g * d],
        big_d: vec![T::ZERO; g],
        a: vec![T::ZERO; rows * d],
        bm: vec![T::ZERO; rows * dv],
        s: vec![T::ZERO; rows * t.tk],
        dp: vec![T::ZERO; rows * t.tk],
        c: vec![T::ZERO; rows * dv],
        e: vec![T::ZERO; rows * d],
    };
    for i in queries {
        let row = b * n + i;
        let (r1, r2) = (win.range1(i), win.range2(i));
        for kv in 0..hkv {
            let q0 = (row * hq + kv * g) * d;
            let o0 = (row * hq + kv * g) * dv;
            sc.qs.copy_from_slice(&p.q[q0..q0 + g * d]);
            scale_in_place(&mut sc.qs, scale);
            sc.dqacc.fill(T::ZERO);
            let dout = &saved.dout[o0..o0 + g * dv];
            for h in 0..g {
                sc.big_d[h] = dot(&dout[h * dv..][..dv], &saved.o[o0 + h * dv..][..dv]);
            }
            let lse = &saved.lse[row * hq + kv * g..][..g];
            let kv_row = |pos: usize, width: usize| ((b * n + pos) * hkv + kv) * width;
            // rows of the private buffers: key position minus the block's lowest key
            let part_row = |pos: usize, lo: usize, width: usize| ((pos - lo) * hkv + kv) * width;
            for j0 in r1.clone().step_by(t.tj) {
                let tj = t.tj.min(r1.end - j0);
                let m_rows = g * tj;
                for h in 0..g {
                    for jj in 0..tj {
                        let r = h * tj + jj;
                        let k1j = &p.k1[kv_row(j0 + jj, d)..][..d];
                        let v1j = &p.v1[kv_row(j0 + jj, dv)..][..dv];
                        product(&mut sc.a[r * d..][..d], &sc.qs[h * d..][..d], k1j);
                        product(&mut sc.bm[r * dv..][..dv], &dout[h * dv..][..dv], v1j);
                    }
                }
                for k0 in r2.clone().step_by(t.tk) {
                    let tk = t.tk.min(r2.end - k0);
                    let k2 = &p.k2[kv_row(k0, d)..];
                    let v2 = &p.v2[kv_row(k0, dv)..];
                    let a = Mat::rows(&sc.a, m_rows, d, d);
                    let bm = Mat::rows(&sc.bm, m_rows, dv, dv);
                    matmul(&mut sc.s, tk, a, Mat::transposed(k2, d, tk, hkv * d), false);
                    matmul(
                        &mut sc.dp,
                        tk,
                        bm,
                        Mat::transposed(v2, dv, tk, hkv * dv),
                        false,
                    );
                    for h in 0..g {
                        let span = h * tj * tk..(h + 1) * tj * tk;
                        T::exp_sub(&mut sc.s[span.clone()], lse[h]);
                        let bd = sc.big_d[h];
                        for (dp, &pr) in sc.dp[span.clone()].iter_mut().zip(&sc.s[span]) {
                            *dp = pr * (*dp - bd);
                        }
                    }
                    let pm = Mat::rows(&sc.s, m_rows, tk, tk);
                    let ds = Mat::rows(&sc.dp, m_rows, tk, tk);
                    let dv2 = &mut part.dv2[part_row(k0, lo2, dv)..];
                    matmul(
                        dv2,
                        hkv * dv,
                        Mat::transposed(&sc.s, tk, m_rows, tk),
                        bm,
                        true,
                    );
                    let dk2 = &mut part.dk2[part_row(k0, lo2, d)..];
                    matmul(
                        dk2,
                        hkv * d,
                        Mat::transposed(&sc.dp, tk, m_rows, tk),
                        a,
                        true,
                    );
                    matmul(&mut sc.c, dv, pm, Mat::rows(v2, tk, dv, hkv * dv), false);
                    matmul(&mut sc.e, d, ds, Mat::rows(k2, tk, d, hkv * d), false);
                    for h in 0..g {
                        for jj in 0..tj {
                            let r = h * tj + jj;
                            let j = j0 + jj;
                            let dv1 = &mut part.dv1[part_row(j, lo1, dv)..][..dv];
                            add_product(dv1, &dout[h * dv..][..dv], &sc.c[r * dv..][..dv]);
                            let e = &sc.e[r * d..][..d];
                            let dk1 = &mut part.dk1[part_row(j, lo1, d)..][..d];
                            add_product(dk1, &sc.qs[h * d..][..d], e);
                            let k1j = &p.k1[kv_row(j, d)..][..d];
                            add_product(&mut sc.dqacc[h * d..][..d], k1j, e);
                        }
                    }
                }
            }
            let local = ((i - i0) * hq + kv * g) * d;
            let out = &mut dq[local..local + g * d];
            out.copy_from_slice(&sc.dqacc);
            scale_in_place(out, scale);
        }
    }
    part
}
