//! The config as TOML: reading with every missing key listed, writing with every key commented.

use super::{Config, SimplicialVariant};
use crate::error::ConfigError;
use crate::moe::MoeConfig;

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

impl Config {
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
}
