//! Training settings (`RUN_DIR/train.toml`): defaults, flags that override them, validation,
//! and what a resumed run may change.
//!
//! Defaults follow the 2-simplicial paper where it states them: peak lr 4e-3, weight decay
//! 0.0125, cosine decay to 1% of the peak. Warmup defaults to 5% of the steps.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Compute dtype of the forward and backward passes (master weights are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere (the CPU default).
    F32,
    /// bf16 compute from f32 masters (the CUDA default).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(TrainError::setting("precision", s, "expected f32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Every training setting of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Total optimizer updates (the cosine schedule spans them).
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (at most the model's max_seq_len).
    pub seq_len: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Floor of the cosine as a fraction of the peak.
    pub min_lr_frac: f64,
    /// Linear warmup updates.
    pub warmup: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// Seed of the weight init and of the data order.
    pub seed: u64,
    /// Held-out eval every this many updates (and at the end; 0: only at the end).
    pub eval_every: usize,
    /// Batches of held-out windows per eval (the same windows every time).
    pub eval_batches: usize,
    /// Checkpoint every this many updates (and at the end; 0: only at the end).
    pub ckpt_every: usize,
    /// A metrics line every this many updates.
    pub log_every: usize,
    /// Compute dtype.
    pub precision: Precision,
    /// `bytes`, `bpe:VOCAB` or a tokenizer JSON file.
    pub tokenizer: String,
    /// Splits files into documents (empty: one document per file).
    pub doc_sep: String,
    /// Fraction of documents held out.
    pub val_frac: f64,
    /// Seed of the held-out draw (separate from `seed`, so runs with different seeds share
    /// their eval set).
    pub split_seed: u64,
    /// Eval sets scored at every held-out eval (names or `.jsonl` paths, see
    /// [`crate::evalsets::resolve`]); recorded as `eval/<name>_nll`. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_sets: Vec<String>,
    /// Folder of the prepared eval sets (default `evals`, relative to the current directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_dir: Option<std::path::PathBuf>,
    /// Data-parallel ranks the global batch is split over (`simplex train --gpus N`): every
    /// update takes `batch_size x grad_accum x world_size` sequences, `grad_accum` micro-batches
    /// of `batch_size` on each rank (absent from train.toml when 1). A resume on another number
    /// of ranks keeps the global batch ([`crate::ddp::rebatch`]).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Settings given on the command line; `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainOverrides {
    /// See [`TrainConfig::steps`].
    pub steps: Option<usize>,
    /// See [`TrainConfig::batch_size`].
    pub batch_size: Option<usize>,
    /// See [`TrainConfig::seq_len`].
    pub seq_len: Option<usize>,
    /// See [`TrainConfig::grad_accum`].
    pub grad_accum: Option<usize>,
    /// See [`TrainConfig::lr`].
    pub lr: Option<f64>,
    /// See [`TrainConfig::min_lr_frac`].
    pub min_lr_frac: Option<f64>,
    /// See [`TrainConfig::warmup`].
    pub warmup: Option<usize>,
    /// See [`TrainConfig::weight_decay`].
    pub weight_decay: Option<f64>,
    /// See [`TrainConfig::grad_clip`].
    pub grad_clip: Option<f64>,
    /// See [`TrainConfig::seed`].
    pub seed: Option<u64>,
    /// See [`TrainConfig::eval_every`].
    pub eval_every: Option<usize>,
    /// See [`TrainConfig::eval_batches`].
    pub eval_batches: Option<usize>,
    /// See [`TrainConfig::ckpt_every`].
    pub ckpt_every: Option<usize>,
    /// See [`TrainConfig::log_every`].
    pub log_every: Option<usize>,
    /// See [`TrainConfig::precision`].
    pub precision: Option<Precision>,
    /// See [`TrainConfig::tokenizer`].
    pub tokenizer: Option<String>,
    /// See [`TrainConfig::doc_sep`].
    pub doc_sep: Option<String>,
    /// See [`TrainConfig::val_frac`].
    pub val_frac: Option<f64>,
    /// See [`TrainConfig::split_seed`].
    pub split_seed: Option<u64>,
    /// See [`TrainConfig::eval_sets`].
    pub eval_sets: Option<Vec<String>>,
    /// See [`TrainConfig::eval_dir`].
    pub eval_dir: Option<std::path::PathBuf>,
}

impl TrainConfig {
    /// Defaults for a model with `max_seq_len`, overridden by `o`; `cuda` picks bf16.
    pub fn resolve(o: &TrainOverrides, max_seq_len: usize, cuda: bool) -> Result<TrainConfig> {
        let steps = o.steps.unwrap_or(1000);
        let cfg = TrainConfig {
            steps,
            batch_size: o.batch_size.unwrap_or(16),
            seq_len: o.seq_len.unwrap_or(max_seq_len),
            grad_accum: o.grad_accum.unwrap_or(1),
            lr: o.lr.unwrap_or(4e-3),
            min_lr_frac: o.min_lr_frac.unwrap_or(0.01),
            warmup: o.warmup.unwrap_or(steps / 20),
            weight_decay: o.weight_decay.unwrap_or(0.0125),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: o.grad_clip.unwrap_or(1.0),
            seed: o.seed.unwrap_or(0),
            eval_every: o.eval_every.unwrap_or(100),
            eval_batches: o.eval_batches.unwrap_or(8),
            ckpt_every: o.ckpt_every.unwrap_or(100),
            log_every: o.log_every.unwrap_or(10),
            precision: o.precision.unwrap_or(if cuda {
                Precision::Bf16
            } else {
                Precision::F32
            }),
            tokenizer: o.tokenizer.clone().unwrap_or_else(|| "bytes".into()),
            doc_sep: o
                .doc_sep
                .clone()
                .unwrap_or_else(|| crate::data::EOT.to_string()),
            val_frac: o.val_frac.unwrap_or(0.01),
            split_seed: o.split_seed.unwrap_or(0),
            eval_sets: o.eval_sets.clone().unwrap_or_default(),
            eval_dir: o.eval_dir.clone(),
            world_size: 1,
        };
        cfg.validate(max_seq_len)?;
        Ok(cfg)
    }

    /// A resumed run's settings: the saved ones, with the flags that may change applied
    /// (`steps`, `eval_every`, `eval_batches`, `ckpt_every`, `log_every`, `eval_sets`,
    /// `eval_dir`); any other flag
    /// that differs from the saved value is an error naming it.
    pub fn resume_with(&self, o: &TrainOverrides, max_seq_len: usize) -> Result<TrainConfig> {
        let mut c = self.clone();
        if let Some(s) = o.steps {
            if s != c.steps {
                tracing::warn!(
                    "steps {} -> {s}: the cosine schedule now spans {s} steps",
                    c.steps
                );
            }
            c.steps = s;
        }
        c.eval_every = o.eval_every.unwrap_or(c.eval_every);
        c.eval_batches = o.eval_batches.unwrap_or(c.eval_batches);
        c.ckpt_every = o.ckpt_every.unwrap_or(c.ckpt_every);
        c.log_every = o.log_every.unwrap_or(c.log_every);
        c.eval_sets = o.eval_sets.clone().unwrap_or(c.eval_sets);
        c.eval_dir = o.eval_dir.clone().or(c.eval_dir);
        fn same<T: PartialEq + std::fmt::Display>(
            key: &'static str,
            given: &Option<T>,
            saved: &T,
        ) -> Result<()> {
            match given {
                Some(g) if g != saved => Err(TrainError::setting(
                    key,
                    g,
                    format!("the run being resumed has {key} = {saved}; a resumed run keeps its settings (start a new --out to change it)"),
                )),
                _ => Ok(()),
            }
        }
        same("batch_size", &o.batch_size, &c.batch_size)?;
        same("seq_len", &o.seq_len, &c.seq_len)?;
        same("grad_accum", &o.grad_accum, &c.grad_accum)?;
        same("lr", &o.lr, &c.lr)?;
        same("min_lr_frac", &o.min_lr_frac, &c.min_lr_frac)?;
        same("warmup", &o.warmup, &c.warmup)?;
        same("weight_decay", &o.weight_decay, &c.weight_decay)?;
        same("grad_clip", &o.grad_clip, &c.grad_clip)?;
        same("seed", &o.seed, &c.seed)?;
        same("precision", &o.precision, &c.precision)?;
        same("tokenizer", &o.tokenizer, &c.tokenizer)?;
        same("val_frac", &o.val_frac, &c.val_frac)?;
        same("split_seed", &o.split_seed, &c.split_seed)?;
        if let Some(d) = &o.doc_sep {
            if d != &c.doc_sep {
                return Err(TrainError::setting(
                    "doc_sep",
                    format!("{d:?}"),
                    format!("the run being resumed has doc_sep = {:?}", c.doc_sep),
                ));
            }
        }
        c.validate(max_seq_len)?;
        Ok(c)
    }

    /// Checks every setting; the error names it.
    pub fn validate(&self, max_seq_len: usize) -> Result<()> {
        let at_least_1 = [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("grad_accum", self.grad_accum),
            ("eval_batches", self.eval_batches),
            ("log_every", self.log_every),
            ("world_size", self.world_size),
        ];
        for (k, v) in at_least_1 {
            if v == 0 {
                return Err(TrainError::setting(k, v, "must be at least 1"));
            }
        }
        if self.seq_len > max_seq_len {
            return Err(TrainError::setting(
                "seq_len",
                self.seq_len,
                format!("longer than the model's max_seq_len = {max_seq_len}"),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::setting(
                "lr",
                self.lr,
                "must be finite and positive",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_frac) {
            return Err(TrainError::setting(
                "min_lr_frac",
                self.min_lr_frac,
                "must be in [0, 1]",
            ));
        }
        if self.warmup > self.steps {
            return Err(TrainError::setting(
                "warmup",
                self.warmup,
                format!("longer than steps = {}", self.steps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::setting(
                "weight_decay",
                self.weight_decay,
                "must be finite and >= 0",
            ));
        }
        for (k, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::setting(k, b, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TrainError::setting(
                "eps",
                self.eps,
                "must be finite and positive",
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(TrainError::setting(
                "grad_clip",
                self.grad_clip,
                "must be finite and >= 0 (0: no clipping)",
            ));
        }
        if !(self.val_frac > 0.0 && self.val_frac < 1.0) {
            return Err(TrainError::setting(
                "val_frac",
                self.val_frac,
                "must be in (0, 1)",
            ));
        }
        self.tokenizer.parse::<crate::data::TokenizerSpec>()?;
        for name in &self.eval_sets {
            crate::evalsets::locate(name, &self.eval_sets_dir())?;
        }
        Ok(())
    }

    /// The folder of the prepared eval sets.
    pub fn eval_sets_dir(&self) -> std::path::PathBuf {
        self.eval_dir
            .clone()
            .unwrap_or_else(|| crate::evalsets::DEFAULT_EVAL_DIR.into())
    }

    /// As TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| TrainError::setting("train.toml", "(settings)", e.to_string()))
    }

    /// Parses train.toml (unknown keys are errors naming the key).
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<TrainConfig> {
        toml::from_str(text).map_err(|e| TrainError::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
