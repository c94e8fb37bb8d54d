//! The sweep file (`SWEEP.toml`): sizes x attention kinds x seeds at a token budget per
//! parameter, and the runs it plans.
//!
//! ```toml
//! data = "data/corpus"          # a dataset folder written by `simplex prepare`
//! tokens_per_param = 20.0       # training tokens = tokens_per_param * budget parameters
//! budget_params = "non_embedding"   # or "total" / "active"
//! seeds = [0]
//! seq_len = 512
//! batch_size = 32
//! lr = 3e-3                     # peak; a size may set its own
//! eval_sets = ["heldout", "gsm", "mmlu", "humaneval"]
//! eval_dir = "evals"            # where mmlu.jsonl, humaneval.jsonl are (scripts/prepare-evals.py)
//! eval_items = 500              # items per set at most (0: all)
//!
//! [kinds.dot]
//! pattern = "D"                 # repeated to each size's layer count
//! [kinds.simplicial]
//! pattern = "DDDS"              # every fourth layer 2-simplicial
//! simplicial = { w1 = 512, w2 = 32 }
//!
//! [[sizes]]
//! name = "xs"
//! d_model = 128
//! layers = 4
//! heads = 2                     # head dim = d_model / heads
//! # mlp_hidden = 352            # default: 8/3 d_model rounded up to a multiple of 32
//! # lr, batch_size, seeds       # optional: this size's own
//! ```
//! A run is named `SIZE-KIND-sSEED`. Every run of a kind gets the same data, sequence length,
//! batch and token budget per parameter, so the kinds differ only in their attention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use simplex_model::{Config, ModelInfo, SimplicialConfig};

use crate::error::{Result, TrainError};

/// Which parameter count the token budget multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetParams {
    /// Parameters outside the token embedding and output head (Kaplan et al.'s count).
    #[default]
    NonEmbedding,
    /// Every parameter.
    Total,
    /// Non-embedding parameters a token passes through (equal to non-embedding for dense
    /// models; MoE layers count their router, routed top-k and shared experts).
    Active,
}

/// One attention kind of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// Layer letters (`D`, `L`, `S`), repeated to the size's layer count.
    pub pattern: String,
    /// Settings of the S layers (windows, heads).
    #[serde(default)]
    pub simplicial: Option<SimplicialConfig>,
    /// Sliding window of L layers [default: the sequence length].
    #[serde(default)]
    pub window: Option<usize>,
    /// Mixture-of-experts feed-forward layers (the model config's `[moe]` section); fit such
    /// kinds on `params_active` and set `budget_params = "active"`.
    #[serde(default)]
    pub moe: Option<simplex_model::MoeConfig>,
}

/// One model size of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    /// Its name in run names and tables.
    pub name: String,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Blocks.
    pub layers: usize,
    /// Query heads (head dim = d_model / heads).
    pub heads: usize,
    /// SwiGLU hidden width [default: 8/3 d_model rounded up to a multiple of 32].
    #[serde(default)]
    pub mlp_hidden: Option<usize>,
    /// Peak learning rate of this size [default: the sweep's].
    #[serde(default)]
    pub lr: Option<f64>,
    /// Sequences per update of this size [default: the sweep's].
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Seeds of this size [default: the sweep's] (fewer for the largest, costliest sizes).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
}

/// A sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// A prepared dataset folder.
    pub data: PathBuf,
    /// Training tokens per budget parameter.
    pub tokens_per_param: f64,
    /// Which count the budget multiplies.
    #[serde(default)]
    pub budget_params: BudgetParams,
    /// Seeds of every (size, kind).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per update.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup as a fraction of each run's updates.
    #[serde(default = "default_warmup_frac")]
    pub warmup_frac: f64,
    /// Compute dtype (`f32` or `bf16`) [default: bf16 on CUDA, f32 on the CPU].
    #[serde(default)]
    pub precision: Option<String>,
    /// Evaluation sets scored after each run (`heldout`, `gsm`, `mmlu`, `humaneval`, a .jsonl).
    #[serde(default = "default_eval_sets")]
    pub eval_sets: Vec<String>,
    /// Folder of the prepared evaluation files.
    #[serde(default = "default_eval_dir")]
    pub eval_dir: PathBuf,
    /// Items per evaluation set at most (0: all).
    #[serde(default = "default_eval_items")]
    pub eval_items: usize,
    /// Batches of held-out windows for `heldout`.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// The attention kinds, by name.
    pub kinds: BTreeMap<String, KindSpec>,
    /// The model sizes, smallest first.
    pub sizes: Vec<SizeSpec>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_warmup_frac() -> f64 {
    0.05
}
fn default_eval_sets() -> Vec<String> {
    vec!["heldout".into()]
}
fn default_eval_dir() -> PathBuf {
    PathBuf::from("evals")
}
fn default_eval_items() -> usize {
    500
}
fn default_eval_batches() -> usize {
    8
}

/// One training run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// `SIZE-KIND-sSEED`.
    pub name: String,
    /// The size's name.
    pub size: String,
    /// The kind's name.
    pub kind: String,
    /// Weight-init and data-order seed.
    pub seed: u64,
    /// The model.
    pub model: Config,
    /// Its parameter and FLOP counts at the sweep's sequence length.
    pub info: ModelInfo,
    /// The count the budget multiplies.
    pub budget_params: u64,
    /// Optimizer updates.
    pub steps: usize,
    /// Sequences per update.
    pub batch_size: usize,
    /// Training tokens (`steps * batch_size * seq_len`).
    pub tokens: u64,
    /// Training FLOPs (3x the forward FLOPs per token, times the tokens).
    pub flops: f64,
    /// Peak learning rate.
    pub lr: f64,
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl SweepSpec {
    /// Reads and checks a sweep file (relative `data` and `eval_dir` are relative to the
    /// current directory, like paths on the command line). Every problem found is reported
    /// at once, each naming its key.
    pub fn read(path: &Path) -> Result<SweepSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path, format!("cannot read the sweep file: {e}")))?;
        let spec: SweepSpec = toml::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        spec.plan(257).map_err(|e| match e {
            TrainError::ConfigFile { reason, .. } => bad(path, reason),
            e => e,
        })?;
        Ok(spec)
    }

    /// The runs, sizes in file order, then kinds by name, then seeds; `vocab_size` is the
    /// tokenizer's. Problems are all reported at once (the path in the error is a placeholder
    /// that [`SweepSpec::read`] replaces with the file).
    pub fn plan(&self, vocab_size: usize) -> Result<Vec<PlannedRun>> {
        let mut problems = Vec::new();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.tokens_per_param) {
            problems.push(format!(
                "tokens_per_param = {}: must be positive",
                self.tokens_per_param
            ));
        }
        if !positive(self.lr) {
            problems.push(format!("lr = {}: must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup_frac) {
            problems.push(format!(
                "warmup_frac = {}: must be in [0, 1)",
                self.warmup_frac
            ));
        }
        if self.seq_len == 0 || self.batch_size == 0 {
            problems.push("seq_len and batch_size must be at least 1".into());
        }
        if self.seeds.is_empty() {
            problems.push("seeds = []: give at least one seed".into());
        }
        if self.kinds.is_empty() {
            problems.push("no [kinds.NAME] table: give at least one attention kind".into());
        }
        if self.sizes.is_empty() {
            problems.push("no [[sizes]] entry: give at least one model size".into());
        }
        if let Some(p) = &self.precision {
            if p != "f32" && p != "bf16" {
                problems.push(format!("precision = {p:?}: expected \"f32\" or \"bf16\""));
            }
        }
        for k in self.kinds.keys() {
            if !name_ok(k) {
                problems.push(format!(
                    "kinds.{k}: names use letters, digits, `_` and `.` only"
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.sizes {
            if !name_ok(&s.name) {
                problems.push(format!(
                    "sizes name {:?}: names use letters, digits, `_` and `.` only",
                    s.name
                ));
            }
            if !seen.insert(&s.name) {
                problems.push(format!("sizes name {:?}: given twice", s.name));
            }
            if s.seeds.as_ref().is_some_and(|v| v.is_empty()) {
                problems.push(format!(
                    "sizes {:?}: seeds = []: give at least one seed",
                    s.name
                ));
            }
        }
        let mut runs = Vec::new();
        for size in &self.sizes {
            for (kind_name, kind) in &self.kinds {
                let model = match self.model(size, kind, vocab_size) {
                    Ok(m) => m,
                    Err(e) => {
                        problems.push(format!("size {} x kind {kind_name}: {e}", size.name));
                        continue;
                    }
                };
                let info = ModelInfo::new(&model, self.seq_len);
                let budget_params = match self.budget_params {
                    BudgetParams::NonEmbedding => info.params_non_embedding,
                    BudgetParams::Total => info.params_total,
                    BudgetParams::Active => info.params_active,
                };
                let batch_size = size.batch_size.unwrap_or(self.batch_size);
                let per_step = (batch_size * self.seq_len) as f64;
                let steps = ((self.tokens_per_param * budget_params as f64 / per_step).ceil()
                    as usize)
                    .max(1);
                let tokens = (steps as f64 * per_step) as u64;
                for &seed in size.seeds.as_ref().unwrap_or(&self.seeds) {
                    runs.push(PlannedRun {
                        name: format!("{}-{kind_name}-s{seed}", size.name),
                        size: size.name.clone(),
                        kind: kind_name.clone(),
                        seed,
                        model: model.clone(),
                        info: info.clone(),
                        budget_params,
                        steps,
                        batch_size,
                        tokens,
                        flops: 3.0 * info.flops_per_token * tokens as f64,
                        lr: size.lr.unwrap_or(self.lr),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(runs)
        } else {
            Err(bad(Path::new("SWEEP.toml"), problems.join("; ")))
        }
    }

    /// The model of `size` with the attention of `kind`.
    fn model(
        &self,
        size: &SizeSpec,
        kind: &KindSpec,
        vocab: usize,
    ) -> std::result::Result<Config, String> {
        let p = &kind.pattern;
        if p.is_empty() || !size.layers.is_multiple_of(p.chars().count()) {
            return Err(format!(
                "pattern {p:?} does not divide layers = {} (the pattern repeats to the layer count)",
                size.layers
            ));
        }
        let reps = size.layers / p.chars().count();
        let cfg = Config {
            vocab_size: vocab,
            d_model: size.d_model,
            pattern: p.repeat(reps),
            heads_q: size.heads,
            heads_kv: None,
            head_dim: None,
            window: kind.window.unwrap_or(self.seq_len),
            simplicial: kind.simplicial.clone().unwrap_or_default(),
            mlp_hidden: size
                .mlp_hidden
                .unwrap_or((8 * size.d_model / 3).div_ceil(32) * 32),
            rope_theta: 10_000.0,
            tie_embeddings: true,
            norm_eps: 1e-5,
            max_seq_len: self.seq_len,
            bidirectional: false,
            rope: true,
            moe: kind.moe.clone(),
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}
