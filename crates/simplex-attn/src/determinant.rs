//! The determinant (rotation-invariant) logits as one trilinear form in 2D dimensions.
//!
//! Per chunk of three coordinates, with cyclic shifts `(P1 x)_t = x_{t+1}`, `(P2 x)_t = x_{t+2}`
//! (indices mod 3), Sarrus' rule reads `det[a; b; c] = <a, P1 b, P2 c> - <a, P2 b, P1 c>`, so
//!
//! ```text
//! q~ = [q, q],   k1~ = [P1 k1, -P2 k1],   k2~ = [P2 k2, P1 k2]        (last dim 2D)
//! sum_c det[q^(c); k1^(c); k2^(c)] = sum_l q~_l k1~_l k2~_l
//! ```
//! and the trilinear kernels compute the determinant variant unchanged. The lift is built from
//! candle ops, so autograd maps the gradients of the lifted tensors back.

use candle_core::{Result, Tensor};

/// Index `t` of the shifted vector reads coordinate `shift_index(t, s)` of the original:
/// `3 * (t / 3) + (t % 3 + s) % 3`.
pub fn shift_index(t: usize, s: usize) -> usize {
    3 * (t / 3) + (t % 3 + s) % 3
}

fn shift(x: &Tensor, s: usize) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    let idx: Vec<u32> = (0..d).map(|t| shift_index(t, s) as u32).collect();
    let idx = Tensor::from_vec(idx, d, x.device())?;
    x.index_select(&idx, x.rank() - 1)
}

/// Lifts `(q, k1, k2)` (last dim D, a multiple of 3) to the 2D-dimensional trilinear form whose
/// logits are the sums of chunk determinants.
pub fn lift(q: &Tensor, k1: &Tensor, k2: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let last = q.rank() - 1;
    let q2 = Tensor::cat(&[q, q], last)?;
    let k1_2 = Tensor::cat(&[&shift(k1, 1)?, &shift(k1, 2)?.neg()?], last)?;
    let k2_2 = Tensor::cat(&[&shift(k2, 2)?, &shift(k2, 1)?], last)?;
    Ok((q2, k1_2, k2_2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::det3;
    use candle_core::Device;

    #[test]
    fn lifted_trilinear_form_is_the_sum_of_chunk_determinants() -> Result<()> {
        let dev = Device::Cpu;
        let v =
            |seed: f64| -> Vec<f64> { (0..6).map(|t| ((t as f64 + 1.0) * seed).sin()).collect() };
        let (a, b, c) = (v(0.7), v(1.3), v(2.9));
        let t = |x: &Vec<f64>| Tensor::from_vec(x.clone(), 6, &dev);
        let (q, k1, k2) = lift(&t(&a)?, &t(&b)?, &t(&c)?)?;
        let got = (q * k1)?.mul(&k2)?.sum_all()?.to_scalar::<f64>()?;
        let want = det3(&a[..3], &b[..3], &c[..3]) + det3(&a[3..], &b[3..], &c[3..]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn det3_is_the_determinant() {
        // rows (2,0,0), (0,3,0), (1,1,5): upper-triangular after a row operation, det = 30
        assert_eq!(det3(&[2., 0., 0.], &[0., 3., 0.], &[1., 1., 5.]), 30.0);
        // exchanging two rows flips the sign
        assert_eq!(det3(&[0., 3., 0.], &[2., 0., 0.], &[1., 1., 5.]), -30.0);
    }
}
