//! Shared helpers of the trainer tests: the shipped corpus, small runs, file surgery.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use simplex_train::{ModelChoice, RunOptions, TrainOverrides};

/// The demo corpus shipped with the crate (three files of short stories).
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// A short run of the `tiny` preset: batch 4 x seq 32, log every step, eval every 3.
pub fn tiny_run(out: &Path, steps: usize) -> RunOptions {
    let mut o = RunOptions::new(out, vec![corpus()], Device::Cpu);
    o.model = Some(ModelChoice::Preset("tiny".into()));
    o.overrides = TrainOverrides {
        steps: Some(steps),
        batch_size: Some(4),
        seq_len: Some(32),
        warmup: Some(2),
        eval_every: Some(3),
        eval_batches: Some(2),
        ckpt_every: Some(0),
        log_every: Some(1),
        ..Default::default()
    };
    o
}

/// Writes `docs` into `n_files` files under `dir`, separated by <|endoftext|>.
pub fn write_corpus(dir: &Path, docs: &[String], n_files: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (f, chunk) in docs.chunks(docs.len().div_ceil(n_files)).enumerate() {
        std::fs::write(
            dir.join(format!("part-{f}.txt")),
            chunk.join("\n<|endoftext|>\n"),
        )?;
    }
    Ok(())
}

/// Asserts that `err` mentions every one of `parts`.
pub fn assert_mentions(err: &dyn std::fmt::Display, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "error does not mention {p:?}: {msg}");
    }
}
