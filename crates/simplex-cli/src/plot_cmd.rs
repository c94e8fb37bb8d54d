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
    /// Also write each run's metrics.jsonl as TensorBoard events in DIR/RUN_NAME/ (for runs
    /// trained without `train --tensorboard`; `tensorboard --logdir DIR` then compares them).
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
}

pub fn run(a: PlotArgs) -> Result<()> {
    let (png, svg) = match a.runs.as_slice() {
        [one] if one.join("results.json").is_file() => {
            anyhow::ensure!(
                a.tensorboard.is_none(),
                "--tensorboard: {} is a `simplex compare` folder; TensorBoard export takes run folders (with metrics.jsonl)",
                one.display()
            );
            let report = simplex_train::classify::read_report(one)?;
            let out = a.out.clone().unwrap_or_else(|| one.clone());
            simplex_train::classify::plot::plot_compare(&report, &out)?
        }
        runs => simplex_train::plot_runs(runs, a.out.as_deref())?,
    };
    println!("wrote {} and {}", png.display(), svg.display());
    if let Some(dir) = &a.tensorboard {
        for run in &a.runs {
            let name = run
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_owned()))
                .unwrap_or_else(|| "run".into());
            let file = simplex_train::tensorboard::export_run(run, &dir.join(name))?;
            println!("wrote {}", file.display());
        }
    }
    Ok(())
}
