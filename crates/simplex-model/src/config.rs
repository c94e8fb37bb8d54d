//! The model configuration: TOML in and out, presets, validation with errors that name the key.
//!
//! ```toml
//! vocab_size = 256
//! d_model = 128
//! pattern = "DDDS"          # one letter per layer, bottom to top: D, L or S
//! heads_q = 4
//! heads_kv = 4              # optional, default heads_q
//! head_dim = 32             # optional, default d_model / heads_q
//! window = 64               # L layers: causal sliding window
//! mlp_hidden = 384
//! rope_theta = 10000.0
//! tie_embeddings = true
//! norm_eps = 1e-5
//! max_seq_len = 256
//! bidirectional = false     # optional: true for an encoder (TaskModel); a language model is causal
//! rope = true               # optional: false drops RoPE (no position signal in D/L layers)
//!
//! [simplicial]              # S layers
//! heads_q = 4               # optional, default: the top-level heads_q
//! heads_kv = 1              # optional, default: simplicial heads_q
//! head_dim = 33             # optional, default d_model / heads_q
//! w1 = 64
//! w2 = 8
//! variant = "determinant"   # or "trilinear" (default)
//! rotate = false            # determinant only: rotate 3-chunks by position (relative positions)
//! ```
//! Keys that do not exist are rejected; absent required keys are all listed in one error.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::moe::MoeConfig;

/// What one layer's attention is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// `D`: causal dot-product attention over the whole prefix, with RoPE.
    Dot,
    /// `L`: causal sliding-window dot-product attention (`window`), with RoPE.
    Local,
    /// `S`: 2-simplicial attention over the windows `(w1, w2)`.
    Simplicial,
}

impl LayerKind {
    /// The pattern letter.
    pub fn letter(self) -> char {
        match self {
            LayerKind::Dot => 'D',
            LayerKind::Local => 'L',
            LayerKind::Simplicial => 'S',
        }
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Dot => "dot-product (causal)",
            LayerKind::Local => "dot-product (sliding window)",
            LayerKind::Simplicial => "2-simplicial",
        }
    }
}

/// Logits of the 2-simplicial layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimplicialVariant {
    /// `sum_l q_l k1_l k2_l`
    #[default]
    Trilinear,
    /// Sum of 3x3 determinants over chunks of three coordinates (rotation invariant).
    Determinant,
}

impl From<SimplicialVariant> for simplex_attn::Variant {
    fn from(v: SimplicialVariant) -> Self {
        match v {
            SimplicialVariant::Trilinear => simplex_attn::Variant::Trilinear,
            SimplicialVariant::Determinant => simplex_attn::Variant::Determinant,
        }
    }
}

/// The `[simplicial]` section: the 2-simplicial (S) layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimplicialConfig {
    /// Query heads; default: the top-level `heads_q`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_q: Option<usize>,
    /// Key/value heads (k1, v1, k2, v2 each); default: `simplicial.heads_q`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_kv: Option<usize>,
    /// Head dim; default `d_model / simplicial.heads_q`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// First window (k1, v1).
    pub w1: usize,
    /// Second window (k2, v2).
    pub w2: usize,
    /// Trilinear or determinant logits.
    #[serde(default)]
    pub variant: SimplicialVariant,
    /// Determinant variant only: rotate every 3-chunk of q, k1, k2 about a fixed axis by an
    /// angle proportional to the position, so the logits depend on relative positions only
    /// (section 2 of the spec). Off by default: S layers then have no position signal of
    /// their own and rely on the D/L layers' RoPE.
    #[serde(default)]
    pub rotate: bool,
}

impl Default for SimplicialConfig {
    fn default() -> Self {
        SimplicialConfig {
            heads_q: None,
            heads_kv: None,
            head_dim: None,
            w1: 512,
            w2: 32,
            variant: SimplicialVariant::Trilinear,
            rotate: false,
        }
    }
}

fn default_window() -> usize {
    256
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_true() -> bool {
    true
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}

/// A decoder-only language model (see the module doc for the TOML form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// One letter per layer, bottom to top: `D`, `L` or `S`.
    pub pattern: String,
    /// Query heads of the dot-product (D, L) layers.
    pub heads_q: usize,
    /// Key/value heads of the D/L layers; default `heads_q`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_kv: Option<usize>,
    /// Head dim of the D/L layers; default `d_model / heads_q`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Causal sliding window of the L layers.
    #[serde(default = "default_window")]
    pub window: usize,
    /// The 2-simplicial (S) layers.
    #[serde(default)]
    pub simplicial: SimplicialConfig,
    /// Hidden width of the SwiGLU MLP.
    pub mlp_hidden: usize,
    /// RoPE base of the D/L layers (and of the S layers' chunk rotation).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// The output head is the transposed token embedding.
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Longest sequence (RoPE tables, KV cache of D layers).
    pub max_seq_len: usize,
    /// Every layer sees the whole sequence (an encoder, for [`crate::TaskModel`]): D layers all
    /// keys, L layers `|i - j| < window`, S layers `|i - j| < w1` and `|i - k| < w2`. A language
    /// model ([`crate::Model`]) must be causal.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bidirectional: bool,
    /// RoPE on the queries and keys of the D/L layers. Off, no layer sees positions at all: the
    /// model is then permutation-equivariant, which suits tasks whose labels ignore positions.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub rope: bool,
    /// Mixture-of-experts feed-forward layers (the `[moe]` section); absent: every layer is
    /// a dense SwiGLU MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
}

/// One commented line of [`Config::to_full_toml_string`]: key, value, comment.
type TomlLine<'a> = (&'a str, toml::Value, &'a str);

/// The `[moe]` section of [`Config::to_full_toml_string`]: every key, the expert width
/// resolved, the optional keys that are absent as comments.
fn moe_toml(m: &MoeConfig, mlp_hidden: usize, lines: &dyn Fn(&[TomlLine]) -> String) -> String {
    use toml::Value;
    let int = |n: usize| Value::Integer(n as i64);
    let router = match m.router {
        crate::moe::RouterKind::Softmax => "softmax",
        crate::moe::RouterKind::Sigmoid => "sigmoid",
    };
    let keys: [(&str, Value, &str); 8] = [
        ("experts", int(m.experts), "routed experts per MoE layer"),
        ("top_k", int(m.top_k), "experts per token"),
        (
            "expert_hidden",
            int(m.hidden(mlp_hidden)),
            "hidden width of one expert (default: mlp_hidden / top_k)",
        ),
        (
            "shared_experts",
            int(m.shared_experts),
            "always-on experts of the same width",
        ),
        (
            "router",
            Value::String(router.into()),
            "\"softmax\" or \"sigmoid\" scores",
        ),
        (
            "normalize",
            Value::Boolean(m.normalize),
            "the top-k weights sum to 1",
        ),
        (
            "balance_weight",
            Value::Float(m.balance_weight),
            "load-balancing loss weight",
        ),
        (
            "z_loss_weight",
            Value::Float(m.z_loss_weight),
            "router z-loss weight",
        ),
    ];
    let mut text = format!(
        "\n[moe]                      # mixture-of-experts feed-forward layers\n{}",
        lines(&keys)
    );
    match m.capacity_factor {
        Some(c) => text.push_str(&lines(&[(
            "capacity_factor",
            Value::Float(c),
            "at most ceil(factor * tokens * top_k / experts) per expert",
        )])),
        None => {
            text.push_str("# capacity_factor = 1.25     # absent: dropless (no token dropped)\n")
        }
    }
    match &m.layers {
        Some(l) => text.push_str(&lines(&[(
            "layers",
            Value::Array(l.iter().map(|&i| int(i)).collect()),
            "MoE layers (indices from 0)",
        )])),
        None => text.push_str("# layers = [1, 3]           # absent: every layer is MoE\n"),
    }
    text
}

/// Resolved head layout of one attention kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads.
    pub kv: usize,
    /// Head dim.
    pub dim: usize,
}

/// The preset names: the dense models smallest first, then the mixture-of-experts ones.
pub const PRESETS: [&str; 8] = [
    "tiny",
    "small",
    "25m",
    "100m",
    "300m",
    "tiny-moe",
    "25m-moe",
    "25m-moe-dot",
];

fn invalid(
    key: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// A named preset (see [`PRESETS`]); the name in the error lists the valid ones.
    ///
    /// Sizes are non-embedding parameters: `tiny` 0.9M (trains on 2 CPU cores), `small` 6.7M,
    /// `25m` 26.7M (`DDDS` x2, d_model 512: the spec's reference model), `100m` 103M,
    /// `300m` 321M. Mixture of experts (8 experts, top-2, expert width `mlp_hidden / 2`, so
    /// that a token's active parameters equal the dense model's): `tiny-moe` (`tiny` with 4
    /// experts, top-2), `25m-moe` (`25m`: `DDDS` x2, 26.7M active of 78.6M non-embedding) and
    /// its all-dot-product twin `25m-moe-dot` (`DDDDDDDD`, 25.7M active). The byte-level vocabulary (256) is
    /// the default; a trainer with another tokenizer sets `vocab_size`.
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        let base =
            |d_model: usize, pattern: &str, heads: usize, mlp_hidden: usize, max_seq_len: usize| {
                Config {
                    vocab_size: 256,
                    d_model,
                    pattern: pattern.to_string(),
                    heads_q: heads,
                    heads_kv: None,
                    head_dim: None,
                    window: 256,
                    simplicial: SimplicialConfig::default(),
                    mlp_hidden,
                    rope_theta: 10_000.0,
                    tie_embeddings: true,
                    norm_eps: 1e-5,
                    max_seq_len,
                    bidirectional: false,
                    rope: true,
                    moe: None,
                }
            };
        let cfg = match name {
            "tiny" => Config {
                window: 64,
                simplicial: SimplicialConfig {
                    w1: 64,
                    w2: 8,
                    ..SimplicialConfig::default()
                },
                ..base(128, "DDDS", 4, 384, 256)
            },
            "small" => Config {
                window: 128,
                simplicial: SimplicialConfig {
                    w1: 128,
                    w2: 16,
                    ..SimplicialConfig::default()
                },
                ..base(256, "DDDSDDDS", 8, 704, 512)
            },
            "25m" => base(512, "DDDSDDDS", 8, 1408, 1024),
            "100m" => base(768, "DDDSDDDSDDDS", 12, 2560, 2048),
            "300m" => base(1024, &"DDDS".repeat(6), 16, 2816, 2048),
            "tiny-moe" => Config {
                moe: Some(MoeConfig::new(4, 2)),
                ..Config::preset("tiny")?
            },
            "25m-moe" => Config {
                moe: Some(MoeConfig::new(8, 2)),
                ..base(512, "DDDSDDDS", 8, 1408, 1024)
            },
            "25m-moe-dot" => Config {
                moe: Some(MoeConfig::new(8, 2)),
                ..base(512, "DDDDDDDD", 8, 1408, 1024)
            },
            other => {
                return Err(ConfigError::UnknownPreset {
                    name: other.to_string(),
                    known: PRESETS.join(", "),
                })
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates a TOML config; unknown keys are errors, and all absent required
    /// keys are reported at once.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text)?;
        let mut missing: Vec<String> = [
            "vocab_size",
            "d_model",
            "pattern",
            "heads_q",
            "mlp_hidden",
            "max_seq_len",
        ]
        .iter()
        .filter(|k| !table.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
        if let Some(toml::Value::Table(s)) = table.get("simplicial") {
            missing.extend(
                ["w1", "w2"]
                    .iter()
                    .filter(|k| !s.contains_key(**k))
                    .map(|k| format!("simplicial.{k}")),
            );
        }
        if let Some(toml::Value::Table(m)) = table.get("moe") {
            missing.extend(
                ["experts", "top_k"]
                    .iter()
                    .filter(|k| !m.contains_key(**k))
                    .map(|k| format!("moe.{k}")),
            );
        }
        if !missing.is_empty() {
            return Err(ConfigError::Missing {
                keys: missing.join(", "),
            });
        }
        // from the text again, so that errors keep their line
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML (what `from_toml_str` reads back).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// The config as TOML with every key written out, each with a comment, the optional head
    /// layouts at their resolved values and the `[simplicial]` section included: a file to
    /// start a hand-written config from (`from_toml_str` reads it back).
    pub fn to_full_toml_string(&self) -> String {
        use toml::Value;
        let int = |n: usize| Value::Integer(n as i64);
        let (d, s) = (self.dot_heads(), self.simplicial_heads());
        let variant = match self.simplicial.variant {
            SimplicialVariant::Trilinear => "trilinear",
            SimplicialVariant::Determinant => "determinant",
        };
        let top: [(&str, Value, &str); 14] = [
            ("vocab_size", int(self.vocab_size), "token ids; must cover the tokenizer's (bytes: 257, end-of-text included)"),
            ("d_model", int(self.d_model), "width of the residual stream"),
            ("pattern", Value::String(self.pattern.clone()), "one letter per layer, bottom to top: D (dot-product), L (sliding window), S (2-simplicial)"),
            ("heads_q", int(self.heads_q), "query heads of the D/L layers"),
            ("heads_kv", int(d.kv), "key/value heads of the D/L layers (default: heads_q)"),
            ("head_dim", int(d.dim), "head dim of the D/L layers (default: d_model / heads_q)"),
            ("window", int(self.window), "sliding window of the L layers"),
            ("mlp_hidden", int(self.mlp_hidden), "hidden width of the SwiGLU MLP"),
            ("rope_theta", Value::Float(self.rope_theta), "RoPE base"),
            ("tie_embeddings", Value::Boolean(self.tie_embeddings), "the output head is the transposed token embedding"),
            ("norm_eps", Value::Float(self.norm_eps), "RMSNorm epsilon"),
            ("max_seq_len", int(self.max_seq_len), "longest sequence"),
            ("bidirectional", Value::Boolean(self.bidirectional), "true: an encoder (task models); a language model is causal"),
            ("rope", Value::Boolean(self.rope), "false: no RoPE (no position signal in D/L layers)"),
        ];
        let simplicial: [(&str, Value, &str); 7] = [
            (
                "heads_q",
                int(s.q),
                "query heads of the S layers (default: the top-level heads_q)",
            ),
            (
                "heads_kv",
                int(s.kv),
                "key/value heads of the S layers (default: simplicial heads_q)",
            ),
            (
                "head_dim",
                int(s.dim),
                "head dim of the S layers (default: d_model / simplicial heads_q)",
            ),
            ("w1", int(self.simplicial.w1), "first window (k1, v1)"),
            ("w2", int(self.simplicial.w2), "second window (k2, v2)"),
            (
                "variant",
                Value::String(variant.into()),
                "\"trilinear\" or \"determinant\"",
            ),
            (
                "rotate",
                Value::Boolean(self.simplicial.rotate),
                "determinant only: rotate 3-chunks by position",
            ),
        ];
        let lines = |keys: &[(&str, Value, &str)]| -> String {
            keys.iter()
                .map(|(k, v, c)| format!("{:<28}# {c}\n", format!("{k} = {v}")))
                .collect()
        };
        let mut text = format!(
            "{}\n[simplicial]               # the S layers\n{}",
            lines(&top),
            lines(&simplicial)
        );
        if let Some(m) = &self.moe {
            text.push_str(&moe_toml(m, self.mlp_hidden, &lines));
        }
        text
    }

    /// The layer kinds, bottom to top (call after `validate`; unknown letters are skipped).
    pub fn layers(&self) -> Vec<LayerKind> {
        self.pattern
            .chars()
            .filter_map(|c| match c {
                'D' => Some(LayerKind::Dot),
                'L' => Some(LayerKind::Local),
                'S' => Some(LayerKind::Simplicial),
                _ => None,
            })
            .collect()
    }

    /// Whether layer `i` (from 0) has an MoE feed-forward.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.applies_to(i))
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.pattern.chars().count()
    }

    /// Head layout of the D/L layers.
    pub fn dot_heads(&self) -> Heads {
        let q = self.heads_q;
        Heads {
            q,
            kv: self.heads_kv.unwrap_or(q),
            dim: self
                .head_dim
                .unwrap_or(self.d_model.checked_div(q).unwrap_or(0)),
        }
    }

    /// Head layout of the S layers.
    pub fn simplicial_heads(&self) -> Heads {
        let q = self.simplicial.heads_q.unwrap_or(self.heads_q);
        Heads {
            q,
            kv: self.simplicial.heads_kv.unwrap_or(q),
            dim: self
                .simplicial
                .head_dim
                .unwrap_or(self.d_model.checked_div(q).unwrap_or(0)),
        }
    }

    /// Checks every key; the error names the key and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("mlp_hidden", self.mlp_hidden),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be at least 1"));
            }
        }
        if self.pattern.is_empty() {
            return Err(invalid(
                "pattern",
                "\"\"",
                "needs at least one layer letter (D, L or S)",
            ));
        }
        if let Some((pos, c)) = self
            .pattern
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, 'D' | 'L' | 'S'))
        {
            return Err(invalid(
                "pattern",
                format!("\"{}\"", self.pattern),
                format!("letter `{c}` at position {pos} is not a layer kind (D = dot-product, L = sliding window, S = 2-simplicial)"),
            ));
        }
        let layers = self.layers();
        let has = |k: LayerKind| layers.contains(&k);
        if has(LayerKind::Dot) || has(LayerKind::Local) {
            self.check_heads("", self.dot_heads(), self.heads_kv, self.head_dim)?;
            if self.rope && !self.dot_heads().dim.is_multiple_of(2) {
                return Err(invalid(
                    "head_dim",
                    self.dot_heads().dim,
                    "RoPE needs an even head dim",
                ));
            }
            if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
                return Err(invalid(
                    "rope_theta",
                    self.rope_theta,
                    "must be finite and positive",
                ));
            }
        }
        if has(LayerKind::Local) && self.window == 0 {
            return Err(invalid("window", 0, "a window must be at least 1"));
        }
        if has(LayerKind::Simplicial) {
            let s = &self.simplicial;
            let h = self.simplicial_heads();
            if s.heads_q == Some(0) {
                return Err(invalid("simplicial.heads_q", 0, "must be at least 1"));
            }
            self.check_heads("simplicial.", h, s.heads_kv, s.head_dim)?;
            for (key, w) in [("simplicial.w1", s.w1), ("simplicial.w2", s.w2)] {
                if w == 0 {
                    return Err(invalid(key, 0, "a window must be at least 1"));
                }
            }
            if s.variant == SimplicialVariant::Determinant && !h.dim.is_multiple_of(3) {
                return Err(invalid(
                    "simplicial.head_dim",
                    h.dim,
                    "the determinant variant needs a multiple of 3 (chunks of three coordinates)",
                ));
            }
            if s.rotate && !self.rope {
                return Err(invalid(
                    "simplicial.rotate",
                    true,
                    "rope = false asks for no position signal; the chunk rotation is one",
                ));
            }
            if s.rotate && s.variant != SimplicialVariant::Determinant {
                return Err(invalid(
                    "simplicial.rotate",
                    true,
                    "only the determinant variant is rotation invariant; set variant = \"determinant\"",
                ));
            }
        }
        if let Some(m) = &self.moe {
            m.validate(self.n_layers(), self.mlp_hidden)?;
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(invalid(
                "norm_eps",
                self.norm_eps,
                "must be finite and positive",
            ));
        }
        Ok(())
    }

    /// Heads of one kind: `prefix` is `""` or `"simplicial."`, for the key names.
    fn check_heads(
        &self,
        prefix: &'static str,
        h: Heads,
        kv_given: Option<usize>,
        dim_given: Option<usize>,
    ) -> Result<(), ConfigError> {
        let key = |k: &'static str| -> &'static str {
            match (prefix, k) {
                ("", k) => k,
                (_, "heads_q") => "simplicial.heads_q",
                (_, "heads_kv") => "simplicial.heads_kv",
                _ => "simplicial.head_dim",
            }
        };
        if h.q == 0 {
            return Err(invalid(key("heads_q"), 0, "must be at least 1"));
        }
        if kv_given == Some(0) {
            return Err(invalid(key("heads_kv"), 0, "must be at least 1"));
        }
        if !h.q.is_multiple_of(h.kv) {
            return Err(invalid(
                key("heads_q"),
                h.q,
                format!(
                    "not a multiple of {} = {} (grouped-query attention)",
                    key("heads_kv"),
                    h.kv
                ),
            ));
        }
        match dim_given {
            Some(0) => Err(invalid(key("head_dim"), 0, "must be at least 1")),
            Some(_) => Ok(()),
            None if !self.d_model.is_multiple_of(h.q) => Err(invalid(
                "d_model",
                self.d_model,
                format!(
                    "not divisible by {} = {} (set {} to choose the head dim)",
                    key("heads_q"),
                    h.q,
                    key("head_dim")
                ),
            )),
            None => Ok(()),
        }
    }
}
