//! Pieces against whole-file reading: the same documents and bytes at every chunk size, the
//! same tokens (bytes always; byte-level BPE at whitespace boundaries), the same errors.

use std::path::Path;

use super::{DocPieces, TextReader, MIN_CHUNK};
use crate::data::corpus::{documents, read_text};
use crate::data::Tokenizer;
use crate::error::{Result, TrainError};
use crate::rng::{fnv1a, SplitMix64, FNV_OFFSET};

/// Prose of many documents: paragraphs, CRLF and blank lines, tabs, runs of spaces, a
/// non-breaking space, multi-byte characters, whitespace-only documents, separators at the
/// start and the end.
fn prose(sep: &str) -> String {
    let words = [
        "the", "fox", "Grüße", "世界", "🐈", "jumps", "over", "lazy", "dog", "'s", "42", "x=y+1;",
        "(a,", "b)", "don't",
    ];
    let gaps = [
        " ", "  ", "\n", "\n\n", "\r\n", "\t", " \n", "\u{a0}", "\n  ",
    ];
    let mut rng = SplitMix64::new(5);
    let mut s = String::from(sep);
    for doc in 0..40 {
        if doc % 9 == 4 {
            s.push_str(" \n\t ");
        } else {
            for _ in 0..(10 + rng.below(60)) {
                s.push_str(words[rng.below(words.len() as u64) as usize]);
                s.push_str(gaps[rng.below(gaps.len() as u64) as usize]);
            }
        }
        s.push_str(sep);
    }
    s
}

fn write(dir: &Path, name: &str, text: &[u8]) -> Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))?;
    Ok(p)
}

/// The documents of `path` read `chunk` bytes at a time, each joined from its pieces, and
/// the pieces themselves.
fn streamed(path: &Path, sep: &str, chunk: usize) -> Result<(Vec<String>, Vec<super::DocPiece>)> {
    let mut dp = DocPieces::open(path, sep, chunk, 0, FNV_OFFSET)?;
    let (mut docs, mut all): (Vec<String>, Vec<super::DocPiece>) = (Vec::new(), Vec::new());
    loop {
        let pieces = dp.next_chunk()?;
        if pieces.is_empty() {
            break;
        }
        for p in pieces {
            if p.first {
                assert_eq!(p.doc, docs.len(), "documents numbered in order");
                docs.push(String::new());
            }
            assert_eq!(p.doc + 1, docs.len(), "a piece continues the last document");
            docs.last_mut().expect("a document").push_str(&p.text);
            all.push(p);
        }
    }
    assert_eq!(dp.next_doc(), docs.len());
    Ok((docs, all))
}

#[test]
fn pieces_make_the_same_documents_at_every_chunk_size() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
    for sep in ["<|endoftext|>", "\n\n", "", "aa"] {
        let text = format!("\u{feff}{}", prose(if sep.is_empty() { "\n" } else { sep }));
        let path = write(tmp.path(), "prose.txt", text.as_bytes())?;
        let whole = read_text(&path)?;
        let want: Vec<&str> = documents(&whole, sep).collect();
        for chunk in (MIN_CHUNK..200).chain([257, 1000, 1 << 20]) {
            let (docs, pieces) = streamed(&path, sep, chunk)?;
            assert_eq!(docs, want, "sep {sep:?}, chunk {chunk}");
            let c = chunk.max(8 * sep.len());
            for p in &pieces {
                // a piece holds at most a chunk, plus whitespace that came before its document
                assert!(
                    p.text.trim_start().len() <= c,
                    "chunk {chunk}: {} bytes",
                    p.text.len()
                );
            }
            let mut r = TextReader::open(&path, chunk, sep, FNV_OFFSET)?;
            while r.next_piece()?.is_some() {}
            assert_eq!(r.hash(), fnv1a(whole.as_bytes(), FNV_OFFSET));
            assert_eq!(r.bytes(), whole.len() as u64);
        }
    }
    Ok(())
}

#[test]
fn pieces_tokenize_as_whole_documents() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
    let sep = "<|endoftext|>";
    let text = prose(sep);
    let path = write(tmp.path(), "prose.txt", text.as_bytes())?;
    let docs: Vec<&str> = documents(&text, sep).collect();
    let bpe = Tokenizer::train_bpe(400, docs.iter())?;
    for tok in [Tokenizer::Bytes, bpe] {
        let want: Vec<u32> = tok.encode_documents(&docs)?.concat();
        for chunk in (MIN_CHUNK..160).chain([333, 4096]) {
            let (_, pieces) = streamed(&path, sep, chunk)?;
            assert!(
                chunk > 1000 || pieces.len() > docs.len(),
                "documents are cut"
            );
            let got: Vec<u32> = tok.encode_pieces(&pieces)?.concat();
            if let Some(i) = (0..want.len().max(got.len())).find(|&i| got.get(i) != want.get(i)) {
                panic!(
                    "{tok:?}, chunk {chunk}: token {i} differs: {:?} vs {:?}",
                    &got[i.saturating_sub(3)..(i + 3).min(got.len())],
                    &want[i.saturating_sub(3)..(i + 3).min(want.len())]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn text_without_whitespace_is_cut_anywhere_but_keeps_its_bytes() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
    let text = format!("{}<|endoftext|>{}", "ab世".repeat(300), "z".repeat(500));
    let path = write(tmp.path(), "blob.txt", text.as_bytes())?;
    let docs: Vec<&str> = documents(&text, "<|endoftext|>").collect();
    let want = Tokenizer::Bytes.encode_documents(&docs)?.concat();
    for chunk in [MIN_CHUNK, 100, 101, 102] {
        let (got_docs, pieces) = streamed(&path, "<|endoftext|>", chunk)?;
        assert_eq!(got_docs, docs);
        assert_eq!(Tokenizer::Bytes.encode_pieces(&pieces)?.concat(), want);
    }
    Ok(())
}

#[test]
fn bad_bytes_are_named_as_whole_reading_names_them() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
    let mut good = prose("<|endoftext|>").into_bytes();
    good.truncate(3000);
    while std::str::from_utf8(&good).is_err() {
        good.pop();
    }
    for (name, bad) in [("latin1", 0xe9u8), ("nul", 0u8), ("cut", 0xe4)] {
        let mut bytes = good.clone();
        bytes.push(bad);
        if name != "cut" {
            bytes.extend(b" and more text\n".repeat(20));
        }
        let path = write(tmp.path(), &format!("{name}.txt"), &bytes)?;
        let want = read_text(&path).unwrap_err().to_string();
        for chunk in [MIN_CHUNK, 100, 1000, 1 << 20] {
            let got =
                match DocPieces::open(&path, "<|endoftext|>", chunk, 0, 0).and_then(|mut d| {
                    while !d.next_chunk()?.is_empty() {}
                    Ok(())
                }) {
                    Ok(()) => panic!("{name}: no error at chunk {chunk}"),
                    Err(e) => e.to_string(),
                };
            assert_eq!(got, want, "{name}, chunk {chunk}");
            assert!(
                got.contains(&format!("byte offset {}", good.len())),
                "{got}"
            );
        }
    }
    Ok(())
}
