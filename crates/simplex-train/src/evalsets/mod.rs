//! Evaluation sets scored as negative log-likelihood, as the 2-simplicial paper measures
//! scaling (docs/evals.md):
//!
//! ```text
//! mmlu        every 7th MMLU test question (2,006): NLL of " B. {correct choice}" given
//!             "Question: ...\nA. ...\nB. ...\nC. ...\nD. ...\nAnswer:"     evals/mmlu.jsonl
//! mmlu-full   all 14,042 MMLU test questions (scripts/prepare-evals.py)    evals/mmlu-full.jsonl
//! humaneval   164 problems: NLL of the canonical solution given the prompt evals/humaneval.jsonl
//! gsm         500 generated grade-school word problems: NLL of the worked answer  (gsm.rs)
//! heldout     the run's held-out split, the trainer's val_loss windows     RUN_DIR/data/
//! PATH.jsonl  any file of {"id", "context", "continuation"} lines, named by its stem
//! ```
//! * [`resolve`] turns names into [`EvalSource`]s; [`score()`] scores a set on a model
//!   ([`ScoreOptions`], [`EvalScore`]); [`score_text`] scores text files (loss, bits per
//!   byte, perplexity); [`score_heldout`] the run's held-out split.
//! * [`EvalRun`] loads a checkpoint and scores sources; [`append_record`] writes `evals.json`.
//!
//! How an item becomes tokens, and what happens to items longer than the model reads: see
//! [`score`](mod@score).

pub mod gsm;
pub mod heldout;
pub mod runner;
pub mod score;
pub mod set;
pub mod text;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use heldout::score_heldout;
pub use runner::{append_record, read_records, EvalRecord, EvalRun};
pub use score::{score, score_items, EvalScore, ItemScore, ScoreOptions};
pub use set::{EvalItem, EvalSet};
pub use text::score_text;

use crate::error::{Result, TrainError};

/// The names [`resolve`] knows (besides paths to `.jsonl` files).
pub const KNOWN: [&str; 5] = ["mmlu", "mmlu-full", "humaneval", "gsm", "heldout"];

/// What `simplex eval` scores when no set is named (those whose files are missing are skipped).
pub const DEFAULT_SETS: [&str; 4] = ["heldout", "gsm", "mmlu", "humaneval"];

/// The default folder of the prepared sets, relative to the current directory.
pub const DEFAULT_EVAL_DIR: &str = "evals";

/// A set to score: items, or the held-out split of the run being evaluated (which only the
/// caller can reach: [`EvalRun::score`] and the trainer handle it).
#[derive(Debug, Clone, PartialEq)]
pub enum EvalSource {
    /// Items scored by [`score()`].
    Set(EvalSet),
    /// The run's held-out split.
    Heldout,
}

impl EvalSource {
    /// The name results are recorded under.
    pub fn name(&self) -> &str {
        match self {
            EvalSource::Set(s) => &s.name,
            EvalSource::Heldout => "heldout",
        }
    }
}

/// Whether `name` is a path to a JSON-lines file rather than a set name.
fn is_path(name: &str) -> bool {
    name.ends_with(".jsonl") || name.contains('/') || name.contains(std::path::MAIN_SEPARATOR)
}

/// Where the items of `name` come from: `None` for the generated `gsm` and the run's
/// `heldout`, else the `.jsonl` file, which must exist (the error says how to make it, or
/// lists the known names). Cheap: reads nothing.
pub fn locate(name: &str, eval_dir: &Path) -> Result<Option<PathBuf>> {
    if name == "heldout" || name == "gsm" {
        return Ok(None);
    }
    if is_path(name) {
        let path = PathBuf::from(name);
        if !path.is_file() {
            return Err(TrainError::data(&path, "no such eval set file"));
        }
        return Ok(Some(path));
    }
    let path = eval_dir.join(format!("{name}.jsonl"));
    if path.is_file() {
        return Ok(Some(path));
    }
    if KNOWN.contains(&name) {
        return Err(TrainError::data(
            &path,
            format!(
                "eval set `{name}` is not there: run `python3 scripts/prepare-evals.py --out {}` (from the repository root), or point --eval-dir at the folder that holds {name}.jsonl",
                eval_dir.display()
            ),
        ));
    }
    Err(TrainError::setting(
        "eval_sets",
        name,
        format!(
            "unknown eval set: expected one of {} or a path to a .jsonl file of {{\"id\", \"context\", \"continuation\"}} lines",
            KNOWN.join(", ")
        ),
    ))
}

/// One name as a source (see [`resolve`]).
pub fn resolve_one(name: &str, eval_dir: &Path) -> Result<EvalSource> {
    match locate(name, eval_dir)? {
        Some(path) => {
            let stem = if is_path(name) {
                path.file_stem()
                    .map_or(name.to_string(), |s| s.to_string_lossy().into_owned())
            } else {
                name.to_string()
            };
            Ok(EvalSource::Set(EvalSet::load_jsonl(&stem, &path)?))
        }
        None if name == "heldout" => Ok(EvalSource::Heldout),
        None => Ok(EvalSource::Set(gsm::generate(
            gsm::DEFAULT_COUNT,
            gsm::DEFAULT_SEED,
        ))),
    }
}

/// Names to sources, in order, duplicates dropped: `heldout` (the caller's run), `gsm`
/// (generated: [`gsm::DEFAULT_COUNT`] problems of [`gsm::DEFAULT_SEED`]), a path to a `.jsonl`
/// file (named by its stem), or any other name as `{eval_dir}/{name}.jsonl` (`mmlu`,
/// `mmlu-full`, `humaneval`, ...). Errors name the missing file (with how to make it) or list
/// the known names.
pub fn resolve(names: &[String], eval_dir: &Path) -> Result<Vec<EvalSource>> {
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| resolve_one(n, eval_dir))
        .collect()
}
