//! Text files and folders -> documents -> a held-out split by document.
//!
//! A document is a file, or a piece of one between two `doc_sep` strings (default
//! `<|endoftext|>`, as in corpora that concatenate documents); empty and whitespace-only pieces
//! are dropped. Folders are walked recursively in name order; names starting with `.` are
//! skipped, and a [`FileFilter`] keeps the files whose path matches its include globs and none
//! of its exclude globs. Text must be UTF-8 (a leading byte-order mark is dropped) without NUL
//! bytes: a file named on its own that is not is an error naming the file and the first bad
//! byte (a silently lossy decode would corrupt bits-per-byte and the byte tokenizer's round
//! trip); a file found by walking a folder (a `.pyc` in a source tree) is skipped and counted,
//! or is the same error with [`FileFilter::strict`]. Files are read a chunk at a time (16 MiB by
//! default, [`Corpus::scan_chunked`]), never whole ([`super::stream`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::stream::{DocPiece, DocPieces};
use crate::error::{IoContext, Result, TrainError};
use crate::rng::{SplitMix64, FNV_OFFSET};

/// Which files of the folders given are read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileFilter {
    /// Globs of which a file's path below the folder given must match one (empty: every file).
    /// `*` crosses `/`, so `*.py` matches at any depth.
    pub include: Vec<String>,
    /// Globs that leave a file out (checked after `include`).
    pub exclude: Vec<String>,
    /// A file that is not text (not UTF-8, or holding a NUL byte) is an error instead of
    /// being skipped.
    pub strict: bool,
}

/// The compiled globs of a [`FileFilter`].
struct Globs {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

fn glob_set(globs: &[String], key: &'static str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|e| TrainError::setting(key, g, e.to_string()))?);
    }
    b.build()
        .map_err(|e| TrainError::setting(key, globs.join(","), e.to_string()))
}

impl Globs {
    fn new(f: &FileFilter) -> Result<Globs> {
        Ok(Globs {
            include: if f.include.is_empty() {
                None
            } else {
                Some(glob_set(&f.include, "include")?)
            },
            exclude: glob_set(&f.exclude, "exclude")?,
        })
    }

    /// Whether `rel` (a path below a folder given) is read.
    fn keeps(&self, rel: &Path) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(rel)) && !self.exclude.is_match(rel)
    }
}

/// The files of a corpus and how many documents each holds.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Files in reading order.
    pub files: Vec<PathBuf>,
    /// Documents in each file.
    pub docs_per_file: Vec<usize>,
    /// FNV-1a over every file's bytes in order (not the names: a moved folder is the same data).
    pub fingerprint: u64,
    /// Bytes of all files.
    pub bytes: u64,
    /// The document separator.
    pub doc_sep: String,
    /// Files found in folders and skipped because they are not text.
    pub skipped: Vec<PathBuf>,
    /// Files are read this many bytes at a time ([`super::stream`]).
    pub chunk_bytes: usize,
}

/// Bytes read at a time by default: 16 MiB.
pub const DEFAULT_CHUNK: usize = 1 << 24;

/// Reads a file as UTF-8 text (the error names the file, the offset and the line of the first
/// bad byte).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).at(path)?;
    match String::from_utf8(bytes) {
        Ok(mut s) => {
            if let Some(offset) = s.bytes().position(|b| b == 0) {
                return Err(TrainError::NotUtf8 {
                    path: path.to_path_buf(),
                    offset,
                    line: s.as_bytes()[..offset]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1,
                    byte: 0,
                });
            }
            if s.starts_with('\u{feff}') {
                s.drain(..3);
            }
            Ok(s)
        }
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            Err(TrainError::NotUtf8 {
                path: path.to_path_buf(),
                offset,
                line: bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1,
                byte: bytes[offset],
            })
        }
    }
}

/// The documents of one file's text: pieces between separators that hold more than whitespace.
pub fn documents<'a>(text: &'a str, doc_sep: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    let pieces: Box<dyn Iterator<Item = &'a str>> = if doc_sep.is_empty() {
        Box::new(std::iter::once(text))
    } else {
        Box::new(text.split(doc_sep))
    };
    Box::new(pieces.filter(|d| !d.trim().is_empty()))
}

/// The documents of the file `path` (read `chunk` bytes at a time), the FNV-1a of its text
/// continuing `hash`, and its text's bytes.
fn count_documents(
    path: &Path,
    doc_sep: &str,
    chunk: usize,
    hash: u64,
) -> Result<(usize, u64, u64)> {
    let mut docs = DocPieces::open(path, doc_sep, chunk, 0, hash)?;
    while !docs.next_chunk()?.is_empty() {}
    Ok((docs.next_doc(), docs.reader().hash(), docs.reader().bytes()))
}

/// Files under `path` (itself if a file), recursively, in name order, hidden names skipped.
fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).at(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .at(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .at(path)?;
    entries.sort();
    for e in entries {
        let hidden = e
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden {
            walk(&e, out)?;
        }
    }
    Ok(())
}

impl Corpus {
    /// Finds the files of `paths` that `filter` keeps, checks that each is UTF-8 text (see
    /// the module doc for what happens to those that are not), counts documents. Missing
    /// paths, empty files given by name, and folders without text are errors naming the path.
    pub fn scan(paths: &[PathBuf], doc_sep: &str, filter: &FileFilter) -> Result<Corpus> {
        Self::scan_chunked(paths, doc_sep, filter, DEFAULT_CHUNK)
    }

    /// [`Corpus::scan`] reading files `chunk_bytes` at a time (then kept for
    /// [`Corpus::for_each_chunk`] and [`Corpus::pieces`]), so that no file is held whole.
    pub fn scan_chunked(
        paths: &[PathBuf],
        doc_sep: &str,
        filter: &FileFilter,
        chunk_bytes: usize,
    ) -> Result<Corpus> {
        let globs = Globs::new(filter)?;
        if paths.is_empty() {
            return Err(TrainError::setting(
                "data",
                "(none)",
                "give at least one text file or folder",
            ));
        }
        let mut c = Corpus {
            files: Vec::new(),
            docs_per_file: Vec::new(),
            fingerprint: FNV_OFFSET,
            bytes: 0,
            doc_sep: doc_sep.to_string(),
            skipped: Vec::new(),
            chunk_bytes,
        };
        for p in paths {
            if !p.exists() {
                return Err(TrainError::data(p, "no such file or folder"));
            }
            let mut files = Vec::new();
            walk(p, &mut files)?;
            let named = files.len() == 1 && files[0] == *p;
            if !named {
                files.retain(|f| globs.keeps(f.strip_prefix(p).unwrap_or(f)));
            }
            if files.is_empty() {
                return Err(TrainError::data(
                    p,
                    "folder has no files (names starting with `.` are skipped; --include/--exclude may leave others out)",
                ));
            }
            let before = c.files.len();
            for f in files {
                let (n, hash, bytes) =
                    match count_documents(&f, doc_sep, chunk_bytes, c.fingerprint) {
                        Ok(t) => t,
                        Err(TrainError::NotUtf8 { .. }) if !named && !filter.strict => {
                            tracing::debug!("{}: not text, skipped", f.display());
                            c.skipped.push(f);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                if n == 0 {
                    if f == *p {
                        return Err(TrainError::data(
                            p,
                            "empty file (no text besides whitespace and separators)",
                        ));
                    }
                    tracing::debug!("{}: no text, skipped", f.display());
                    continue;
                }
                c.fingerprint = hash;
                c.bytes += bytes;
                c.files.push(f);
                c.docs_per_file.push(n);
            }
            if c.files.len() == before {
                return Err(TrainError::data(p, "no text in any file of this folder"));
            }
        }
        Ok(c)
    }

    /// Total documents.
    pub fn n_docs(&self) -> usize {
        self.docs_per_file.iter().sum()
    }

    /// Calls `f(pieces)` with the document pieces of every chunk of every file in order
    /// (files are read again, [`Corpus::chunk_bytes`] at a time; see [`super::stream`] for
    /// where pieces end).
    pub fn for_each_chunk<F>(&self, mut f: F) -> Result<()>
    where
        F: FnMut(Vec<DocPiece>) -> Result<()>,
    {
        let mut first = 0;
        for (path, &n) in self.files.iter().zip(&self.docs_per_file) {
            let mut docs = DocPieces::open(path, &self.doc_sep, self.chunk_bytes, first, 0)?;
            loop {
                let pieces = docs.next_chunk()?;
                if pieces.is_empty() {
                    break;
                }
                f(pieces)?;
            }
            if docs.next_doc() != first + n {
                return Err(TrainError::data(
                    path,
                    "changed while being read (document count differs); run again",
                ));
            }
            first += n;
        }
        Ok(())
    }

    /// Every document piece of the corpus in order, as an iterator (for BPE training, which
    /// takes one); the first error ends it and is stored in `failed`.
    pub fn pieces<'a>(
        &'a self,
        failed: Arc<Mutex<Option<TrainError>>>,
    ) -> impl Iterator<Item = DocPiece> + Send + 'a {
        let (mut file, mut first) = (0usize, 0usize);
        let mut current: Option<DocPieces> = None;
        let mut buf = Vec::new().into_iter();
        let fail = move |e: TrainError| {
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(e);
            }
        };
        std::iter::from_fn(move || loop {
            if let Some(p) = buf.next() {
                return Some(p);
            }
            let docs = match &mut current {
                Some(d) => d,
                None => {
                    let path = self.files.get(file)?;
                    match DocPieces::open(path, &self.doc_sep, self.chunk_bytes, first, 0) {
                        Ok(d) => {
                            first += self.docs_per_file[file];
                            file += 1;
                            current.insert(d)
                        }
                        Err(e) => {
                            fail(e);
                            return None;
                        }
                    }
                }
            };
            match docs.next_chunk() {
                Ok(v) if v.is_empty() => current = None,
                Ok(v) => buf = v.into_iter(),
                Err(e) => {
                    fail(e);
                    return None;
                }
            }
        })
    }

    /// The held-out documents: `round(val_frac * n_docs)` of them, at least one and at most
    /// `n_docs - 1`, drawn by `seed`. Returns one flag per document (true: held out).
    pub fn split(&self, val_frac: f64, seed: u64) -> Result<Vec<bool>> {
        let n = self.n_docs();
        if !(val_frac > 0.0 && val_frac < 1.0) {
            return Err(TrainError::setting(
                "val_frac",
                val_frac,
                "must be in (0, 1): the fraction of documents held out for eval",
            ));
        }
        if n < 2 {
            let path = self.files.first().cloned().unwrap_or_default();
            return Err(TrainError::data(
                path,
                format!(
                    "the data holds {n} document, but a held-out split needs at least 2: give more files, or split files into documents with --doc-sep (e.g. --doc-sep $'\\n\\n' for paragraphs; now {:?})",
                    self.doc_sep
                ),
            ));
        }
        let k = ((val_frac * n as f64).round() as usize).clamp(1, n - 1);
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64::derived(seed, 0x5_9117).shuffle(&mut order);
        let mut val = vec![false; n];
        for &i in &order[..k] {
            val[i] = true;
        }
        Ok(val)
    }
}
