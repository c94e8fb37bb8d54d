//! The saturating fit `L = E + A * N^-alpha_sat` by least squares in L, by variable projection:
//! for a fixed exponent the model is linear in (E, A), solved exactly under E >= 0, A >= 0; the
//! exponent minimizes the remaining sum of squares over a log-spaced grid on
//! [`ALPHA_MIN`, `ALPHA_MAX`], refined by golden-section search around the best grid point.

use serde::Serialize;

use crate::data::Point;

/// Smallest exponent searched.
pub const ALPHA_MIN: f64 = 0.01;
/// Largest exponent searched.
pub const ALPHA_MAX: f64 = 3.0;
/// Number of grid points (log-spaced) of the coarse search.
const GRID: usize = 200;

/// Result of the saturating fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Saturating {
    /// Irreducible loss `E` (>= 0).
    #[serde(rename = "E")]
    pub e: f64,
    /// Scale `A` (>= 0) in the units of the size column: `L = E + A * N^-alpha_sat`.
    #[serde(rename = "A")]
    pub a: f64,
    /// Exponent, in [`ALPHA_MIN`, `ALPHA_MAX`].
    pub alpha_sat: f64,
    /// Coefficient of determination in L space.
    pub r2_sat: f64,
}

impl Saturating {
    /// The fitted loss at size `n`.
    pub fn predict(&self, n: f64) -> f64 {
        self.e + self.a * n.powf(-self.alpha_sat)
    }
}

/// The fit's data in centred log sizes: `u = ln(N / N_ref)` with `N_ref` the geometric mean of
/// the sizes, so `(N / N_ref)^-alpha` stays near 1 for every exponent searched.
struct Problem {
    u: Vec<f64>,
    loss: Vec<f64>,
    ln_ref: f64,
}

/// The constrained linear solution for one exponent: `L ~ e + a_ref * z`, `z = exp(-alpha u)`.
#[derive(Clone, Copy)]
struct Linear {
    e: f64,
    a_ref: f64,
    ssr: f64,
}

impl Problem {
    fn new(points: &[Point]) -> Self {
        let ln_n: Vec<f64> = points.iter().map(|p| p.n.ln()).collect();
        let ln_ref = ln_n.iter().sum::<f64>() / ln_n.len() as f64;
        Self {
            u: ln_n.iter().map(|x| x - ln_ref).collect(),
            loss: points.iter().map(|p| p.loss).collect(),
            ln_ref,
        }
    }

    /// Least squares of L on (1, z) with e >= 0, a_ref >= 0. The problem is a convex quadratic:
    /// the unconstrained optimum if feasible, else the better of the two faces e = 0 and a = 0.
    fn solve(&self, alpha: f64) -> Linear {
        let z: Vec<f64> = self.u.iter().map(|u| (-alpha * u).exp()).collect();
        let l = &self.loss;
        let m = l.len() as f64;
        let ssr = |e: f64, a: f64| -> f64 {
            z.iter()
                .zip(l)
                .map(|(z, l)| {
                    let r = l - e - a * z;
                    r * r
                })
                .sum()
        };
        let z_mean = z.iter().sum::<f64>() / m;
        let l_mean = l.iter().sum::<f64>() / m;
        let (mut szz, mut szl) = (0.0, 0.0);
        for (z, l) in z.iter().zip(l) {
            szz += (z - z_mean) * (z - z_mean);
            szl += (z - z_mean) * (l - l_mean);
        }
        if szz > 0.0 {
            let a = szl / szz;
            let e = l_mean - a * z_mean;
            if e >= 0.0 && a >= 0.0 {
                return Linear {
                    e,
                    a_ref: a,
                    ssr: ssr(e, a),
                };
            }
        }
        // face e = 0: a = sum(z l) / sum(z^2) (> 0 since z, L > 0)
        let a0 =
            z.iter().zip(l).map(|(z, l)| z * l).sum::<f64>() / z.iter().map(|z| z * z).sum::<f64>();
        let on_e0 = Linear {
            e: 0.0,
            a_ref: a0,
            ssr: ssr(0.0, a0),
        };
        // face a = 0: e = mean(L), no dependence on N
        let on_a0 = Linear {
            e: l_mean,
            a_ref: 0.0,
            ssr: ssr(l_mean, 0.0),
        };
        if on_a0.ssr < on_e0.ssr {
            on_a0
        } else {
            on_e0
        }
    }

    /// Total sum of squares of L around its mean.
    fn sst(&self) -> f64 {
        let m = self.loss.len() as f64;
        let mean = self.loss.iter().sum::<f64>() / m;
        self.loss.iter().map(|l| (l - mean) * (l - mean)).sum()
    }
}

/// Fits `L = E + A * N^-alpha_sat` to the points (at least 2 distinct sizes; the data read by
/// [`crate::read_results`] has at least 3). Deterministic.
pub fn fit_saturating(points: &[Point]) -> Saturating {
    let problem = Problem::new(points);
    let profile = |alpha: f64| problem.solve(alpha).ssr;

    // coarse grid, log-spaced: alpha_k = ALPHA_MIN * (ALPHA_MAX / ALPHA_MIN)^(k / (GRID - 1))
    let ratio = (ALPHA_MAX / ALPHA_MIN).ln() / (GRID - 1) as f64;
    let grid: Vec<f64> = (0..GRID)
        .map(|k| ALPHA_MIN * (ratio * k as f64).exp())
        .collect();
    let values: Vec<f64> = grid.iter().map(|&a| profile(a)).collect();
    let best = (0..GRID).fold(0, |b, k| if values[k] < values[b] { k } else { b });

    // golden-section refinement between the grid neighbours of the best point
    let lo = grid[best.saturating_sub(1)];
    let hi = grid[(best + 1).min(GRID - 1)];
    let refined = golden_section(&profile, lo, hi);
    let alpha = if profile(refined) <= values[best] {
        refined
    } else {
        grid[best]
    };

    let lin = problem.solve(alpha);
    let sst = problem.sst();
    Saturating {
        e: lin.e,
        // a_ref (N / N_ref)^-alpha = (a_ref N_ref^alpha) N^-alpha
        a: lin.a_ref * (alpha * problem.ln_ref).exp(),
        alpha_sat: alpha,
        r2_sat: if lin.ssr == 0.0 {
            1.0
        } else if sst == 0.0 {
            0.0
        } else {
            1.0 - lin.ssr / sst
        },
    }
}

/// Minimum of `f` on [lo, hi] by golden-section search (exact for a unimodal `f`), to a
/// relative width of about 1e-12.
fn golden_section(f: &dyn Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0; // 0.618...
    let mut c = hi - g * (hi - lo);
    let mut d = lo + g * (hi - lo);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if hi - lo <= 1e-12 * hi {
            break;
        }
        if fc <= fd {
            // minimum in [lo, d]
            hi = d;
            d = c;
            fd = fc;
            c = hi - g * (hi - lo);
            fc = f(c);
        } else {
            // minimum in [c, hi]
            lo = c;
            c = d;
            fc = fd;
            d = lo + g * (hi - lo);
            fd = f(d);
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(e: f64, a: f64, alpha: f64, sizes: &[f64]) -> Vec<Point> {
        sizes
            .iter()
            .map(|&n| Point {
                n,
                loss: e + a * n.powf(-alpha),
            })
            .collect()
    }

    #[test]
    fn golden_section_finds_a_parabola_minimum() {
        let x = golden_section(&|x: f64| (x - 0.3) * (x - 0.3), 0.1, 0.9);
        assert!((x - 0.3).abs() < 1e-9, "{x}");
    }

    #[test]
    fn exact_saturating_data_is_recovered() {
        let sizes = [1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9];
        let f = fit_saturating(&exact(1.7, 400.0, 0.34, &sizes));
        assert!((f.alpha_sat - 0.34).abs() < 1e-6, "{f:?}");
        assert!((f.e - 1.7).abs() < 1e-6, "{f:?}");
        assert!((f.a / 400.0 - 1.0).abs() < 1e-4, "{f:?}");
        assert!((f.r2_sat - 1.0).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn pure_power_law_clamps_e_to_zero() {
        // L = 5 N^-0.1: the best E >= 0 is 0 and the exponent is the power law's
        let f = fit_saturating(&exact(0.0, 5.0, 0.1, &[1e4, 1e5, 1e6, 1e7]));
        assert!(f.e.abs() < 1e-6, "{f:?}");
        assert!((f.alpha_sat - 0.1).abs() < 1e-6, "{f:?}");
        assert!((f.a - 5.0).abs() < 1e-4, "{f:?}");
    }

    #[test]
    fn loss_rising_with_size_gives_a_flat_fit() {
        // no decrease to explain: A = 0, E = mean loss
        let p = exact(0.0, 1.0, -0.2, &[10.0, 100.0, 1000.0]);
        let f = fit_saturating(&p);
        let mean = p.iter().map(|p| p.loss).sum::<f64>() / 3.0;
        assert_eq!(f.a, 0.0, "{f:?}");
        assert!((f.e - mean).abs() < 1e-12, "{f:?}");
        assert!(f.r2_sat.abs() < 1e-12, "{f:?}");
    }
}
