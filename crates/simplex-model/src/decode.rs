//! Incremental decoding with a KV cache, past `max_seq_len` by sliding the context.
//!
//! A model's positions end at `max_seq_len` (the RoPE tables, the D layers' cache, the chunk
//! rotation of determinant S layers). A [`Decoder`] holds, for each of its B sequences, the
//! *window*: the last tokens the model sees, at positions `0..len`, and the KV cache of that
//! window. While the window is shorter than `max_seq_len`, each new token is one cached decode
//! step. When the window is full (`max_seq_len` tokens) and one more token comes, the window
//! slides by `shift` tokens: its oldest `shift` tokens are dropped, the cache is cleared, and
//! the `max_seq_len + 1 - shift` tokens left (the new one included) are fed again from
//! position 0 in one prefill; decoding then goes on one token at a time until the window is
//! full again, `shift` tokens later.
//!
//! ```text
//! max_seq_len = 8, shift = 2:
//! tokens   0 1 2 3 4 5 6 7 | 8        the window is full: 8 comes
//! window       2 3 4 5 6 7 8          7 tokens fed again from position 0, then 9 is a step
//! ```
//! Every prediction is therefore exactly what a full forward (no cache) of the window gives:
//! the caches of every layer kind (D, L, S with either variant) only ever hold the window, and
//! nothing of the dropped tokens survives in them. A prompt longer than `max_seq_len` is cropped
//! to its last `max_seq_len` tokens ([`Decoder::cropped`] says how many went).
//!
//! The default shift is a quarter of `max_seq_len` ([`Decoder::default_shift`]): once the text
//! is that long every prediction sees at least `3/4 max_seq_len` tokens, and the cost is one
//! prefill of `3/4 max_seq_len + 1` tokens every `max_seq_len / 4` new tokens. `shift = 1`
//! keeps the longest context (nanoGPT's crop to the last `block_size` tokens at every step)
//! and prefills at every token; `shift = max_seq_len` restarts from the newest token alone.

use candle_core::Tensor;

use crate::cache::Cache;
use crate::error::{ModelError, Result};
use crate::model::Model;

/// Decodes B sequences of one length token by token, sliding their context past
/// `max_seq_len` (see the module doc).
#[derive(Debug)]
pub struct Decoder<'m> {
    model: &'m Model,
    cache: Cache,
    /// The tokens each row's cache holds, in position order.
    windows: Vec<Vec<u32>>,
    shift: usize,
    slides: usize,
    cropped: usize,
}

impl<'m> Decoder<'m> {
    /// The shift used when none is given: `max_seq_len / 4`, at least 1.
    pub fn default_shift(max_seq_len: usize) -> usize {
        (max_seq_len / 4).max(1)
    }

    /// Starts decoding `prompts` (B rows of the same, non-zero length) with the context sliding
    /// by `shift` tokens (`None`: [`Decoder::default_shift`]; otherwise `1..=max_seq_len`).
    /// A prompt longer than `max_seq_len` is cropped to its last `max_seq_len` tokens. Returns
    /// the decoder and the logits `[B, V]` of the token after each prompt.
    pub fn new(
        model: &'m Model,
        prompts: &[&[u32]],
        shift: Option<usize>,
    ) -> Result<(Self, Tensor)> {
        let max = model.config().max_seq_len;
        let shift = shift.unwrap_or_else(|| Self::default_shift(max));
        if !(1..=max).contains(&shift) {
            return Err(ModelError::Input(format!(
                "shift = {shift}: the context slides by 1 to max_seq_len = {max} tokens"
            )));
        }
        let Some(first) = prompts.first() else {
            return Err(ModelError::Input(
                "no prompt: decoding needs at least one sequence".into(),
            ));
        };
        let n = first.len();
        if n == 0 {
            return Err(ModelError::Input(
                "empty prompt: decoding needs at least one token".into(),
            ));
        }
        if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() != n) {
            return Err(ModelError::Input(format!(
                "prompt {i} has {} tokens, prompt 0 has {n}: a batch decodes prompts of one length",
                p.len()
            )));
        }
        let cropped = n.saturating_sub(max);
        let windows: Vec<Vec<u32>> = prompts.iter().map(|p| p[cropped..].to_vec()).collect();
        let mut dec = Decoder {
            model,
            cache: Cache::new(model.config()),
            windows,
            shift,
            slides: 0,
            cropped,
        };
        let logits = dec.feed_windows()?;
        Ok((dec, logits))
    }

    /// Appends one token to each row (`next[b]` to row `b`) and returns the logits `[B, V]`
    /// of the token after it; slides the context first when the window is full. A bad token
    /// is an error that leaves the decoder as it was.
    pub fn step(&mut self, next: &[u32]) -> Result<Tensor> {
        if next.len() != self.windows.len() {
            return Err(ModelError::Input(format!(
                "{} tokens for {} rows: one token per row",
                next.len(),
                self.windows.len()
            )));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = next.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size = {vocab})"
            )));
        }
        for (w, &t) in self.windows.iter_mut().zip(next) {
            w.push(t);
        }
        let max = self.model.config().max_seq_len;
        if self.cache.pos() < max {
            let input = Tensor::new(next, self.model.device())?.unsqueeze(1)?;
            return last_logits(&self.model.forward_step(&input, &mut self.cache)?);
        }
        // the window holds max + 1 tokens: drop the oldest `shift`, feed the rest again
        for w in &mut self.windows {
            w.drain(..self.shift);
        }
        self.slides += 1;
        self.cache.clear();
        self.feed_windows()
    }

    /// Feeds the whole windows into the (empty) cache: the logits `[B, V]` of their last token.
    fn feed_windows(&mut self) -> Result<Tensor> {
        let (b, n) = (self.windows.len(), self.windows[0].len());
        let flat: Vec<u32> = self.windows.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (b, n), self.model.device())?;
        last_logits(&self.model.forward_step(&input, &mut self.cache)?)
    }

    /// The tokens row `row` sees now (the window), oldest first.
    pub fn window(&self, row: usize) -> Option<&[u32]> {
        self.windows.get(row).map(Vec::as_slice)
    }

    /// How far the context slides at a time.
    pub fn shift(&self) -> usize {
        self.shift
    }

    /// How many times the context slid (each a prefill of the window).
    pub fn slides(&self) -> usize {
        self.slides
    }

    /// Tokens cut from the front of the prompts because they were longer than `max_seq_len`.
    pub fn cropped(&self) -> usize {
        self.cropped
    }
}

/// The last position's logits `[B, V]` of `logits [B, n, V]`.
fn last_logits(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(1)?;
    Ok(logits.narrow(1, n - 1, 1)?.squeeze(1)?)
}
