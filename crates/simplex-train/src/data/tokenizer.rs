//! Tokenizers: the built-in byte-level one, and BPE (trained here or loaded) through the
//! `tokenizers` crate.
//!
//! ```text
//! bytes       ids 0..=255 are the bytes of the UTF-8 text, 256 is <|endoftext|>   (vocab 257)
//! bpe:VOCAB   byte-level BPE trained on the training documents (GPT-2 pre-tokenizer regex,
//!             256 byte symbols + merges + <|endoftext|>, VOCAB ids in all)
//! FILE.json   a `tokenizers` JSON file; its end-of-text token (<|endoftext|>, </s>, <eos>, ...)
//!             separates documents
//! ```
//! Every document starts with the end-of-text token (it doubles as beginning of text), so a
//! prompt at generation time starts with it too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use crate::error::{Result, TrainError};

/// The end-of-text token's text.
pub const EOT: &str = "<|endoftext|>";

/// Names an end-of-text token may have in a loaded tokenizer, in order of preference.
const EOT_NAMES: [&str; 5] = [EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>"];

/// Which tokenizer a run uses (`--tokenizer bytes|bpe:VOCAB|FILE.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// Bytes of the UTF-8 text plus <|endoftext|>.
    Bytes,
    /// Byte-level BPE trained on the training split with this many ids.
    Bpe(usize),
    /// A `tokenizers` JSON file.
    File(PathBuf),
}

impl std::str::FromStr for TokenizerSpec {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "bytes" {
            return Ok(TokenizerSpec::Bytes);
        }
        if let Some(v) = s.strip_prefix("bpe:") {
            let n: usize = v.parse().map_err(|_| {
                TrainError::setting(
                    "tokenizer",
                    s,
                    "expected bpe:VOCAB with VOCAB a number, e.g. bpe:4096",
                )
            })?;
            if !(257..=1 << 20).contains(&n) {
                return Err(TrainError::setting(
                    "tokenizer",
                    s,
                    "a BPE vocabulary needs 257 to 1048576 ids (256 bytes + <|endoftext|> at least)",
                ));
            }
            return Ok(TokenizerSpec::Bpe(n));
        }
        Ok(TokenizerSpec::File(PathBuf::from(s)))
    }
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerSpec::Bytes => write!(f, "bytes"),
            TokenizerSpec::Bpe(n) => write!(f, "bpe:{n}"),
            TokenizerSpec::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A tokenizer with an end-of-text token.
#[derive(Clone)]
pub enum Tokenizer {
    /// Bytes (0..=255) and <|endoftext|> (256).
    Bytes,
    /// A `tokenizers` tokenizer.
    Hf {
        /// The tokenizer.
        tok: Box<tokenizers::Tokenizer>,
        /// Id of the end-of-text token.
        eot: u32,
        /// One more than the largest id.
        vocab: usize,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Bytes => write!(f, "Tokenizer::Bytes"),
            Tokenizer::Hf { eot, vocab, .. } => {
                write!(f, "Tokenizer::Hf(vocab {vocab}, eot {eot})")
            }
        }
    }
}

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> TrainError {
    TrainError::Tokenizer {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer; `what` names it in errors.
    pub fn from_hf(tok: tokenizers::Tokenizer, what: &str) -> Result<Self> {
        let eot = EOT_NAMES
            .iter()
            .find_map(|n| tok.token_to_id(n))
            .ok_or_else(|| {
                tok_err(
                    what,
                    format!("has no end-of-text token (looked for {}); simplex separates documents with it", EOT_NAMES.join(", ")),
                )
            })?;
        let vocab = tok
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        Ok(Tokenizer::Hf {
            tok: Box::new(tok),
            eot,
            vocab,
        })
    }

    /// Loads a `tokenizers` JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(tok_err(path.display(), "no such file"));
        }
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            tok_err(
                path.display(),
                format!("not a readable tokenizers JSON file: {e}"),
            )
        })?;
        Self::from_hf(tok, &path.display().to_string())
    }

    /// Trains byte-level BPE with `vocab` ids (merges + 256 bytes + <|endoftext|>) on `docs`.
    pub fn train_bpe<I, S>(vocab: usize, docs: I) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let what = format!("bpe:{vocab}");
        let mut tok = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::default()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .map_err(|e| tok_err(&what, e))?;
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let mut trainer = BpeTrainer::builder()
            .vocab_size(vocab)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .initial_alphabet(alphabet)
            .build();
        tok.train(&mut trainer, docs)
            .map_err(|e| tok_err(&what, e))?;
        Self::from_hf(tok.into(), &what)
    }

    /// Number of ids (the model's `vocab_size` must be at least this).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 257,
            Tokenizer::Hf { vocab, .. } => *vocab,
        }
    }

    /// The end-of-text id.
    pub fn eot(&self) -> u32 {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Hf { eot, .. } => *eot,
        }
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf { tok, .. } => Ok(tok
                .encode(text, false)
                .map_err(|e| tok_err("encode", e))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Token ids of many texts (in parallel for BPE).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        match self {
            Tokenizer::Bytes => texts.iter().map(|t| self.encode(t)).collect(),
            Tokenizer::Hf { tok, .. } => Ok(tok
                .encode_batch(texts.to_vec(), false)
                .map_err(|e| tok_err("encode", e))?
                .into_iter()
                .map(|e| e.get_ids().to_vec())
                .collect()),
        }
    }

    /// Whole documents as the shards store them: the end-of-text token, then the document's
    /// tokens (every training document starts with one).
    pub fn encode_documents(&self, docs: &[&str]) -> Result<Vec<Vec<u32>>> {
        let eot = self.eot();
        Ok(self
            .encode_batch(docs)?
            .into_iter()
            .map(|ids| {
                let mut toks = Vec::with_capacity(ids.len() + 1);
                toks.push(eot);
                toks.extend(ids);
                toks
            })
            .collect())
    }

    /// Document pieces as the shards store them: the pieces' tokens, with the end-of-text
    /// token before each piece that starts a document ([`super::stream`]: the same tokens as
    /// [`Tokenizer::encode_documents`] of the whole documents, but for the boundary effect
    /// described there).
    pub fn encode_pieces(&self, pieces: &[super::DocPiece]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        let eot = self.eot();
        Ok(self
            .encode_batch(&texts)?
            .into_iter()
            .zip(pieces)
            .map(|(ids, p)| {
                if p.first {
                    let mut toks = Vec::with_capacity(ids.len() + 1);
                    toks.push(eot);
                    toks.extend(ids);
                    toks
                } else {
                    ids
                }
            })
            .collect())
    }

    /// The text of `ids`; special tokens are dropped, invalid UTF-8 (a cut multi-byte
    /// character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf { tok, .. } => tok.decode(ids, true).map_err(|e| tok_err("decode", e)),
        }
    }

    /// Raw text bytes each id stands for (0 for special tokens), for bits per byte; `exact` is
    /// false when the tokenizer is not byte-level (the count then comes from decoding each id
    /// alone, which can be off by the spaces a decoder adds or strips).
    pub fn token_bytes(&self) -> (Vec<u32>, bool) {
        match self {
            Tokenizer::Bytes => {
                let mut t = vec![1u32; 256];
                t.push(0);
                (t, true)
            }
            Tokenizer::Hf { tok, vocab, .. } => {
                let byte_level = matches!(tok.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
                let special: HashSet<u32> = tok
                    .get_added_tokens_decoder()
                    .into_iter()
                    .filter(|(_, t)| t.special)
                    .map(|(i, _)| i)
                    .collect();
                let table = (0..*vocab as u32)
                    .map(|id| {
                        if special.contains(&id) {
                            return 0;
                        }
                        match tok.id_to_token(id) {
                            // byte-level: each char of a token stands for one byte
                            Some(s) if byte_level => s.chars().count() as u32,
                            Some(_) => tok.decode(&[id], false).map_or(0, |s| s.len() as u32),
                            None => 0,
                        }
                    })
                    .collect();
                (table, byte_level)
            }
        }
    }

    /// Writes the tokenizer JSON (BPE only; the byte tokenizer has no file).
    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Tokenizer::Bytes => Ok(()),
            Tokenizer::Hf { tok, .. } => tok
                .save(path, false)
                .map_err(|e| tok_err(path.display(), format!("cannot write: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Grüße, 世界! The cat sat on the mat. 🐈\n\ttabs and  spaces";

    #[test]
    fn bytes_round_trip_any_unicode() -> Result<()> {
        let t = Tokenizer::Bytes;
        let ids = t.encode(TEXT)?;
        assert_eq!(ids.len(), TEXT.len());
        assert_eq!(t.decode(&ids)?, TEXT);
        let mut with_eot = vec![t.eot()];
        with_eot.extend(&ids);
        assert_eq!(t.decode(&with_eot)?, TEXT, "EOT decodes to nothing");
        let (bytes, exact) = t.token_bytes();
        assert!(exact);
        assert_eq!(
            ids.iter().map(|&i| bytes[i as usize]).sum::<u32>() as usize,
            TEXT.len()
        );
        Ok(())
    }

    #[test]
    fn bpe_trains_round_trips_and_counts_bytes() -> Result<()> {
        let docs: Vec<String> = (0..200)
            .map(|i| format!("the quick brown fox {i} jumps over the lazy dog. {TEXT}"))
            .collect();
        let t = Tokenizer::train_bpe(300, docs.iter())?;
        assert!(
            t.vocab_size() <= 300 && t.vocab_size() > 257,
            "{}",
            t.vocab_size()
        );
        for d in docs.iter().take(5).chain([&TEXT.to_string()]) {
            let ids = t.encode(d)?;
            assert!(ids.len() < d.len(), "merges shorten the text");
            assert_eq!(&t.decode(&ids)?, d);
            let (bytes, exact) = t.token_bytes();
            assert!(exact);
            assert_eq!(
                ids.iter().map(|&i| bytes[i as usize]).sum::<u32>() as usize,
                d.len()
            );
        }
        assert_eq!(t.token_bytes().0[t.eot() as usize], 0);
        // saved and loaded: the same ids
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        let path = dir.path().join("tokenizer.json");
        t.save(&path)?;
        let u = Tokenizer::from_file(&path)?;
        assert_eq!(u.encode(TEXT)?, t.encode(TEXT)?);
        assert_eq!(u.eot(), t.eot());
        Ok(())
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = "bpe:12x".parse::<TokenizerSpec>().unwrap_err();
        assert!(e.to_string().contains("tokenizer = bpe:12x"), "{e}");
        let e = "bpe:100".parse::<TokenizerSpec>().unwrap_err();
        assert!(e.to_string().contains("257"), "{e}");
        let e = Tokenizer::from_file(Path::new("/nonexistent/tok.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tok.json"), "{e}");
    }
}
