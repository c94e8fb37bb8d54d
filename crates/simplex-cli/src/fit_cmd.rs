//! `simplex fit`: scaling-law fits of a results table (kind, eval_set, params, loss per row):
//! the paper's `-log L = alpha * log N + beta` and `L = E + A * N^-alpha_sat` with bootstrap
//! intervals, as Markdown tables or JSON, optionally with files and plots.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use simplex_scaling::{fit_file, FitOptions};

#[derive(Args, Debug)]
pub struct FitArgs {
    /// CSV with at least the columns kind,eval_set,params,loss (any order, others ignored); one
    /// row per model and eval set, seeds as separate rows.
    pub results: PathBuf,
    /// Print the fits as a JSON array instead of the Markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Also write fit.md, fit.json and fit-<eval_set>.png|svg (log-log plots) into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The column used as the model size N (e.g. params_active, params_nonembedding).
    #[arg(long, default_value = "params")]
    pub params_column: String,
    /// The kind the others' alpha is compared with [default: the first kind in the file].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Bootstrap resamples per (kind, eval_set) for the saturating fit's intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: FitArgs) -> Result<()> {
    if a.params_column.is_empty() {
        bail!("--params-column: give a column name");
    }
    let opts = FitOptions {
        params_column: a.params_column,
        baseline: a.baseline,
        bootstrap: a.bootstrap,
        seed: a.seed,
    };
    let report = fit_file(&a.results, &opts)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.markdown());
    }
    if let Some(dir) = &a.out {
        let written = report.write(dir)?;
        // to stderr, so that stdout stays the tables or the JSON alone
        eprintln!(
            "wrote {}",
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
