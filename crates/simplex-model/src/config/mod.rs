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

use crate::moe::MoeConfig;

mod presets;
mod toml_text;
mod validate;

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

impl Config {
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
}
