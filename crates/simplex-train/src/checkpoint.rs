//! Checkpoints: written whole or not at all.
//!
//! ```text
//! RUN_DIR/checkpoint/model.safetensors       f32 master weights, the model's variable names
//!                    optimizer.safetensors   AdamW moments m.NAME, v.NAME and `step`
//!                    state.json              step, data position, tokens seen, metrics summary
//!                    config.toml             the model config
//!                    train.toml              the training settings
//!                    tokenizer.json          BPE runs only
//! ```
//! Save: write everything into `checkpoint.tmp/` (each file fsynced, state.json last, then the
//! folder), rename `checkpoint/` to `checkpoint.old/`, rename `checkpoint.tmp/` to
//! `checkpoint/`, fsync RUN_DIR, delete `checkpoint.old/`. A crash at any point leaves a
//! complete checkpoint in `checkpoint/` or (between the two renames) in `checkpoint.old/`,
//! which [`locate`] falls back to; `checkpoint.tmp/` is never read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::DataPosition;
use crate::error::{IoContext, Result, TrainError};

/// The checkpoint folder's name inside a run folder.
pub const CHECKPOINT: &str = "checkpoint";
const TMP: &str = "checkpoint.tmp";
const OLD: &str = "checkpoint.old";

/// Losses at the time of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    /// Mean training loss of the last logged interval.
    pub train_loss: Option<f64>,
    /// Last held-out loss.
    pub val_loss: Option<f64>,
    /// Last held-out bits per byte.
    pub val_bpb: Option<f64>,
    /// Lowest held-out loss so far.
    pub best_val_loss: Option<f64>,
}

/// `state.json`: where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Layout version.
    pub format: u32,
    /// Updates done.
    pub step: u64,
    /// Training tokens consumed (inputs, all micro-batches).
    pub tokens_seen: u64,
    /// Data order position.
    pub data: DataPosition,
    /// Seconds spent training so far (all sessions).
    pub elapsed_s: f64,
    /// `bytes`, or `tokenizer.json` (a file beside it).
    pub tokenizer: String,
    /// Losses at this point.
    pub metrics: MetricsSummary,
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

/// Replaces `path` with `bytes` atomically: written and fsynced as `path.tmp`, then renamed
/// over it, so a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Fsyncs a folder (makes renames and new names in it durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// Writes `tensors` as safetensors to `path` and fsyncs it.
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    candle_core::safetensors::save(tensors, path)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e.to_string())))?;
    File::open(path).at(path)?.sync_all().at(path)
}

/// What a checkpoint holds besides tensors.
pub struct CheckpointFiles<'a> {
    /// The model config as TOML.
    pub config_toml: &'a str,
    /// The training settings as TOML.
    pub train_toml: &'a str,
    /// The tokenizer file to copy (BPE runs).
    pub tokenizer_json: Option<&'a Path>,
}

/// Saves a checkpoint into `run_dir/checkpoint/` atomically (see the module doc).
pub fn save(
    run_dir: &Path,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
    files: &CheckpointFiles,
) -> Result<PathBuf> {
    save_atomic(run_dir, |tmp| {
        save_tensors(&tmp.join("model.safetensors"), weights)?;
        save_tensors(&tmp.join("optimizer.safetensors"), optimizer)?;
        write_synced(&tmp.join("config.toml"), files.config_toml.as_bytes())?;
        write_synced(&tmp.join("train.toml"), files.train_toml.as_bytes())?;
        if let Some(src) = files.tokenizer_json {
            let bytes = std::fs::read(src).at(src)?;
            write_synced(&tmp.join("tokenizer.json"), &bytes)?;
        }
        write_json(&tmp.join("state.json"), state)
    })
}

/// Writes `value` as pretty JSON to `path` and fsyncs it.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e)))?;
    write_synced(path, json.as_bytes())
}

/// The atomic protocol of the module doc for any set of files: `write` fills the fresh
/// `checkpoint.tmp/` (each file fsynced; `state.json` last, it marks a complete checkpoint),
/// which then replaces `run_dir/checkpoint/`. Returns the checkpoint folder.
pub fn save_atomic(run_dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let (tmp, dst, old) = (
        run_dir.join(TMP),
        run_dir.join(CHECKPOINT),
        run_dir.join(OLD),
    );
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    write(&tmp)?;
    sync_dir(&tmp)?;
    if dst.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).at(&old)?;
        }
        std::fs::rename(&dst, &old).at(&dst)?;
    }
    std::fs::rename(&tmp, &dst).at(&dst)?;
    sync_dir(run_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(dst)
}

/// Folder of the kept checkpoints (`--keep-last`) in a run folder.
pub const KEPT: &str = "checkpoints";
/// Folder of the best checkpoint by held-out loss (`--keep-best`) in a run folder.
pub const BEST: &str = "checkpoint-best";

/// Keeps copies of the checkpoint just written to `dir` at `step`: with `keep_last > 0` as
/// `run_dir/checkpoints/step-NNNNNNNN/`, removing all but the newest `keep_last`; with `best`
/// as `run_dir/checkpoint-best/`. The copies are hard links where the file system allows
/// (a checkpoint's files are never written again, a new save makes new files), each built in
/// a `.tmp` folder and renamed into place, so every copy is complete or absent.
pub fn keep_copies(
    run_dir: &Path,
    dir: &Path,
    step: u64,
    keep_last: usize,
    best: bool,
) -> Result<()> {
    if keep_last > 0 {
        let kept = run_dir.join(KEPT);
        std::fs::create_dir_all(&kept).at(&kept)?;
        mirror(dir, &kept.join(format!("step-{step:08}")))?;
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&kept)
            .at(&kept)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
            })
            .collect();
        steps.sort();
        let extra = steps.len().saturating_sub(keep_last);
        for old in &steps[..extra] {
            std::fs::remove_dir_all(old).at(old)?;
        }
    }
    if best {
        mirror(dir, &run_dir.join(BEST))?;
    }
    Ok(())
}

/// Replaces `dst` with a copy of the files of `src` (see [`keep_copies`]).
fn mirror(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    for entry in std::fs::read_dir(src).at(src)? {
        let from = entry.at(src)?.path();
        let to = tmp.join(from.file_name().unwrap_or_default());
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).at(&to)?;
        }
    }
    sync_dir(&tmp)?;
    if dst.exists() {
        std::fs::remove_dir_all(dst).at(dst)?;
    }
    std::fs::rename(&tmp, dst).at(dst)?;
    match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => Ok(()),
    }
}

/// The complete checkpoint of a run folder: `checkpoint/`, else `checkpoint.old/` (a save
/// interrupted between its two renames); `path` may also be a checkpoint folder itself.
pub fn locate(path: &Path) -> Option<PathBuf> {
    if path.join("state.json").is_file() && path.join("model.safetensors").is_file() {
        return Some(path.to_path_buf());
    }
    [CHECKPOINT, OLD]
        .iter()
        .map(|n| path.join(n))
        .find(|d| d.is_dir())
}

/// A checkpoint read from disk (tensors on `device`).
pub struct Checkpoint {
    /// Its folder.
    pub dir: PathBuf,
    /// state.json.
    pub state: TrainState,
    /// config.toml, as text.
    pub config_toml: String,
    /// train.toml, as text.
    pub train_toml: String,
    /// model.safetensors.
    pub weights: HashMap<String, Tensor>,
}

/// Reads a safetensors file of a checkpoint (errors name the file: missing, corrupted).
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(TrainError::checkpoint(path, "missing"));
    }
    candle_core::safetensors::load(path, device).map_err(|e| {
        TrainError::checkpoint(
            path,
            format!("not a readable safetensors file ({e}): corrupted or truncated"),
        )
    })
}

/// Reads a text file of a checkpoint (an error naming the file when it is missing).
pub fn read_string(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Err(TrainError::checkpoint(path, "missing"));
    }
    std::fs::read_to_string(path).at(path)
}

impl Checkpoint {
    /// Reads the checkpoint in `dir` (a checkpoint folder); each error names the file.
    pub fn read(dir: &Path, device: &Device) -> Result<Checkpoint> {
        let state_path = dir.join("state.json");
        let state: TrainState = serde_json::from_str(&read_string(&state_path)?).map_err(|e| {
            TrainError::checkpoint(&state_path, format!("not a readable state: {e}"))
        })?;
        let config_toml = read_string(&dir.join("config.toml"))?;
        let weights_path = dir.join("model.safetensors");
        let mut weights = read_tensors(&weights_path, device)?;
        let fused = fused_of(&dir.join("config.toml"), &config_toml)?;
        merge_legacy(&weights_path, &mut weights, &fused, "")?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            state,
            config_toml,
            train_toml: read_string(&dir.join("train.toml"))?,
            weights,
        })
    }

    /// The optimizer state (`optimizer.safetensors`).
    pub fn optimizer(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let path = self.dir.join("optimizer.safetensors");
        let mut st = read_tensors(&path, device)?;
        let fused = fused_of(&self.dir.join("config.toml"), &self.config_toml)?;
        for prefix in ["m.", "v."] {
            merge_legacy(&path, &mut st, &fused, prefix)?;
        }
        Ok(st)
    }

    /// Copies the weights into `params`: every parameter must be present with its shape, and
    /// no other tensor may be (the error names model.safetensors and the tensor).
    pub fn load_weights(&self, params: &[(String, Var)]) -> Result<()> {
        load_weights(&self.dir.join("model.safetensors"), &self.weights, params)
    }
}

/// The fused weights of the model that `config_toml` (read from `path`) describes.
fn fused_of(path: &Path, config_toml: &str) -> Result<Vec<simplex_model::FusedParam>> {
    let cfg = simplex_model::Config::from_toml_str(config_toml)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    Ok(simplex_model::fused_params(&cfg))
}

/// Joins weights stored apart by earlier versions (`attn.q.weight`, ..., `mlp.gate.weight`,
/// `mlp.up.weight`, with `prefix`) into today's fused weights; errors name `path`.
pub fn merge_legacy(
    path: &Path,
    tensors: &mut HashMap<String, Tensor>,
    fused: &[simplex_model::FusedParam],
    prefix: &str,
) -> Result<()> {
    let n = simplex_model::merge_parts(tensors, fused, prefix)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    if n > 0 && prefix.is_empty() {
        tracing::info!(
            "{}: joined {n} weights stored as separate projections",
            path.display()
        );
    }
    Ok(())
}

/// Whether every value of the f32 tensor `t` is finite: `0 * t` is 0 where `t` is finite
/// and NaN where it is NaN or infinite, so its sum is finite exactly when all of `t` is.
fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.affine(0.0, 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_finite())
}

/// Checks that `tensors` (read from `path`, named in errors) hold exactly the f32 tensors
/// named in `shapes`: every one present with its shape, finite, and no other.
pub fn check_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    shapes: &[(String, Vec<usize>)],
) -> Result<()> {
    for (name, dims) in shapes {
        let t = tensors.get(name).ok_or_else(|| {
            TrainError::checkpoint(
                path,
                format!("no tensor `{name}`, which the model of config.toml has"),
            )
        })?;
        if t.dims() != dims.as_slice() {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "tensor `{name}` is {:?}, the model of config.toml needs {dims:?}",
                    t.dims()
                ),
            ));
        }
        if t.dtype() != DType::F32 {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` is {:?}; checkpoints hold f32", t.dtype()),
            ));
        }
        if !all_finite(t)? {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` holds NaN or infinite values: the run that saved it diverged (or the file is damaged); use an earlier checkpoint"),
            ));
        }
    }
    let known: std::collections::HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = tensors.keys().filter(|k| !known.contains(k.as_str())).min() {
        return Err(TrainError::checkpoint(
            path,
            format!("unexpected tensor `{extra}`: the model of config.toml has no such parameter"),
        ));
    }
    Ok(())
}

/// Copies `weights` (read from `path`, named in errors) into `params`: every parameter must be
/// present with its shape in f32 and finite, and no other tensor may be.
pub fn load_weights(
    path: &Path,
    weights: &HashMap<String, Tensor>,
    params: &[(String, Var)],
) -> Result<()> {
    let shapes: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    check_tensors(path, weights, &shapes)?;
    for (name, var) in params {
        var.set(&weights[name].to_device(var.device())?)?;
    }
    Ok(())
}
