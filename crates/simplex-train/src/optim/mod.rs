//! AdamW (Loshchilov & Hutter) with its state in the open, so a checkpoint can save and restore
//! the moments exactly (candle-nn's `AdamW` keeps them private).
//!
//! * [`Optimizer`]: what training uses. f32 master weights, moments and gradients in one flat
//!   buffer each, one multi-tensor update (`simplex_attn::fused::adamw`: a few kernels on CUDA
//!   for all parameters, clipping by the global norm computed on the device), and working
//!   copies in the compute dtype (f32 or bf16) that the model computes with as its variables.
//! * [`AdamWTwin`]: the same update as plain candle tensor ops per parameter (about ten ops and
//!   a `set` each): the reference the tests hold [`Optimizer`] to.
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

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use simplex_attn::fused::adamw::{AdamWStep, FlatAdamW};

use crate::error::{Result, TrainError};

mod twin;
pub use twin::AdamWTwin;

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

/// The training optimizer: named parameters with f32 masters, moments and gradients in flat
/// buffers, and working copies (candle variables in the compute dtype) the model is built on.
pub struct Optimizer {
    names: Vec<String>,
    working: Vec<Var>,
    flat: FlatAdamW,
    step: u64,
    hp: AdamWParams,
}

impl Optimizer {
    /// An optimizer for the f32 `masters` (sorted by name here), with working copies in `dtype`
    /// (f32 or bf16) on the masters' device and zero moments.
    pub fn new(mut masters: Vec<(String, Var)>, dtype: DType, hp: AdamWParams) -> Result<Self> {
        masters.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, p) in &masters {
            if p.dtype() != DType::F32 {
                return Err(TrainError::setting(
                    "precision",
                    format!("{:?}", p.dtype()),
                    format!("parameter `{name}`: master weights must be f32"),
                ));
            }
        }
        let working: Vec<Var> = masters
            .iter()
            .map(|(_, p)| Var::from_tensor(&p.as_tensor().to_dtype(dtype)?))
            .collect::<candle_core::Result<_>>()?;
        let decay: Vec<bool> = masters.iter().map(|(_, p)| p.rank() >= 2).collect();
        let tensors: Vec<Tensor> = masters.iter().map(|(_, p)| p.as_tensor().clone()).collect();
        let work: Vec<Tensor> = working.iter().map(|w| w.as_tensor().clone()).collect();
        let flat = FlatAdamW::new(&tensors, work, &decay)?;
        Ok(Optimizer {
            names: masters.into_iter().map(|(n, _)| n).collect(),
            working,
            flat,
            step: 0,
            hp,
        })
    }

    /// The parameter names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The working copies as a variable map (build the model from it with
    /// `VarBuilder::from_varmap`: its weights are then these variables).
    pub fn working_vars(&self) -> VarMap {
        let map = VarMap::new();
        if let Ok(mut data) = map.data().lock() {
            for (n, v) in self.names.iter().zip(&self.working) {
                data.insert(n.clone(), v.clone());
            }
        }
        map
    }

    /// Parameters, counted.
    pub fn param_count(&self) -> u64 {
        self.flat.len() as u64
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Takes the working copies' gradients from `grads` into the flat gradient (replacing it, or
    /// adding to it when `accumulate`); a parameter without a gradient counts as zero.
    pub fn gather(&mut self, grads: &GradStore, accumulate: bool) -> Result<()> {
        let gs = self.grads_of(grads);
        self.gather_tensors(&gs, accumulate)
    }

    /// The working copies' gradients in `grads`, in parameter order (`None`: no gradient).
    pub fn grads_of(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.working
            .iter()
            .map(|w| grads.get(w.as_tensor()).cloned())
            .collect()
    }

    /// As [`Optimizer::gather`], from gradients in parameter order (each of its parameter's
    /// size, any float dtype; `None`: zero), e.g. summed over data-parallel ranks.
    pub fn gather_tensors(&mut self, grads: &[Option<Tensor>], accumulate: bool) -> Result<()> {
        Ok(self.flat.gather(grads, accumulate)?)
    }

    /// Elements of each parameter, in parameter order.
    pub fn param_lens(&self) -> Vec<usize> {
        self.working.iter().map(|w| w.elem_count()).collect()
    }

    /// One update at learning rate `lr` from the gathered gradient, clipped to global norm
    /// `clip` (0: no clipping); writes the working copies.
    pub fn step(&mut self, lr: f64, clip: f64) -> Result<()> {
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.hp;
        self.flat.step(&AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            t: self.step + 1,
            max_norm: clip,
        })?;
        self.step += 1;
        Ok(())
    }

    /// The global gradient norm before clipping of the last update, as a one-element f32 tensor
    /// on the device (reading it waits for the device).
    pub fn grad_norm(&self) -> Result<Tensor> {
        Ok(self.flat.grad_norm()?)
    }

    /// The f32 master weights by name (for `model.safetensors`).
    pub fn master_weights(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            let [p, _, _] = self.flat.state(i)?;
            out.insert(n.clone(), p);
        }
        Ok(out)
    }

    /// The moments and the step as named tensors: `m.NAME`, `v.NAME` and `step` (one i64).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, n) in self.names.iter().enumerate() {
            let [_, m, v] = self.flat.state(i)?;
            out.insert(format!("m.{n}"), m);
            out.insert(format!("v.{n}"), v);
        }
        let dev = self
            .working
            .first()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone());
        out.insert("step".into(), Tensor::new(&[self.step as i64], &dev)?);
        Ok(out)
    }

    /// Loads master weights (`weights`, from `weights_path`) and, if given, the optimizer
    /// state written by [`Optimizer::state`] (from `state_path`); errors name the file and the
    /// tensor. Every parameter must be present with its shape, and nothing else.
    pub fn load(
        &mut self,
        (weights_path, weights): (&Path, &HashMap<String, Tensor>),
        state: Option<(&Path, HashMap<String, Tensor>)>,
    ) -> Result<()> {
        let shapes: Vec<(String, Vec<usize>)> = self
            .names
            .iter()
            .zip(&self.working)
            .map(|(n, w)| (n.clone(), w.dims().to_vec()))
            .collect();
        crate::checkpoint::check_tensors(weights_path, weights, &shapes)?;
        let (mut moments, step) = match state {
            Some((path, mut st)) => {
                let bad = |r: String| TrainError::checkpoint(path, r);
                let step = st
                    .remove("step")
                    .ok_or_else(|| bad("no tensor `step`".into()))?;
                let step = step.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
                let step = match step.as_slice() {
                    [s] if *s >= 0 => *s as u64,
                    other => {
                        return Err(bad(format!(
                            "tensor `step` is {other:?}: expected one count"
                        )))
                    }
                };
                let both: Vec<(String, Vec<usize>)> = shapes
                    .iter()
                    .flat_map(|(n, s)| {
                        [(format!("m.{n}"), s.clone()), (format!("v.{n}"), s.clone())]
                    })
                    .collect();
                crate::checkpoint::check_tensors(path, &st, &both)?;
                (Some(st), step)
            }
            None => (None, 0),
        };
        for (i, n) in self.names.iter().enumerate() {
            let p = &weights[n];
            let (m, v) = match &mut moments {
                Some(st) => (
                    st.remove(&format!("m.{n}")).expect("checked"),
                    st.remove(&format!("v.{n}")).expect("checked"),
                ),
                None => (p.zeros_like()?, p.zeros_like()?),
            };
            self.flat.set_state(i, [p, &m, &v])?;
        }
        self.flat.write_working()?;
        self.step = step;
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
        let mut ours = AdamWTwin::new(vec![("w".into(), a.clone())], hp)?;
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
        let mut copy = AdamWTwin::new(vec![("w".into(), c.clone())], hp)?;
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
        let mut o = AdamWTwin::new(vec![("norm.weight".into(), n.clone())], hp)?;
        o.step(&[Tensor::zeros(4, DType::F32, &dev)?], 1.0, 1.0)?;
        assert_eq!(n.as_tensor().to_vec1::<f32>()?, vec![1.0; 4]);
        Ok(())
    }

    /// The flat optimizer against the tensor-op twin on the same gradients: the same weights
    /// after several clipped updates (a matrix with decay, a gain without), and the state
    /// round trip through `state` / `load` repeats the next update bit for bit.
    #[test]
    fn optimizer_matches_the_twin() -> Result<()> {
        let dev = Device::Cpu;
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let init = |seed: u64, shape: &[usize]| -> Result<Var> {
            let mut g = crate::rng::SplitMix64::new(seed);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| g.normal() as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, shape, &dev)?)?)
        };
        let named = || -> Result<Vec<(String, Var)>> {
            Ok(vec![
                ("a.weight".into(), init(1, &[3, 4])?),
                ("b.gain".into(), init(2, &[4])?),
            ])
        };
        let mut flat = super::Optimizer::new(named()?, DType::F32, hp)?;
        let twin_vars = named()?;
        let mut twin = AdamWTwin::new(twin_vars.clone(), hp)?;
        let work = flat.working_vars();
        let wv = |n: &str| -> Var { work.data().lock().unwrap()[n].clone() };
        for step in 0..4 {
            let (wa, wb) = (wv("a.weight"), wv("b.gain"));
            let loss = (wa.as_tensor().sqr()?.sum_all()? * (step as f64 + 1.0))?
                + wb.as_tensor()
                    .broadcast_mul(&wa.as_tensor().sum(0)?)?
                    .sum_all()?;
            let g = loss?.backward()?;
            flat.gather(&g, false)?;
            flat.step(1e-2, 5.0)?;
            let (ta, tb) = (&twin_vars[0].1, &twin_vars[1].1);
            let loss = (ta.as_tensor().sqr()?.sum_all()? * (step as f64 + 1.0))?
                + tb.as_tensor()
                    .broadcast_mul(&ta.as_tensor().sum(0)?)?
                    .sum_all()?;
            let g = loss?.backward()?;
            let grads = vec![
                g.get(ta.as_tensor()).unwrap().clone(),
                g.get(tb.as_tensor()).unwrap().clone(),
            ];
            let norm = global_norm(&grads)?;
            let fnorm = flat.grad_norm()?.to_vec1::<f32>()?[0] as f64;
            assert!((norm - fnorm).abs() < 1e-5 * norm, "norm {fnorm} vs {norm}");
            twin.step(&grads, 1e-2, clip_scale(norm, 5.0))?;
        }
        let w = flat.master_weights()?;
        for (n, v) in &twin_vars {
            let d = (&w[n] - v.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(d < 1e-5, "{n}: flat vs twin differ by {d}");
            let d = (wv(n).as_tensor() - v.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(d < 1e-5, "{n}: working copy differs by {d}");
        }
        // state round trip: a fresh optimizer loaded from this one takes the same next update
        let mut copy = super::Optimizer::new(named()?, DType::F32, hp)?;
        let p = Path::new("checkpoint");
        copy.load((p, &w), Some((p, flat.state()?)))?;
        assert_eq!(copy.step_count(), 4);
        for o in [&mut flat, &mut copy] {
            let wk = o.working_vars();
            let a = wk.data().lock().unwrap()["a.weight"].clone();
            let g = a.as_tensor().sqr()?.sum_all()?.backward()?;
            o.gather(&g, false)?;
            o.step(1e-3, 1.0)?;
        }
        let (x, y) = (flat.master_weights()?, copy.master_weights()?);
        for n in ["a.weight", "b.gain"] {
            assert_eq!(
                x[n].flatten_all()?.to_vec1::<f32>()?,
                y[n].flatten_all()?.to_vec1::<f32>()?
            );
        }
        // loading checks names and shapes
        let mut bad = w.clone();
        bad.remove("b.gain");
        let e = copy.load((p, &bad), None).unwrap_err().to_string();
        assert!(e.contains("no tensor `b.gain`"), "{e}");
        Ok(())
    }
}
