//! Training simplex language models: data, trainer, checkpoints, eval, metrics, generation,
//! plots. The `simplex` command (`train`, `generate`, `plot`) is a thin layer over this crate.
//!
//! ```text
//! text files -> Corpus (documents, held-out split) -> Tokenizer -> u16/u32 shards (mmap)
//!   -> Batcher (seeded order per epoch) -> Model::forward -> cross-entropy -> backward
//!   -> global-norm clip -> AdamW (warmup + cosine) -> metrics.jsonl/csv, eval, checkpoint/
//! ```
//! * [`train`] runs a new or resumed run ([`RunOptions`]); [`Observer`] receives progress.
//! * [`checkpoint`]: atomic save, [`checkpoint::locate`], loading with checks that name the file.
//! * [`Generator`] samples from a checkpoint with the KV cache.
//! * [`plot_runs`] draws loss curves; [`tensorboard`] writes the metrics as TensorBoard events.
//! * [`train_ranked`] and [`ddp`]: data-parallel training over several processes (one per
//!   GPU, NCCL with the feature `nccl`; TCP between CPU processes), `simplex train --gpus N`.
//! * [`evalsets`]: eval sets scored as NLL (MMLU, HumanEval, generated grade-school math, the
//!   held-out split, any text), for `simplex eval` and for evals during training.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod ddp;
mod error;
pub mod eval;
pub mod evalsets;
pub mod generate;
pub mod init;
pub mod metrics;
pub mod optim;
pub mod plot;
mod restore;
pub mod rng;
pub mod run;
pub mod schedule;
mod scratch;
pub mod step;
pub mod sweep;
pub mod tasks;
pub mod tensorboard;
pub mod trainer;

pub use config::{Precision, TrainConfig, TrainOverrides};
pub use error::{Result, TrainError};
pub use generate::{GenerateOptions, Generated, Generator};
pub use metrics::Record;
pub use plot::plot_runs;
pub use run::{KeepCheckpoints, ModelChoice, RunOptions, StopFlag};
pub use trainer::{train, train_ranked, Observer, Quiet, StartInfo, Summary, H100_BF16_PEAK};
