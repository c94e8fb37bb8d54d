//! Sampling the next token from logits: temperature, top-k, top-p (nucleus), seeded.
//!
//! Order: divide by the temperature, keep the `top_k` largest, softmax, keep the smallest set of
//! most likely tokens whose mass reaches `top_p`, renormalize, draw. Temperature 0 is greedy.

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{ModelError, Result};

/// Sampling options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass, in `(0, 1]`.
    pub top_p: Option<f64>,
    /// Seed of the random draws.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// Draws tokens; the same seed and logits give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// Validates the options (the error names the option and its value).
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            return Err(ModelError::Input(format!(
                "temperature = {}: must be finite and >= 0",
                cfg.temperature
            )));
        }
        if cfg.top_k == Some(0) {
            return Err(ModelError::Input("top_k = 0: must be at least 1".into()));
        }
        if let Some(p) = cfg.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::Input(format!("top_p = {p}: must be in (0, 1]")));
            }
        }
        Ok(Sampler {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
        })
    }

    /// The next token from `logits [V]`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f64> = logits.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        if logits.is_empty() {
            return Err(ModelError::Input("empty logits".into()));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(ModelError::Input(format!("logit {i} is NaN")));
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.cfg.temperature == 0.0 {
            return Ok(order[0] as u32);
        }
        order.truncate(self.cfg.top_k.unwrap_or(order.len()));
        let m = logits[order[0]];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] - m) / self.cfg.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.cfg.top_p {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return Ok(order[i] as u32);
            }
            u -= p;
        }
        Ok(order[probs.len() - 1] as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).expect("tensor")
    }

    fn counts(cfg: SamplingConfig, l: &[f32], draws: usize) -> Result<Vec<usize>> {
        let mut s = Sampler::new(cfg)?;
        let mut c = vec![0; l.len()];
        for _ in 0..draws {
            c[s.sample(&logits(l))? as usize] += 1;
        }
        Ok(c)
    }

    #[test]
    fn temperature_zero_is_argmax() -> Result<()> {
        let cfg = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(
            Sampler::new(cfg)?.sample(&logits(&[0.1, 3.0, -2.0, 2.9]))?,
            1
        );
        Ok(())
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() -> Result<()> {
        let l = [2.0, 1.9, 1.8, -5.0, 1.7];
        let c = counts(
            SamplingConfig {
                top_k: Some(2),
                ..Default::default()
            },
            &l,
            400,
        )?;
        assert!(
            c[2] == 0 && c[3] == 0 && c[4] == 0 && c[0] > 0 && c[1] > 0,
            "{c:?}"
        );
        // probabilities ~ [0.29, 0.26, 0.24, 0.0002, 0.21]: top_p 0.5 keeps tokens 0 and 1
        let c = counts(
            SamplingConfig {
                top_p: Some(0.5),
                ..Default::default()
            },
            &l,
            400,
        )?;
        assert!(
            c[2] == 0 && c[3] == 0 && c[4] == 0 && c[0] > 0 && c[1] > 0,
            "{c:?}"
        );
        Ok(())
    }

    #[test]
    fn draws_follow_the_softmax_and_the_seed() -> Result<()> {
        let l = [0.0, (3.0f32).ln()];
        let c = counts(SamplingConfig::default(), &l, 4000)?;
        let frac = c[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let cfg = SamplingConfig {
            seed: 9,
            ..Default::default()
        };
        assert_eq!(counts(cfg, &l, 50)?, counts(cfg, &l, 50)?);
        Ok(())
    }

    #[test]
    fn bad_options_are_named() {
        let e = Sampler::new(SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("top_p = 1.5"), "{e}");
        let e = Sampler::new(SamplingConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("temperature = -1"), "{e}");
        let e = Sampler::new(SamplingConfig {
            top_k: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("top_k = 0"), "{e}");
    }
}
