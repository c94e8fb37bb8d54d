//! `simplex compare`: flags -> `simplex_train::classify::CompareSettings`, a progress bar, the
//! closing table. With no flags: the default demo (match3 on the CPU, a few minutes on 2 cores).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use simplex_train::classify::compare::{run_compare, CompareObserver};
use simplex_train::classify::{
    AttnKind, CompareSettings, CurvePoint, DataSettings, Equalize, Optimization, RunResult, Size,
};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The task: match3, match2, compose, relation.
    #[arg(long, default_value = "match3")]
    pub task: String,
    /// Attention kinds, comma-separated: dot, trilinear, determinant.
    #[arg(long, default_value = "dot,trilinear,determinant")]
    pub kinds: String,
    /// Seeds per kind (seeds 0..N: weight init and batch order; the splits are shared).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Optimizer updates per run.
    #[arg(long, default_value_t = 800)]
    pub steps: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 48)]
    pub d_model: usize,
    /// Blocks (all of the one kind).
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Attention heads per layer (S head dim = d_model / heads).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Hidden width of the SwiGLU MLP [default: 2 x d_model].
    #[arg(long)]
    pub mlp_hidden: Option<usize>,
    /// params: equal parameter counts (dot heads 1.5x wider); width: equal head dims.
    #[arg(long, default_value = "params")]
    pub equal: String,
    /// Peak learning rate (linear warmup, cosine to 1% of it): one value for every kind, and/or
    /// KIND=VALUE items, comma-separated (e.g. `3e-3,trilinear=1e-2`).
    #[arg(long, default_value = "3e-3,dot=2e-3", allow_hyphen_values = true)]
    pub lr: String,
    /// Examples per update (all of one length).
    #[arg(long = "batch-size", alias = "batch", default_value_t = 32)]
    pub batch: usize,
    /// Warmup updates [default: 5% of --steps].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Validate every N updates [default: --steps / 20].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Training examples (reused in epochs).
    #[arg(long, default_value_t = 20_000)]
    pub train_examples: usize,
    /// Validation examples (the curves).
    #[arg(long, default_value_t = 500)]
    pub val_examples: usize,
    /// Test examples (the table).
    #[arg(long, default_value_t = 2000)]
    pub test_examples: usize,
    /// Seed of the splits.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Runs trained at once, one thread each [default: the CPU threads; 1 on CUDA].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Output folder [default: runs/compare-TASK].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `--lr`: `VALUE` and/or `KIND=VALUE` items -> (default, per kind).
fn parse_lr(text: &str) -> Result<(Option<f64>, BTreeMap<AttnKind, f64>)> {
    let number = |v: &str| -> Result<f64> {
        v.trim()
            .parse::<f64>()
            .map_err(|_| anyhow!("--lr {text}: `{v}` is not a number"))
    };
    let (mut base, mut by_kind) = (None, BTreeMap::new());
    for item in text.split(',').filter(|i| !i.trim().is_empty()) {
        match item.split_once('=') {
            Some((k, v)) => {
                by_kind.insert(AttnKind::parse(k)?, number(v)?);
            }
            None => base = Some(number(item)?),
        }
    }
    Ok((base, by_kind))
}

impl CompareArgs {
    fn settings(&self) -> Result<CompareSettings> {
        let (lr, lr_by_kind) = parse_lr(&self.lr)?;
        let kinds = self
            .kinds
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(AttnKind::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompareSettings {
            task: self.task.clone(),
            kinds,
            seeds: (0..self.seeds as u64).collect(),
            size: Size {
                d_model: self.d_model,
                layers: self.layers,
                heads: self.heads,
                mlp_hidden: self.mlp_hidden.unwrap_or(2 * self.d_model),
                equalize: Equalize::parse(&self.equal)?,
            },
            data: DataSettings {
                seed: self.data_seed,
                train: self.train_examples,
                validation: self.val_examples,
                test: self.test_examples,
            },
            optim: Optimization {
                steps: self.steps,
                batch: self.batch,
                lr: lr.unwrap_or(3e-3),
                warmup: self.warmup.unwrap_or(self.steps / 20),
                min_lr_frac: 0.01,
                weight_decay: self.weight_decay,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                grad_clip: self.grad_clip,
                eval_every: self.eval_every.unwrap_or((self.steps / 20).max(1)),
                eval_batch: 256,
            },
            lr_by_kind,
        })
    }
}

/// A bar over every update of every run; a line per finished run (and, without a terminal,
/// per validation).
struct Progress {
    bar: ProgressBar,
    tty: bool,
    /// Updates done per run.
    done: Vec<usize>,
    labels: Vec<String>,
    last: String,
}

impl Progress {
    fn say(&self, line: String) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

impl CompareObserver for Progress {
    fn data_ready(&mut self, seconds: f64) {
        self.say(format!("splits drawn in {seconds:.1} s"));
    }
    fn run_start(&mut self, run: usize, total: usize, kind: AttnKind, seed: u64) {
        self.done.resize(total, 0);
        self.labels.resize(total, String::new());
        let started = self.labels.iter().filter(|l| !l.is_empty()).count();
        self.labels[run] = format!("[{}/{total}] {kind} seed {seed}", started + 1);
    }
    fn step(&mut self, run: usize, step: usize, loss: f64) {
        self.done[run] = step;
        self.bar
            .set_position(self.done.iter().sum::<usize>() as u64);
        if step.is_multiple_of(10) {
            self.bar
                .set_message(format!("{}: loss {loss:.3}{}", self.labels[run], self.last));
        }
    }
    fn eval(&mut self, run: usize, p: &CurvePoint) {
        self.last = format!(", val acc {:.1}%", 100.0 * p.val_token_accuracy);
        if !self.tty {
            eprintln!(
                "{} step {:>5}: val token acc {:.1}%, exact {:.1}%, val loss {:.4}",
                self.labels[run],
                p.step,
                100.0 * p.val_token_accuracy,
                100.0 * p.val_exact_match,
                p.val_loss
            );
        }
    }
    fn run_end(&mut self, run: usize, r: &RunResult) {
        self.say(format!(
            "{}: test token acc {:.1}%, exact match {:.1}%, {} params, {:.1} s",
            self.labels[run],
            100.0 * r.test.token_accuracy,
            100.0 * r.test.exact_match,
            r.params,
            r.wall_s
        ));
    }
}

pub fn run(a: CompareArgs) -> Result<()> {
    let settings = a.settings()?;
    settings.validate()?;
    let device = crate::device::parse(&a.device)?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs > 1 && device.is_cpu() && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Each run computes on one thread of its own pool; candle's matmuls size their
        // parallelism from this variable (read per call), and asking for 2 threads inside a
        // 1-thread pool is ~5x slower than asking for 1. Set before any thread is spawned.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/compare-{}", a.task)));
    let tty = std::io::stderr().is_terminal();
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let total = settings.kinds.len() * settings.seeds.len() * settings.optim.steps;
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
    )?);
    let mut progress = Progress {
        bar,
        tty,
        done: Vec::new(),
        labels: Vec::new(),
        last: String::new(),
    };

    progress.say(format!(
        "simplex compare: {} on {} ({jobs} run(s) at a time), kinds {}, {} seed(s) x {} steps -> {}",
        settings.task,
        a.device,
        settings
            .kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        settings.seeds.len(),
        settings.optim.steps,
        out.display()
    ));
    let report = run_compare(&settings, &device, &a.device, &out, jobs, &mut progress)?;
    progress.bar.finish_and_clear();
    println!("{}\n", report.headline());
    print!("{}", report.table());
    println!(
        "\n{:.0} s in all; results.json, results.csv, curves.csv, table.md, val_accuracy.png|svg \
         and runs/*/checkpoint in {}",
        report.total_s,
        out.display()
    );
    Ok(())
}
