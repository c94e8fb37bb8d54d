//! A task model's checkpoint, and scoring it again later.
//!
//! ```text
//! RUN_DIR/checkpoint/   model.safetensors, optimizer.safetensors, config.toml (the model),
//!                       task.toml (TaskRunSettings), state.json (TaskState, written last)
//! ```
//! Written with the atomic protocol of [`crate::checkpoint`]. `task.toml` records how the splits
//! were drawn, so [`load_task_model`] + [`eval_checkpoint`] regenerate the same examples and
//! score the same model.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};
use simplex_model::{Config, TaskModel};

use crate::checkpoint::{
    self, load_weights, merge_legacy, read_string, read_tensors, save_atomic, save_tensors,
    write_json, write_synced,
};
use crate::classify::learner::{evaluate, TaskLearner};
use crate::classify::run::{model_config, task_of, CurvePoint, SplitScore, TaskRunSettings};
use crate::error::{Result, TrainError};
use crate::init::{named_vars, SeededInit};
use crate::tasks::{generate_splits, Split, SplitSizes};

/// `state.json` of a task checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskState {
    /// Layout version.
    pub format: u32,
    /// Updates done.
    pub step: usize,
    /// Seconds of the run.
    pub elapsed_s: f64,
    /// The last validation score.
    pub validation: Option<CurvePoint>,
    /// The test score at the end.
    pub test: Option<SplitScore>,
}

fn toml_text<T: Serialize>(what: &str, value: &T) -> Result<String> {
    toml::to_string(value).map_err(|e| TrainError::setting("checkpoint", what, e.to_string()))
}

/// Writes `run_dir/checkpoint/` atomically: weights, optimizer, config.toml, task.toml,
/// state.json (last).
pub(crate) fn save_task_checkpoint(
    run_dir: &Path,
    learner: &TaskLearner,
    cfg: &Config,
    settings: &TaskRunSettings,
    state: &TaskState,
) -> Result<PathBuf> {
    let config_toml = cfg
        .to_toml_string()
        .map_err(simplex_model::ModelError::from)?;
    let task_toml = toml_text("task.toml", settings)?;
    save_atomic(run_dir, |tmp| {
        save_tensors(
            &tmp.join("model.safetensors"),
            &learner.opt.master_weights()?,
        )?;
        save_tensors(&tmp.join("optimizer.safetensors"), &learner.opt.state()?)?;
        write_synced(&tmp.join("config.toml"), config_toml.as_bytes())?;
        write_synced(&tmp.join("task.toml"), task_toml.as_bytes())?;
        write_json(&tmp.join("state.json"), state)
    })
}

/// A task checkpoint read back: its settings, model config, state and the model.
pub struct LoadedTaskModel {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// task.toml.
    pub settings: TaskRunSettings,
    /// state.json.
    pub state: TaskState,
    /// The model, weights loaded.
    pub model: TaskModel,
}

/// Loads the task checkpoint in `path` (a run folder or its `checkpoint/`); every error names
/// the file at fault.
pub fn load_task_model(path: &Path, device: &Device) -> Result<LoadedTaskModel> {
    let dir = checkpoint::locate(path).ok_or_else(|| {
        TrainError::checkpoint(
            path,
            "no checkpoint here (expected a run folder of `simplex compare` with checkpoint/, \
             or a checkpoint folder with state.json and model.safetensors)",
        )
    })?;
    let task_path = dir.join("task.toml");
    if !task_path.is_file() {
        return Err(TrainError::checkpoint(
            &task_path,
            "missing: not a task-model checkpoint (language-model checkpoints are read by \
             `simplex generate`)",
        ));
    }
    let settings: TaskRunSettings = toml::from_str(&read_string(&task_path)?)
        .map_err(|e| TrainError::checkpoint(&task_path, format!("not readable: {e}")))?;
    let state_path = dir.join("state.json");
    let state: TaskState = serde_json::from_str(&read_string(&state_path)?)
        .map_err(|e| TrainError::checkpoint(&state_path, format!("not readable: {e}")))?;
    let task = task_of(&settings).map_err(|e| TrainError::checkpoint(&task_path, e.to_string()))?;
    let cfg_path = dir.join("config.toml");
    let cfg = Config::from_toml_str(&read_string(&cfg_path)?)
        .map_err(|e| TrainError::checkpoint(&cfg_path, e.to_string()))?;
    let expected = model_config(&settings, task.as_ref())
        .map_err(|e| TrainError::checkpoint(&task_path, e.to_string()))?;
    if cfg != expected {
        return Err(TrainError::checkpoint(
            &cfg_path,
            format!(
                "does not match the {} model of task.toml ({} layers of d_model {})",
                settings.kind, settings.size.layers, settings.size.d_model
            ),
        ));
    }
    let (vars, vb) = SeededInit::builder(0, device, &[]);
    let model = TaskModel::new(&cfg, task.num_classes(), vb)?;
    let params = named_vars(&vars)
        .ok_or_else(|| TrainError::setting("model", "variables", "lock poisoned"))?;
    let weights_path = dir.join("model.safetensors");
    let mut weights = read_tensors(&weights_path, device)?;
    merge_legacy(
        &weights_path,
        &mut weights,
        &simplex_model::fused_params(&cfg),
        "",
    )?;
    load_weights(&weights_path, &weights, &params)?;
    Ok(LoadedTaskModel {
        dir,
        settings,
        state,
        model,
    })
}

/// Regenerates `split` of a loaded checkpoint's task (the same examples its run saw) and
/// scores the model on the first `examples` of them (`None`: all).
pub fn eval_checkpoint(
    loaded: &LoadedTaskModel,
    split: Split,
    examples: Option<usize>,
) -> Result<SplitScore> {
    let s = &loaded.settings;
    let task = task_of(s)?;
    // test is drawn first and validation second, so both come out the same without the train
    // split (the costly one)
    let sizes = SplitSizes {
        train: if split == Split::Train {
            s.data.train
        } else {
            0
        },
        ..s.data.sizes()
    };
    let splits = generate_splits(task.as_ref(), s.data.seed, sizes)?;
    let all = splits.get(split);
    let n = match examples {
        Some(0) => return Err(TrainError::setting("--examples", 0, "must be at least 1")),
        Some(n) => n.min(all.len()),
        None => all.len(),
    };
    Ok(evaluate(&loaded.model, &all[..n], s.optim.eval_batch)?.into())
}
