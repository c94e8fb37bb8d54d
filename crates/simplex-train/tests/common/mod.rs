//! Shared helpers of the trainer tests: the shipped corpus, small runs, file surgery.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use simplex_train::classify::{
    AttnKind, DataSettings, Equalize, Optimization, Size, TaskRunSettings,
};
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

/// A small model on match2: 1 layer, d_model 48, 4 heads; 3000 training examples, batch 32,
/// lr 3e-3 with 10% warmup, validation every `eval_every` steps.
pub fn match2_settings(kind: AttnKind, steps: usize, eval_every: usize) -> TaskRunSettings {
    TaskRunSettings {
        task: "match2".into(),
        kind,
        seed: 0,
        size: Size {
            d_model: 48,
            layers: 1,
            heads: 4,
            mlp_hidden: 96,
            equalize: Equalize::Params,
        },
        data: DataSettings {
            seed: 0,
            train: 3000,
            validation: 200,
            test: 400,
        },
        optim: Optimization {
            steps,
            batch: 32,
            lr: 3e-3,
            warmup: steps / 10,
            min_lr_frac: 0.01,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every,
            eval_batch: 256,
        },
    }
}
