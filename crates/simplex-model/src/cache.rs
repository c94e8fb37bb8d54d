//! The KV cache of incremental decoding: per layer, ring buffers of the keys and values the
//! next queries can still see.
//!
//! ```text
//! D layer   k, v     [B, max_seq_len, Hkv, D]   (never wraps: positions stop at max_seq_len)
//! L layer   k, v     [B, window, Hkv, D]        the last `window` positions
//! S layer   k1, v1   [B, w1, Hkv, D]            the last w1 positions
//!           k2, v2   [B, w2, Hkv, D]            the last w2 positions
//! ```
//! A ring is written in place (`slice_set`) at `pos % capacity`, so a decode step copies one
//! row per tensor; reading it back in position order costs one concatenation.

use candle_core::{DType, Tensor};

use crate::config::{Config, LayerKind};
use crate::error::{ModelError, Result};

/// A ring buffer of the last `capacity` rows (dim 1) of a `[B, N, H, X]` stream.
#[derive(Debug, Clone)]
pub struct Ring {
    capacity: usize,
    buf: Option<Tensor>,
    /// Rows pushed so far.
    pushed: usize,
}

impl Ring {
    /// An empty ring that keeps the last `capacity` rows (at least 1).
    pub fn new(capacity: usize) -> Self {
        Ring {
            capacity: capacity.max(1),
            buf: None,
            pushed: 0,
        }
    }

    /// Rows it holds now.
    pub fn len(&self) -> usize {
        self.pushed.min(self.capacity)
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    /// The rows it holds, oldest first, `[B, len, H, X]` (`None` when empty). It may be a view
    /// of the buffer, which the next `push` overwrites: copy it to keep it.
    pub fn ordered(&self) -> Result<Option<Tensor>> {
        let Some(buf) = &self.buf else {
            return Ok(None);
        };
        if self.pushed <= self.capacity {
            return Ok(Some(buf.narrow(1, 0, self.pushed)?));
        }
        let start = self.pushed % self.capacity;
        if start == 0 {
            return Ok(Some(buf.clone()));
        }
        let old = buf.narrow(1, start, self.capacity - start)?;
        let new = buf.narrow(1, 0, start)?;
        Ok(Some(Tensor::cat(&[old, new], 1)?))
    }

    /// Checks that `x [B, n, H, X]` continues the rows held (same B, H, X and dtype).
    fn check(&self, x: &Tensor) -> Result<()> {
        let (b, _, h, w) = x.dims4()?;
        if let Some(buf) = &self.buf {
            let (bb, _, bh, bw) = buf.dims4()?;
            if (bb, bh, bw) != (b, h, w) || buf.dtype() != x.dtype() {
                return Err(ModelError::Input(format!(
                    "cache holds [{bb}, _, {bh}, {bw}] {:?} rows, got {:?} {:?}: use a fresh cache \
                     for another batch size or model",
                    buf.dtype(),
                    x.dims(),
                    x.dtype()
                )));
            }
        }
        Ok(())
    }

    /// Appends the rows of `x [B, n, H, X]`, keeping the last `capacity`.
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        self.check(x)?;
        let (b, n, h, w) = x.dims4()?;
        let buf = match &self.buf {
            Some(buf) => buf.clone(),
            None => {
                let buf = Tensor::zeros((b, self.capacity, h, w), x.dtype(), x.device())?;
                self.buf = Some(buf.clone());
                buf
            }
        };
        let keep = n.min(self.capacity);
        let src = x.narrow(1, n - keep, keep)?.detach();
        let start = (self.pushed + n - keep) % self.capacity;
        let first = keep.min(self.capacity - start);
        buf.slice_set(&src.narrow(1, 0, first)?.contiguous()?, 1, start)?;
        if keep > first {
            buf.slice_set(&src.narrow(1, first, keep - first)?.contiguous()?, 1, 0)?;
        }
        self.pushed += n;
        Ok(())
    }

    /// The held rows followed by `x` (`[B, len + n, H, X]`), then pushes `x`.
    pub fn extend(&mut self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let all = match self.ordered()? {
            Some(old) => Tensor::cat(&[&old, x], 1)?,
            None => x.clone(),
        };
        self.push(x)?;
        Ok(all)
    }

    /// Forgets every row (keeps the buffer).
    pub fn clear(&mut self) {
        self.pushed = 0;
    }
}

/// The cached state of one layer.
#[derive(Debug, Clone)]
pub enum LayerCache {
    /// D and L layers.
    Dot {
        /// Keys after RoPE.
        k: Ring,
        /// Values.
        v: Ring,
    },
    /// S layers.
    Simplicial {
        /// First-window keys (after the chunk rotation, if any).
        k1: Ring,
        /// First-window values.
        v1: Ring,
        /// Second-window keys.
        k2: Ring,
        /// Second-window values.
        v2: Ring,
    },
}

/// The cache of a whole model: one [`LayerCache`] per layer and the next position.
#[derive(Debug, Clone)]
pub struct Cache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) pos: usize,
    dtype: Option<DType>,
}

impl Cache {
    /// An empty cache for a model of this config.
    pub fn new(cfg: &Config) -> Self {
        let dot = |cap: usize| LayerCache::Dot {
            k: Ring::new(cap),
            v: Ring::new(cap),
        };
        let layers = cfg
            .layers()
            .into_iter()
            .map(|kind| match kind {
                LayerKind::Dot => dot(cfg.max_seq_len),
                LayerKind::Local => dot(cfg.window),
                LayerKind::Simplicial => {
                    let (w1, w2) = (cfg.simplicial.w1, cfg.simplicial.w2);
                    LayerCache::Simplicial {
                        k1: Ring::new(w1),
                        v1: Ring::new(w1),
                        k2: Ring::new(w2),
                        v2: Ring::new(w2),
                    }
                }
            })
            .collect();
        Cache {
            layers,
            pos: 0,
            dtype: None,
        }
    }

    /// Position of the next token (tokens seen so far).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets everything (for a new prompt).
    pub fn clear(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            match l {
                LayerCache::Dot { k, v } => {
                    k.clear();
                    v.clear();
                }
                LayerCache::Simplicial { k1, v1, k2, v2 } => {
                    for r in [k1, v1, k2, v2] {
                        r.clear();
                    }
                }
            }
        }
    }

    pub(crate) fn check_dtype(&mut self, dtype: DType) -> Result<()> {
        match self.dtype {
            Some(d) if d != dtype => Err(ModelError::Input(format!(
                "the cache was filled by a {d:?} model, this one computes in {dtype:?}"
            ))),
            _ => {
                self.dtype = Some(dtype);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rows(r: std::ops::Range<usize>) -> Result<Tensor> {
        let v: Vec<f32> = r.clone().map(|x| x as f32).collect();
        Ok(Tensor::from_vec(v, (1, r.len(), 1, 1), &Device::Cpu)?)
    }

    fn held(ring: &Ring) -> Result<Vec<f32>> {
        Ok(ring
            .ordered()?
            .map(|t| t.flatten_all().and_then(|t| t.to_vec1()))
            .transpose()?
            .unwrap_or_default())
    }

    #[test]
    fn ring_keeps_the_last_rows_in_order_across_wraps() -> Result<()> {
        let mut ring = Ring::new(4);
        assert!(held(&ring)?.is_empty());
        ring.push(&rows(0..3)?)?;
        assert_eq!(held(&ring)?, vec![0., 1., 2.]);
        ring.push(&rows(3..5)?)?;
        assert_eq!(held(&ring)?, vec![1., 2., 3., 4.]);
        ring.push(&rows(5..6)?)?;
        assert_eq!(held(&ring)?, vec![2., 3., 4., 5.]);
        ring.push(&rows(6..13)?)?;
        assert_eq!(held(&ring)?, vec![9., 10., 11., 12.]);
        let all = ring.extend(&rows(13..15)?)?;
        assert_eq!(
            all.flatten_all()?.to_vec1::<f32>()?,
            vec![9., 10., 11., 12., 13., 14.]
        );
        assert_eq!(held(&ring)?, vec![11., 12., 13., 14.]);
        Ok(())
    }

    #[test]
    fn ring_rejects_another_batch_size() -> Result<()> {
        let mut ring = Ring::new(4);
        ring.push(&rows(0..2)?)?;
        let e = ring
            .push(&Tensor::zeros((2, 1, 1, 1), DType::F32, &Device::Cpu)?)
            .unwrap_err();
        assert!(e.to_string().contains("fresh cache"), "{e}");
        Ok(())
    }
}
