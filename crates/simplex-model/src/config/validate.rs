//! Validation: every error names the key, its value and why it is refused.

use super::{Config, Heads, LayerKind, SimplicialVariant};
use crate::error::ConfigError;

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
