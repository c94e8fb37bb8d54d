//! What a comparison measured: the summary over seeds, the table, and the files.
//!
//! ```text
//! OUT/results.json           CompareReport: settings, machine, baseline, every run, summary
//! OUT/results.csv            one row per run: kind, seed, params, test scores, final val, times
//! OUT/curves.csv             one row per evaluation: kind, seed, step, losses, val scores
//! OUT/table.md               the summary table (Markdown)
//! OUT/val_accuracy.png|svg   the curves (see `plot.rs`)
//! ```
//! Per kind, the summary gives the median and the range (min..max) over seeds of the test
//! scores and times.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{write_json, write_synced};
use crate::classify::compare::CompareSettings;
use crate::classify::kind::{AttnKind, Equalize};
use crate::classify::plot::plot_compare;
use crate::classify::run::RunResult;
use crate::error::{IoContext, Result, TrainError};
use crate::tasks::{self, Example, IGNORE};

/// Median and range of one number over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `xs` (non-empty).
    pub fn of(xs: &[f64]) -> Spread {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn percent(&self) -> String {
        format!(
            "{:.1}% ({:.1}..{:.1})",
            100.0 * self.median,
            100.0 * self.min,
            100.0 * self.max
        )
    }
}

/// One kind over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindSummary {
    /// The kind.
    pub kind: AttnKind,
    /// Parameters of its model.
    pub params: u64,
    /// Seeds run.
    pub runs: usize,
    /// Test per-token accuracy.
    pub test_token_accuracy: Spread,
    /// Test exact match.
    pub test_exact_match: Spread,
    /// Validation per-token accuracy at the last step.
    pub final_val_token_accuracy: Spread,
    /// Seconds per run (updates, evaluations, checkpoint).
    pub wall_s: Spread,
    /// Milliseconds per update.
    pub ms_per_step: Spread,
}

/// A constant predictor's scores on the test split: the most frequent class of its labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The class.
    pub class: u32,
    /// Its per-token accuracy.
    pub token_accuracy: f64,
    /// Its exact match.
    pub exact_match: f64,
}

/// Where it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// CPU model name (from /proc/cpuinfo where there is one).
    pub cpu: Option<String>,
    /// Threads available to this process.
    pub threads: usize,
    /// Runs trained at the same time (each on one thread when more than one).
    pub jobs: usize,
}

impl Machine {
    /// This machine, running on `device` with `jobs` runs at a time.
    pub fn detect(device: &str, jobs: usize) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        Machine {
            device: device.to_string(),
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            jobs,
        }
    }
}

/// Everything a comparison measured (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// What ran.
    pub settings: CompareSettings,
    /// Where.
    pub machine: Machine,
    /// Seconds to draw the splits.
    pub data_s: f64,
    /// Seconds of the whole comparison.
    pub total_s: f64,
    /// The constant predictor on the test split.
    pub baseline: Baseline,
    /// One per kind, in `settings.kinds` order.
    pub summary: Vec<KindSummary>,
    /// Every run, kind-major.
    pub runs: Vec<RunResult>,
}

/// The most frequent label of `examples` as a constant prediction.
pub fn majority_baseline(examples: &[Example], classes: usize) -> Baseline {
    let mut counts = vec![0usize; classes];
    for l in examples
        .iter()
        .flat_map(|e| &e.labels)
        .filter(|&&l| l != IGNORE)
    {
        if let Some(c) = counts.get_mut(*l as usize) {
            *c += 1;
        }
    }
    let class = (0..classes)
        .max_by_key(|&c| (counts[c], usize::MAX - c))
        .unwrap_or(0) as u32;
    let mut score = tasks::Score::default();
    for e in examples {
        score.add(&vec![class; e.len()], &e.labels);
    }
    Baseline {
        class,
        token_accuracy: score.token_accuracy(),
        exact_match: score.exact_match(),
    }
}

pub(crate) fn summarize(kind: AttnKind, runs: &[RunResult]) -> KindSummary {
    let mine: Vec<&RunResult> = runs.iter().filter(|r| r.kind == kind).collect();
    let of =
        |f: &dyn Fn(&RunResult) -> f64| Spread::of(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    KindSummary {
        kind,
        params: mine.first().map_or(0, |r| r.params),
        runs: mine.len(),
        test_token_accuracy: of(&|r| r.test.token_accuracy),
        test_exact_match: of(&|r| r.test.exact_match),
        final_val_token_accuracy: of(&|r| {
            r.curve.last().map_or(f64::NAN, |p| p.val_token_accuracy)
        }),
        wall_s: of(&|r| r.wall_s),
        ms_per_step: of(&|r| 1e3 * r.train_s / r.steps.max(1) as f64),
    }
}

impl CompareReport {
    /// The headline: task, budget, size, test split and the constant baseline.
    pub fn headline(&self) -> String {
        let s = &self.settings;
        let lr = s
            .kinds
            .iter()
            .map(|&k| format!("{k} {}", s.lr(k)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{}: {} seed(s) x {} steps, batch {}, peak lr {}, d_model {}, {} layer(s), {} heads, \
             mlp {}, {}; test {} examples, majority class {:.1}% per token / {:.1}% exact",
            s.task,
            s.seeds.len(),
            s.optim.steps,
            s.optim.batch,
            lr,
            s.size.d_model,
            s.size.layers,
            s.size.heads,
            s.size.mlp_hidden,
            match s.size.equalize {
                Equalize::Params => "equal parameter counts",
                Equalize::Width => "equal head dims",
            },
            s.data.test,
            100.0 * self.baseline.token_accuracy,
            100.0 * self.baseline.exact_match,
        )
    }

    /// The summary as an aligned text table (what `simplex compare` prints).
    pub fn table(&self) -> String {
        let head = [
            "kind",
            "params",
            "test token acc: median (min..max)",
            "test exact match: median (min..max)",
            "s/run",
            "ms/step",
        ];
        let rows: Vec<[String; 6]> = self
            .summary
            .iter()
            .map(|k| {
                [
                    k.kind.to_string(),
                    k.params.to_string(),
                    k.test_token_accuracy.percent(),
                    k.test_exact_match.percent(),
                    format!("{:.1}", k.wall_s.median),
                    format!("{:.1}", k.ms_per_step.median),
                ]
            })
            .collect();
        let width: Vec<usize> = (0..6)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .chain([head[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut t = String::new();
        let line = |t: &mut String, cells: &[&str]| {
            let cells: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, s)| format!("{s:<w$}", w = width[c]))
                .collect();
            let _ = writeln!(t, "{}", cells.join("  ").trim_end());
        };
        line(&mut t, &head);
        for r in &rows {
            line(&mut t, &r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        t
    }

    /// The summary as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut t = String::from(
            "| kind | params | test token accuracy, median (min..max) | test exact match, median (min..max) | s per run | ms per step |\n\
             | --- | ---: | --- | --- | ---: | ---: |\n",
        );
        for k in &self.summary {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {:.1} | {:.1} |",
                k.kind,
                k.params,
                k.test_token_accuracy.percent(),
                k.test_exact_match.percent(),
                k.wall_s.median,
                k.ms_per_step.median
            );
        }
        t
    }
}

/// Reads `dir/results.json` of an earlier comparison.
pub fn read_report(dir: &Path) -> Result<CompareReport> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|e| {
        TrainError::data(
            &path,
            format!("not a results.json of `simplex compare`: {e}"),
        )
    })
}

pub(crate) fn write_report(report: &CompareReport, out: &Path) -> Result<()> {
    write_json(&out.join("results.json"), report)?;
    let mut csv = String::from(
        "kind,seed,params,steps,test_token_accuracy,test_exact_match,test_loss,\
         final_val_token_accuracy,final_val_exact_match,train_s,wall_s\n",
    );
    let mut curves = String::from(
        "kind,seed,step,train_loss,val_loss,val_token_accuracy,val_exact_match,elapsed_s\n",
    );
    for r in &report.runs {
        let last = r.curve.last();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{:.3},{:.3}",
            r.kind,
            r.seed,
            r.params,
            r.steps,
            r.test.token_accuracy,
            r.test.exact_match,
            r.test.loss,
            last.map_or(f64::NAN, |p| p.val_token_accuracy),
            last.map_or(f64::NAN, |p| p.val_exact_match),
            r.train_s,
            r.wall_s
        );
        for p in &r.curve {
            let _ = writeln!(
                curves,
                "{},{},{},{},{},{},{},{:.3}",
                r.kind,
                r.seed,
                p.step,
                p.train_loss.map_or(String::new(), |l| l.to_string()),
                p.val_loss,
                p.val_token_accuracy,
                p.val_exact_match,
                p.elapsed_s
            );
        }
    }
    write_synced(&out.join("results.csv"), csv.as_bytes())?;
    write_synced(&out.join("curves.csv"), curves.as_bytes())?;
    let md = format!("{}\n\n{}", report.headline(), report.markdown());
    write_synced(&out.join("table.md"), md.as_bytes())?;
    plot_compare(report, out)?;
    Ok(())
}
