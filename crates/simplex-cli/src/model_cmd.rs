//! `simplex model info`: parameter counts and FLOPs per token of a config; `simplex model
//! config`: a complete config TOML to start a hand-written one from.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use simplex_model::{Config, ModelInfo};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameter counts (total, non-embedding) and forward FLOPs per token per layer kind.
    Info(InfoArgs),
    /// Print a complete model config TOML (every key, commented, `[simplicial]` included) of a
    /// preset or config file, to edit and pass to `train --config`.
    Config(ConfigArgs),
}

/// Which model a `model` command reads.
#[derive(Args, Debug)]
pub struct ModelSource {
    /// A preset: tiny (default), small, 25m, 100m, 300m, tiny-moe, 25m-moe, 25m-moe-dot.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A model config TOML file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ModelSource {
    /// The config and a name for it (the file, or `preset NAME`).
    fn load(&self) -> Result<(Config, String)> {
        Ok(match (&self.preset, &self.config) {
            (_, Some(p)) => (
                simplex_train::run::read_model_config(p)?,
                p.display().to_string(),
            ),
            (p, None) => {
                let name = p.clone().unwrap_or_else(|| "tiny".into());
                (Config::preset(&name)?, format!("preset {name}"))
            }
        })
    }
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelSource,
    /// Sequence length the attention FLOPs are averaged over, 1 to max_seq_len [default:
    /// max_seq_len].
    #[arg(long, allow_negative_numbers = true)]
    pub seq: Option<i64>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub model: ModelSource,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Info(a) => info(&a),
        ModelCommand::Config(a) => config(&a),
    }
}

fn info(a: &InfoArgs) -> Result<()> {
    let (cfg, name) = a.model.load()?;
    let seq = match a.seq {
        None => cfg.max_seq_len,
        Some(s) if s < 1 => bail!("--seq {s}: the sequence length must be at least 1"),
        Some(s) if s as u64 > cfg.max_seq_len as u64 => bail!(
            "--seq {s}: longer than the model's max_seq_len = {} ({name})",
            cfg.max_seq_len
        ),
        Some(s) => s as usize,
    };
    println!(
        "{name}: pattern {} ({} layers), d_model {}, vocab {}, max_seq_len {}",
        cfg.pattern,
        cfg.n_layers(),
        cfg.d_model,
        cfg.vocab_size,
        cfg.max_seq_len
    );
    println!("{}", ModelInfo::new(&cfg, seq));
    Ok(())
}

fn config(a: &ConfigArgs) -> Result<()> {
    let (mut cfg, name) = a.model.load()?;
    let mut note = String::new();
    if a.model.config.is_none() {
        // what `train --preset` writes: the vocabulary of the default (byte) tokenizer
        cfg.vocab_size = simplex_train::data::Tokenizer::Bytes.vocab_size();
        note = format!(
            "\n# vocab_size is the byte tokenizer's ({}); with --tokenizer bpe:N or a tokenizer file, set it to cover that vocabulary",
            cfg.vocab_size
        );
    }
    print!(
        "# model config: {name} (simplex model config); edit, then `simplex train --config FILE`{note}\n{}",
        cfg.to_full_toml_string()
    );
    Ok(())
}
