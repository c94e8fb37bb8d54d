//! Data: text files -> documents -> tokenizer -> memory-mapped token shards, split by document.
//!
//! ```text
//! RUN_DIR/data/meta.json        what was tokenized how (DataMeta), written last
//! RUN_DIR/data/tokenizer.json   BPE runs: the tokenizer (trained on the training documents only)
//! RUN_DIR/data/train-NNNNN.bin  the training documents, each as <|endoftext|> + its tokens
//! RUN_DIR/data/val-NNNNN.bin    the held-out documents, likewise
//! ```
//! The folder is built as `data.tmp/` and renamed into place when complete, so a run killed
//! while tokenizing starts over cleanly; an error removes `data.tmp/` (and any parent folder it
//! had to create).

pub mod batches;
pub mod corpus;
pub mod shards;
pub mod stream;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, TrainError};
pub use batches::{eval_windows, Batcher, DataPosition};
pub use corpus::{Corpus, FileFilter};
pub use shards::{ShardWriter, SplitInfo, TokenStream};
pub use stream::DocPiece;
pub use tokenizer::{Tokenizer, TokenizerSpec, EOT};

/// How to turn text into a dataset.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Text files and folders.
    pub paths: Vec<PathBuf>,
    /// Which tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Splits files into documents (empty: a file is a document).
    pub doc_sep: String,
    /// Fraction of documents held out.
    pub val_frac: f64,
    /// Seed of the held-out draw.
    pub split_seed: u64,
    /// Tokens per shard file.
    pub shard_tokens: u64,
    /// Which files of the folders are read.
    pub filter: FileFilter,
    /// Files are read, split and tokenized this many bytes at a time, so that a file of any
    /// size is never held whole (see [`stream`] for where the pieces end).
    pub chunk_bytes: usize,
}

impl DataOptions {
    /// Defaults: byte tokenizer, `<|endoftext|>` separates documents, 1% held out, split seed 0,
    /// 64 Mi tokens per shard, files read 16 MiB at a time.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        DataOptions {
            paths,
            tokenizer: TokenizerSpec::Bytes,
            doc_sep: EOT.to_string(),
            val_frac: 0.01,
            split_seed: 0,
            shard_tokens: 1 << 26,
            filter: FileFilter::default(),
            chunk_bytes: corpus::DEFAULT_CHUNK,
        }
    }
}

/// What `meta.json` records about a prepared dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMeta {
    /// Layout version.
    pub format: u32,
    /// `bytes`, `bpe:VOCAB` or the tokenizer file it was loaded from.
    pub tokenizer: String,
    /// Ids of the tokenizer.
    pub vocab_size: usize,
    /// The end-of-text id.
    pub eot: u32,
    /// Bytes per stored id (2 or 4).
    pub token_width: usize,
    /// The document separator.
    pub doc_sep: String,
    /// Fraction of documents held out.
    pub val_frac: f64,
    /// Seed of the held-out draw.
    pub split_seed: u64,
    /// FNV-1a of the source files' bytes, hex.
    pub fingerprint: String,
    /// The source paths as given.
    pub sources: Vec<String>,
    /// Source files read.
    pub files: usize,
    /// Globs of the files read (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Globs of files left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Files in the folders skipped because they are not text.
    #[serde(default)]
    pub skipped_files: usize,
    /// The training split.
    pub train: SplitInfo,
    /// The held-out split.
    pub val: SplitInfo,
}

/// A prepared dataset, opened.
pub struct Dataset {
    /// Its folder.
    pub dir: PathBuf,
    /// What it holds.
    pub meta: DataMeta,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Training tokens.
    pub train: TokenStream,
    /// Held-out tokens.
    pub val: TokenStream,
}

/// Tokenizes `opts.paths` into `dir` (which must not exist yet), building it as
/// `dir.tmp` first. Returns the opened dataset.
pub fn prepare(opts: &DataOptions, dir: &Path) -> Result<Dataset> {
    let corpus = Corpus::scan_chunked(&opts.paths, &opts.doc_sep, &opts.filter, opts.chunk_bytes)?;
    if !corpus.skipped.is_empty() {
        tracing::warn!(
            "skipped {} files that are not UTF-8 text (first: {}); --strict makes that an error",
            corpus.skipped.len(),
            corpus.skipped[0].display()
        );
    }
    let val = corpus.split(opts.val_frac, opts.split_seed)?;
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    // removed again (with the parents it needed) if anything below fails
    let scratch = crate::scratch::Scratch::create(&tmp)?;
    let tokenizer = match &opts.tokenizer {
        TokenizerSpec::Bytes => Tokenizer::Bytes,
        TokenizerSpec::File(p) => Tokenizer::from_file(p)?,
        TokenizerSpec::Bpe(n) => {
            tracing::info!("training BPE ({n} ids) on the training documents");
            train_bpe(&corpus, &val, *n)?
        }
    };
    tokenizer.save(&tmp.join("tokenizer.json"))?;
    let width = shards::token_width(tokenizer.vocab_size());
    let mut train_w = ShardWriter::new(&tmp, "train", width, opts.shard_tokens);
    let mut val_w = ShardWriter::new(&tmp, "val", width, opts.shard_tokens);
    let eot = tokenizer.eot();
    corpus.for_each_chunk(|pieces| {
        for (p, toks) in pieces.iter().zip(tokenizer.encode_pieces(&pieces)?) {
            let w = if val[p.doc] { &mut val_w } else { &mut train_w };
            w.push_piece(&toks, p.text.len(), p.first)?;
        }
        Ok(())
    })?;
    let meta = DataMeta {
        format: 1,
        tokenizer: opts.tokenizer.to_string(),
        vocab_size: tokenizer.vocab_size(),
        eot,
        token_width: width,
        doc_sep: opts.doc_sep.clone(),
        val_frac: opts.val_frac,
        split_seed: opts.split_seed,
        fingerprint: format!("{:016x}", corpus.fingerprint),
        sources: opts.paths.iter().map(|p| p.display().to_string()).collect(),
        files: corpus.files.len(),
        include: opts.filter.include.clone(),
        exclude: opts.filter.exclude.clone(),
        skipped_files: corpus.skipped.len(),
        train: train_w.finish()?,
        val: val_w.finish()?,
    };
    crate::checkpoint::write_json(&tmp.join("meta.json"), &meta)?;
    crate::checkpoint::sync_dir(&tmp)?;
    std::fs::rename(&tmp, dir).at(dir)?;
    scratch.keep();
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => crate::checkpoint::sync_dir(p)?,
        _ => crate::checkpoint::sync_dir(Path::new("."))?,
    }
    tracing::info!(
        "data: {} files, {} train docs ({} tokens, {} bytes), {} held-out docs ({} tokens)",
        meta.files,
        meta.train.docs,
        meta.train.tokens,
        meta.train.bytes,
        meta.val.docs,
        meta.val.tokens
    );
    Dataset::open(dir)
}

/// Trains BPE on the training documents, reading files a chunk at a time.
fn train_bpe(corpus: &Corpus, val: &[bool], vocab: usize) -> Result<Tokenizer> {
    let failed: Arc<Mutex<Option<TrainError>>> = Arc::new(Mutex::new(None));
    let pieces = corpus
        .pieces(failed.clone())
        .filter(|p| !val.get(p.doc).copied().unwrap_or(true))
        .map(|p| p.text);
    let tok = Tokenizer::train_bpe(vocab, pieces)?;
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    Ok(tok)
}

impl Dataset {
    /// Opens a prepared dataset folder.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).at(&meta_path)?;
        let meta: DataMeta = serde_json::from_str(&text).map_err(|e| {
            TrainError::data(&meta_path, format!("not a readable data description: {e}"))
        })?;
        let tokenizer = if meta.tokenizer == "bytes" {
            Tokenizer::Bytes
        } else {
            Tokenizer::from_file(&dir.join("tokenizer.json"))?
        };
        if tokenizer.vocab_size() != meta.vocab_size || tokenizer.eot() != meta.eot {
            return Err(TrainError::data(
                dir.join("tokenizer.json"),
                format!(
                    "{} ids with end-of-text {}, but meta.json says {} and {}",
                    tokenizer.vocab_size(),
                    tokenizer.eot(),
                    meta.vocab_size,
                    meta.eot
                ),
            ));
        }
        let train = TokenStream::open(dir, &meta.train, meta.token_width)?;
        let val = TokenStream::open(dir, &meta.val, meta.token_width)?;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            meta,
            tokenizer,
            train,
            val,
        })
    }

    /// Checks that `opts` would produce this dataset: same source bytes, tokenizer, split.
    /// The error names the setting that differs.
    pub fn check_matches(&self, opts: &DataOptions) -> Result<()> {
        let m = &self.meta;
        let given = opts.tokenizer.to_string();
        if given != m.tokenizer {
            return Err(TrainError::setting(
                "tokenizer",
                given,
                format!(
                    "the run in {} was tokenized with `{}`",
                    self.dir.display(),
                    m.tokenizer
                ),
            ));
        }
        if opts.doc_sep != m.doc_sep {
            return Err(TrainError::setting(
                "doc_sep",
                format!("{:?}", opts.doc_sep),
                format!("the run used {:?}", m.doc_sep),
            ));
        }
        if opts.val_frac != m.val_frac || opts.split_seed != m.split_seed {
            return Err(TrainError::setting(
                "val_frac",
                format!("{} (split seed {})", opts.val_frac, opts.split_seed),
                format!("the run used {} (split seed {})", m.val_frac, m.split_seed),
            ));
        }
        let corpus =
            Corpus::scan_chunked(&opts.paths, &opts.doc_sep, &opts.filter, opts.chunk_bytes)?;
        let fp = format!("{:016x}", corpus.fingerprint);
        if fp != m.fingerprint {
            return Err(TrainError::data(
                opts.paths.first().cloned().unwrap_or_default(),
                format!(
                    "the data differs from what {} was tokenized from (fingerprint {fp} vs {}); resume without --data to use the stored shards, or start a new run",
                    self.dir.display(),
                    m.fingerprint
                ),
            ));
        }
        Ok(())
    }
}
