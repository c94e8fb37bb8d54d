//! `simplex generate`: samples a continuation of a prompt from a run's checkpoint.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use simplex_model::SamplingConfig;
use simplex_train::Generator;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A run folder (its checkpoint/) or a checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// New tokens at most.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Softmax temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Go on past the end-of-text token instead of stopping there.
    #[arg(long)]
    pub ignore_eot: bool,
    /// Print only the new text, not the prompt before it.
    #[arg(long)]
    pub only_new: bool,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let g = Generator::load(&a.checkpoint, &device)?;
    let sampling = SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let out = g.generate(&a.prompt, a.max_tokens, sampling, !a.ignore_eot)?;
    let mut stdout = std::io::stdout().lock();
    if !a.only_new {
        write!(stdout, "{}", a.prompt)?;
    }
    writeln!(stdout, "{}", out.text)?;
    tracing::info!(
        "step {} checkpoint: {} prompt tokens, {} new{}",
        g.step,
        out.prompt_tokens,
        out.tokens.len(),
        if out.ended {
            ", ended at end-of-text"
        } else {
            ""
        }
    );
    Ok(())
}
