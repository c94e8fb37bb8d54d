//! The CPU versions of the mixture-of-experts kernels (`kernels/moe.cu` on CUDA), on plain
//! slices: routing (top-k, the stable sort of assignments by expert) and the row moves in f32
//! or f64, the grouped products through `gemm` (one product per group, groups in parallel).

use rayon::prelude::*;

use super::{GmmKind, NONE};
use crate::cpu::matmul::{matmul, Mat};
use crate::cpu::real::dot;
use crate::cpu::Real;
use crate::fused::poisoned;

/// The `k` largest entries of each row of `scores [T, E]`, descending; ties go to the lower
/// expert, NaN is never chosen over a number.
pub(crate) fn top_k(scores: &[f32], e: usize, k: usize) -> Vec<u32> {
    let rows = scores.len() / e;
    let mut out = vec![0u32; rows * k];
    out.par_chunks_mut(k)
        .zip(scores.par_chunks(e))
        .for_each(|(o, s)| {
            for j in 0..k {
                let mut best: Option<(usize, f32)> = None;
                for (x, &v) in s.iter().enumerate() {
                    if o[..j].contains(&(x as u32)) {
                        continue;
                    }
                    if best.is_none_or(|(_, bv)| v > bv) {
                        best = Some((x, v));
                    }
                }
                o[j] = best.map_or(0, |(x, _)| x as u32);
            }
        });
    out
}

/// The routing tables of assignments `idx [A]` (expert of each) over `e` experts with at most
/// `capacity` assignments kept per expert (earlier assignments first): `(slot_of [A],
/// slot_assign [A], offsets [E + 1], counts [E])`.
pub(crate) fn dispatch(
    idx: &[u32],
    e: usize,
    capacity: u32,
) -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut counts = vec![0u32; e];
    let mut rank = vec![0u32; idx.len()];
    for (r, &x) in rank.iter_mut().zip(idx) {
        *r = counts[x as usize];
        counts[x as usize] += 1;
    }
    let mut offsets = vec![0u32; e + 1];
    for x in 0..e {
        offsets[x + 1] = offsets[x] + counts[x].min(capacity);
    }
    let mut slot_of = vec![NONE; idx.len()];
    let mut slot_assign = vec![NONE; idx.len()];
    for (a, (&x, &r)) in idx.iter().zip(&rank).enumerate() {
        if r < capacity {
            let s = offsets[x as usize] + r;
            slot_of[a] = s;
            slot_assign[s as usize] = a as u32;
        }
    }
    (slot_of, slot_assign, offsets, counts)
}

/// Rows of token-ordered `x [T, C]` into slot order: `out[s] = w[a] x[a / k]` for
/// `a = slot_assign[s]` (`w` absent: 1), zero rows for empty slots. The permutation
/// (`weights` None) and the backward of the combine (the router weights).
pub(crate) fn gather_rows<T: Real>(
    x: &[T],
    weights: Option<&[T]>,
    slot_assign: &[u32],
    c: usize,
    k: usize,
) -> Vec<T> {
    let mut out = poisoned::<T>(slot_assign.len() * c);
    out.par_chunks_mut(c)
        .zip(slot_assign.par_iter())
        .for_each(|(row, &a)| {
            if a == NONE {
                row.fill(T::ZERO);
                return;
            }
            let src = &x[a as usize / k * c..][..c];
            match weights {
                None => row.copy_from_slice(src),
                Some(w) => {
                    let wa = w[a as usize];
                    row.iter_mut().zip(src).for_each(|(d, &v)| *d = wa * v);
                }
            }
        });
    out
}

/// Slot rows `yp [A, C]` summed back per token: `out[t] = sum_j w[t k + j] yp[slot_of[t k +
/// j]]` over the kept slots (`w` absent: 1). The combine, and (`weights` None) the backward of
/// the permutation.
pub(crate) fn sum_slots<T: Real>(
    yp: &[T],
    weights: Option<&[T]>,
    slot_of: &[u32],
    c: usize,
    k: usize,
) -> Vec<T> {
    let tokens = slot_of.len() / k;
    let mut out = poisoned::<T>(tokens * c);
    out.par_chunks_mut(c)
        .zip(slot_of.par_chunks(k))
        .enumerate()
        .for_each(|(t, (row, slots))| {
            row.fill(T::ZERO);
            for (j, &s) in slots.iter().enumerate().filter(|(_, &s)| s != NONE) {
                let wj = weights.map_or(T::ONE, |w| w[t * k + j]);
                let src = &yp[s as usize * c..][..c];
                row.iter_mut().zip(src).for_each(|(d, &v)| *d += wj * v);
            }
        });
    out
}

/// `dw[a] = dout[a / k] . yp[slot_of[a]]` (zero when dropped).
pub(crate) fn combine_bwd_weights<T: Real>(
    dout: &[T],
    yp: &[T],
    slot_of: &[u32],
    c: usize,
    k: usize,
) -> Vec<T> {
    slot_of
        .par_iter()
        .enumerate()
        .map(|(a, &s)| {
            if s == NONE {
                T::ZERO
            } else {
                let t = a / k;
                dot(
                    &dout[t * c..(t + 1) * c],
                    &yp[s as usize * c..(s as usize + 1) * c],
                )
            }
        })
        .collect()
}

/// One grouped product (see [`GmmKind`]); `offsets [E + 1]`, `(n, kd)` the dims of one expert's
/// weight `[n, kd]`, `m` the rows of `a`.
pub(crate) fn gmm<T: Real>(
    kind: GmmKind,
    a: &[T],
    b: &[T],
    offsets: &[u32],
    m: usize,
    (n, kd): (usize, usize),
) -> Vec<T> {
    let groups = offsets.len() - 1;
    let range = |e: usize| offsets[e] as usize..offsets[e + 1] as usize;
    match kind {
        GmmKind::Forward | GmmKind::InputGrad => {
            // Forward: y [m, n] = x [m, kd] W_e^T; InputGrad: dx [m, kd] = dy [m, n] W_e
            let (width, inner) = match kind {
                GmmKind::Forward => (n, kd),
                _ => (kd, n),
            };
            let mut out = poisoned::<T>(m * width);
            let end = offsets[groups] as usize;
            out[end * width..].fill(T::ZERO);
            let mut rest = &mut out[..end * width];
            let mut parts = Vec::with_capacity(groups);
            for e in 0..groups {
                let (head, tail) = rest.split_at_mut(range(e).len() * width);
                parts.push((e, head));
                rest = tail;
            }
            parts.into_par_iter().for_each(|(e, dst)| {
                let r = range(e);
                if r.is_empty() {
                    return;
                }
                let lhs = Mat::rows(&a[r.start * inner..r.end * inner], r.len(), inner, inner);
                let w = &b[e * n * kd..(e + 1) * n * kd];
                let rhs = match kind {
                    GmmKind::Forward => Mat::transposed(w, kd, n, kd),
                    _ => Mat::rows(w, n, kd, kd),
                };
                matmul(dst, width, lhs, rhs, false);
            });
            out
        }
        GmmKind::WeightGrad => {
            // dW_e [n, kd] = dy_e^T x_e with dy = a [m, n], x = b [m, kd]
            let mut out = poisoned::<T>(groups * n * kd);
            out.par_chunks_mut(n * kd).enumerate().for_each(|(e, dst)| {
                let r = range(e);
                if r.is_empty() {
                    dst.fill(T::ZERO);
                    return;
                }
                let lhs = Mat::transposed(&a[r.start * n..r.end * n], n, r.len(), n);
                let rhs = Mat::rows(&b[r.start * kd..r.end * kd], r.len(), kd, kd);
                matmul(dst, kd, lhs, rhs, false);
            });
            out
        }
    }
}
