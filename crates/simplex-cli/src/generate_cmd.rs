//! `simplex generate`: samples continuations of a prompt (or of every line of stdin with
//! `--interactive`) from a run's checkpoint, loaded once.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use simplex_model::SamplingConfig;
use simplex_train::{GenerateOptions, Generator};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A run folder (its checkpoint/) or a checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to continue (or --interactive).
    #[arg(long, required_unless_present = "interactive")]
    pub prompt: Option<String>,
    /// Read prompts from stdin, one per line, and print each continuation as soon as it is
    /// drawn (blank lines are skipped; "> " is shown on stderr when stdin is a terminal); ends
    /// at end of input (Ctrl-D). Every prompt draws with the same --seed, so its answer is
    /// what `--prompt LINE` prints.
    #[arg(long, conflicts_with = "prompt")]
    pub interactive: bool,
    /// New tokens at most per sample. Past the model's max_seq_len the context slides (see
    /// --context-shift); a prompt longer than max_seq_len is cropped to its last max_seq_len
    /// tokens, with a warning.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Samples per prompt, decoded as one batch. Each is printed after a line
    /// `--- sample I ---` (I from 1) on stdout when N > 1; sample I draws with seed
    /// --seed + I - 1, so it is what that seed prints alone.
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Past max_seq_len: when the model's window of max_seq_len tokens is full, drop its
    /// oldest N tokens and feed the rest again from position 0 [default: max_seq_len / 4].
    #[arg(long)]
    pub context_shift: Option<usize>,
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

/// Samples `prompt` and prints it (see the flags' help for the layout); flushes stdout.
fn answer(g: &Generator, prompt: &str, opts: &GenerateOptions, only_new: bool) -> Result<()> {
    let samples = g.generate_samples(prompt, opts)?;
    let mut stdout = std::io::stdout().lock();
    for (i, s) in samples.iter().enumerate() {
        if samples.len() > 1 {
            writeln!(stdout, "--- sample {} ---", i + 1)?;
        }
        if !only_new {
            write!(stdout, "{prompt}")?;
        }
        writeln!(stdout, "{}", s.text)?;
        tracing::info!(
            "sample {} (seed {}): {} prompt tokens{}, {} new{}",
            i + 1,
            s.seed,
            s.prompt_tokens,
            if s.cropped > 0 {
                format!(" ({} cropped)", s.cropped)
            } else {
                String::new()
            },
            s.tokens.len(),
            if s.ended {
                ", ended at end-of-text"
            } else {
                ""
            }
        );
    }
    stdout.flush()?;
    Ok(())
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    anyhow::ensure!(
        a.num_samples > 0,
        "--num-samples {}: must be at least 1",
        a.num_samples
    );
    if let Some(s) = a.context_shift {
        anyhow::ensure!(s > 0, "--context-shift {s}: must be at least 1");
    }
    let g = Generator::load(&a.checkpoint, &device)?;
    let max_len = g.model.config().max_seq_len;
    if let Some(s) = a.context_shift.filter(|&s| s > max_len) {
        anyhow::bail!("--context-shift {s}: must be at most the model's max_seq_len = {max_len}");
    }
    tracing::info!(
        "loaded checkpoint {} (step {}, max_seq_len {max_len})",
        a.checkpoint.display(),
        g.step
    );
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_at_eot: !a.ignore_eot,
        num_samples: a.num_samples,
        shift: a.context_shift,
    };
    if let Some(prompt) = &a.prompt {
        return answer(&g, prompt, &opts, a.only_new);
    }
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut line = String::new();
    for n in 1.. {
        if tty {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        line.clear();
        if input
            .read_line(&mut line)
            .with_context(|| format!("stdin, line {n}: not readable as UTF-8 text"))?
            == 0
        {
            break;
        }
        let prompt = line.strip_suffix('\n').unwrap_or(&line);
        let prompt = prompt.strip_suffix('\r').unwrap_or(prompt);
        if prompt.trim().is_empty() {
            continue;
        }
        answer(&g, prompt, &opts, a.only_new)?;
    }
    if tty {
        eprintln!();
    }
    Ok(())
}
