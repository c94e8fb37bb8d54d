//! `simplex model info`: parameter counts and FLOPs per token of a config.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use simplex_model::{Config, ModelInfo};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameter counts (total, non-embedding) and forward FLOPs per token per layer kind.
    Info(InfoArgs),
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A preset: tiny (default), small, 25m, 100m, 300m.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A model config TOML file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sequence length the attention FLOPs are averaged over [default: max_seq_len].
    #[arg(long)]
    pub seq: Option<usize>,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Info(a) => info(&a),
    }
}

fn info(a: &InfoArgs) -> Result<()> {
    let (cfg, name) = match (&a.preset, &a.config) {
        (_, Some(p)) => (
            simplex_train::run::read_model_config(p)?,
            p.display().to_string(),
        ),
        (p, None) => {
            let name = p.clone().unwrap_or_else(|| "tiny".into());
            (Config::preset(&name)?, format!("preset {name}"))
        }
    };
    println!(
        "{name}: pattern {} ({} layers), d_model {}, vocab {}, max_seq_len {}",
        cfg.pattern,
        cfg.n_layers(),
        cfg.d_model,
        cfg.vocab_size,
        cfg.max_seq_len
    );
    println!("{}", ModelInfo::new(&cfg, a.seq.unwrap_or(cfg.max_seq_len)));
    Ok(())
}
