//! Token shards: little-endian `u16` (vocabularies up to 65536) or `u32` ids, raw, one file per
//! shard (`train-00000.bin`, ...), read back through memory maps as one logical stream.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, TrainError};

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the data folder.
    pub file: String,
    /// Tokens in it.
    pub tokens: u64,
}

/// One split (train or val) of the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Documents.
    pub docs: u64,
    /// Tokens (end-of-text tokens included).
    pub tokens: u64,
    /// UTF-8 bytes of the documents' text.
    pub bytes: u64,
    /// The shard files, in stream order.
    pub shards: Vec<ShardInfo>,
}

/// Bytes per token id for a vocabulary.
pub fn token_width(vocab: usize) -> usize {
    if vocab <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Writes one split's tokens into shards of at most `shard_tokens` tokens.
pub struct ShardWriter {
    dir: PathBuf,
    name: &'static str,
    width: usize,
    shard_tokens: u64,
    out: Option<(PathBuf, BufWriter<File>)>,
    info: SplitInfo,
}

impl ShardWriter {
    /// A writer of `name-NNNNN.bin` files in `dir`.
    pub fn new(dir: &Path, name: &'static str, width: usize, shard_tokens: u64) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            name,
            width,
            shard_tokens: shard_tokens.max(1),
            out: None,
            info: SplitInfo {
                docs: 0,
                tokens: 0,
                bytes: 0,
                shards: Vec::new(),
            },
        }
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((path, w)) = self.out.take() {
            let f = w
                .into_inner()
                .map_err(|e| TrainError::io(&path, e.into_error()))?;
            f.sync_all().at(&path)?;
        }
        Ok(())
    }

    /// Appends one document's tokens (`text_bytes`: its UTF-8 length).
    pub fn push_doc(&mut self, tokens: &[u32], text_bytes: usize) -> Result<()> {
        self.push_piece(tokens, text_bytes, true)
    }

    /// Appends the tokens of a piece of a document (`text_bytes`: the piece's UTF-8 length;
    /// `first`: the piece starts a document, which is then counted).
    pub fn push_piece(&mut self, tokens: &[u32], text_bytes: usize, first: bool) -> Result<()> {
        self.info.docs += u64::from(first);
        self.info.bytes += text_bytes as u64;
        let mut rest = tokens;
        while !rest.is_empty() {
            let full = self
                .info
                .shards
                .last()
                .is_none_or(|s| s.tokens >= self.shard_tokens);
            if full {
                self.close_current()?;
                let file = format!("{}-{:05}.bin", self.name, self.info.shards.len());
                let path = self.dir.join(&file);
                let f = File::create(&path).at(&path)?;
                self.out = Some((path, BufWriter::with_capacity(1 << 20, f)));
                self.info.shards.push(ShardInfo { file, tokens: 0 });
            }
            let shard = self
                .info
                .shards
                .last_mut()
                .expect("a shard was just opened");
            let take = ((self.shard_tokens - shard.tokens) as usize).min(rest.len());
            let (path, w) = self.out.as_mut().expect("a shard is open");
            for &t in &rest[..take] {
                let r = if self.width == 2 {
                    w.write_all(&(t as u16).to_le_bytes())
                } else {
                    w.write_all(&t.to_le_bytes())
                };
                r.at(&*path)?;
            }
            shard.tokens += take as u64;
            self.info.tokens += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Flushes and syncs the last shard; returns what was written.
    pub fn finish(mut self) -> Result<SplitInfo> {
        self.close_current()?;
        Ok(self.info)
    }
}

/// A split's shards, memory-mapped, read as one stream of token ids.
pub struct TokenStream {
    maps: Vec<Mmap>,
    /// Stream position where each shard starts (and the total at the end).
    starts: Vec<u64>,
    width: usize,
}

impl TokenStream {
    /// Maps the shards of `info` in `dir`; checks each file's size against its token count.
    pub fn open(dir: &Path, info: &SplitInfo, width: usize) -> Result<Self> {
        let mut maps = Vec::new();
        let mut starts = vec![0u64];
        for s in &info.shards {
            let path = dir.join(&s.file);
            let f = File::open(&path).at(&path)?;
            let len = f.metadata().at(&path)?.len();
            if len != s.tokens * width as u64 {
                return Err(TrainError::data(
                    &path,
                    format!(
                        "{len} bytes, but meta.json says {} tokens of {width} bytes: the shard is damaged; delete the run's data/ folder to tokenize again",
                        s.tokens
                    ),
                ));
            }
            // SAFETY: the shard is a file this crate wrote and never changes afterwards; the
            // map is read-only. Another process truncating it while we read would fault, which
            // is the usual caveat of memory-mapped files.
            let map = unsafe { Mmap::map(&f) }.at(&path)?;
            maps.push(map);
            starts.push(starts.last().copied().unwrap_or(0) + s.tokens);
        }
        Ok(TokenStream {
            maps,
            starts,
            width,
        })
    }

    /// Tokens in the stream.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens `start..start + n` to `out` (across shard boundaries).
    pub fn read(&self, start: u64, n: usize, out: &mut Vec<u32>) {
        assert!(
            start + n as u64 <= self.len(),
            "read past the end of the stream"
        );
        let mut pos = start;
        let end = start + n as u64;
        let mut shard = self.starts.partition_point(|&s| s <= pos) - 1;
        while pos < end {
            let local = (pos - self.starts[shard]) as usize;
            let here = ((self.starts[shard + 1] - pos) as usize).min((end - pos) as usize);
            let bytes = &self.maps[shard][local * self.width..(local + here) * self.width];
            if self.width == 2 {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
                );
            } else {
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            pos += here as u64;
            shard += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_across_boundaries() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        for width in [2, 4] {
            let name = if width == 2 { "a" } else { "b" };
            let mut w = ShardWriter::new(dir.path(), name, width, 7);
            let all: Vec<u32> = (0..40u32).map(|i| i * 977 % 65536).collect();
            w.push_doc(&all[..3], 3)?;
            w.push_doc(&all[3..], 37)?;
            let info = w.finish()?;
            assert_eq!(info.shards.len(), 6);
            assert_eq!((info.tokens, info.docs, info.bytes), (40, 2, 40));
            let s = TokenStream::open(dir.path(), &info, width)?;
            for (start, n) in [(0, 40), (5, 9), (13, 1), (39, 1), (6, 15)] {
                let mut out = Vec::new();
                s.read(start, n, &mut out);
                assert_eq!(out, all[start as usize..start as usize + n]);
            }
        }
        Ok(())
    }
}
