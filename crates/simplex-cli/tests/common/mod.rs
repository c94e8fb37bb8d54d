//! Shared helpers of the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the `simplex` binary with `args`: (success, stdout, stderr).
pub fn simplex(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .output()
        .expect("run simplex");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The demo corpus of simplex-train.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

/// `simplex train` on the demo corpus into `out` for `steps` updates of a tiny model (batch 2
/// x 32 tokens, a log row every 2 steps, no evals), then `extra` (a preset, more flags).
pub fn small_run(out: &Path, steps: usize, extra: &[&str]) -> (bool, String, String) {
    let (corpus, out) = (corpus(), out.to_str().expect("utf-8 path").to_string());
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--data",
        corpus.to_str().expect("utf-8 path"),
        "--out",
        &out,
        "--steps",
        &steps,
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--log-every",
        "2",
        "--eval-every",
        "0",
    ];
    args.extend_from_slice(extra);
    simplex(&args)
}
