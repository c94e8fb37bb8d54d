//! Reading a text file in pieces of about `chunk` bytes, so that a file of any size is
//! checked, split into documents and tokenized without holding it whole.
//!
//! [`TextReader`] decodes the file as UTF-8 (the same checks as [`super::corpus::read_text`]:
//! invalid bytes and NUL bytes are errors naming the offset and line; a leading byte-order
//! mark is dropped) and hands out pieces that end at a *safe boundary*, the first of these
//! found in the second half of its buffer, searching from the end:
//!
//! 1. right after a document separator (a document boundary);
//! 2. right before a newline that ends a run of whitespace (the next character, in the same
//!    document, is not whitespace);
//! 3. right before the last character of any run of whitespace followed by a non-whitespace
//!    character (a line longer than half the chunk);
//! 4. any character boundary (a stretch of half the chunk without whitespace).
//!
//! A cut never falls inside a document separator. [`DocPieces`] splits the pieces at the
//! separators into documents (each as one or more [`DocPiece`]s), dropping whitespace-only
//! documents as [`super::corpus::documents`] does.
//!
//! **Boundary effect.** Tokenizing a document piece by piece gives the tokens of the whole
//! document when the tokenizer never merges across a boundary: always for the byte tokenizer;
//! for any tokenizer at boundary 1; for byte-level BPE with the GPT-2 pre-tokenizer pattern
//! (`bpe:VOCAB`) at boundaries 2 and 3 too, since that pattern ends a pre-token before the last
//! character of a whitespace run followed by a non-space and starts one there. At boundary 4,
//! and at 2 and 3 for tokenizer files whose pre-tokenizer splits otherwise, the few tokens
//! around the cut may differ from those of the whole text (the text, and so the bytes, never
//! change): with the default 16 MiB chunk that takes 8 MiB without whitespace.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, TrainError};
use crate::rng::fnv1a;

/// The smallest chunk a reader uses (whatever it is asked for).
pub const MIN_CHUNK: usize = 64;

/// A UTF-8 text file read in pieces ending at safe boundaries (see the module doc).
pub struct TextReader {
    path: PathBuf,
    file: File,
    chunk: usize,
    sep: String,
    /// Bytes read but not decoded yet (a character cut by a read, at most).
    raw: Vec<u8>,
    /// File offset of `raw[0]`.
    raw_offset: usize,
    /// Newlines before `raw`.
    lines: usize,
    /// Decoded text not handed out yet.
    text: String,
    started: bool,
    eof: bool,
    hash: u64,
    bytes: u64,
}

impl TextReader {
    /// Opens `path`; pieces are at most about `chunk` bytes (at least [`MIN_CHUNK`] and eight
    /// separators; a piece is at least half that unless the file or document ends) and never
    /// cut a `sep`.
    pub fn open(path: &Path, chunk: usize, sep: &str, hash_seed: u64) -> Result<Self> {
        Ok(TextReader {
            path: path.to_path_buf(),
            file: File::open(path).at(path)?,
            chunk: chunk.max(MIN_CHUNK).max(8 * sep.len()),
            sep: sep.to_string(),
            raw: Vec::new(),
            raw_offset: 0,
            lines: 0,
            text: String::new(),
            started: false,
            eof: false,
            hash: hash_seed,
            bytes: 0,
        })
    }

    /// FNV-1a of the text handed out so far (continuing the seed given to `open`).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Bytes of text handed out so far (the byte-order mark not counted).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn not_utf8(&self, at: usize, byte: u8) -> TrainError {
        let line = self.lines + self.raw[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        TrainError::NotUtf8 {
            path: self.path.clone(),
            offset: self.raw_offset + at,
            line,
            byte,
        }
    }

    /// Reads until `text` holds at least `chunk` bytes or the file ends.
    fn fill(&mut self) -> Result<()> {
        let mut block = vec![0u8; self.chunk.min(1 << 20)];
        while self.text.len() < self.chunk && !self.eof {
            // no more than the chunk needs (a character cut by the read may add 3 bytes)
            let want = (self.chunk - self.text.len())
                .saturating_sub(self.raw.len())
                .clamp(1, block.len());
            let n = self.file.read(&mut block[..want]).at(&self.path)?;
            if n == 0 {
                self.eof = true;
            }
            self.raw.extend_from_slice(&block[..n]);
            let valid = match std::str::from_utf8(&self.raw) {
                Ok(s) => s.len(),
                Err(e) if e.error_len().is_some() || self.eof => {
                    let at = e.valid_up_to();
                    return Err(self.not_utf8(at, self.raw[at]));
                }
                Err(e) => e.valid_up_to(),
            };
            if let Some(at) = self.raw[..valid].iter().position(|&b| b == 0) {
                return Err(self.not_utf8(at, 0));
            }
            let mut s = std::str::from_utf8(&self.raw[..valid]).expect("validated");
            if !self.started && (valid > 0 || self.eof) {
                self.started = true;
                s = s.strip_prefix('\u{feff}').unwrap_or(s);
            }
            self.text.push_str(s);
            self.lines += self.raw[..valid].iter().filter(|&&b| b == b'\n').count();
            self.raw.drain(..valid);
            self.raw_offset += valid;
        }
        Ok(())
    }

    /// The next piece of text (`None` at the end of the file).
    pub fn next_piece(&mut self) -> Result<Option<String>> {
        self.fill()?;
        if self.text.is_empty() {
            return Ok(None);
        }
        let cut = if self.eof {
            self.text.len()
        } else {
            safe_cut(&self.text, &self.sep)
        };
        let rest = self.text.split_off(cut);
        let piece = std::mem::replace(&mut self.text, rest);
        self.hash = fnv1a(piece.as_bytes(), self.hash);
        self.bytes += piece.len() as u64;
        Ok(Some(piece))
    }
}

/// Where to cut `text` (not the whole file's end): see the module doc. `text` starts at a
/// cut, so the separators found in it are those the whole file's split finds.
fn safe_cut(text: &str, sep: &str) -> usize {
    let seps: Vec<usize> = if sep.is_empty() {
        Vec::new()
    } else {
        text.match_indices(sep).map(|(i, _)| i).collect()
    };
    // a separator that starts at or before a position the tests below look at is whole in
    // `text`; the last characters are left for the next piece
    let hi = text.len().saturating_sub(sep.len() + 4);
    let lo = (text.len() / 2).max(1);
    // whether `p` lies in a separator (`strict`: after its first byte)
    let in_sep = |p: usize, strict: bool| {
        let i = seps.partition_point(|&s| s <= p);
        i > 0 && seps[i - 1] + sep.len() > p && (!strict || seps[i - 1] < p)
    };
    // `c` is the last character of a run of whitespace followed, in the same document, by
    // a character that is not whitespace
    let ends_space = |c: usize| {
        let mut it = text[c..].chars();
        match (it.next(), it.next()) {
            (Some(w), Some(n)) => {
                w.is_whitespace() && !n.is_whitespace() && !in_sep(c + w.len_utf8(), false)
            }
            _ => false,
        }
    };
    let candidates = || {
        (lo..=hi)
            .rev()
            .filter(|&c| text.is_char_boundary(c) && !in_sep(c, true))
    };
    let after_sep = seps
        .iter()
        .rev()
        .map(|&s| s + sep.len())
        .find(|c| (lo..=hi).contains(c));
    after_sep
        .or_else(|| candidates().find(|&c| text.as_bytes()[c] == b'\n' && ends_space(c)))
        .or_else(|| candidates().find(|&c| ends_space(c)))
        .or_else(|| candidates().next())
        .unwrap_or(text.len())
}

/// A piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocPiece {
    /// The document's index in the corpus.
    pub doc: usize,
    /// Whether this piece starts the document.
    pub first: bool,
    /// The text.
    pub text: String,
}

/// The documents of one file as pieces (see the module doc).
pub struct DocPieces {
    reader: TextReader,
    sep: String,
    /// Index of the next document.
    next_doc: usize,
    /// The current document has shown a non-whitespace character.
    started: bool,
    /// Its whitespace so far, while not started.
    pending: String,
    done: bool,
}

impl DocPieces {
    /// Documents of `path` split at `sep` (empty: the file is one document), the first
    /// numbered `first_doc`; pieces of about `chunk` bytes.
    pub fn open(
        path: &Path,
        sep: &str,
        chunk: usize,
        first_doc: usize,
        hash_seed: u64,
    ) -> Result<Self> {
        Ok(DocPieces {
            reader: TextReader::open(path, chunk, sep, hash_seed)?,
            sep: sep.to_string(),
            next_doc: first_doc,
            started: false,
            pending: String::new(),
            done: false,
        })
    }

    /// The reader (for the file's hash and size once read).
    pub fn reader(&self) -> &TextReader {
        &self.reader
    }

    /// Index the next document would get (the first index plus the documents so far).
    pub fn next_doc(&self) -> usize {
        self.next_doc + usize::from(self.started)
    }

    fn end_doc(&mut self) {
        if self.started {
            self.next_doc += 1;
        }
        self.started = false;
        self.pending.clear();
    }

    fn feed(&mut self, seg: &str, out: &mut Vec<DocPiece>) {
        if self.started {
            if !seg.is_empty() {
                out.push(DocPiece {
                    doc: self.next_doc,
                    first: false,
                    text: seg.to_string(),
                });
            }
        } else if seg.chars().any(|c| !c.is_whitespace()) {
            let mut text = std::mem::take(&mut self.pending);
            text.push_str(seg);
            out.push(DocPiece {
                doc: self.next_doc,
                first: true,
                text,
            });
            self.started = true;
        } else {
            self.pending.push_str(seg);
        }
    }

    /// The pieces of the next chunk of the file (empty at its end).
    pub fn next_chunk(&mut self) -> Result<Vec<DocPiece>> {
        let mut out = Vec::new();
        while out.is_empty() && !self.done {
            let Some(text) = self.reader.next_piece()? else {
                self.end_doc();
                self.done = true;
                break;
            };
            if self.sep.is_empty() {
                self.feed(&text, &mut out);
                continue;
            }
            let sep = self.sep.clone();
            for (i, seg) in text.split(sep.as_str()).enumerate() {
                if i > 0 {
                    self.end_doc();
                }
                self.feed(seg, &mut out);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
