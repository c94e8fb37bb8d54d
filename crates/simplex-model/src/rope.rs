//! Position rotations, applied to `[B, N, H, D]` head vectors at positions `pos..pos+N`.
//!
//! * [`Rope`] (D and L layers): rotary embedding over the pairs `(x_i, x_{i+D/2})`, angle
//!   `p * theta^(-2i/D)`, so `q_p . k_t` depends on `p - t` only; applied by the fused split
//!   of the attention's q|k|v product.
//! * [`ChunkRotation`] (S layers, determinant variant, optional): every chunk of three
//!   coordinates `(a, b, c)` is rotated about its third axis by `p * theta^(-c/(D/3))`. Rotations
//!   about one axis commute and keep determinants, so
//!   `det(R_p q, R_t k1, R_u k2) = det(q, R_{t-p} k1, R_{u-p} k2)`: the logits see only the
//!   offsets `t - p`, `u - p` (section 2 of the spec).

use candle_core::{DType, Device, Tensor};
use simplex_attn::fused::{split_heads, HeadPart, RopeTables};

use crate::error::{ModelError, Result};

/// `cos`, `sin` tables `[max_seq_len, width]` for the angles `p * freq[i]`.
fn tables(
    freqs: &[f64],
    max_seq_len: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let w = freqs.len();
    let angles: Vec<f64> = (0..max_seq_len)
        .flat_map(|p| freqs.iter().map(move |f| p as f64 * f))
        .collect();
    let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
    let t = |v: Vec<f64>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, (max_seq_len, w), dev)?.to_dtype(dtype)?)
    };
    Ok((t(cos)?, t(sin)?))
}

/// The rows `pos..pos+n` of a table, shaped to broadcast against `shape` (a leading 1, `n`, 1s).
fn rows(table: &Tensor, pos: usize, n: usize, shape: &[usize]) -> Result<Tensor> {
    let max = table.dim(0)?;
    if pos + n > max {
        return Err(ModelError::Input(format!(
            "positions {pos}..{} exceed max_seq_len = {max}",
            pos + n
        )));
    }
    Ok(table.narrow(0, pos, n)?.reshape(shape)?)
}

/// Rotary position embedding of the dot-product layers: f32 tables applied by the fused
/// split of the q|k|v product (`simplex_attn::fused::split_heads`).
#[derive(Debug, Clone)]
pub struct Rope {
    tables: RopeTables,
}

impl Rope {
    /// Tables for head dim `d` (even) and positions `0..max_seq_len`.
    pub fn new(d: usize, max_seq_len: usize, theta: f64, dev: &Device) -> Result<Self> {
        Ok(Rope {
            tables: RopeTables::new(d, max_seq_len, theta, dev)?,
        })
    }

    /// The tables.
    pub fn tables(&self) -> &RopeTables {
        &self.tables
    }

    /// Rotates `x [B, N, H, D]` whose first row sits at position `pos`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, n, h, d) = x.dims4()?;
        if pos + n > self.tables.max_seq() {
            return Err(ModelError::Input(format!(
                "positions {pos}..{} exceed max_seq_len = {}",
                pos + n,
                self.tables.max_seq()
            )));
        }
        let part = HeadPart {
            heads: h,
            rotate: true,
        };
        let flat = x.reshape((b, n, h * d))?;
        let mut out = split_heads(&flat, d, &[part], Some((&self.tables, pos)))?;
        Ok(out.remove(0))
    }
}

/// Rotation of 3-chunks for determinant S layers (see the module doc).
#[derive(Debug, Clone)]
pub struct ChunkRotation {
    cos: Tensor,
    sin: Tensor,
}

impl ChunkRotation {
    /// Tables for head dim `d` (a multiple of 3) and positions `0..max_seq_len`.
    pub fn new(
        d: usize,
        max_seq_len: usize,
        theta: f64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let c = d / 3;
        let freqs: Vec<f64> = (0..c).map(|i| theta.powf(-(i as f64) / c as f64)).collect();
        let (cos, sin) = tables(&freqs, max_seq_len, dtype, dev)?;
        Ok(ChunkRotation { cos, sin })
    }

    /// Rotates every chunk of `x [B, N, H, D]` whose first row sits at position `pos`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, n, h, d) = x.dims4()?;
        let c = d / 3;
        let x = x.reshape((b, n, h, c, 3))?;
        let cos = rows(&self.cos, pos, n, &[1, n, 1, c, 1])?;
        let sin = rows(&self.sin, pos, n, &[1, n, 1, c, 1])?;
        let (a, bb, z) = (x.narrow(4, 0, 1)?, x.narrow(4, 1, 1)?, x.narrow(4, 2, 1)?);
        let ra = (a.broadcast_mul(&cos)? - bb.broadcast_mul(&sin)?)?;
        let rb = (a.broadcast_mul(&sin)? + bb.broadcast_mul(&cos)?)?;
        Ok(Tensor::cat(&[ra, rb, z], 4)?.reshape((b, n, h, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det3(a: &[f64], b: &[f64], c: &[f64]) -> f64 {
        a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0])
    }

    /// The vector `v` (one 3-chunk) rotated as if at position `p`.
    fn at(rot: &ChunkRotation, v: [f64; 3], p: usize) -> Result<Vec<f64>> {
        let x = Tensor::from_vec(v.to_vec(), (1, 1, 1, 3), &Device::Cpu)?;
        Ok(rot.apply(&x, p)?.flatten_all()?.to_vec1()?)
    }

    #[test]
    fn chunk_rotation_keeps_only_relative_positions_in_determinants() -> Result<()> {
        let rot = ChunkRotation::new(3, 64, 10_000.0, DType::F64, &Device::Cpu)?;
        let (q, k1, k2) = ([0.3, -1.2, 0.7], [1.1, 0.4, -0.5], [-0.2, 0.9, 1.3]);
        let det_at = |p: usize, t: usize, u: usize| -> Result<f64> {
            Ok(det3(&at(&rot, q, p)?, &at(&rot, k1, t)?, &at(&rot, k2, u)?))
        };
        let base = det_at(10, 7, 3)?;
        assert!((det_at(30, 27, 23)? - base).abs() < 1e-12);
        assert!(
            (det_at(10, 8, 3)? - base).abs() > 1e-6,
            "the offset must matter"
        );
        Ok(())
    }

    #[test]
    fn rope_keeps_only_relative_positions_in_dot_products() -> Result<()> {
        let rope = Rope::new(4, 64, 10_000.0, &Device::Cpu)?;
        let q = Tensor::from_vec(vec![0.3, -1.2, 0.7, 0.1], (1, 1, 1, 4), &Device::Cpu)?;
        let k = Tensor::from_vec(vec![1.1, 0.4, -0.5, 2.0], (1, 1, 1, 4), &Device::Cpu)?;
        let dot = |p: usize, t: usize| -> Result<f64> {
            Ok((rope.apply(&q, p)? * rope.apply(&k, t)?)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        // the tables are f32 (as PyTorch's): equal up to their rounding
        assert!((dot(9, 4)? - dot(40, 35)?).abs() < 2e-6);
        assert!((dot(9, 4)? - dot(9, 5)?).abs() > 1e-3);
        let e = rope.apply(&q, 64).unwrap_err().to_string();
        assert!(e.contains("max_seq_len = 64"), "{e}");
        Ok(())
    }
}
