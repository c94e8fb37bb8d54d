//! `simplex sweep`: a grid of model sizes x attention kinds x seeds trained at a token budget
//! per parameter, each run scored on the evaluation sets, one results table for `simplex fit`.
//!
//! ```text
//! OUT/sweep.toml            the sweep file as read (a record)
//! OUT/runs/NAME/            an ordinary run folder (config.toml, train.toml, data -> the
//!                           prepared dataset, metrics.jsonl, checkpoint/), NAME = SIZE-KIND-sSEED
//! OUT/runs/NAME/result.json written last, when the run is trained and scored: the run is done
//! OUT/results.csv, runs.csv rebuilt from every result.json after each run (results.rs)
//! ```
//! Resuming is running the same command again: finished runs (a `result.json` whose model is
//! the one planned) are skipped, an interrupted run continues from its checkpoint (a stop
//! writes one first), the rest start. A run whose planned model differs from its finished
//! record is an error naming it (the sweep file changed under it). With a deadline, a run is
//! not started when the FLOP rate of the kind's last run this session predicts it would not
//! end in time, so a sweep split over time-limited sessions wastes no partial runs.

pub mod results;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::checkpoint;
use crate::data::Dataset;
use crate::error::{IoContext, Result, TrainError};
use crate::evalsets::{self, EvalRun, EvalSource};
use crate::run::{ModelChoice, RunOptions, StopFlag};
use crate::trainer::{train, Observer};
use crate::{Precision, TrainConfig, TrainOverrides};
pub use results::{EvalResult, RunResult};
pub use spec::{BudgetParams, KindSpec, PlannedRun, SizeSpec, SweepSpec};

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The results folder.
    pub out: PathBuf,
    /// Where to train.
    pub device: Device,
    /// Set to stop after the current update (with a checkpoint).
    pub stop: StopFlag,
    /// Start no run predicted to end after this instant, and stop the one going at it.
    pub deadline: Option<Instant>,
    /// Peak FLOP/s for MFU in the runs' metrics.
    pub peak_flops: Option<f64>,
}

/// Receives a sweep's progress (the CLI draws bars from it).
pub trait SweepObserver: Observer {
    /// The plan, and which of its runs are already done.
    fn plan(&mut self, _runs: &[PlannedRun], _finished: &[bool]) {}
    /// A run starts (or continues).
    fn run_start(&mut self, _index: usize, _run: &PlannedRun) {}
    /// A run is trained and scored.
    fn run_done(&mut self, _index: usize, _result: &RunResult) {}
    /// A run was not started (the reason says why).
    fn run_skipped(&mut self, _index: usize, _run: &PlannedRun, _reason: &str) {}
}

/// What a sweep session did.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSummary {
    /// Runs of the plan.
    pub planned: usize,
    /// Runs finished (before or in this session).
    pub done: usize,
    /// Runs finished in this session.
    pub trained: usize,
    /// Whether a stop or the deadline ended the session early.
    pub stopped: bool,
}

/// Runs (or continues) the sweep `spec` into `opts.out`.
pub fn run_sweep(
    spec: &SweepSpec,
    opts: &SweepOptions,
    obs: &mut dyn SweepObserver,
) -> Result<SweepSummary> {
    if crate::run::prepared_dir(std::slice::from_ref(&spec.data)).is_none() {
        return Err(TrainError::data(
            &spec.data,
            "not a prepared dataset (no meta.json): make one with `simplex prepare --data TEXT... --out DIR`",
        ));
    }
    let data = Dataset::open(&spec.data)?;
    let runs = spec.plan(data.tokenizer.vocab_size())?;
    let sources = evalsets::resolve(&spec.eval_sets, &spec.eval_dir)?;
    if data.train.len() < spec.seq_len as u64 + 1 {
        return Err(TrainError::setting(
            "seq_len",
            spec.seq_len,
            format!(
                "the training split of {} has only {} tokens; a window needs seq_len + 1",
                spec.data.display(),
                data.train.len()
            ),
        ));
    }
    for r in &runs {
        // every run's settings are checked before anything is written
        TrainConfig::resolve(
            &overrides(spec, r)?,
            r.model.max_seq_len,
            opts.device.is_cuda(),
        )?;
    }
    let scratch = crate::scratch::Scratch::create(&opts.out)?;
    std::fs::create_dir_all(opts.out.join("runs")).at(&opts.out)?;
    let spec_text = toml::to_string(spec)
        .map_err(|e| TrainError::io(opts.out.join("sweep.toml"), std::io::Error::other(e)))?;
    checkpoint::write_atomic(&opts.out.join("sweep.toml"), spec_text.as_bytes())?;
    let mut finished: Vec<Option<RunResult>> = Vec::with_capacity(runs.len());
    for r in &runs {
        let dir = opts.out.join("runs").join(&r.name);
        let done = RunResult::read(&dir)?;
        if let Some(d) = &done {
            let planned = model_toml(r)?;
            if d.model_toml != planned || d.steps != r.steps {
                return Err(TrainError::RunDir {
                    path: dir,
                    reason: "finished with another model or step count than the sweep file now plans: restore the file, or use another --out".into(),
                });
            }
        }
        finished.push(done);
    }
    if let Some(deadline) = opts.deadline {
        let s = opts.stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            s.set();
        });
    }
    let mut summary = SweepSummary {
        planned: runs.len(),
        done: finished.iter().filter(|f| f.is_some()).count(),
        trained: 0,
        stopped: false,
    };
    let done_flags: Vec<bool> = finished.iter().map(Option::is_some).collect();
    obs.plan(&runs, &done_flags);
    write_tables(&opts.out, &finished, &spec.eval_sets)?;
    scratch.keep();
    // FLOP/s of the last run of each kind this session (training and scoring)
    let mut rate: std::collections::BTreeMap<String, f64> = Default::default();
    for (i, r) in runs.iter().enumerate() {
        if finished[i].is_some() {
            continue;
        }
        if opts.stop.is_set() {
            summary.stopped = true;
            break;
        }
        if let (Some(deadline), Some(fps)) = (opts.deadline, rate.get(&r.kind)) {
            let need = r.flops / fps;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            if need > left {
                obs.run_skipped(
                    i,
                    r,
                    &format!("predicted {need:.0} s, {left:.0} s left before the deadline"),
                );
                summary.stopped = true;
                continue;
            }
        }
        obs.run_start(i, r);
        let t0 = Instant::now();
        let Some(result) = run_one(spec, r, opts, &sources, obs)? else {
            summary.stopped = true;
            break;
        };
        rate.insert(
            r.kind.clone(),
            r.flops / t0.elapsed().as_secs_f64().max(1e-3),
        );
        obs.run_done(i, &result);
        finished[i] = Some(result);
        summary.done += 1;
        summary.trained += 1;
        write_tables(&opts.out, &finished, &spec.eval_sets)?;
    }
    Ok(summary)
}

fn model_toml(r: &PlannedRun) -> Result<String> {
    Ok(r.model
        .to_toml_string()
        .map_err(simplex_model::ModelError::from)?)
}

fn write_tables(out: &Path, finished: &[Option<RunResult>], sets: &[String]) -> Result<()> {
    let done: Vec<RunResult> = finished.iter().flatten().cloned().collect();
    checkpoint::write_atomic(
        &out.join("results.csv"),
        results::results_csv(&done).as_bytes(),
    )?;
    checkpoint::write_atomic(
        &out.join("runs.csv"),
        results::runs_csv(&done, sets).as_bytes(),
    )
}

/// The training settings of planned run `r`.
fn overrides(spec: &SweepSpec, r: &PlannedRun) -> Result<TrainOverrides> {
    Ok(TrainOverrides {
        steps: Some(r.steps),
        batch_size: Some(r.batch_size),
        seq_len: Some(spec.seq_len),
        lr: Some(r.lr),
        warmup: Some((spec.warmup_frac * r.steps as f64).round() as usize),
        seed: Some(r.seed),
        eval_every: Some(0),
        eval_batches: Some(spec.eval_batches),
        ckpt_every: Some((r.steps / 4).max(1)),
        log_every: Some((r.steps / 50).max(1)),
        precision: spec
            .precision
            .as_deref()
            .map(str::parse::<Precision>)
            .transpose()?,
        ..TrainOverrides::default()
    })
}

/// Trains (or continues) one run and scores it; `None` when it was stopped.
fn run_one(
    spec: &SweepSpec,
    r: &PlannedRun,
    opts: &SweepOptions,
    sources: &[EvalSource],
    obs: &mut dyn SweepObserver,
) -> Result<Option<RunResult>> {
    let dir = opts.out.join("runs").join(&r.name);
    let mut o = RunOptions::new(&dir, vec![spec.data.clone()], opts.device.clone());
    o.resume = dir.join("train.toml").is_file();
    o.model = Some(ModelChoice::Given(Box::new(r.model.clone())));
    o.overrides = overrides(spec, r)?;
    o.peak_flops = opts.peak_flops;
    o.stop = Some(opts.stop.clone());
    if train(&o, obs)?.stopped {
        return Ok(None);
    }
    // the last metrics row (also when the run was trained before and only its scoring is left)
    let rows = crate::metrics::read_jsonl(&dir.join("metrics.jsonl"))?;
    let last = rows.last();
    let elapsed = last.map_or(0.0, |l| l.elapsed_s);
    let train_loss = last.map_or(f64::NAN, |l| l.train_loss);
    let run = EvalRun::load(&dir, &opts.device)?;
    let score_opts = run.options(
        spec.batch_size,
        (spec.eval_items > 0).then_some(spec.eval_items),
    );
    let mut evals = Vec::new();
    for s in sources {
        let e = run.score(s, &score_opts)?;
        evals.push(EvalResult {
            name: e.name.clone(),
            items: e.items,
            tokens: e.tokens,
            nll: e.nll,
            bpb: e.bpb,
        });
    }
    let result = RunResult {
        name: r.name.clone(),
        kind: r.kind.clone(),
        size: r.size.clone(),
        seed: r.seed,
        model_toml: model_toml(r)?,
        params_total: r.info.params_total,
        params_nonembedding: r.info.params_non_embedding,
        params_active: r.info.params_active,
        params_budget: r.budget_params,
        tokens: r.tokens,
        flops: r.flops,
        steps: r.steps,
        lr: r.lr,
        wall_s: elapsed,
        train_loss,
        evals,
    };
    result.write(&dir)?;
    Ok(Some(result))
}
