//! Scaling-law fits of a results table (issue 18; `simplex fit` is a thin layer over this crate).
//!
//! ```text
//! results.csv (kind, eval_set, params, loss, ...) -> read_results: checked Dataset of groups
//!   -> per (kind, eval_set): fit_power_law   -ln L = alpha ln N + beta   (OLS, R^2, s.e.)
//!                            fit_saturating  L = E + A N^-alpha_sat      (variable projection)
//!                            bootstrap       refits of resampled points  (95% intervals, bands)
//!   -> Report: markdown() tables, to_json(), write(dir): fit.md, fit.json, fit-<eval_set>.png|svg
//! ```
//! * [`read_results`] / [`parse_results`]: the CSV contract; errors name file, line and column.
//! * [`fit_file`] / [`fit_dataset`] with [`FitOptions`]: everything, as a [`Report`].
//! * [`fit_power_law`], [`fit_saturating`], [`bootstrap()`]: the fits on their own.

#![deny(missing_docs)]

pub mod bootstrap;
pub mod data;
mod error;
pub mod fit;
pub mod ols;
pub mod plot;
mod report;
pub mod rng;
pub mod saturating;

pub use bootstrap::{bootstrap, Bootstrap, Interval};
pub use data::{parse_results, read_results, Dataset, Group, Point};
pub use error::{FitError, Result};
pub use fit::{fit_dataset, fit_file, fit_group, FitOptions, GroupFit, Report};
pub use ols::{fit_power_law, PowerLaw};
pub use plot::plot_eval_set;
pub use saturating::{fit_saturating, Saturating, ALPHA_MAX, ALPHA_MIN};
