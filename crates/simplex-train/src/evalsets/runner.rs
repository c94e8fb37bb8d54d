//! Evaluating a checkpoint: load it (through [`Generator::load`]), score sources, record the
//! results in `RUN_DIR/evals.json`.
//!
//! ```text
//! evals.json = [ {"step": 200, "checkpoint": "runs/demo/checkpoint", "unix_time": ...,
//!                 "scores": [ {"name": "gsm", "items": 500, "tokens": ..., "bytes": ...,
//!                              "nll": ..., "bpb": ..., "nats": ..., "truncated": 0}, ... ]},
//!                ... ]                               one entry per `simplex eval`, appended
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::score::{score, EvalScore, ScoreOptions};
use super::{heldout, text, EvalSource};
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::error::{IoContext, Result, TrainError};
use crate::generate::Generator;

/// A checkpoint ready to evaluate.
pub struct EvalRun {
    /// The model and its tokenizer.
    pub generator: Generator,
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
    /// The run folder (where `data/` and `evals.json` live).
    pub run_dir: PathBuf,
    /// The run's training settings (from the checkpoint's train.toml).
    pub train: TrainConfig,
}

impl EvalRun {
    /// Loads the checkpoint of a run folder (or a checkpoint folder) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<EvalRun> {
        let generator = Generator::load(path, device)?;
        let dir = checkpoint::locate(path)
            .ok_or_else(|| TrainError::checkpoint(path, "no checkpoint here"))?;
        let tpath = dir.join("train.toml");
        let train = TrainConfig::from_toml(&checkpoint::read_string(&tpath)?, &tpath)?;
        let run_dir = if dir == path {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        } else {
            path.to_path_buf()
        };
        Ok(EvalRun {
            generator,
            checkpoint: dir,
            run_dir,
            train,
        })
    }

    /// Options for this run: sequences of at most the training `seq_len`.
    pub fn options(&self, batch_size: usize, max_items: Option<usize>) -> ScoreOptions {
        ScoreOptions {
            batch_size,
            max_items,
            max_len: Some(self.train.seq_len),
        }
    }

    /// Scores one source (`heldout`: the run's held-out split, with its own windows).
    pub fn score(&self, source: &EvalSource, opts: &ScoreOptions) -> Result<EvalScore> {
        let g = &self.generator;
        match source {
            EvalSource::Set(set) => score(&g.model, &g.tokenizer, set, opts),
            EvalSource::Heldout => heldout::score_heldout(&g.model, &self.run_dir, &self.train),
        }
    }

    /// Scores text files and folders, split into documents at the run's `doc_sep`.
    pub fn score_text(&self, paths: &[PathBuf], opts: &ScoreOptions) -> Result<EvalScore> {
        let g = &self.generator;
        text::score_text(&g.model, &g.tokenizer, paths, &self.train.doc_sep, opts)
    }

    /// The record of `scores` at this checkpoint.
    pub fn record(&self, scores: Vec<EvalScore>) -> EvalRecord {
        EvalRecord {
            step: self.generator.step,
            checkpoint: self.checkpoint.display().to_string(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            scores,
        }
    }
}

/// One evaluation of a checkpoint in `evals.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The checkpoint's step.
    pub step: u64,
    /// The checkpoint folder.
    pub checkpoint: String,
    /// When (seconds since 1970).
    pub unix_time: u64,
    /// The sets' scores.
    pub scores: Vec<EvalScore>,
}

/// The records of an `evals.json` (none when the file does not exist).
pub fn read_records(path: &Path) -> Result<Vec<EvalRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::data(
            path,
            format!("not a list of eval records ({e}); move it away or pass another --out"),
        )
    })
}

/// Appends `record` to the JSON list in `path`, atomically (a temporary file renamed over it).
pub fn append_record(path: &Path, record: &EvalRecord) -> Result<()> {
    let mut all = read_records(path)?;
    all.push(record.clone());
    let text = serde_json::to_string_pretty(&all)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e)))?;
    checkpoint::write_atomic(path, format!("{text}\n").as_bytes())
}
