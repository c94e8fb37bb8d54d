//! AdamW (Loshchilov & Hutter) with its state in the open, so a checkpoint can save and restore
//! the moments exactly (candle-nn's `AdamW` keeps them private).
//!
//! ```text
//! t = step + 1
//! m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
//! theta = theta (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```
//! Weight decay (PyTorch's convention: scaled by the learning rate) applies to matrices and
//! embeddings (rank >= 2), not to norm gains. Parameters and moments are f32 (the master
//! weights); gradients of any dtype are cast to f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// AdamW hyperparameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay, multiplied by the learning rate.
    pub weight_decay: f64,
}

/// AdamW over named f32 variables.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    hp: AdamWParams,
}

impl AdamW {
    /// An optimizer for `params` (sorted by name here) with zero moments.
    pub fn new(mut params: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = Vec::with_capacity(params.len());
        for (name, p) in &params {
            if p.dtype() != DType::F32 {
                return Err(TrainError::setting(
                    "precision",
                    format!("{:?}", p.dtype()),
                    format!("parameter `{name}`: master weights must be f32"),
                ));
            }
            m.push(p.as_tensor().zeros_like()?);
        }
        let v = m.clone();
        Ok(AdamW {
            params,
            m,
            v,
            step: 0,
            hp,
        })
    }

    /// The parameters, sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr`; `grads[i]` is the gradient of `params()[i]`,
    /// multiplied by `grad_scale` first (gradient clipping).
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        let AdamWParams {
            beta1: b1,
            beta2: b2,
            eps,
            weight_decay: wd,
        } = self.hp;
        let t = self.step as i32 + 1;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let mut g = grads[i].to_dtype(DType::F32)?;
            if grad_scale != 1.0 {
                g = g.affine(grad_scale, 0.0)?;
            }
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            let decay = if p.rank() >= 2 { lr * wd } else { 0.0 };
            let theta = (p.as_tensor().affine(1.0 - decay, 0.0)? - (update * lr)?)?;
            p.set(&theta)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        self.step += 1;
        Ok(())
    }

    /// The state as named tensors: `m.NAME`, `v.NAME` and `step` (i64, one element).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        let dev = self
            .m
            .first()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone());
        out.insert("step".into(), Tensor::new(&[self.step as i64], &dev)?);
        Ok(out)
    }

    /// Restores the state written by [`AdamW::state`]; `path` names the file in errors.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let bad = |r: String| TrainError::checkpoint(path, r);
        let step = state
            .remove("step")
            .ok_or_else(|| bad("no tensor `step`".into()))?;
        let step = step.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        self.step = match step.as_slice() {
            [s] if *s >= 0 => *s as u64,
            other => {
                return Err(bad(format!(
                    "tensor `step` is {other:?}: expected one count"
                )))
            }
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                let t = state.remove(&key).ok_or_else(|| {
                    bad(format!(
                        "no tensor `{key}` (the model has parameter `{name}`)"
                    ))
                })?;
                if t.dims() != p.dims() || t.dtype() != DType::F32 {
                    return Err(bad(format!(
                        "tensor `{key}` is {:?} {:?}, parameter `{name}` is {:?} F32",
                        t.dtype(),
                        t.dims(),
                        p.dims()
                    )));
                }
                *slot = t.to_device(p.device())?;
            }
        }
        if let Some(extra) = state.keys().min() {
            return Err(bad(format!(
                "unexpected tensor `{extra}`: the model has no such parameter"
            )));
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients: `sqrt(sum_i sum(g_i^2))`, summed in f32 on the device
/// (one host sync).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sq: Vec<Tensor> = grads
        .iter()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<candle_core::Result<_>>()?;
    Ok((Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt())
}

/// The factor that brings a gradient of global norm `norm` down to `clip` (1 when it is
/// already within, or when `clip` is 0: no clipping).
pub fn clip_scale(norm: f64, clip: f64) -> f64 {
    if clip > 0.0 && norm > clip {
        clip / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    /// Our AdamW against candle-nn's on the same gradients (candle decays every parameter, so
    /// the twin run uses matrices only), and the state round trip.
    #[test]
    fn matches_candle_nn_adamw_and_restores_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let init = |seed: u64| -> Result<Var> {
            let mut g = crate::rng::SplitMix64::new(seed);
            let v: Vec<f32> = (0..12).map(|_| g.normal() as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (3, 4), &dev)?)?)
        };
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (a, b) = (init(1)?, init(1)?);
        let mut ours = AdamW::new(vec![("w".into(), a.clone())], hp)?;
        let mut theirs = candle_nn::AdamW::new(
            vec![b.clone()],
            candle_nn::ParamsAdamW {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        )?;
        let target = Tensor::from_vec(
            (0..12).map(|i| i as f32 / 6.0).collect::<Vec<_>>(),
            (3, 4),
            &dev,
        )?;
        for _ in 0..5 {
            let loss_a = (a.as_tensor() - &target)?.sqr()?.sum_all()?;
            let g = loss_a.backward()?;
            let ga = g
                .get(a.as_tensor())
                .ok_or_else(|| TrainError::setting("grad", "w", "none"))?
                .clone();
            ours.step(&[ga], 1e-2, 1.0)?;
            let loss_b = (b.as_tensor() - &target)?.sqr()?.sum_all()?;
            theirs.backward_step(&loss_b)?;
        }
        let diff = (a.as_tensor() - b.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "ours vs candle-nn: max |diff| {diff}");
        // the state restores bit for bit: the next update is the same from a copy
        let c = Var::from_tensor(&a.as_tensor().copy()?)?;
        let mut copy = AdamW::new(vec![("w".into(), c.clone())], hp)?;
        copy.load_state(ours.state()?, Path::new("optimizer.safetensors"))?;
        assert_eq!(copy.step_count(), 5);
        let g = Tensor::ones((3, 4), DType::F32, &dev)?;
        ours.step(std::slice::from_ref(&g), 1e-3, 0.5)?;
        copy.step(&[g], 1e-3, 0.5)?;
        let diff = (a.as_tensor() - c.as_tensor())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // clipping: the norm of [3, 4] and [12] is 13
        let gs = [
            Tensor::new(&[3f32, 4.0], &dev)?,
            Tensor::new(&[12f32], &dev)?,
        ];
        assert!((global_norm(&gs)? - 13.0).abs() < 1e-6);
        assert!((clip_scale(13.0, 1.0) * 13.0 - 1.0).abs() < 1e-6);
        assert_eq!((clip_scale(0.5, 1.0), clip_scale(13.0, 0.0)), (1.0, 1.0));
        // a 1-d parameter (a norm gain) is not decayed: zero gradient leaves it unchanged
        let n = Var::from_tensor(&Tensor::ones(4, DType::F32, &dev)?)?;
        let mut o = AdamW::new(vec![("norm.weight".into(), n.clone())], hp)?;
        o.step(&[Tensor::zeros(4, DType::F32, &dev)?], 1.0, 1.0)?;
        assert_eq!(n.as_tensor().to_vec1::<f32>()?, vec![1.0; 4]);
        Ok(())
    }
}
