//! [`AdamWTwin`]: the AdamW update in plain candle tensor ops, one parameter at a time (the
//! reference the tests hold [`super::Optimizer`] to).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};

use super::AdamWParams;
use crate::error::{Result, TrainError};

/// AdamW over named f32 variables, in candle tensor ops (the reference of [`super::Optimizer`]).
pub struct AdamWTwin {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    hp: AdamWParams,
}

impl AdamWTwin {
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
        Ok(AdamWTwin {
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

    /// Restores the state written by [`AdamW::state`](Self::state); `path` names the file in errors.
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
