//! `simplex plot`: loss curves of runs to PNG and SVG.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run folders (each with metrics.jsonl); the curves share one chart.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder [default: the first run's plots/].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    let (png, svg) = simplex_train::plot_runs(&a.runs, a.out.as_deref())?;
    println!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
