//! The named presets ([`PRESETS`]).

use super::{Config, SimplicialConfig, PRESETS};
use crate::error::ConfigError;
use crate::moe::MoeConfig;

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
}
