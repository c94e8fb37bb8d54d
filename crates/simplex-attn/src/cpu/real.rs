//! The two element types of the CPU kernels (f32, f64) and their row primitives.
//!
//! Row primitives are written as 16 independent lanes so that LLVM turns them into vector code
//! inside the kernels' `#[target_feature]` instantiations (see `cpu/mod.rs`). The f32 exponential
//! is our own: `exp(x) = 2^n * p(r)`, `n = round(x log2 e)`, `r = x - n ln 2` (two-part ln 2), `p`
//! the degree-6 Taylor polynomial, error under 2 ulp on `[-87, 88]`; `2^n` is built in the
//! exponent bits. libm's `expf` cannot be vectorized and would cost more than the matrix products.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Sub};

const LANES: usize = 16;

/// A float the CPU kernels compute in.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + MulAssign
{
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// -inf, the running maximum before any logit
    const NEG_INF: Self;
    /// NaN: outputs start poisoned, so a row a kernel forgets to write cannot pass a test
    const NAN: Self;
    /// Conversion from f64 (rounding).
    fn from_f64(x: f64) -> Self;
    /// Conversion to f64 (exact).
    fn to_f64(self) -> f64;
    /// Natural exponential of one value.
    fn exp(self) -> Self;
    /// Natural logarithm of one value.
    fn ln(self) -> Self;
    /// `xs[t] = exp(xs[t] - m)`; returns the sum of the new values.
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self;
    /// `xs[t] = exp(xs[t] - m)`.
    fn exp_sub(xs: &mut [Self], m: Self);
}

/// The largest element (NEG_INF for an empty slice).
#[inline(always)]
pub fn max_of<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::NEG_INF; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for t in 0..LANES {
            acc[t] = if c[t] > acc[t] { c[t] } else { acc[t] };
        }
    }
    let mut m = T::NEG_INF;
    for &x in acc.iter().chain(rest) {
        m = if x > m { x } else { m };
    }
    m
}

/// `y[t] += a[t] * b[t]`.
#[inline(always)]
pub fn add_product<T: Real>(y: &mut [T], a: &[T], b: &[T]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y += a * b;
    }
}

/// `y[t] = a[t] * b[t]`.
#[inline(always)]
pub fn product<T: Real>(y: &mut [T], a: &[T], b: &[T]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

/// `y[t] *= s`.
#[inline(always)]
pub fn scale_in_place<T: Real>(y: &mut [T], s: T) {
    for y in y.iter_mut() {
        *y *= s;
    }
}

/// `sum_t a[t] * b[t]`.
#[inline(always)]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for t in 0..LANES {
            acc[t] += x[t] * y[t];
        }
    }
    let mut s = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    acc.iter().fold(s, |s, &a| s + a)
}

#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's bits are 0x4B40_0000 + n; 2^n has the biased exponent n + 127.
    let two_n = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    p * two_n
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    const NAN: Self = f32::NAN;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        if self == f32::NEG_INFINITY {
            0.0
        } else {
            exp_f32(self)
        }
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    #[inline(always)]
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self {
        let mut acc = [0.0f32; LANES];
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for t in 0..LANES {
                c[t] = exp_f32(c[t] - m);
                acc[t] += c[t];
            }
        }
        let mut s = 0.0;
        for x in chunks.into_remainder() {
            *x = exp_f32(*x - m);
            s += *x;
        }
        acc.iter().fold(s, |s, &a| s + a)
    }
    #[inline(always)]
    fn exp_sub(xs: &mut [Self], m: Self) {
        for x in xs.iter_mut() {
            *x = exp_f32(*x - m);
        }
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    const NAN: Self = f64::NAN;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn exp_sub_sum(xs: &mut [Self], m: Self) -> Self {
        let mut s = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - m).exp();
            s += *x;
        }
        s
    }
    fn exp_sub(xs: &mut [Self], m: Self) {
        for x in xs.iter_mut() {
            *x = (*x - m).exp();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
    }

    #[test]
    fn row_primitives_match_plain_loops() {
        let xs: Vec<f32> = (0..37)
            .map(|t| ((t * 7919) % 23) as f32 * 0.3 - 3.0)
            .collect();
        let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max_of(&xs), m);
        let mut ys = xs.clone();
        let s = f32::exp_sub_sum(&mut ys, m);
        let want: f64 = xs.iter().map(|&x| ((x - m) as f64).exp()).sum();
        assert!((s as f64 - want).abs() < 1e-5 * want);
        assert!(
            (dot(&xs, &xs) as f64 - xs.iter().map(|x| (x * x) as f64).sum::<f64>()).abs() < 1e-3
        );
    }
}
