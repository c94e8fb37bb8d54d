//! The models a comparison trains: the same encoder with one attention kind swapped.
//!
//! Every model is `layers` bidirectional blocks of width `d_model` with `heads` attention heads,
//! the same SwiGLU MLP (`mlp_hidden`), no RoPE (the tasks' labels ignore positions, so no model
//! gets a position signal), windows covering the whole sequence, and a per-token linear head.
//! Only the attention differs:
//!
//! ```text
//! dot          softmax_j(q_i . k_j) v_j                      q, k, v, o:         4 C Hq Dh
//! trilinear    softmax_(j,k)(sum q_i k1_j k2_k) v1_j ∘ v2_k   q, k1, k2, v1, v2, o: 6 C Hq Ds
//! determinant  as trilinear, logits sum_c det[q; k1; k2]      (Ds a multiple of 3)
//! ```
//! S layers use the head dim `Ds = d_model / heads`. With [`Equalize::Params`] (the default) the
//! dot layers get `Dh = 3/2 Ds`, so a dot layer has exactly as many attention parameters as an
//! S layer and the three models have the same parameter count; with [`Equalize::Width`] every
//! kind uses `Ds` (the S models then have 1.5x the attention parameters).

use serde::{Deserialize, Serialize};
use simplex_model::{Config, SimplicialConfig, SimplicialVariant};

use crate::error::{Result, TrainError};

/// The attention of a task model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttnKind {
    /// Dot-product attention (D layers).
    Dot,
    /// 2-simplicial attention with trilinear logits (S layers).
    Trilinear,
    /// 2-simplicial attention with determinant logits (S layers).
    Determinant,
}

/// The kind names, in the order [`AttnKind::ALL`].
pub const KIND_NAMES: [&str; 3] = ["dot", "trilinear", "determinant"];

impl AttnKind {
    /// Every kind.
    pub const ALL: [AttnKind; 3] = [AttnKind::Dot, AttnKind::Trilinear, AttnKind::Determinant];

    /// The name used in flags, files and tables.
    pub fn name(self) -> &'static str {
        match self {
            AttnKind::Dot => "dot",
            AttnKind::Trilinear => "trilinear",
            AttnKind::Determinant => "determinant",
        }
    }

    /// The kind called `name`; the error names `--kinds` and lists the known names.
    pub fn parse(name: &str) -> Result<AttnKind> {
        AttnKind::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| {
                TrainError::setting(
                    "--kinds",
                    name,
                    format!("unknown attention kind; known: {}", KIND_NAMES.join(", ")),
                )
            })
    }
}

impl std::fmt::Display for AttnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the dot-product model is sized against the 2-simplicial ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Equalize {
    /// Equal parameter counts: dot heads are 1.5x as wide as S heads.
    #[default]
    Params,
    /// Equal head dims: S models have 1.5x the attention parameters.
    Width,
}

impl Equalize {
    /// `params` or `width`; the error names `--equal`.
    pub fn parse(name: &str) -> Result<Equalize> {
        match name {
            "params" => Ok(Equalize::Params),
            "width" => Ok(Equalize::Width),
            other => Err(TrainError::setting(
                "--equal",
                other,
                "expected `params` (equal parameter counts) or `width` (equal head dims)",
            )),
        }
    }
}

/// The size every model of a comparison shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub mlp_hidden: usize,
    /// How the dot model is sized against the S models.
    pub equalize: Equalize,
}

impl Size {
    /// Checks the sizes for `kinds`; errors name the flag (`--d-model`, `--layers`, `--heads`,
    /// `--mlp-hidden`).
    pub fn validate(&self, kinds: &[AttnKind]) -> Result<()> {
        for (flag, v) in [
            ("--d-model", self.d_model),
            ("--layers", self.layers),
            ("--heads", self.heads),
            ("--mlp-hidden", self.mlp_hidden),
        ] {
            if v == 0 {
                return Err(TrainError::setting(flag, v, "must be at least 1"));
            }
        }
        if self.layers > 64 || self.d_model > 1 << 14 || self.mlp_hidden > 1 << 16 {
            return Err(TrainError::setting(
                "--d-model/--layers/--mlp-hidden",
                format!("{}/{}/{}", self.d_model, self.layers, self.mlp_hidden),
                "too large for a task model (at most 16384 / 64 / 65536)",
            ));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(TrainError::setting(
                "--d-model",
                self.d_model,
                format!("not divisible by --heads = {}", self.heads),
            ));
        }
        let ds = self.d_model / self.heads;
        if kinds.contains(&AttnKind::Determinant) && !ds.is_multiple_of(3) {
            return Err(TrainError::setting(
                "--d-model",
                self.d_model,
                format!(
                    "head dim --d-model / --heads = {ds}: the determinant kind needs a multiple \
                     of 3 (e.g. --d-model {} --heads {})",
                    self.heads * 6,
                    self.heads
                ),
            ));
        }
        if self.equalize == Equalize::Params
            && kinds.contains(&AttnKind::Dot)
            && !ds.is_multiple_of(2)
        {
            return Err(TrainError::setting(
                "--d-model",
                self.d_model,
                format!(
                    "head dim --d-model / --heads = {ds} is odd: equal parameter counts give the \
                     dot model heads of 3/2 that width; use an even head dim or --equal width"
                ),
            ));
        }
        Ok(())
    }

    /// The model config of `kind` for a task with `vocab_size` tokens and sequences of at most
    /// `max_len` (validated by [`Size::validate`] and by the config).
    pub fn config(&self, kind: AttnKind, vocab_size: usize, max_len: usize) -> Result<Config> {
        self.validate(&[kind])?;
        let ds = self.d_model / self.heads;
        let dot_dim = match self.equalize {
            Equalize::Params => 3 * ds / 2,
            Equalize::Width => ds,
        };
        let (letter, variant) = match kind {
            AttnKind::Dot => ('D', SimplicialVariant::Trilinear),
            AttnKind::Trilinear => ('S', SimplicialVariant::Trilinear),
            AttnKind::Determinant => ('S', SimplicialVariant::Determinant),
        };
        let cfg = Config {
            vocab_size,
            d_model: self.d_model,
            pattern: letter.to_string().repeat(self.layers),
            heads_q: self.heads,
            heads_kv: None,
            head_dim: Some(dot_dim),
            window: max_len,
            simplicial: SimplicialConfig {
                heads_q: Some(self.heads),
                heads_kv: None,
                head_dim: Some(ds),
                w1: max_len,
                w2: max_len,
                variant,
                rotate: false,
            },
            mlp_hidden: self.mlp_hidden,
            rope_theta: 10_000.0,
            tie_embeddings: true,
            norm_eps: 1e-5,
            max_seq_len: max_len,
            bidirectional: true,
            rope: false,
            moe: None,
        };
        cfg.validate().map_err(simplex_model::ModelError::from)?;
        Ok(cfg)
    }
}
