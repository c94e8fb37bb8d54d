//! Training batches: the training stream cut into windows of `seq + 1` tokens (stride `seq`),
//! visited in a seeded random order per epoch, from a seeded random offset per epoch.
//!
//! ```text
//! epoch e:  offset_e in [0, seq),  windows w = 0..W_e,  start(w) = offset_e + w * seq
//!           order_e = shuffle(0..W_e) by SplitMix64(seed, e)
//! batch:    the next B windows of order_e (continuing into epoch e+1 when e runs out)
//!           inputs = tokens[start .. start+seq], targets = tokens[start+1 .. start+seq+1]
//! ```
//! The position `(epoch, cursor)` is all the state there is: a resumed run rebuilds the same
//! order from the seed and continues at the cursor.

use serde::{Deserialize, Serialize};

use super::shards::TokenStream;
use crate::error::{Result, TrainError};
use crate::rng::SplitMix64;

/// Where the data order stands: windows `0..cursor` of epoch `epoch`'s order were used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Passes over the training stream completed.
    pub epoch: u64,
    /// Windows of the current epoch's order already used.
    pub cursor: u64,
}

/// Draws training batches in a seeded order.
pub struct Batcher<'a> {
    stream: &'a TokenStream,
    seq: usize,
    seed: u64,
    pos: DataPosition,
    offset: u64,
    order: Vec<u32>,
}

impl<'a> Batcher<'a> {
    /// A batcher at `pos`; the stream must hold at least `seq + 1` tokens.
    pub fn new(stream: &'a TokenStream, seq: usize, seed: u64, pos: DataPosition) -> Result<Self> {
        if stream.len() < seq as u64 + 1 {
            return Err(TrainError::setting(
                "seq_len",
                seq,
                format!(
                    "the training split has only {} tokens; a window needs seq_len + 1: give more data or a smaller --seq-len",
                    stream.len()
                ),
            ));
        }
        let mut b = Batcher {
            stream,
            seq,
            seed,
            pos,
            offset: 0,
            order: Vec::new(),
        };
        b.build_epoch()?;
        if pos.cursor > b.order.len() as u64 {
            return Err(TrainError::setting(
                "data position",
                format!("epoch {} window {}", pos.epoch, pos.cursor),
                format!(
                    "past the {} windows of that epoch: the data changed since the checkpoint",
                    b.order.len()
                ),
            ));
        }
        Ok(b)
    }

    fn build_epoch(&mut self) -> Result<()> {
        let usable = self.stream.len() - 1;
        let seq = self.seq as u64;
        let mut rng = SplitMix64::derived(self.seed, 0xE90C_0000 + self.pos.epoch);
        self.offset = rng.below((seq - 1).min(usable - seq) + 1);
        let n = (usable - self.offset) / seq;
        if n > u32::MAX as u64 {
            return Err(TrainError::setting(
                "seq_len",
                self.seq,
                format!("{n} windows per epoch: more than 2^32, use a longer --seq-len"),
            ));
        }
        self.order = (0..n as u32).collect();
        rng.shuffle(&mut self.order);
        Ok(())
    }

    /// The position after the batches drawn so far.
    pub fn position(&self) -> DataPosition {
        self.pos
    }

    /// Windows in the current epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.order.len()
    }

    /// Passes over the next `n` windows as drawing them would (into the next epochs when the
    /// current one runs out), without reading them: a data-parallel rank skips the other
    /// ranks' windows this way.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        let mut left = n as u64;
        while left > 0 {
            if self.pos.cursor as usize >= self.order.len() {
                self.pos = DataPosition {
                    epoch: self.pos.epoch + 1,
                    cursor: 0,
                };
                self.build_epoch()?;
            }
            let take = left.min(self.order.len() as u64 - self.pos.cursor);
            self.pos.cursor += take;
            left -= take;
        }
        Ok(())
    }

    /// The next `b` windows: `(inputs, targets)`, each `b * seq` ids, row-major `[b, seq]`.
    pub fn next_batch(&mut self, b: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let seq = self.seq;
        let (mut inputs, mut targets) = (Vec::with_capacity(b * seq), Vec::with_capacity(b * seq));
        let mut window = Vec::with_capacity(seq + 1);
        for _ in 0..b {
            if self.pos.cursor as usize >= self.order.len() {
                self.pos = DataPosition {
                    epoch: self.pos.epoch + 1,
                    cursor: 0,
                };
                self.build_epoch()?;
            }
            let w = self.order[self.pos.cursor as usize] as u64;
            self.pos.cursor += 1;
            window.clear();
            self.stream
                .read(self.offset + w * seq as u64, seq + 1, &mut window);
            inputs.extend_from_slice(&window[..seq]);
            targets.extend_from_slice(&window[1..]);
        }
        Ok((inputs, targets))
    }
}

/// The eval windows of a held-out stream: the first `max_windows` non-overlapping windows of
/// `min(seq, len - 1)` predictions (the same every eval, so losses are comparable over a run).
pub fn eval_windows(stream: &TokenStream, seq: usize, max_windows: usize) -> (usize, Vec<u64>) {
    let usable = stream.len().saturating_sub(1);
    let seq = (seq as u64).min(usable);
    if seq == 0 {
        return (0, Vec::new());
    }
    let n = (usable / seq).min(max_windows as u64);
    (seq as usize, (0..n).map(|w| w * seq).collect())
}
