//! Both fits and the bootstrap for every (kind, eval_set) group of a results table.

use std::path::Path;

use serde::Serialize;

use crate::bootstrap::{bootstrap, Bootstrap, Interval};
use crate::data::{read_results, Dataset, Group, Point};
use crate::error::{FitError, Result};
use crate::ols::{fit_power_law, PowerLaw};
use crate::rng::hash_str;
use crate::saturating::{fit_saturating, Saturating};

/// How to fit a results table.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// The column used as the size N (default `params`).
    pub params_column: String,
    /// The kind the others' exponents are compared with (default: the first kind in the file).
    pub baseline: Option<String>,
    /// Bootstrap resamples per group (default 1000; 0: no intervals).
    pub bootstrap: usize,
    /// Seed of the bootstrap (default 0); each group draws from its own stream, derived from
    /// the seed and its (kind, eval_set), so adding a group changes no other group's intervals.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            params_column: "params".into(),
            baseline: None,
            bootstrap: 1000,
            seed: 0,
        }
    }
}

/// Both fits of one (kind, eval_set) group. Serialized (JSON) with the keys `kind`,
/// `eval_set`, `params_column`, `n_points`, `n_sizes`, `alpha`, `beta`, `r2`, `alpha_se`,
/// `beta_se`, `baseline`, `alpha_change_pct`, `E`, `A`, `alpha_sat`, `r2_sat`, `E_ci`, `A_ci`,
/// `alpha_sat_ci` (`[low, high]` or null), `bootstrap_resamples`, `bootstrap_skipped`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupFit {
    /// The model kind.
    pub kind: String,
    /// The eval set.
    pub eval_set: String,
    /// The size column the fits used.
    pub params_column: String,
    /// Number of points (rows).
    pub n_points: usize,
    /// Number of distinct sizes.
    pub n_sizes: usize,
    /// `-ln L = alpha * ln N + beta`.
    #[serde(flatten)]
    pub power_law: PowerLaw,
    /// The kind the exponent is compared with.
    pub baseline: String,
    /// `(alpha - alpha_baseline) / |alpha_baseline|` in percent; `None` when the baseline kind
    /// has no fit in this eval set or its alpha is 0.
    pub alpha_change_pct: Option<f64>,
    /// `L = E + A * N^-alpha_sat`.
    #[serde(flatten)]
    pub saturating: Saturating,
    /// 95% bootstrap interval of `E`.
    #[serde(rename = "E_ci")]
    pub e_ci: Option<Interval>,
    /// 95% bootstrap interval of `A`.
    #[serde(rename = "A_ci")]
    pub a_ci: Option<Interval>,
    /// 95% bootstrap interval of `alpha_sat`.
    pub alpha_sat_ci: Option<Interval>,
    /// Resamples refitted.
    pub bootstrap_resamples: usize,
    /// Resamples skipped (fewer than 3 distinct sizes).
    pub bootstrap_skipped: usize,
    /// The points (for plots).
    #[serde(skip)]
    pub points: Vec<Point>,
    /// The bootstrap refits (for the plots' bands).
    #[serde(skip)]
    pub bootstrap: Bootstrap,
}

/// Fits one group: the log-log line, the saturating fit, and `resamples` bootstrap refits of
/// the latter drawn from `seed`. The baseline fields are left empty (see [`fit_dataset`]).
pub fn fit_group(group: &Group, params_column: &str, resamples: usize, seed: u64) -> GroupFit {
    let boot = bootstrap(&group.points, resamples, seed);
    GroupFit {
        kind: group.kind.clone(),
        eval_set: group.eval_set.clone(),
        params_column: params_column.to_string(),
        n_points: group.points.len(),
        n_sizes: group.n_sizes(),
        power_law: fit_power_law(&group.points),
        baseline: String::new(),
        alpha_change_pct: None,
        saturating: fit_saturating(&group.points),
        e_ci: boot.interval(|f| f.e),
        a_ci: boot.interval(|f| f.a),
        alpha_sat_ci: boot.interval(|f| f.alpha_sat),
        bootstrap_resamples: boot.fits.len(),
        bootstrap_skipped: boot.skipped,
        points: group.points.clone(),
        bootstrap: boot,
    }
}

/// The fits of a whole table, in the dataset's group order, with what the report needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The column used as the size N.
    pub params_column: String,
    /// The baseline kind.
    pub baseline: String,
    /// Bootstrap resamples asked per group.
    pub bootstrap: usize,
    /// Kinds in file order.
    pub kinds: Vec<String>,
    /// Eval sets in file order.
    pub eval_sets: Vec<String>,
    /// One fit per group: eval sets in file order, within each the kinds in file order.
    pub fits: Vec<GroupFit>,
}

/// Fits every group of `data`; errors if `opts.baseline` is not a kind of the table.
pub fn fit_dataset(data: &Dataset, opts: &FitOptions) -> Result<Report> {
    let baseline = match &opts.baseline {
        Some(b) if !data.kinds.contains(b) => {
            return Err(FitError::Setting {
                option: "--baseline",
                value: b.clone(),
                reason: format!(
                    "no such kind in {} (kinds: {})",
                    data.path.display(),
                    data.kinds.join(", ")
                ),
            })
        }
        Some(b) => b.clone(),
        None => data.kinds.first().cloned().unwrap_or_default(),
    };
    let mut fits: Vec<GroupFit> = data
        .groups
        .iter()
        .map(|g| {
            let seed = opts.seed ^ hash_str(&[&g.kind, &g.eval_set]);
            fit_group(g, &data.params_column, opts.bootstrap, seed)
        })
        .collect();
    // relative change of alpha against the baseline kind of the same eval set
    let base_alpha: Vec<Option<f64>> = fits
        .iter()
        .map(|f| {
            fits.iter()
                .find(|b| b.kind == baseline && b.eval_set == f.eval_set)
                .map(|b| b.power_law.alpha)
        })
        .collect();
    for (f, base) in fits.iter_mut().zip(base_alpha) {
        f.baseline = baseline.clone();
        f.alpha_change_pct = base
            .filter(|b| *b != 0.0)
            .map(|b| 100.0 * (f.power_law.alpha - b) / b.abs());
    }
    Ok(Report {
        params_column: data.params_column.clone(),
        baseline,
        bootstrap: opts.bootstrap,
        kinds: data.kinds.clone(),
        eval_sets: data.eval_sets.clone(),
        fits,
    })
}

/// Reads `path` ([`read_results`]) and fits it ([`fit_dataset`]).
pub fn fit_file(path: &Path, opts: &FitOptions) -> Result<Report> {
    fit_dataset(&read_results(path, &opts.params_column)?, opts)
}

impl Report {
    /// The fits of one eval set, in kind order.
    pub fn of_eval_set<'a>(&'a self, eval_set: &'a str) -> impl Iterator<Item = &'a GroupFit> {
        self.fits.iter().filter(move |f| f.eval_set == eval_set)
    }

    /// The fits as a JSON array (pretty-printed), one object per group.
    pub fn to_json(&self) -> String {
        // GroupFit holds only strings, numbers, options and arrays: serializing cannot fail
        serde_json::to_string_pretty(&self.fits).unwrap_or_else(|e| format!("\"{e}\""))
    }
}
