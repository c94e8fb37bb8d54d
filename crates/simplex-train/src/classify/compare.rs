//! `simplex compare`: the same task, the same splits, the same size and optimization, several
//! seeds, and only the attention differs.
//!
//! ```text
//! OUT/results.json, results.csv, curves.csv, table.md, val_accuracy.png|svg   (see `report.rs`)
//! OUT/runs/KIND-seedS/       metrics.jsonl and checkpoint/ of each run (`simplex eval-task`)
//! ```
//! The splits are drawn once from `data.seed` and shared by every run; a run's seed sets its
//! weight init and batch order. The summary gives, per kind, the median and the range
//! (min..max) over seeds of the test scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::classify::kind::{AttnKind, Size};
use crate::classify::report::{majority_baseline, summarize, write_report, CompareReport, Machine};
use crate::classify::run::{
    train_run, CurvePoint, DataSettings, Optimization, RunObserver, RunResult, TaskRunSettings,
};
use crate::error::{IoContext, Result, TrainError};
use crate::tasks::{self, generate_splits, Task};

/// What a comparison runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareSettings {
    /// Task name (one of [`tasks::NAMES`]).
    pub task: String,
    /// Attention kinds, in table order.
    pub kinds: Vec<AttnKind>,
    /// Seeds of every kind.
    pub seeds: Vec<u64>,
    /// The shared model size.
    pub size: Size,
    /// The shared splits.
    pub data: DataSettings,
    /// The shared optimization.
    pub optim: Optimization,
    /// Peak learning rates that replace `optim.lr` for some kinds (tuned per kind).
    #[serde(default)]
    pub lr_by_kind: BTreeMap<AttnKind, f64>,
}

impl CompareSettings {
    /// Checks everything before any work; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        tasks::by_name(&self.task).map_err(|_| {
            TrainError::setting(
                "--task",
                &self.task,
                format!("unknown task; known: {}", tasks::NAMES.join(", ")),
            )
        })?;
        if self.kinds.is_empty() {
            return Err(TrainError::setting(
                "--kinds",
                "(none)",
                "give at least one kind",
            ));
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if self.kinds[..i].contains(k) {
                return Err(TrainError::setting("--kinds", k, "listed twice"));
            }
        }
        if self.seeds.is_empty() {
            return Err(TrainError::setting("--seeds", 0, "must be at least 1"));
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(s) {
                return Err(TrainError::setting("--seeds", s, "listed twice"));
            }
        }
        self.size.validate(&self.kinds)?;
        self.optim.validate()?;
        for &k in &self.kinds {
            self.run(k, 0).optim.validate()?;
        }
        for (flag, v) in [
            ("--train-examples", self.data.train),
            ("--val-examples", self.data.validation),
            ("--test-examples", self.data.test),
        ] {
            if v == 0 {
                return Err(TrainError::setting(flag, 0, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The peak learning rate of `kind`.
    pub fn lr(&self, kind: AttnKind) -> f64 {
        self.lr_by_kind.get(&kind).copied().unwrap_or(self.optim.lr)
    }

    /// The settings of the run of `kind` with `seed`.
    pub fn run(&self, kind: AttnKind, seed: u64) -> TaskRunSettings {
        TaskRunSettings {
            task: self.task.clone(),
            kind,
            seed,
            size: self.size,
            data: self.data,
            optim: Optimization {
                lr: self.lr(kind),
                ..self.optim
            },
        }
    }
}

/// Receives a comparison's progress (every method does nothing by default). With several jobs
/// the calls of different runs interleave; `run` is the run's index in kind-major order.
pub trait CompareObserver: Send {
    /// The splits are drawn.
    fn data_ready(&mut self, _seconds: f64) {}
    /// Run `run` of `total` starts.
    fn run_start(&mut self, _run: usize, _total: usize, _kind: AttnKind, _seed: u64) {}
    /// After each update of run `run`.
    fn step(&mut self, _run: usize, _step: usize, _loss: f64) {}
    /// After each validation of run `run`.
    fn eval(&mut self, _run: usize, _point: &CurvePoint) {}
    /// Run `run` is done.
    fn run_end(&mut self, _run: usize, _result: &RunResult) {}
}

/// Hands one run's progress to the shared observer.
struct Forward<'a, 'b> {
    observer: &'a Mutex<&'b mut dyn CompareObserver>,
    run: usize,
}

impl Forward<'_, '_> {
    fn with(&self, f: impl FnOnce(&mut dyn CompareObserver)) {
        if let Ok(mut o) = self.observer.lock() {
            f(&mut **o);
        }
    }
}

impl RunObserver for Forward<'_, '_> {
    fn step(&mut self, step: usize, loss: f64) {
        self.with(|o| o.step(self.run, step, loss));
    }
    fn eval(&mut self, point: &CurvePoint) {
        self.with(|o| o.eval(self.run, point));
    }
}

/// Runs the comparison with `jobs` runs at a time, writes every file of the module doc into
/// `out`, returns the report.
///
/// With `jobs > 1` (CPU) each run computes on one thread of its own rayon pool: for models this
/// small, whole runs side by side use the cores far better than threads inside one op. A run's
/// numbers do not depend on `jobs` (the CPU kernels give the same bits on any thread count).
pub fn run_compare(
    settings: &CompareSettings,
    device: &Device,
    device_name: &str,
    out: &Path,
    jobs: usize,
    observer: &mut dyn CompareObserver,
) -> Result<CompareReport> {
    settings.validate()?;
    if jobs == 0 {
        return Err(TrainError::setting("--jobs", 0, "must be at least 1"));
    }
    let start = Instant::now();
    let task: Box<dyn Task> = tasks::by_name(&settings.task)?;
    std::fs::create_dir_all(out).at(out)?;
    let splits = generate_splits(task.as_ref(), settings.data.seed, settings.data.sizes())?;
    let data_s = start.elapsed().as_secs_f64();
    observer.data_ready(data_s);
    let baseline = majority_baseline(&splits.test, task.num_classes());
    let plan: Vec<(AttnKind, u64)> = settings
        .kinds
        .iter()
        .flat_map(|&k| settings.seeds.iter().map(move |&s| (k, s)))
        .collect();
    let total = plan.len();
    // costliest runs first, so no worker idles at the end while another runs a slow kind
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost_rank(plan[i].0)));
    let jobs = if device.is_cpu() { jobs.min(total) } else { 1 };
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<RunResult>>>> =
        Mutex::new((0..total).map(|_| None).collect());
    let shared = Mutex::new(observer);
    let worker = || -> Result<()> {
        let pool = if jobs > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .map_err(|e| TrainError::setting("--jobs", jobs, e.to_string()))?,
            )
        } else {
            None
        };
        loop {
            let n = next.fetch_add(1, Ordering::SeqCst);
            if n >= total || failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let i = order[n];
            let (kind, seed) = plan[i];
            if let Ok(mut o) = shared.lock() {
                o.run_start(i, total, kind, seed);
            }
            let mut fwd = Forward {
                observer: &shared,
                run: i,
            };
            let task: &dyn Task = task.as_ref();
            let splits = &splits;
            let fwd = &mut fwd;
            let mut run = move || {
                train_run(
                    &settings.run(kind, seed),
                    task,
                    splits,
                    device,
                    Some(&run_dir(out, kind, seed)),
                    fwd,
                )
            };
            let r = match &pool {
                Some(p) => p.install(run),
                None => run(),
            };
            match &r {
                Ok(r) => {
                    if let Ok(mut o) = shared.lock() {
                        o.run_end(i, r);
                    }
                }
                Err(_) => failed.store(true, Ordering::SeqCst),
            }
            if let Ok(mut all) = results.lock() {
                all[i] = Some(r);
            }
        }
    };
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..jobs).map(|_| scope.spawn(worker)).collect();
        for h in handles {
            h.join()
                .map_err(|_| TrainError::setting("--jobs", jobs, "a worker thread panicked"))??;
        }
        Ok(())
    })?;
    let mut runs = Vec::with_capacity(total);
    for r in results
        .into_inner()
        .map_err(|_| TrainError::setting("--jobs", jobs, "a worker thread panicked"))?
    {
        match r {
            Some(r) => runs.push(r?),
            None => {
                return Err(TrainError::setting(
                    "--jobs",
                    jobs,
                    "a run did not finish (another run failed first)",
                ))
            }
        }
    }
    let summary = settings
        .kinds
        .iter()
        .map(|&k| summarize(k, &runs))
        .collect();
    let report = CompareReport {
        settings: settings.clone(),
        machine: Machine::detect(device_name, jobs),
        data_s,
        total_s: start.elapsed().as_secs_f64(),
        baseline,
        summary,
        runs,
    };
    write_report(&report, out)?;
    Ok(report)
}

/// How slow a kind's update is, in order (determinant runs its logits at twice the head dim).
fn cost_rank(kind: AttnKind) -> u8 {
    match kind {
        AttnKind::Dot => 0,
        AttnKind::Trilinear => 1,
        AttnKind::Determinant => 2,
    }
}

/// The folder of one run: `out/runs/KIND-seedS`.
pub fn run_dir(out: &Path, kind: AttnKind, seed: u64) -> PathBuf {
    out.join("runs").join(format!("{kind}-seed{seed}"))
}
