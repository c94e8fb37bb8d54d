//! What a finished sweep run records (`RUN/result.json`) and the tables made from all of them:
//!
//! ```text
//! OUT/results.csv   one row per run and eval set (the input of `simplex fit`):
//!                   kind,size,seed,eval_set,params,params_total,params_nonembedding,
//!                   params_active,tokens,flops,wall_s,loss,bpb
//!                   (params: the count the token budget multiplies; loss: nats per token)
//! OUT/runs.csv      one row per run: name,kind,size,seed,params_*,tokens,flops,steps,lr,
//!                   wall_s,train_loss, then <set>_nll for every eval set
//! ```

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, TrainError};

/// One eval set's score of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The set (`heldout`, `gsm`, ...).
    pub name: String,
    /// Items (held-out windows for `heldout`).
    pub items: usize,
    /// Scored tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood, nats per scored token.
    pub nll: f64,
    /// Bits per byte of the scored text.
    pub bpb: f64,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `SIZE-KIND-sSEED`.
    pub name: String,
    /// The attention kind.
    pub kind: String,
    /// The size.
    pub size: String,
    /// The seed.
    pub seed: u64,
    /// The model config (TOML), to notice a sweep file changed under a finished run.
    pub model_toml: String,
    /// Every parameter.
    pub params_total: u64,
    /// Parameters outside the embedding and output head.
    pub params_nonembedding: u64,
    /// Non-embedding parameters a token passes through (`params_nonembedding` for a dense
    /// model; an MoE layer counts its router, its top-k routed and its shared experts).
    pub params_active: u64,
    /// The count the token budget multiplied.
    pub params_budget: u64,
    /// Training tokens.
    pub tokens: u64,
    /// Training FLOPs (3x forward).
    pub flops: f64,
    /// Updates.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Training wall time over all sessions of the run, seconds.
    pub wall_s: f64,
    /// Mean training loss of the last metrics row.
    pub train_loss: f64,
    /// Scores per eval set.
    pub evals: Vec<EvalResult>,
}

impl RunResult {
    /// The file of a run folder.
    pub fn path(run_dir: &Path) -> std::path::PathBuf {
        run_dir.join("result.json")
    }

    /// Reads `RUN/result.json` if the run finished.
    pub fn read(run_dir: &Path) -> Result<Option<RunResult>> {
        let path = Self::path(run_dir);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::data(&path, format!("not a readable run result: {e}")))
    }

    /// Writes `RUN/result.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let path = Self::path(run_dir);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| TrainError::io(&path, std::io::Error::other(e)))?;
        crate::checkpoint::write_atomic(&path, text.as_bytes())
    }
}

/// `results.csv` (long: one row per run and eval set).
pub fn results_csv(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "kind,size,seed,eval_set,params,params_total,params_nonembedding,params_active,tokens,flops,wall_s,loss,bpb\n",
    );
    for r in runs {
        for e in &r.evals {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{:e},{:.3},{},{}",
                r.kind,
                r.size,
                r.seed,
                e.name,
                r.params_budget,
                r.params_total,
                r.params_nonembedding,
                r.params_active,
                r.tokens,
                r.flops,
                r.wall_s,
                e.nll,
                e.bpb
            );
        }
    }
    s
}

/// `runs.csv` (wide: one row per run, one `<set>_nll` column per eval set).
pub fn runs_csv(runs: &[RunResult], sets: &[String]) -> String {
    let mut s = String::from("name,kind,size,seed,params_total,params_nonembedding,params_active,tokens,flops,steps,lr,wall_s,train_loss");
    for set in sets {
        let _ = write!(s, ",{set}_nll");
    }
    s.push('\n');
    for r in runs {
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{:e},{},{},{:.3},{}",
            r.name,
            r.kind,
            r.size,
            r.seed,
            r.params_total,
            r.params_nonembedding,
            r.params_active,
            r.tokens,
            r.flops,
            r.steps,
            r.lr,
            r.wall_s,
            r.train_loss
        );
        for set in sets {
            match r.evals.iter().find(|e| &e.name == set) {
                Some(e) => {
                    let _ = write!(s, ",{}", e.nll);
                }
                None => s.push(','),
            }
        }
        s.push('\n');
    }
    s
}
