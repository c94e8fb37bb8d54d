//! `simplex sweep SWEEP.toml`: train and score a grid of sizes x attention kinds x seeds
//! (simplex_train::sweep), resumable by running the same command again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use simplex_train::sweep::{
    run_sweep, PlannedRun, RunResult, SweepObserver, SweepOptions, SweepSpec,
};
use simplex_train::{Observer, Record, StartInfo};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (TOML: data, token budget, kinds, sizes, seeds, eval sets).
    pub sweep: PathBuf,
    /// Results folder [default: runs/sweep-STEM, STEM the sweep file's name].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Stop after this many seconds (the run going then writes a checkpoint; runs predicted
    /// not to finish in the time left are not started). Run the command again to continue.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Print the planned runs (parameters, tokens, updates, FLOPs) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Peak TFLOP/s for MFU [default: 989.4 on CUDA; none on CPU].
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

struct Progress {
    multi: MultiProgress,
    sweep: ProgressBar,
    steps: ProgressBar,
    tty: bool,
    total_flops: f64,
    done_flops: f64,
    t0: Instant,
}

impl Progress {
    fn line(&self, s: String) {
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            eprintln!("{s}");
        }
    }
}

impl Observer for Progress {
    fn start(&mut self, i: &StartInfo) {
        self.steps.set_length(i.end_step);
        self.steps.set_position(i.start_step);
        self.steps.reset_eta();
    }
    fn step(&mut self, step: u64, _lr: f64) {
        self.steps.set_position(step);
    }
    fn record(&mut self, r: &Record) {
        self.steps.set_message(format!(
            "loss {:.4}, {:.0} tokens/s",
            r.train_loss, r.tokens_per_s
        ));
    }
}

impl SweepObserver for Progress {
    fn plan(&mut self, runs: &[PlannedRun], finished: &[bool]) {
        let done = finished.iter().filter(|&&f| f).count();
        self.total_flops = runs.iter().map(|r| r.flops).sum();
        self.done_flops = runs
            .iter()
            .zip(finished)
            .filter(|(_, &f)| f)
            .map(|(r, _)| r.flops)
            .sum();
        self.sweep.set_length(runs.len() as u64);
        self.sweep.set_position(done as u64);
        self.line(format!(
            "sweep: {} runs ({} done), {:.3e} training FLOPs in all",
            runs.len(),
            done,
            self.total_flops
        ));
    }
    fn run_start(&mut self, index: usize, r: &PlannedRun) {
        self.sweep.set_message(format!(
            "{} ({:.0}% of the sweep's FLOPs done)",
            r.name,
            100.0 * self.done_flops / self.total_flops.max(1.0)
        ));
        self.line(format!(
            "run {}: {} ({:.2}M params, {:.2}M non-embedding), {} updates, {:.1}M tokens, {:.2e} FLOPs",
            index + 1,
            r.name,
            r.info.params_total as f64 / 1e6,
            r.info.params_non_embedding as f64 / 1e6,
            r.steps,
            r.tokens as f64 / 1e6,
            r.flops
        ));
    }
    fn run_done(&mut self, _index: usize, r: &RunResult) {
        self.sweep.inc(1);
        self.done_flops += r.flops;
        let evals: Vec<String> = r
            .evals
            .iter()
            .map(|e| format!("{} {:.4}", e.name, e.nll))
            .collect();
        self.line(format!(
            "  {}: train_loss {:.4}, {:.0} s; nll: {}",
            r.name,
            r.train_loss,
            r.wall_s,
            evals.join(", ")
        ));
    }
    fn run_skipped(&mut self, _index: usize, r: &PlannedRun, reason: &str) {
        self.line(format!("  {}: not started ({reason})", r.name));
    }
}

fn print_plan(runs: &[PlannedRun]) {
    println!("| run | params | non-embedding | updates | tokens | FLOPs | lr |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in runs {
        println!(
            "| {} | {} | {} | {} | {} | {:.3e} | {} |",
            r.name,
            r.info.params_total,
            r.info.params_non_embedding,
            r.steps,
            r.tokens,
            r.flops,
            r.lr
        );
    }
    let flops: f64 = runs.iter().map(|r| r.flops).sum();
    let tokens: u64 = runs.iter().map(|r| r.tokens).sum();
    println!(
        "\n{} runs, {tokens} tokens, {flops:.3e} FLOPs in all",
        runs.len()
    );
}

fn default_out(sweep: &Path) -> PathBuf {
    let stem = sweep
        .file_stem()
        .map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(format!("sweep-{stem}"))
}

pub fn run(a: SweepArgs) -> Result<()> {
    let spec = SweepSpec::read(&a.sweep)?;
    if a.dry_run {
        let data = simplex_train::data::Dataset::open(&spec.data)?;
        print_plan(&spec.plan(data.tokenizer.vocab_size())?);
        return Ok(());
    }
    let device = crate::device::parse(&a.device)?;
    if let Some(t) = a.time_limit {
        anyhow::ensure!(
            t > 0.0 && t.is_finite(),
            "--time-limit {t}: must be positive"
        );
    }
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.sweep));
    let opts = SweepOptions {
        out: out.clone(),
        device,
        stop: crate::interrupt::stop_on_signal()?,
        deadline: a
            .time_limit
            .map(|t| Instant::now() + Duration::from_secs_f64(t)),
        peak_flops: a.peak_tflops.map(|t| t * 1e12),
    };
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let sweep = multi.add(ProgressBar::new(0));
    sweep.set_style(ProgressStyle::with_template(
        "runs  {bar:30} {pos}/{len} [{elapsed_precise}] {msg}",
    )?);
    let steps = multi.add(ProgressBar::new(0));
    steps.set_style(ProgressStyle::with_template(
        "steps {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
    )?);
    let mut progress = Progress {
        multi,
        sweep,
        steps,
        tty,
        total_flops: 0.0,
        done_flops: 0.0,
        t0: Instant::now(),
    };
    let s = run_sweep(&spec, &opts, &mut progress)?;
    progress.sweep.finish_and_clear();
    progress.steps.finish_and_clear();
    println!(
        "{}: {} of {} runs done ({} in this session, {:.0} s); results in {}",
        out.display(),
        s.done,
        s.planned,
        s.trained,
        progress.t0.elapsed().as_secs_f64(),
        out.join("results.csv").display()
    );
    if s.stopped && s.done < s.planned {
        println!("stopped early: run the same command again to continue");
        std::process::exit(crate::interrupt::INTERRUPTED_EXIT);
    }
    Ok(())
}
