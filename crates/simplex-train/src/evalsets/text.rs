//! Scoring new text (`simplex eval --data FILE_OR_DIR`): loss, bits per byte and perplexity.
//!
//! ```text
//! files -> documents (split at doc_sep, as the trainer splits them)
//!       -> stream = for each document: [EOT] + encode(document)   (as the training shards)
//!       -> windows of max_len + 1 tokens at stride max_len (non-overlapping predictions):
//!          window w = stream[w*L .. w*L + L + 1], the last one shorter
//! nll = sum of nats over every predicted token / predicted tokens;  bpb = nats / bytes / ln 2
//! ```
//! Every token of the stream but the first is predicted exactly once, as in the trainer's
//! held-out eval, end-of-text tokens included (they add nats, no bytes). A token early in a
//! window sees little context; the windows do not overlap, so the numbers match `val_loss`
//! and `val_bpb` computed the same way, not a sliding-window perplexity. The text is read
//! whole into memory.

use std::path::PathBuf;

use simplex_model::Model;

use super::score::{bytes_of, nats, EvalScore, ScoreOptions, Scored};
use crate::data::{Corpus, Tokenizer};
use crate::error::{Result, TrainError};

/// The name of a text source: the first path's file stem (or folder name).
pub fn text_name(paths: &[PathBuf]) -> String {
    paths
        .first()
        .and_then(|p| p.file_stem())
        .map_or("text".into(), |s| s.to_string_lossy().into_owned())
}

/// The token stream of the documents under `paths` (each `[EOT] + tokens`).
pub fn text_stream(tokenizer: &Tokenizer, paths: &[PathBuf], doc_sep: &str) -> Result<Vec<u32>> {
    let corpus = Corpus::scan(paths, doc_sep, &crate::data::FileFilter::default())?;
    let mut stream = Vec::new();
    corpus.for_each_chunk(|pieces| {
        stream.extend(tokenizer.encode_pieces(&pieces)?.into_iter().flatten());
        Ok(())
    })?;
    Ok(stream)
}

/// The windows of a stream: `max_len + 1` tokens at stride `max_len`, each scored from its
/// second token; at most `max_windows`.
pub(crate) fn windows(stream: &[u32], max_len: usize, max_windows: Option<usize>) -> Vec<Scored> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < stream.len() && max_windows.is_none_or(|m| out.len() < m) {
        let end = (start + max_len + 1).min(stream.len());
        out.push(Scored {
            tokens: stream[start..end].to_vec(),
            from: 1,
        });
        start += max_len;
    }
    out
}

/// Scores a token stream (see the module doc); `name` names the result.
pub fn score_stream(
    model: &Model,
    tokenizer: &Tokenizer,
    name: &str,
    stream: &[u32],
    opts: &ScoreOptions,
) -> Result<EvalScore> {
    opts.check()?;
    let max_len = opts.max_len_for(model)?;
    let vocab = model.config().vocab_size;
    if let Some(&bad) = stream.iter().find(|&&t| t as usize >= vocab) {
        return Err(TrainError::setting(
            "text",
            name,
            format!("token id {bad} is outside the model's vocabulary ({vocab})"),
        ));
    }
    let wins = windows(stream, max_len, opts.max_items);
    if wins.is_empty() {
        return Err(TrainError::setting(
            "text",
            name,
            "has fewer than 2 tokens: nothing to predict",
        ));
    }
    let per = nats(model, &wins, opts.batch_size, tokenizer.eot())?;
    let (table, exact) = tokenizer.token_bytes();
    if !exact {
        tracing::warn!("the tokenizer is not byte-level: bits per byte count bytes by decoding each token alone (approximate)");
    }
    let tokens = wins.iter().map(|w| w.tokens.len() - 1).sum();
    let bytes = wins.iter().map(|w| bytes_of(&table, &w.tokens[1..])).sum();
    Ok(EvalScore::new(
        name,
        wins.len(),
        per.iter().sum(),
        tokens,
        bytes,
    ))
}

/// Scores the text files and folders `paths`, split into documents at `doc_sep`.
pub fn score_text(
    model: &Model,
    tokenizer: &Tokenizer,
    paths: &[PathBuf],
    doc_sep: &str,
    opts: &ScoreOptions,
) -> Result<EvalScore> {
    let stream = text_stream(tokenizer, paths, doc_sep)?;
    score_stream(model, tokenizer, &text_name(paths), &stream, opts)
}
