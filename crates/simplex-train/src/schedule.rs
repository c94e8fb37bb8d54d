//! The learning-rate schedule: linear warmup, then cosine decay to a floor.
//!
//! ```text
//! lr(t) = peak * (t + 1) / warmup                                   t < warmup
//!       = floor + (peak - floor) * (1 + cos(pi * p)) / 2            p = (t - warmup) / (steps - warmup)
//! floor = min_lr_frac * peak          (the paper: peak 4e-3, floor 1% of peak)
//! ```
//! `t` counts updates from 0; the last update (`t = steps - 1`) is one step short of the floor.

/// Warmup + cosine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Floor as a fraction of the peak.
    pub min_lr_frac: f64,
    /// Warmup updates.
    pub warmup: usize,
    /// Total updates.
    pub steps: usize,
}

impl Schedule {
    /// Learning rate of update `t` (0-based).
    pub fn lr(&self, t: usize) -> f64 {
        if t < self.warmup {
            return self.peak * (t + 1) as f64 / self.warmup as f64;
        }
        let floor = self.min_lr_frac * self.peak;
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let p = ((t - self.warmup) as f64 / span as f64).min(1.0);
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_peak_and_floor() {
        let s = Schedule {
            peak: 4e-3,
            min_lr_frac: 0.01,
            warmup: 10,
            steps: 110,
        };
        assert!((s.lr(0) - 4e-4).abs() < 1e-12);
        assert!((s.lr(9) - 4e-3).abs() < 1e-12);
        assert!((s.lr(10) - 4e-3).abs() < 1e-12);
        assert!((s.lr(60) - (4e-5 + (4e-3 - 4e-5) * 0.5)).abs() < 1e-12);
        assert!(s.lr(109) > 4e-5 && s.lr(109) < 4.1e-5);
        assert!((s.lr(500) - 4e-5).abs() < 1e-15, "past the end: the floor");
        let mut prev = f64::MAX;
        for t in 10..110 {
            assert!(s.lr(t) <= prev);
            prev = s.lr(t);
        }
    }
}
