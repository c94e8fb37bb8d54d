//! `simplex plot`: loss curves of runs to PNG and SVG; for a `simplex compare` folder (one with
//! results.json), its validation curves again.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run folders (each with metrics.jsonl); the curves share one chart. Or one folder of
    /// `simplex compare` (with results.json): its val_accuracy.png|svg are drawn again.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder [default: the first run's plots/].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    let (png, svg) = match a.runs.as_slice() {
        [one] if one.join("results.json").is_file() => {
            let report = simplex_train::classify::read_report(one)?;
            let out = a.out.clone().unwrap_or_else(|| one.clone());
            simplex_train::classify::plot::plot_compare(&report, &out)?
        }
        runs => simplex_train::plot_runs(runs, a.out.as_deref())?,
    };
    println!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
