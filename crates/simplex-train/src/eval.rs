//! Held-out eval: loss and bits per byte over fixed windows of the held-out stream.
//!
//! ```text
//! val_loss = sum of nats over every predicted token / number of predicted tokens
//! val_bpb  = sum of nats / sum of UTF-8 bytes of the predicted tokens / ln 2
//! ```
//! The windows are the first `eval_batches * batch_size` non-overlapping windows of the held-out
//! stream, the same at every eval, so the values are comparable along a run and between runs
//! that share the split.

use candle_core::{DType, Device, Tensor};
use simplex_model::Model;

use crate::config::TrainConfig;
use crate::data::{eval_windows, Dataset};
use crate::error::Result;

/// The held-out batches of a run, on the device, with their byte count.
pub struct Evaluator {
    batches: Vec<(Tensor, Tensor)>,
    windows: usize,
    tokens: usize,
    bytes: u64,
}

impl Evaluator {
    /// Reads the eval windows of `data` once.
    pub fn new(data: &Dataset, cfg: &TrainConfig, dev: &Device) -> Result<Self> {
        let (seq, starts) = eval_windows(&data.val, cfg.seq_len, cfg.eval_batches * cfg.batch_size);
        let (table, exact) = data.tokenizer.token_bytes();
        if !exact {
            tracing::warn!("the tokenizer is not byte-level: val_bpb counts bytes by decoding each token alone (approximate)");
        }
        let mut batches = Vec::new();
        let mut bytes = 0u64;
        let mut window = Vec::new();
        for chunk in starts.chunks(cfg.batch_size) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for &s in chunk {
                window.clear();
                data.val.read(s, seq + 1, &mut window);
                x.extend_from_slice(&window[..seq]);
                y.extend_from_slice(&window[1..]);
            }
            bytes += y
                .iter()
                .map(|&t| table.get(t as usize).copied().unwrap_or(0) as u64)
                .sum::<u64>();
            let b = chunk.len();
            batches.push((
                Tensor::from_vec(x, (b, seq), dev)?,
                Tensor::from_vec(y, b * seq, dev)?,
            ));
        }
        Ok(Evaluator {
            windows: starts.len(),
            tokens: starts.len() * seq,
            batches,
            bytes,
        })
    }

    /// Held-out windows read.
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Tokens predicted per eval.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// UTF-8 bytes of the predicted tokens.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `(val_loss, val_bpb)` of `model`; `None` when the held-out stream is too short.
    pub fn run(&self, model: &Model) -> Result<Option<(f64, f64)>> {
        if self.tokens == 0 {
            return Ok(None);
        }
        let mut nats = 0f64;
        for (x, y) in &self.batches {
            let logits = model.forward(x)?.detach();
            let (v, n) = (logits.dim(2)?, y.dim(0)?);
            let logits = logits.to_dtype(DType::F32)?.reshape((n, v))?;
            let loss = candle_nn::loss::cross_entropy(&logits, y)?;
            nats += loss.to_scalar::<f32>()? as f64 * n as f64;
        }
        let loss = nats / self.tokens as f64;
        let bpb = nats / self.bytes.max(1) as f64 / std::f64::consts::LN_2;
        Ok(Some((loss, bpb)))
    }
}
