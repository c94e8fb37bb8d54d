//! `simplex eval-task`: scores a saved task model (from `simplex compare`) on a split of its task.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use simplex_train::classify::{eval_checkpoint, load_task_model};
use simplex_train::tasks::Split;

#[derive(Args, Debug)]
pub struct EvalTaskArgs {
    /// A run folder (e.g. runs/compare-match3/runs/trilinear-seed0) or its checkpoint/.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// test, validation or train (regenerated from the seed in the checkpoint).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Score only the first N examples of the split [default: all].
    #[arg(long)]
    pub examples: Option<usize>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: EvalTaskArgs) -> Result<()> {
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "validation" | "val" => Split::Validation,
        "train" => Split::Train,
        other => bail!("--split {other}: expected test, validation or train"),
    };
    if a.examples == Some(0) {
        bail!("--examples 0: must be at least 1");
    }
    let device = crate::device::parse(&a.device)?;
    let loaded = load_task_model(&a.checkpoint, &device)?;
    let score = eval_checkpoint(&loaded, split, a.examples)?;
    let s = &loaded.settings;
    println!(
        "{} ({} attention, seed {}, step {}, {}): {} split, {} examples",
        s.task,
        s.kind,
        s.seed,
        loaded.state.step,
        loaded.dir.display(),
        a.split,
        score.examples
    );
    println!(
        "token accuracy {:.2}%  exact match {:.2}%  loss {:.4}",
        100.0 * score.token_accuracy,
        100.0 * score.exact_match,
        score.loss
    );
    Ok(())
}
