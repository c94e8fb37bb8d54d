//! The paper's fit: `-ln L = alpha * ln N + beta`, ordinary least squares of `y = -ln L` on
//! `x = ln N` over all points (repeated sizes count as separate points).

use serde::Serialize;

use crate::data::Point;

/// Result of the log-log line fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerLaw {
    /// Slope: how fast `-ln L` grows with `ln N`.
    pub alpha: f64,
    /// Intercept.
    pub beta: f64,
    /// Coefficient of determination of the fit in (ln N, -ln L) space.
    pub r2: f64,
    /// Standard error of `alpha` (OLS formula, `n - 2` degrees of freedom; 0 for 2 points).
    pub alpha_se: f64,
    /// Standard error of `beta` (same formula).
    pub beta_se: f64,
}

impl PowerLaw {
    /// The fitted loss at size `n`: `exp(-(alpha * ln n + beta))`.
    pub fn predict(&self, n: f64) -> f64 {
        (-(self.alpha * n.ln() + self.beta)).exp()
    }
}

/// Fits `-ln L = alpha * ln N + beta` by least squares. Needs at least 2 distinct sizes (the
/// caller's data is checked for 3); returns NaN fields otherwise.
pub fn fit_power_law(points: &[Point]) -> PowerLaw {
    let m = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| p.n.ln()).collect();
    let ys: Vec<f64> = points.iter().map(|p| -p.loss.ln()).collect();
    let x_mean = xs.iter().sum::<f64>() / m;
    let y_mean = ys.iter().sum::<f64>() / m;
    // centred sums: Sxx, Sxy, Syy
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(&ys) {
        let (dx, dy) = (x - x_mean, y - y_mean);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let alpha = sxy / sxx;
    let beta = y_mean - alpha * x_mean;
    // residual sum of squares, summed directly (not syy - alpha * sxy) to keep exact data at 0
    let ssr: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| {
            let r = y - (alpha * x + beta);
            r * r
        })
        .sum();
    let r2 = if ssr == 0.0 {
        1.0
    } else if syy == 0.0 {
        0.0
    } else {
        1.0 - ssr / syy
    };
    // s^2 = SSR / (n - 2); Var(alpha) = s^2 / Sxx; Var(beta) = s^2 (1/n + mean(x)^2 / Sxx)
    let dof = m - 2.0;
    let s2 = if dof > 0.0 { ssr / dof } else { 0.0 };
    PowerLaw {
        alpha,
        beta,
        r2,
        alpha_se: (s2 / sxx).sqrt(),
        beta_se: (s2 * (1.0 / m + x_mean * x_mean / sxx)).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f64, f64)]) -> Vec<Point> {
        v.iter().map(|&(n, loss)| Point { n, loss }).collect()
    }

    #[test]
    fn exact_line_has_r2_one_and_zero_se() {
        let (alpha, beta) = (0.07, -1.3);
        let p: Vec<Point> = [1e5, 3e5, 1e6, 3e6, 1e7]
            .iter()
            .map(|&n: &f64| Point {
                n,
                loss: (-(alpha * n.ln() + beta)).exp(),
            })
            .collect();
        let f = fit_power_law(&p);
        assert!((f.alpha - alpha).abs() < 1e-12, "{f:?}");
        assert!((f.beta - beta).abs() < 1e-10, "{f:?}");
        assert!((f.r2 - 1.0).abs() < 1e-12, "{f:?}");
        assert!(f.alpha_se < 1e-7, "{f:?}");
        assert!((f.predict(2e6) - (-(alpha * 2e6f64.ln() + beta)).exp()).abs() < 1e-12);
    }

    #[test]
    fn hand_computed_three_points() {
        // x = ln N = 0, 1, 2; y = -ln L = 0, 1, 3: slope 1.5, intercept -1/6, SSR 1/6, Syy 14/3
        let e = std::f64::consts::E;
        let p = pts(&[(1.0, 1.0), (e, (-1.0f64).exp()), (e * e, (-3.0f64).exp())]);
        let f = fit_power_law(&p);
        assert!((f.alpha - 1.5).abs() < 1e-12, "{f:?}");
        assert!((f.beta + 1.0 / 6.0).abs() < 1e-12, "{f:?}");
        assert!(
            (f.r2 - (1.0 - (1.0 / 6.0) / (14.0 / 3.0))).abs() < 1e-12,
            "{f:?}"
        );
        // s^2 = (1/6) / 1, Sxx = 2: se = sqrt(1/12)
        assert!((f.alpha_se - (1.0f64 / 12.0).sqrt()).abs() < 1e-12, "{f:?}");
    }
}
