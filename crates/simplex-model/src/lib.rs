//! Decoder-only language models whose layers are dot-product (D), sliding-window dot-product (L)
//! or 2-simplicial (S) attention, for candle.
//!
//! ```text
//! tokens -> embedding -> [ x += attn(RMSNorm x); x += SwiGLU(RMSNorm x) ] per pattern letter
//!        -> RMSNorm -> head (tied or untied) -> logits
//! ```
//! * [`Config`]: TOML config, presets ([`PRESETS`]), validation that names the key.
//! * [`Model`]: `new(&cfg, VarBuilder)`, `forward(tokens)` (training, fused ops with backward),
//!   `forward_step(tokens, &mut Cache)` (KV-cache prefill and decode), `generate`.
//! * [`Decoder`]: cached decoding of a batch past `max_seq_len`, the context sliding by a shift.
//! * [`TaskModel`]: the same blocks (bidirectional with `bidirectional = true`) under a per-token
//!   classification head, and [`classification_loss`] (mean cross-entropy over labeled positions).
//! * [`ModelInfo`]: parameter counts and FLOPs per token per layer kind.
//! * [`Sampler`]: temperature, top-k, top-p, seeded.
//!
//! This crate knows nothing of files or training loops: the trainer owns the `VarMap`, the
//! optimizer and checkpoints.

pub mod attention;
pub mod block;
pub mod cache;
pub mod config;
pub mod decode;
pub mod embedding;
mod error;
pub mod info;
mod init;
pub mod mlp;
mod model;
pub mod moe;
pub mod norm;
pub mod params;
pub mod rope;
pub mod sample;
pub mod simplicial;
pub mod task;

pub use cache::Cache;
pub use config::{Config, LayerKind, SimplicialConfig, SimplicialVariant, PRESETS};
pub use decode::Decoder;
pub use error::{ConfigError, ModelError, Result};
pub use info::{LayerInfo, ModelInfo};
pub use model::{Model, MoeLoss, TokenBatch, TrainingLoss};
pub use moe::{MoeConfig, MoeStats, RouterKind};
pub use params::{fused_params, merge_parts, FusedParam};
pub use sample::{Sampler, SamplingConfig};
pub use task::{classification_loss, TaskModel, IGNORE};
