//! `simplex prepare`: text files and folders -> a tokenized dataset folder that several runs
//! share (`simplex train --data DATA_DIR` uses it as is).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use simplex_train::data::{self, DataOptions};

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Text files or folders (walked recursively, hidden names skipped).
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// The dataset folder to write (must not exist): meta.json, tokenizer.json, token shards.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub files: crate::data_args::FileFilterArgs,
    /// bytes, bpe:VOCAB (trained on the training documents) or a tokenizers JSON file.
    #[arg(long, default_value = "bytes")]
    pub tokenizer: String,
    /// Splits files into documents; "" makes each file one document.
    #[arg(long, default_value = simplex_train::data::EOT)]
    pub doc_sep: String,
    /// Fraction of documents held out for eval.
    #[arg(long, default_value_t = 0.01)]
    pub val_frac: f64,
    /// Seed of the held-out draw.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 1 << 26)]
    pub shard_tokens: u64,
    /// Bytes of a file read, split and tokenized at a time, so that no file is held whole
    /// (at least 64). Pieces end at a document boundary or before the last whitespace
    /// character ahead of a word, which gives the same tokens as the whole file for the byte
    /// tokenizer and bpe:VOCAB; only a stretch of half this size without whitespace is cut
    /// anywhere, where BPE may tokenize the few characters around the cut differently.
    #[arg(long, default_value_t = simplex_train::data::corpus::DEFAULT_CHUNK)]
    pub chunk_bytes: usize,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    if a.chunk_bytes < simplex_train::data::stream::MIN_CHUNK {
        bail!(
            "--chunk-bytes {}: must be at least {}",
            a.chunk_bytes,
            simplex_train::data::stream::MIN_CHUNK
        );
    }
    if a.out.exists() {
        bail!(
            "{}: already exists; a prepared dataset is written once (choose another --out)",
            a.out.display()
        );
    }
    let mut opts = DataOptions::new(a.data);
    opts.tokenizer = a.tokenizer.parse()?;
    opts.doc_sep = a.doc_sep;
    opts.val_frac = a.val_frac;
    opts.split_seed = a.split_seed;
    opts.shard_tokens = a.shard_tokens;
    opts.chunk_bytes = a.chunk_bytes;
    opts.filter = a.files.filter();
    let d = data::prepare(&opts, &a.out)?;
    let m = &d.meta;
    println!(
        "{}: {} files ({} skipped as not text), tokenizer {} ({} ids); train {} docs, {} tokens, {} bytes; held out {} docs, {} tokens",
        a.out.display(),
        m.files,
        m.skipped_files,
        m.tokenizer,
        m.vocab_size,
        m.train.docs,
        m.train.tokens,
        m.train.bytes,
        m.val.docs,
        m.val.tokens
    );
    Ok(())
}
