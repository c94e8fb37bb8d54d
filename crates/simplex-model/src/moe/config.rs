//! The `[moe]` section of a model config: which layers use experts and how they route.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How router logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    /// `softmax` over experts (Switch, Mixtral).
    #[default]
    Softmax,
    /// An independent `sigmoid` per expert (DeepSeek-V3).
    Sigmoid,
}

fn default_true() -> bool {
    true
}
fn default_balance() -> f64 {
    0.01
}
fn default_z() -> f64 {
    0.001
}

/// The `[moe]` section: which layers use experts and how they route.
///
/// ```toml
/// [moe]
/// experts = 8
/// top_k = 2
/// expert_hidden = 704         # optional, default: mlp_hidden / top_k
/// shared_experts = 0          # optional: always-on experts of the same width
/// router = "softmax"          # or "sigmoid"
/// normalize = true            # the top-k weights sum to 1
/// balance_weight = 0.01       # load-balancing loss weight
/// z_loss_weight = 0.001       # router z-loss weight
/// capacity_factor = 1.25      # optional; absent: dropless
/// layers = [1, 3]             # optional, layer indices from 0; default: every layer
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Hidden width of one expert; default `mlp_hidden / top_k` (the dense MLP's active width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_hidden: Option<usize>,
    /// Always-on experts (one SwiGLU MLP of `shared_experts * expert_hidden`).
    #[serde(default)]
    pub shared_experts: usize,
    /// Softmax or sigmoid scores.
    #[serde(default)]
    pub router: RouterKind,
    /// Divide the chosen scores by their sum.
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Weight of the load-balancing loss in the training loss.
    #[serde(default = "default_balance")]
    pub balance_weight: f64,
    /// Weight of the router z-loss in the training loss.
    #[serde(default = "default_z")]
    pub z_loss_weight: f64,
    /// Each expert takes at most `ceil(capacity_factor * tokens * top_k / experts)` assignments
    /// per batch; absent: no token is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_factor: Option<f64>,
    /// Layers (indices from 0, bottom to top) whose feed-forward is MoE; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
}

impl MoeConfig {
    /// `experts` experts, `top_k` per token, every other setting at its default.
    pub fn new(experts: usize, top_k: usize) -> MoeConfig {
        MoeConfig {
            experts,
            top_k,
            expert_hidden: None,
            shared_experts: 0,
            router: RouterKind::Softmax,
            normalize: true,
            balance_weight: default_balance(),
            z_loss_weight: default_z(),
            capacity_factor: None,
            layers: None,
        }
    }

    /// The expert width given the dense `mlp_hidden`.
    pub fn hidden(&self, mlp_hidden: usize) -> usize {
        self.expert_hidden.unwrap_or(mlp_hidden / self.top_k.max(1))
    }

    /// Whether layer `i` (from 0) is an MoE layer.
    pub fn applies_to(&self, i: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&i))
    }

    /// Checks every key against a model of `n_layers` layers and `mlp_hidden`.
    pub fn validate(&self, n_layers: usize, mlp_hidden: usize) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: String| ConfigError::Invalid {
            key,
            value,
            reason,
        };
        if self.experts == 0 {
            return Err(invalid(
                "moe.experts",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return Err(invalid(
                "moe.top_k",
                self.top_k.to_string(),
                format!("must be in 1..={} (moe.experts)", self.experts),
            ));
        }
        if self.hidden(mlp_hidden) == 0 {
            return Err(invalid(
                "moe.expert_hidden",
                self.hidden(mlp_hidden).to_string(),
                "must be at least 1 (set it, or a larger mlp_hidden)".into(),
            ));
        }
        for (key, v) in [
            ("moe.balance_weight", self.balance_weight),
            ("moe.z_loss_weight", self.z_loss_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    key,
                    v.to_string(),
                    "must be finite and >= 0".into(),
                ));
            }
        }
        if let Some(c) = self.capacity_factor {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid(
                    "moe.capacity_factor",
                    c.to_string(),
                    "must be finite and positive (leave it out for dropless routing)".into(),
                ));
            }
        }
        if let Some(layers) = &self.layers {
            if let Some(&bad) = layers.iter().find(|&&i| i >= n_layers) {
                return Err(invalid(
                    "moe.layers",
                    format!("{layers:?}"),
                    format!(
                        "layer {bad} does not exist (the pattern has {n_layers} layers, 0..{})",
                        n_layers
                    ),
                ));
            }
            if layers.is_empty() {
                return Err(invalid(
                    "moe.layers",
                    "[]".into(),
                    "lists no layer (leave it out for every layer, or drop [moe])".into(),
                ));
            }
        }
        Ok(())
    }
}
