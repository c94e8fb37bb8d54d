//! Bootstrap of the saturating fit: resample the points with replacement, refit, and read the
//! 2.5 and 97.5 percentiles of each parameter and of the fitted loss along a grid of sizes.

use crate::data::{distinct_sizes, Point};
use crate::rng::SplitMix64;
use crate::saturating::{fit_saturating, Saturating};

/// The refits of one group's bootstrap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bootstrap {
    /// One saturating fit per used resample.
    pub fits: Vec<Saturating>,
    /// Resamples left out because they had fewer than 3 distinct sizes.
    pub skipped: usize,
}

/// A 95% percentile interval `[low, high]`.
pub type Interval = [f64; 2];

/// Draws `resamples` resamples of `points` (each of `points.len()` points drawn with
/// replacement) from a generator seeded with `seed`, refitting each with at least 3 distinct
/// sizes. Deterministic for a given seed.
pub fn bootstrap(points: &[Point], resamples: usize, seed: u64) -> Bootstrap {
    let mut rng = SplitMix64::new(seed);
    let mut out = Bootstrap::default();
    let mut sample = Vec::with_capacity(points.len());
    for _ in 0..resamples {
        sample.clear();
        sample.extend((0..points.len()).map(|_| points[rng.below(points.len())]));
        if distinct_sizes(&sample) < 3 {
            out.skipped += 1;
            continue;
        }
        out.fits.push(fit_saturating(&sample));
    }
    out
}

impl Bootstrap {
    /// 95% interval of a parameter of the refits (`None` without refits).
    pub fn interval(&self, param: impl Fn(&Saturating) -> f64) -> Option<Interval> {
        let values: Vec<f64> = self.fits.iter().map(param).collect();
        percentile_interval(values)
    }

    /// 95% band of the fitted loss at each size of `sizes` (`None` without refits).
    pub fn band(&self, sizes: &[f64]) -> Option<Vec<Interval>> {
        sizes
            .iter()
            .map(|&n| percentile_interval(self.fits.iter().map(|f| f.predict(n)).collect()))
            .collect()
    }
}

/// The 2.5 and 97.5 percentiles of `values` (linear interpolation between order statistics,
/// NaN values dropped); `None` when no value is left.
pub fn percentile_interval(mut values: Vec<f64>) -> Option<Interval> {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some([percentile(&values, 2.5), percentile(&values, 97.5)])
}

/// The `p`-th percentile (0..=100) of sorted, non-empty `values`: position `p/100 * (n-1)`,
/// interpolated linearly.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        // 0..=100: the 2.5th percentile is 2.5, the 97.5th 97.5
        let v: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(percentile_interval(v), Some([2.5, 97.5]));
        assert_eq!(percentile_interval(vec![4.0]), Some([4.0, 4.0]));
        assert_eq!(percentile_interval(vec![f64::NAN]), None);
    }

    #[test]
    fn same_seed_same_refits_and_thin_samples_are_skipped() {
        // 3 points with 3 sizes: a resample keeps all 3 sizes with probability 3!/27
        let p: Vec<Point> = [(1e3, 3.0), (1e4, 2.5), (1e5, 2.2)]
            .iter()
            .map(|&(n, loss)| Point { n, loss })
            .collect();
        let a = bootstrap(&p, 200, 11);
        assert_eq!(a, bootstrap(&p, 200, 11));
        assert_eq!(a.fits.len() + a.skipped, 200);
        assert!(a.skipped > 100 && !a.fits.is_empty(), "{}", a.skipped);
        assert_ne!(a, bootstrap(&p, 200, 12));
    }
}
