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
//! or is the same error with [`FileFilter::strict`].

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{IoContext, Result, TrainError};
use crate::rng::{fnv1a, SplitMix64, FNV_OFFSET};

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
}

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
                let text = match read_text(&f) {
                    Ok(t) => t,
                    Err(TrainError::NotUtf8 { .. }) if !named && !filter.strict => {
                        tracing::debug!("{}: not text, skipped", f.display());
                        c.skipped.push(f);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let n = documents(&text, doc_sep).count();
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
                c.fingerprint = fnv1a(text.as_bytes(), c.fingerprint);
                c.bytes += text.len() as u64;
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

    /// Calls `f(doc_index, text)` for every document in order (files are read again).
    pub fn for_each_file<F>(&self, mut f: F) -> Result<()>
    where
        F: FnMut(usize, Vec<&str>) -> Result<()>,
    {
        let mut first = 0;
        for (path, &n) in self.files.iter().zip(&self.docs_per_file) {
            let text = read_text(path)?;
            let docs: Vec<&str> = documents(&text, &self.doc_sep).collect();
            if docs.len() != n {
                return Err(TrainError::data(
                    path,
                    "changed while being read (document count differs); run again",
                ));
            }
            f(first, docs)?;
            first += n;
        }
        Ok(())
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
