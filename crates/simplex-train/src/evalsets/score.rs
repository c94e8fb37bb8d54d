//! Scoring: negative log-likelihood of continuations given their contexts.
//!
//! ```text
//! tokens   = [EOT] + encode(context) + encode(continuation)      (each part encoded alone)
//! nats     = sum over continuation tokens t of -ln p(t | the tokens before it)
//! nll      = sum of nats / sum of scored tokens                  (nats per token)
//! bpb      = sum of nats / sum of UTF-8 bytes of the scored tokens / ln 2
//! ```
//! Every training document starts with the end-of-text token, so an item does too. The
//! continuation's tokens are its own encoding appended to the context's, not the encoding of
//! the joined text: the scored tokens are then the same whatever the context, and no token
//! straddles the boundary (for byte-level BPE with the GPT-2 split the two agree whenever the
//! continuation starts with a space or a newline, as the shipped sets' do).
//!
//! Length: a model reads at most `max_len` tokens (the training `seq_len`, or the model's
//! `max_seq_len`), so an item holds at most `max_len + 1` tokens (the last is only predicted).
//! Longer items lose tokens from the left of `[EOT] + context` (the leading end-of-text goes
//! first, as in a training window that starts inside a document); a continuation of more
//! than `max_len` tokens keeps its first `max_len` tokens after the last context token, and only
//! those are scored and counted. [`EvalScore::truncated`] counts the items that were cut.
//!
//! Batches: items are sorted by length and scored `batch_size` at a time, right-padded to the
//! longest; the model is causal, so padding after an item cannot change its logits, and padded
//! positions are left out of the sums. Logits are cast to f32 for the log-softmax; the sums are
//! f64 on the host.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use simplex_model::Model;

use super::set::EvalSet;
use crate::data::Tokenizer;
use crate::error::{Result, TrainError};

/// How to score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOptions {
    /// Sequences per forward pass (memory grows with batch x length x vocabulary).
    pub batch_size: usize,
    /// Score only the first N items (or text windows); `None`: all.
    pub max_items: Option<usize>,
    /// Tokens the model reads at most; `None`: its `max_seq_len` (larger values are capped there).
    pub max_len: Option<usize>,
}

impl Default for ScoreOptions {
    /// Batch 8, every item, the model's `max_seq_len`.
    fn default() -> Self {
        ScoreOptions {
            batch_size: 8,
            max_items: None,
            max_len: None,
        }
    }
}

impl ScoreOptions {
    /// The length cap for `model`, checked.
    pub fn max_len_for(&self, model: &Model) -> Result<usize> {
        let cap = model.config().max_seq_len;
        let n = self.max_len.map_or(cap, |n| n.min(cap));
        if n == 0 {
            return Err(TrainError::setting("max_len", 0, "must be at least 1"));
        }
        Ok(n)
    }

    /// Checks the settings that do not depend on the model.
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(TrainError::setting("batch_size", 0, "must be at least 1"));
        }
        if self.max_items == Some(0) {
            return Err(TrainError::setting("max_items", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// What an eval set scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalScore {
    /// The set.
    pub name: String,
    /// Items (or text windows) scored.
    pub items: usize,
    /// Tokens scored.
    pub tokens: usize,
    /// UTF-8 bytes of the scored tokens (special tokens count 0).
    pub bytes: u64,
    /// Mean nats per scored token.
    pub nll: f64,
    /// Bits per byte: total nats / bytes / ln 2.
    pub bpb: f64,
    /// Total nats.
    #[serde(default)]
    pub nats: f64,
    /// Items cut to fit the model's length (see the module doc).
    #[serde(default)]
    pub truncated: usize,
}

impl EvalScore {
    /// Sums per-item scores into a set's score.
    pub fn from_items(name: &str, items: &[ItemScore]) -> EvalScore {
        let nats: f64 = items.iter().map(|i| i.nats).sum();
        let tokens: usize = items.iter().map(|i| i.tokens).sum();
        let bytes: u64 = items.iter().map(|i| i.bytes).sum();
        EvalScore::new(name, items.len(), nats, tokens, bytes)
            .with_truncated(items.iter().filter(|i| i.truncated).count())
    }

    /// A score from totals.
    pub fn new(name: &str, items: usize, nats: f64, tokens: usize, bytes: u64) -> EvalScore {
        EvalScore {
            name: name.to_string(),
            items,
            tokens,
            bytes,
            nll: nats / tokens.max(1) as f64,
            bpb: nats / bytes.max(1) as f64 / std::f64::consts::LN_2,
            nats,
            truncated: 0,
        }
    }

    fn with_truncated(mut self, n: usize) -> Self {
        self.truncated = n;
        self
    }

    /// Perplexity: exp(nll).
    pub fn ppl(&self) -> f64 {
        self.nll.exp()
    }
}

/// One item's score.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemScore {
    /// The item's id.
    pub id: String,
    /// Nats of its scored tokens.
    pub nats: f64,
    /// Scored tokens.
    pub tokens: usize,
    /// Their UTF-8 bytes.
    pub bytes: u64,
    /// Whether it was cut to fit.
    pub truncated: bool,
}

/// A token sequence of which the predictions of `tokens[from..]` are scored (`from >= 1`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scored {
    pub tokens: Vec<u32>,
    pub from: usize,
}

/// The sequence of an item: `prefix` (`[EOT] + context`) then `cont`, cut to `max_len + 1`
/// tokens as the module doc says. Returns it and whether it was cut.
pub(crate) fn fit(mut prefix: Vec<u32>, mut cont: Vec<u32>, max_len: usize) -> (Scored, bool) {
    let budget = max_len + 1;
    let cut = prefix.len() + cont.len() > budget;
    if cont.len() > max_len {
        cont.truncate(max_len);
        prefix.drain(..prefix.len() - 1);
    } else if cut {
        prefix.drain(..prefix.len() + cont.len() - budget);
    }
    let from = prefix.len();
    prefix.extend(cont);
    (
        Scored {
            tokens: prefix,
            from,
        },
        cut,
    )
}

/// Nats of each sequence's scored tokens, `batch_size` sequences per forward pass.
pub(crate) fn nats(
    model: &Model,
    seqs: &[Scored],
    batch_size: usize,
    pad: u32,
) -> Result<Vec<f64>> {
    let dev = model.device();
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].tokens.len()));
    let mut out = vec![0f64; seqs.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        // inputs are tokens[..len-1], targets tokens[1..]; both right-padded to the longest
        let n = chunk
            .iter()
            .map(|&i| seqs[i].tokens.len() - 1)
            .max()
            .unwrap_or(0);
        let (mut x, mut y) = (vec![pad; chunk.len() * n], vec![0u32; chunk.len() * n]);
        for (row, &i) in chunk.iter().enumerate() {
            let t = &seqs[i].tokens;
            x[row * n..row * n + t.len() - 1].copy_from_slice(&t[..t.len() - 1]);
            y[row * n..row * n + t.len() - 1].copy_from_slice(&t[1..]);
        }
        let b = chunk.len();
        let logits = model
            .forward(&Tensor::from_vec(x, (b, n), dev)?)?
            .detach()
            .to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp
            .gather(&Tensor::from_vec(y, (b, n, 1), dev)?, 2)?
            .squeeze(2)?
            .to_vec2::<f32>()?;
        for (row, &i) in chunk.iter().enumerate() {
            let s = &seqs[i];
            // position p predicts tokens[p + 1]; scored targets are tokens[from..]
            out[i] = -picked[row][s.from - 1..s.tokens.len() - 1]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
    }
    Ok(out)
}

/// Bytes of `ids` by the tokenizer's table.
pub(crate) fn bytes_of(table: &[u32], ids: &[u32]) -> u64 {
    ids.iter()
        .map(|&t| table.get(t as usize).copied().unwrap_or(0) as u64)
        .sum()
}

/// The per-item scores of `set` (at most `opts.max_items` items, in order).
pub fn score_items(
    model: &Model,
    tokenizer: &Tokenizer,
    set: &EvalSet,
    opts: &ScoreOptions,
) -> Result<Vec<ItemScore>> {
    opts.check()?;
    let max_len = opts.max_len_for(model)?;
    let items = &set.items[..opts
        .max_items
        .map_or(set.items.len(), |m| m.min(set.items.len()))];
    if items.is_empty() {
        return Err(TrainError::setting(
            "eval set",
            &set.name,
            "has no items to score",
        ));
    }
    let contexts: Vec<&str> = items.iter().map(|i| i.context.as_str()).collect();
    let conts: Vec<&str> = items.iter().map(|i| i.continuation.as_str()).collect();
    let (ctx_ids, cont_ids) = (
        tokenizer.encode_batch(&contexts)?,
        tokenizer.encode_batch(&conts)?,
    );
    let eot = tokenizer.eot();
    let vocab = model.config().vocab_size;
    let mut seqs = Vec::with_capacity(items.len());
    let mut cuts = Vec::with_capacity(items.len());
    for ((item, ctx), cont) in items.iter().zip(ctx_ids).zip(cont_ids) {
        if cont.is_empty() {
            return Err(TrainError::setting(
                "eval set",
                &set.name,
                format!("item `{}`: the continuation encodes to no tokens", item.id),
            ));
        }
        let mut prefix = Vec::with_capacity(ctx.len() + 1);
        prefix.push(eot);
        prefix.extend(ctx);
        let (s, cut) = fit(prefix, cont, max_len);
        if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::setting(
                "eval set",
                &set.name,
                format!("item `{}`: token id {bad} is outside the model's vocabulary ({vocab}): the tokenizer is not the model's", item.id),
            ));
        }
        seqs.push(s);
        cuts.push(cut);
    }
    let nats = nats(model, &seqs, opts.batch_size, eot)?;
    let (table, _) = tokenizer.token_bytes();
    Ok(items
        .iter()
        .zip(&seqs)
        .zip(nats.into_iter().zip(cuts))
        .map(|((item, s), (nats, cut))| ItemScore {
            id: item.id.clone(),
            nats,
            tokens: s.tokens.len() - s.from,
            bytes: bytes_of(&table, &s.tokens[s.from..]),
            truncated: cut,
        })
        .collect())
}

/// The score of `set`: nll (nats per continuation token) and bits per byte over its items.
pub fn score(
    model: &Model,
    tokenizer: &Tokenizer,
    set: &EvalSet,
    opts: &ScoreOptions,
) -> Result<EvalScore> {
    let items = score_items(model, tokenizer, set, opts)?;
    Ok(EvalScore::from_items(&set.name, &items))
}
