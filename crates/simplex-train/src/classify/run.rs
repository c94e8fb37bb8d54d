//! One training run of a task model:
//!
//! ```text
//! for t in 0..steps:  batch of one length -> loss -> clip -> AdamW(lr(t))   (warmup + cosine)
//! validation at step 0, every eval_every and at the end;  test once at the end
//! RUN_DIR/metrics.jsonl   one CurvePoint per validation
//! RUN_DIR/checkpoint/     the final model (see `saved.rs`)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use simplex_model::Config;

use crate::classify::batches::TrainBatches;
use crate::classify::kind::{AttnKind, Size};
use crate::classify::learner::{Evaluation, TaskLearner};
use crate::classify::saved::{save_task_checkpoint, TaskState};
use crate::error::{IoContext, Result, TrainError};
use crate::optim::AdamWParams;
use crate::schedule::Schedule;
use crate::tasks::{self, SplitSizes, Splits, Task};

/// How the splits are drawn (the same for every model of a comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// Seed of [`crate::tasks::generate_splits`].
    pub seed: u64,
    /// Training examples.
    pub train: usize,
    /// Validation examples (the curves).
    pub validation: usize,
    /// Test examples (the final numbers).
    pub test: usize,
}

impl DataSettings {
    /// The split sizes.
    pub fn sizes(&self) -> SplitSizes {
        SplitSizes {
            train: self.train,
            validation: self.validation,
            test: self.test,
        }
    }
}

/// The optimization of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimization {
    /// Optimizer updates.
    pub steps: usize,
    /// Examples per update (all of one length).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup updates.
    pub warmup: usize,
    /// Cosine floor as a fraction of the peak.
    pub min_lr_frac: f64,
    /// AdamW weight decay (matrices and embeddings).
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// Validation every this many updates (and at step 0 and at the end).
    pub eval_every: usize,
    /// Examples per evaluation batch.
    pub eval_batch: usize,
}

impl Optimization {
    /// Checks the values; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TrainError::setting("--steps", 0, "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(TrainError::setting("--batch-size", 0, "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::setting(
                "--lr",
                self.lr,
                "must be finite and positive",
            ));
        }
        if self.warmup >= self.steps.max(2) {
            return Err(TrainError::setting(
                "--warmup",
                self.warmup,
                format!("must be below --steps = {}", self.steps),
            ));
        }
        for (flag, v) in [
            ("--weight-decay", self.weight_decay),
            ("--grad-clip", self.grad_clip),
            ("--min-lr-frac", self.min_lr_frac),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::setting(flag, v, "must be finite and >= 0"));
            }
        }
        if self.eval_every == 0 {
            return Err(TrainError::setting("--eval-every", 0, "must be at least 1"));
        }
        if self.eval_batch == 0 {
            return Err(TrainError::setting("eval_batch", 0, "must be at least 1"));
        }
        Ok(())
    }

    pub(crate) fn adamw(&self) -> AdamWParams {
        AdamWParams {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// Everything that defines one run (`task.toml` of its checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRunSettings {
    /// Task name (one of [`tasks::NAMES`], default parameters).
    pub task: String,
    /// The attention of the model.
    pub kind: AttnKind,
    /// Seed of weight init and batch order.
    pub seed: u64,
    /// The model size.
    pub size: Size,
    /// How the splits were drawn.
    pub data: DataSettings,
    /// The optimization.
    pub optim: Optimization,
}

/// One evaluation of the validation split during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Updates done.
    pub step: usize,
    /// Mean training loss since the previous point (`None` at step 0).
    pub train_loss: Option<f64>,
    /// Validation loss (nats per labeled token).
    pub val_loss: f64,
    /// Validation per-token accuracy.
    pub val_token_accuracy: f64,
    /// Validation exact match.
    pub val_exact_match: f64,
    /// Seconds since the run started (training and evaluation).
    pub elapsed_s: f64,
}

/// Scores of one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitScore {
    /// Examples scored.
    pub examples: usize,
    /// Per-token accuracy over labeled positions.
    pub token_accuracy: f64,
    /// Fraction of examples with every labeled position right.
    pub exact_match: f64,
    /// Mean loss per labeled position (nats).
    pub loss: f64,
}

impl From<Evaluation> for SplitScore {
    fn from(e: Evaluation) -> Self {
        SplitScore {
            examples: e.score.sequences,
            token_accuracy: e.score.token_accuracy(),
            exact_match: e.score.exact_match(),
            loss: e.loss,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The attention kind.
    pub kind: AttnKind,
    /// The seed.
    pub seed: u64,
    /// Parameters of the model.
    pub params: u64,
    /// Updates done.
    pub steps: usize,
    /// Seconds in updates only.
    pub train_s: f64,
    /// Seconds of the whole run (updates, evaluations, checkpoint).
    pub wall_s: f64,
    /// The validation curve.
    pub curve: Vec<CurvePoint>,
    /// The test split at the end.
    pub test: SplitScore,
    /// The checkpoint folder (when saved).
    pub checkpoint: Option<PathBuf>,
}

/// Receives a run's progress (every method does nothing by default).
pub trait RunObserver {
    /// After each update.
    fn step(&mut self, _step: usize, _loss: f64) {}
    /// After each validation.
    fn eval(&mut self, _point: &CurvePoint) {}
}

/// Ignores everything.
pub struct Silent;
impl RunObserver for Silent {}

/// The task of a settings file (default parameters of [`tasks::by_name`]).
pub fn task_of(settings: &TaskRunSettings) -> Result<Box<dyn Task>> {
    tasks::by_name(&settings.task)
}

/// The model config of a run for `task`.
pub fn model_config(settings: &TaskRunSettings, task: &dyn Task) -> Result<Config> {
    settings.size.config(
        settings.kind,
        task.vocab_size(),
        *task.seq_len_range().end(),
    )
}

/// Trains one model on `splits` of `task` (drawn as `settings.data` says) and scores it; with
/// `run_dir`, writes `metrics.jsonl` there and the final checkpoint to `run_dir/checkpoint/`.
pub fn train_run(
    settings: &TaskRunSettings,
    task: &dyn Task,
    splits: &Splits,
    device: &Device,
    run_dir: Option<&Path>,
    observer: &mut dyn RunObserver,
) -> Result<RunResult> {
    let o = settings.optim;
    o.validate()?;
    let cfg = model_config(settings, task)?;
    let start = Instant::now();
    let mut learner = TaskLearner::new(&cfg, task.num_classes(), settings.seed, o.adamw(), device)?;
    let mut batches = TrainBatches::new(&splits.train, o.batch, settings.seed)?;
    let schedule = Schedule {
        peak: o.lr,
        min_lr_frac: o.min_lr_frac,
        warmup: o.warmup,
        steps: o.steps,
    };
    let mut metrics = match run_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).at(dir)?;
            let path = dir.join("metrics.jsonl");
            Some((std::fs::File::create(&path).at(&path)?, path))
        }
        None => None,
    };
    let mut curve = Vec::new();
    let (mut loss_sum, mut loss_n, mut train_s) = (0f64, 0usize, 0f64);
    let point = |step: usize, learner: &TaskLearner, loss: Option<f64>| -> Result<CurvePoint> {
        let e = learner.evaluate(&splits.validation, o.eval_batch)?;
        Ok(CurvePoint {
            step,
            train_loss: loss,
            val_loss: e.loss,
            val_token_accuracy: e.score.token_accuracy(),
            val_exact_match: e.score.exact_match(),
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    };
    let mut record = |p: CurvePoint, observer: &mut dyn RunObserver| -> Result<()> {
        if let Some((file, path)) = metrics.as_mut() {
            let line = serde_json::to_string(&p)
                .map_err(|e| TrainError::io(&*path, std::io::Error::other(e)))?;
            writeln!(file, "{line}").at(&*path)?;
        }
        observer.eval(&p);
        curve.push(p);
        Ok(())
    };
    record(point(0, &learner, None)?, observer)?;
    for t in 0..o.steps {
        let idx = batches.next_batch();
        let t0 = Instant::now();
        let u = learner.update(&splits.train, &idx, schedule.lr(t), o.grad_clip, t + 1)?;
        train_s += t0.elapsed().as_secs_f64();
        (loss_sum, loss_n) = (loss_sum + u.loss, loss_n + 1);
        observer.step(t + 1, u.loss);
        if (t + 1) % o.eval_every == 0 || t + 1 == o.steps {
            let p = point(t + 1, &learner, Some(loss_sum / loss_n as f64))?;
            record(p, observer)?;
            (loss_sum, loss_n) = (0.0, 0);
        }
    }
    let test = SplitScore::from(learner.evaluate(&splits.test, o.eval_batch)?);
    let checkpoint = match run_dir {
        Some(dir) => {
            let state = TaskState {
                format: 1,
                step: o.steps,
                elapsed_s: start.elapsed().as_secs_f64(),
                validation: curve.last().copied(),
                test: Some(test),
            };
            Some(save_task_checkpoint(dir, &learner, &cfg, settings, &state)?)
        }
        None => None,
    };
    Ok(RunResult {
        kind: settings.kind,
        seed: settings.seed,
        params: learner.param_count(),
        steps: o.steps,
        train_s,
        wall_s: start.elapsed().as_secs_f64(),
        curve,
        test,
        checkpoint,
    })
}
