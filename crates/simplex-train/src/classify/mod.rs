//! Training and comparing task models (per-token classifiers) on the reasoning tasks of
//! [`crate::tasks`]: the library behind `simplex compare` and `simplex eval-task`.
//!
//! ```text
//! task + data seed -> train / validation / test splits (disjoint by base sequence)
//!   -> same-length batches -> TaskModel (bidirectional, no RoPE; dot | trilinear | determinant)
//!   -> mean CE over labeled positions -> clip -> AdamW (warmup + cosine)
//!   -> validation curve, test scores, checkpoint -> summary over seeds, table, plot
//! ```
//! * [`kind`]: the attention kinds and the shared [`Size`] (equal parameter counts by default).
//! * [`batches`]: batches of one length (no padding: the ops have no key mask).
//! * [`learner`]: one update, evaluation (per-token accuracy, exact match, loss).
//! * [`run`]: one run; [`saved`]: its checkpoint, [`load_task_model`] and [`eval_checkpoint`].
//! * [`compare`]: every kind x seed; [`report`]: [`CompareReport`], the table and the results
//!   files; [`plot`]: the curves.

pub mod batches;
pub mod compare;
pub mod kind;
pub mod learner;
pub mod plot;
pub mod report;
pub mod run;
pub mod saved;

pub use compare::{run_compare, CompareObserver, CompareSettings};
pub use kind::{AttnKind, Equalize, Size, KIND_NAMES};
pub use learner::{evaluate, Evaluation, TaskLearner};
pub use report::{read_report, CompareReport, Spread};
pub use run::{
    train_run, CurvePoint, DataSettings, Optimization, RunObserver, RunResult, SplitScore,
    TaskRunSettings,
};
pub use saved::{eval_checkpoint, load_task_model, LoadedTaskModel, TaskState};
