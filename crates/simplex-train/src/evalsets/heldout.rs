//! `heldout`: the run's own held-out text, scored by the trainer's [`Evaluator`] (the same
//! windows, and so the same numbers, as `val_loss` and `val_bpb` in metrics.jsonl at the same
//! weights).

use std::path::Path;

use simplex_model::Model;

use super::score::EvalScore;
use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::eval::Evaluator;

/// Scores the held-out split of the run in `run_dir` (its `data/` folder) with the run's
/// settings `train` (`seq_len`, `batch_size`, `eval_batches` pick the windows).
pub fn score_heldout(model: &Model, run_dir: &Path, train: &TrainConfig) -> Result<EvalScore> {
    let data_dir = run_dir.join("data");
    if !data_dir.join("meta.json").is_file() {
        return Err(TrainError::data(
            &data_dir,
            "no tokenized data here (data/meta.json), so no held-out split: `heldout` needs the run folder the checkpoint was trained in",
        ));
    }
    let data = Dataset::open(&data_dir)?;
    score_dataset(model, &data, train)
}

/// Scores the held-out split of an opened dataset.
pub fn score_dataset(model: &Model, data: &Dataset, train: &TrainConfig) -> Result<EvalScore> {
    let ev = Evaluator::new(data, train, model.device())?;
    let (loss, _) = ev.run(model)?.ok_or_else(|| {
        TrainError::data(&data.dir, "the held-out split is too short for one window")
    })?;
    Ok(EvalScore::new(
        "heldout",
        ev.windows(),
        loss * ev.tokens() as f64,
        ev.tokens(),
        ev.bytes(),
    ))
}
