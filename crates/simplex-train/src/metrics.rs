//! Metrics files: `RUN_DIR/metrics.jsonl` (one JSON object per logged step) and
//! `RUN_DIR/metrics.csv` (the same rows, fixed columns, empty cells when absent).
//!
//! * `train_loss`: mean cross-entropy (nats per token) of the updates since the previous row.
//! * `tokens_per_s`: training tokens of those updates over their wall time (evals and
//!   checkpoints excluded).
//! * `val_loss`: mean nats per token over the fixed held-out windows; `val_bpb`: total nats /
//!   total UTF-8 bytes of the predicted tokens / ln 2 (end-of-text tokens add nats, no bytes).
//! * `mfu`: tokens/s * 3 * forward FLOPs per token (simplex-model's count) / the stated peak.
//! * `moe_balance_loss`, `moe_z_loss`, `moe_max_load`, `moe_load` (MoE models): the
//!   auxiliary losses and the tokens routed to each expert of each MoE layer in the row's last
//!   update (in metrics.jsonl only).
//! * `eval/<name>_nll`: nats per continuation token of each eval set of `eval_sets`
//!   (evalsets), when evaluated; in metrics.jsonl only (the CSV keeps its fixed columns).
//!
//! A resumed run first drops the rows after its checkpoint's step, so each step appears once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, TrainError};

/// One logged step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Updates done.
    pub step: u64,
    /// Mean training loss since the previous row (nats per token).
    pub train_loss: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Global gradient norm of the last update, before clipping.
    pub grad_norm: f64,
    /// Training tokens per second since the previous row.
    pub tokens_per_s: f64,
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
    /// Training seconds so far (all sessions).
    pub elapsed_s: f64,
    /// Held-out loss (nats per token), when evaluated at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Held-out bits per byte, when evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
    /// Model FLOP utilization, when a peak is known (CUDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Mixture of experts: mean load-balancing loss over the MoE layers in the row's last
    /// update (unweighted; 1 when perfectly balanced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_balance_loss: Option<f64>,
    /// Mixture of experts: mean router z-loss over the MoE layers (unweighted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_z_loss: Option<f64>,
    /// Mixture of experts: the busiest expert's assignments over the even share
    /// (`tokens * top_k / experts`), the largest over the MoE layers; 1 when balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_max_load: Option<f64>,
    /// Mixture of experts: assignments (tokens) routed to each expert in the row's last
    /// micro-batch, one list per MoE layer, bottom first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_load: Option<Vec<Vec<u64>>>,
    /// `eval/<name>_nll` of the eval sets scored at this step (flattened into the row; any
    /// other unknown number in a row lands here too).
    #[serde(flatten, default)]
    pub evals: BTreeMap<String, f64>,
}

/// The MoE fields of a row from an update's [`simplex_model::MoeLoss`] (waits for the
/// device): `(balance, z, max load, loads)`.
pub fn moe_fields(m: &simplex_model::MoeLoss) -> Result<(f64, f64, f64, Vec<Vec<u64>>)> {
    let balance = m
        .balance
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let z = m.z.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let load: Vec<Vec<u32>> = m.load.to_vec2()?;
    let load: Vec<Vec<u64>> = load
        .into_iter()
        .map(|l| l.into_iter().map(u64::from).collect())
        .collect();
    let max = load
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let total: u64 = l.iter().sum();
            let even = total as f64 / l.len() as f64;
            l.iter().copied().max().unwrap_or(0) as f64 / even.max(1e-12)
        })
        .fold(0.0f64, f64::max);
    Ok((balance, z, max, load))
}

/// The metrics key of eval set `name`'s NLL.
pub fn eval_key(name: &str) -> String {
    format!("eval/{name}_nll")
}

const CSV_HEADER: &str =
    "step,train_loss,lr,grad_norm,tokens_per_s,tokens_seen,elapsed_s,val_loss,val_bpb,mfu";

fn opt(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| format!("{v}"))
}

impl Record {
    fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{}",
            self.step,
            self.train_loss,
            self.lr,
            self.grad_norm,
            self.tokens_per_s,
            self.tokens_seen,
            self.elapsed_s,
            opt(self.val_loss),
            opt(self.val_bpb),
            opt(self.mfu)
        )
    }
}

/// Reads `metrics.jsonl` (the error names the file and line).
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).at(path)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.at(path)?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(&line).map_err(|e| {
            TrainError::data(path, format!("line {}: not a metrics record: {e}", i + 1))
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Appends records to metrics.jsonl and metrics.csv.
pub struct MetricsLog {
    jsonl: (PathBuf, File),
    csv: (PathBuf, File),
}

impl MetricsLog {
    /// Opens the files of `run_dir`. `keep_until`: resuming from that step; rows after it are
    /// dropped (both files rewritten). `None`: a new run; the files are created empty.
    pub fn open(run_dir: &Path, keep_until: Option<u64>) -> Result<Self> {
        let jp = run_dir.join("metrics.jsonl");
        let cp = run_dir.join("metrics.csv");
        // kept rows: the JSON lines verbatim (no re-serialization can change a digit), the
        // CSV rows from the parsed records
        let mut jtext = String::new();
        let mut ctext = format!("{CSV_HEADER}\n");
        if let (Some(step), true) = (keep_until, jp.exists()) {
            let text = std::fs::read_to_string(&jp).at(&jp)?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for (i, line) in lines.iter().enumerate() {
                let r: Record = match serde_json::from_str(line) {
                    Ok(r) => r,
                    // a run killed while writing its last row leaves half a line
                    Err(_) if i + 1 == lines.len() => {
                        tracing::warn!("{}: dropping a cut last line", jp.display());
                        break;
                    }
                    Err(e) => {
                        return Err(TrainError::data(
                            &jp,
                            format!("line {}: not a metrics record: {e}", i + 1),
                        ))
                    }
                };
                if r.step <= step {
                    jtext.push_str(line);
                    jtext.push('\n');
                    ctext.push_str(&r.csv_row());
                    ctext.push('\n');
                }
            }
        }
        for (path, text) in [(&jp, &jtext), (&cp, &ctext)] {
            crate::checkpoint::write_atomic(path, text.as_bytes())?;
        }
        let append = |p: &PathBuf| OpenOptions::new().append(true).open(p).at(p);
        Ok(MetricsLog {
            jsonl: (jp.clone(), append(&jp)?),
            csv: (cp.clone(), append(&cp)?),
        })
    }

    /// Appends one record to both files (flushed).
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r)
            .map_err(|e| TrainError::io(&self.jsonl.0, std::io::Error::other(e)))?;
        writeln!(self.jsonl.1, "{line}").at(&self.jsonl.0)?;
        writeln!(self.csv.1, "{}", r.csv_row()).at(&self.csv.0)?;
        self.jsonl.1.flush().at(&self.jsonl.0)?;
        self.csv.1.flush().at(&self.csv.0)
    }
}
