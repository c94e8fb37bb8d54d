//! Data preparation: documents are split, not cut; splits are disjoint by document and seeded;
//! tokenizers round-trip; bad paths and bad text are errors naming the file.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::{assert_mentions, write_corpus};
use simplex_train::data::{prepare, DataOptions, Dataset, Tokenizer, TokenizerSpec};

fn docs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "document number {i}: the {} fox, é ü 世界 {}",
                ["red", "grey", "tiny"][i % 3],
                "la ".repeat(i % 7)
            )
        })
        .collect()
}

/// The documents of a token stream, decoded (each starts with end-of-text).
fn decoded_docs(d: &Dataset, val: bool) -> anyhow::Result<Vec<String>> {
    let s = if val { &d.val } else { &d.train };
    let mut toks = Vec::new();
    s.read(0, s.len() as usize, &mut toks);
    let eot = d.tokenizer.eot();
    let mut out = Vec::new();
    for piece in toks.split(|&t| t == eot).skip(1) {
        out.push(d.tokenizer.decode(piece)?);
    }
    Ok(out)
}

#[test]
fn splits_are_disjoint_by_document_and_seeded() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    let all = docs(200);
    write_corpus(&src, &all, 3)?;
    let mut opts = DataOptions::new(vec![src.clone()]);
    opts.val_frac = 0.05;
    opts.shard_tokens = 1000; // several shards per split
    let d = prepare(&opts, &tmp.path().join("a"))?;
    assert!(d.meta.train.shards.len() > 3);
    let (train, val) = (decoded_docs(&d, false)?, decoded_docs(&d, true)?);
    assert_eq!(val.len(), 10, "5% of 200 documents");
    assert_eq!(train.len() + val.len(), 200);
    let (ts, vs): (HashSet<String>, HashSet<String>) = (
        train.iter().map(|s| s.trim().to_string()).collect(),
        val.iter().map(|s| s.trim().to_string()).collect(),
    );
    assert!(ts.is_disjoint(&vs));
    let every: HashSet<String> = all.iter().map(|s| s.trim().to_string()).collect();
    assert_eq!(
        ts.union(&vs).cloned().collect::<HashSet<_>>(),
        every,
        "every document whole, once"
    );
    assert_eq!(
        d.meta.val.bytes as usize,
        val.iter().map(|v| v.len()).sum::<usize>()
    );
    // same split seed: same split; another seed: another split
    let same = prepare(&opts, &tmp.path().join("b"))?;
    assert_eq!(decoded_docs(&same, true)?, val);
    opts.split_seed = 1;
    let other = prepare(&opts, &tmp.path().join("c"))?;
    assert_ne!(decoded_docs(&other, true)?, val);
    Ok(())
}

#[test]
fn bpe_data_round_trips() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    write_corpus(&src, &docs(120), 2)?;
    let mut opts = DataOptions::new(vec![src]);
    opts.tokenizer = TokenizerSpec::Bpe(320);
    opts.val_frac = 0.1;
    let d = prepare(&opts, &tmp.path().join("bpe"))?;
    assert!(d.meta.vocab_size > 257 && d.meta.vocab_size <= 320);
    assert!(d.meta.train.tokens < d.meta.train.bytes, "merges compress");
    let reopened = Dataset::open(&tmp.path().join("bpe"))?;
    let mut seen = 0;
    for doc in decoded_docs(&reopened, true)? {
        assert!(doc.trim().starts_with("document number"), "{doc}");
        seen += 1;
    }
    assert_eq!(seen, 12);
    // the stored tokenizer reads back; byte tokenizer round trip of arbitrary text
    let json = tmp.path().join("bpe/tokenizer.json");
    let t = Tokenizer::from_file(&json)?;
    // a run that loads that file tokenizes the same way
    let mut again = opts.clone();
    again.tokenizer = TokenizerSpec::File(json.clone());
    let loaded = prepare(&again, &tmp.path().join("file"))?;
    assert_eq!(decoded_docs(&loaded, true)?, decoded_docs(&reopened, true)?);
    assert_eq!(loaded.meta.train.tokens, reopened.meta.train.tokens);
    let text = "Grüße aus 世界 🐈 — tabs\tand\nnewlines";
    assert_eq!(t.decode(&t.encode(text)?)?, text);
    assert_eq!(
        Tokenizer::Bytes.decode(&Tokenizer::Bytes.encode(text)?)?,
        text
    );
    Ok(())
}

#[test]
fn bad_data_paths_and_text_name_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let p = |s: &str| tmp.path().join(s);
    let err = |paths: Vec<PathBuf>| match prepare(&DataOptions::new(paths), &tmp.path().join("out"))
    {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert_mentions(
        &err(vec![p("missing.txt")]),
        &["missing.txt", "no such file or folder"],
    );
    std::fs::write(p("empty.txt"), "  \n")?;
    assert_mentions(&err(vec![p("empty.txt")]), &["empty.txt", "empty file"]);
    std::fs::create_dir_all(p("nothing"))?;
    std::fs::write(p("nothing/.hidden"), "text")?;
    assert_mentions(
        &err(vec![p("nothing")]),
        &["nothing", "folder has no files"],
    );
    std::fs::write(p("latin1.txt"), b"caf\xe9 au lait\nna\xefve")?;
    assert_mentions(
        &err(vec![p("latin1.txt")]),
        &["latin1.txt", "not UTF-8", "0xe9", "byte offset 3", "line 1"],
    );
    // a bad file deep in a folder is named too when --strict asks for text only
    std::fs::create_dir_all(p("tree/sub"))?;
    std::fs::write(p("tree/a.txt"), "fine text")?;
    std::fs::write(p("tree/sub/b.bin"), [0x66u8, 0x6f, 0xff, 0xfe])?;
    let mut strict = DataOptions::new(vec![p("tree")]);
    strict.filter.strict = true;
    match prepare(&strict, &tmp.path().join("out")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => assert_mentions(&e, &["tree/sub/b.bin", "not UTF-8"]),
    }
    // one document cannot be split
    std::fs::write(p("one.txt"), "a single document")?;
    assert_mentions(
        &err(vec![p("one.txt")]),
        &["one.txt", "1 document", "--doc-sep"],
    );
    assert!(
        !p("out").exists() && !p("out.tmp").exists(),
        "nothing half made"
    );
    Ok(())
}

#[test]
fn folders_skip_binary_files_and_follow_globs() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("pkg/__pycache__"))?;
    for i in 0..4 {
        std::fs::write(
            src.join(format!("pkg/m{i}.py")),
            format!("def f{i}():\n    return {i}\n"),
        )?;
    }
    std::fs::write(src.join("pkg/notes.md"), "# notes\n")?;
    // a .pyc (not UTF-8) and a UTF-8 file with NUL bytes: both binary
    std::fs::write(
        src.join("pkg/__pycache__/m0.pyc"),
        [0xa7u8, 0x0d, 0x0d, 0x0a, 0xff],
    )?;
    std::fs::write(src.join("pkg/blob.dat"), b"ab\x00cd")?;
    let mut opts = DataOptions::new(vec![src.clone()]);
    opts.doc_sep = String::new();
    opts.val_frac = 0.25;
    let all = prepare(&opts, &tmp.path().join("all"))?;
    assert_eq!(all.meta.files, 5, "four .py and the .md");
    assert_eq!(all.meta.skipped_files, 2, "the .pyc and the NUL file");
    opts.filter.include = vec!["*.py".into()];
    opts.filter.exclude = vec!["*/m3.py".into()];
    let py = prepare(&opts, &tmp.path().join("py"))?;
    assert_eq!(py.meta.files, 3);
    assert_eq!(py.meta.include, vec!["*.py".to_string()]);
    opts.filter.include = vec!["*.rs".into()];
    match prepare(&opts, &tmp.path().join("none")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => assert_mentions(&e, &["src", "--include/--exclude"]),
    }
    opts.filter.include = vec!["[".into()];
    match prepare(&opts, &tmp.path().join("bad")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => assert_mentions(&e, &["include", "["]),
    }
    Ok(())
}

/// Every token id of a split, in order.
fn all_tokens(d: &Dataset, val: bool) -> Vec<u32> {
    let s = if val { &d.val } else { &d.train };
    let mut out = Vec::new();
    s.read(0, s.len() as usize, &mut out);
    out
}

#[test]
fn one_big_file_read_in_small_chunks_gives_the_same_dataset() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // one file of ~75 KB: 200 documents of prose, a few far longer than the chunk
    let mut text = String::new();
    for (i, d) in docs(200).iter().enumerate() {
        let paragraphs = if i % 50 == 7 { 60 } else { 1 + i % 4 };
        for p in 0..paragraphs {
            text.push_str(&format!(
                "{d}\n  said the {p}th voice,\tthen  went on.\r\n\n"
            ));
        }
        text.push_str("<|endoftext|>");
    }
    let file = tmp.path().join("big.txt");
    std::fs::write(&file, &text)?;
    for (name, spec) in [
        ("bytes", TokenizerSpec::Bytes),
        ("bpe", TokenizerSpec::Bpe(400)),
    ] {
        let mut opts = DataOptions::new(vec![file.clone()]);
        opts.tokenizer = spec;
        opts.val_frac = 0.05;
        let whole = prepare(&opts, &tmp.path().join(format!("{name}-whole")))?;
        opts.chunk_bytes = 1000;
        let chunked = prepare(&opts, &tmp.path().join(format!("{name}-chunked")))?;
        assert!(text.len() > 50 * opts.chunk_bytes, "{} bytes", text.len());
        assert_eq!(
            chunked.meta, whole.meta,
            "{name}: counts, bytes, fingerprint"
        );
        assert_eq!(chunked.meta.train.docs + chunked.meta.val.docs, 200);
        for val in [false, true] {
            assert_eq!(all_tokens(&chunked, val), all_tokens(&whole, val), "{name}");
        }
        if name == "bpe" {
            // the BPE trained on pieces is the one trained on whole documents
            let t = |d: &Dataset| std::fs::read_to_string(d.dir.join("tokenizer.json"));
            assert_eq!(t(&chunked)?, t(&whole)?);
        }
    }
    // each file a document (--doc-sep ""): a 60 KB document read 1000 bytes at a time
    let src = tmp.path().join("files");
    std::fs::create_dir(&src)?;
    std::fs::write(src.join("a.txt"), &text[..60_000])?;
    std::fs::write(src.join("b.txt"), "a short one")?;
    let mut opts = DataOptions::new(vec![src]);
    opts.doc_sep = String::new();
    let whole = prepare(&opts, &tmp.path().join("files-whole"))?;
    opts.chunk_bytes = 1000;
    let chunked = prepare(&opts, &tmp.path().join("files-chunked"))?;
    assert_eq!(chunked.meta, whole.meta);
    for val in [false, true] {
        assert_eq!(all_tokens(&chunked, val), all_tokens(&whole, val));
    }
    Ok(())
}
