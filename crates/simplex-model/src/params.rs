//! Weights that are one product of several projections: each block's `attn.qkv.weight` (the
//! q, k, v rows of a D/L layer; q, k1, k2, v1, v2 of an S layer) and `mlp.gate_up.weight` (gate,
//! then up). Earlier versions stored the parts apart (`attn.q.weight`, ..., `mlp.gate.weight`,
//! `mlp.up.weight`); [`fused_params`] names the parts, so that seeded init can draw each part
//! as before (the same seed gives the same model) and [`merge_parts`] can read old checkpoints.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::config::{Config, LayerKind};
use crate::error::{ModelError, Result};

/// One fused weight and its parts `(name, rows)`, in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedParam {
    /// The fused weight's name.
    pub name: String,
    /// The parts' names (as stored before) and row counts.
    pub parts: Vec<(String, usize)>,
}

/// The fused weights of a model of `cfg` (language model or task model: same blocks).
pub fn fused_params(cfg: &Config) -> Vec<FusedParam> {
    let mut out = Vec::new();
    for (i, kind) in cfg.layers().into_iter().enumerate() {
        let l = format!("layers.{i}");
        let (h, names): (_, &[&str]) = match kind {
            LayerKind::Dot | LayerKind::Local => (cfg.dot_heads(), &["q", "k", "v"]),
            LayerKind::Simplicial => (cfg.simplicial_heads(), &["q", "k1", "k2", "v1", "v2"]),
        };
        out.push(FusedParam {
            name: format!("{l}.attn.qkv.weight"),
            parts: names
                .iter()
                .map(|n| {
                    let heads = if *n == "q" { h.q } else { h.kv };
                    (format!("{l}.attn.{n}.weight"), heads * h.dim)
                })
                .collect(),
        });
        if cfg.is_moe_layer(i) {
            continue;
        }
        out.push(FusedParam {
            name: format!("{l}.mlp.gate_up.weight"),
            parts: ["gate", "up"]
                .iter()
                .map(|n| (format!("{l}.mlp.{n}.weight"), cfg.mlp_hidden))
                .collect(),
        });
    }
    out
}

/// Joins the parts of every fused weight found in `tensors` under their old names (with
/// `prefix` before each name, e.g. `m.` for optimizer moments) into the fused name; returns how
/// many were joined. A fused weight with some parts missing is an error naming them.
pub fn merge_parts(
    tensors: &mut HashMap<String, Tensor>,
    fused: &[FusedParam],
    prefix: &str,
) -> Result<usize> {
    let mut joined = 0;
    for f in fused {
        let key = |n: &str| format!("{prefix}{n}");
        let present: Vec<bool> = f
            .parts
            .iter()
            .map(|(n, _)| tensors.contains_key(&key(n)))
            .collect();
        if !present.iter().any(|&p| p) || tensors.contains_key(&key(&f.name)) {
            continue;
        }
        if let Some(((missing, _), _)) = f.parts.iter().zip(&present).find(|(_, &p)| !p) {
            return Err(ModelError::Input(format!(
                "checkpoint has some parts of {} but not {}",
                key(&f.name),
                key(missing)
            )));
        }
        let parts: Vec<Tensor> = f
            .parts
            .iter()
            .map(|(n, _)| tensors.remove(&key(n)).expect("checked present"))
            .collect();
        tensors.insert(key(&f.name), Tensor::cat(&parts, 0)?);
        joined += 1;
    }
    Ok(joined)
}
