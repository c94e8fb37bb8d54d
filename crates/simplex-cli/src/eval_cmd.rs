//! `simplex eval`: NLL of a language-model checkpoint on eval sets (MMLU, HumanEval, generated
//! grade-school math, the run's held-out split, any `.jsonl` of items) and on new text; prints
//! a table and appends the results to `RUN_DIR/evals.json` (docs/evals.md).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use simplex_train::evalsets::{self, EvalRun, EvalScore, EvalSource, DEFAULT_SETS};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder (its checkpoint/) or a checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Eval sets: mmlu, mmlu-full, humaneval, gsm, heldout, or a path to a .jsonl file of
    /// {"id", "context", "continuation"} lines; repeat or separate by commas [default without
    /// --data: heldout, gsm, mmlu, humaneval, those that are available].
    #[arg(long = "eval-set", value_delimiter = ',')]
    pub eval_sets: Vec<String>,
    /// Text files or folders to score (loss, bits per byte, perplexity), split into documents
    /// at the run's doc_sep.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Folder of the prepared sets (scripts/prepare-evals.py writes them).
    #[arg(long, default_value = evalsets::DEFAULT_EVAL_DIR)]
    pub eval_dir: PathBuf,
    /// Score only the first N items of each set (or N windows of --data) [default: all].
    #[arg(long)]
    pub max_items: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the record as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Append the record to this file instead of RUN_DIR/evals.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The sources to score: the named ones (each must exist), or by default those of
/// DEFAULT_SETS that are available (a note on stderr for each one skipped).
fn sources(a: &EvalArgs, run: &EvalRun) -> Result<Vec<EvalSource>> {
    if !a.eval_sets.is_empty() {
        return Ok(evalsets::resolve(&a.eval_sets, &a.eval_dir)?);
    }
    if !a.data.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for name in DEFAULT_SETS {
        let available = if name == "heldout" {
            let meta = run.run_dir.join("data").join("meta.json");
            meta.is_file()
                .then_some(())
                .ok_or_else(|| format!("{} not found", meta.display()))
        } else {
            evalsets::locate(name, &a.eval_dir)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match available {
            Ok(()) => names.push(name.to_string()),
            Err(why) => eprintln!("skipping {name}: {why}"),
        }
    }
    Ok(evalsets::resolve(&names, &a.eval_dir)?)
}

fn table(scores: &[EvalScore]) -> String {
    let mut s = format!(
        "{:<14} {:>7} {:>9} {:>8} {:>8} {:>10} {:>5}\n",
        "set", "items", "tokens", "nll", "bpb", "ppl", "cut"
    );
    for e in scores {
        s.push_str(&format!(
            "{:<14} {:>7} {:>9} {:>8.4} {:>8.4} {:>10.3} {:>5}\n",
            e.name,
            e.items,
            e.tokens,
            e.nll,
            e.bpb,
            e.ppl(),
            e.truncated
        ));
    }
    s
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size 0: must be at least 1");
    }
    if a.max_items == Some(0) {
        bail!("--max-items 0: must be at least 1");
    }
    for p in &a.data {
        if !p.exists() {
            bail!("--data {}: no such file or folder", p.display());
        }
    }
    // named sets are checked before the model is loaded: a missing file fails fast
    for name in &a.eval_sets {
        evalsets::locate(name, &a.eval_dir)?;
    }
    let device = crate::device::parse(&a.device)?;
    let run = EvalRun::load(&a.checkpoint, &device)?;
    let opts = run.options(a.batch_size, a.max_items);
    let tty = std::io::stderr().is_terminal();
    let mut scores = Vec::new();
    for src in sources(&a, &run)? {
        if tty {
            eprintln!("scoring {}", src.name());
        }
        let s = run
            .score(&src, &opts)
            .with_context(|| format!("eval set {}", src.name()))?;
        scores.push(s);
    }
    if !a.data.is_empty() {
        if tty {
            eprintln!("scoring {}", evalsets::text::text_name(&a.data));
        }
        scores.push(run.score_text(&a.data, &opts)?);
    }
    if scores.is_empty() {
        bail!(
            "nothing to score: name sets with --eval-set (e.g. --eval-set gsm) or text with --data"
        );
    }
    let max_len = opts.max_len_for(&run.generator.model)?;
    let record = run.record(scores);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run.run_dir.join("evals.json"));
    evalsets::append_record(&out, &record)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!(
            "{} at step {} (sequences of at most {} tokens), recorded in {}",
            run.checkpoint.display(),
            record.step,
            max_len,
            out.display()
        );
        print!("{}", table(&record.scores));
    }
    Ok(())
}
