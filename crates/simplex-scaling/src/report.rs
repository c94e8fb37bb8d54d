//! The report: Markdown tables (the paper's log-log fit per eval set with the change of alpha
//! against the baseline kind, then the saturating fit with its intervals) and the output folder
//! (`fit.md`, `fit.json`, one plot per eval set).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::bootstrap::Interval;
use crate::error::{IoContext, Result};
use crate::fit::Report;

impl Report {
    /// The two tables as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let n = &self.params_column;
        // writing to a String cannot fail: the results of writeln! are ignored below
        let _ = writeln!(s, "## -log L = alpha * log N + beta (N = {n})\n");
        for eval_set in &self.eval_sets {
            let _ = writeln!(s, "### {eval_set}\n");
            let _ = writeln!(
                s,
                "| kind | points | sizes | alpha | alpha s.e. | beta | R^2 | alpha vs {} |",
                self.baseline
            );
            let _ = writeln!(
                s,
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for f in self.of_eval_set(eval_set) {
                let p = &f.power_law;
                let change = if f.kind == self.baseline {
                    "baseline".to_string()
                } else {
                    f.alpha_change_pct
                        .map_or_else(|| "n/a".to_string(), |c| format!("{c:+.1}%"))
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {:.4} | {} |",
                    f.kind,
                    f.n_points,
                    f.n_sizes,
                    num(p.alpha),
                    num(p.alpha_se),
                    num(p.beta),
                    p.r2,
                    change
                );
            }
            s.push('\n');
        }

        let intervals = if self.bootstrap > 0 {
            format!("[95% bootstrap interval, {} resamples]", self.bootstrap)
        } else {
            "(no bootstrap)".to_string()
        };
        let _ = writeln!(s, "## L = E + A * N^-alpha_sat {intervals}\n");
        for eval_set in &self.eval_sets {
            let _ = writeln!(s, "### {eval_set}\n");
            let _ = writeln!(s, "| kind | E | A | alpha_sat | R^2 (L) |");
            let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
            for f in self.of_eval_set(eval_set) {
                let sat = &f.saturating;
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.4} |",
                    f.kind,
                    with_interval(sat.e, f.e_ci),
                    with_interval(sat.a, f.a_ci),
                    with_interval(sat.alpha_sat, f.alpha_sat_ci),
                    sat.r2_sat
                );
            }
            s.push('\n');
        }
        let skipped: Vec<String> = self
            .fits
            .iter()
            .filter(|f| f.bootstrap_skipped > 0)
            .map(|f| {
                format!(
                    "{} on {}: {} of {}",
                    f.kind,
                    f.eval_set,
                    f.bootstrap_skipped,
                    f.bootstrap_skipped + f.bootstrap_resamples
                )
            })
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(
                s,
                "Resamples left out (fewer than 3 distinct sizes): {}.\n",
                skipped.join("; ")
            );
        }
        s
    }

    /// Writes `fit.md`, `fit.json` and `fit-<eval_set>.png|svg` per eval set into `dir`
    /// (created if needed); returns the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).at(dir)?;
        let md = dir.join("fit.md");
        std::fs::write(&md, self.markdown()).at(&md)?;
        let json = dir.join("fit.json");
        std::fs::write(&json, self.to_json() + "\n").at(&json)?;
        let mut written = vec![md, json];
        for eval_set in &self.eval_sets {
            let (png, svg) = crate::plot::plot_eval_set(self, eval_set, dir)?;
            written.extend([png, svg]);
        }
        Ok(written)
    }
}

/// `x [low, high]`, or `x` alone without an interval.
fn with_interval(x: f64, ci: Option<Interval>) -> String {
    match ci {
        Some([lo, hi]) => format!("{} [{}, {}]", num(x), num(lo), num(hi)),
        None => num(x),
    }
}

/// A number to 4 significant digits: fixed notation from 1e-3 to 1e5, scientific outside.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor();
    if !(-3.0..5.0).contains(&mag) {
        return format!("{x:.3e}");
    }
    let decimals = (3.0 - mag).max(0.0) as usize;
    format!("{x:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(0.051234), "0.05123");
        assert_eq!(num(-1.23456), "-1.235");
        assert_eq!(num(412.345), "412.3");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(1.5e7), "1.500e7");
        assert_eq!(num(2e-5), "2.000e-5");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "n/a");
    }
}
