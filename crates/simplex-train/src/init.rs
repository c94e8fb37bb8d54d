//! Seeded weight init: a candle `VarBuilder` backend that creates each variable from the
//! model's own init hints (normal with its std, constants for norms) with draws seeded by
//! `(seed, variable name)`, so the same seed gives the same model on any device and in any
//! build order (candle's CPU random generator cannot be seeded).

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use simplex_model::FusedParam;

use crate::rng::{fnv1a, SplitMix64, FNV_OFFSET};

/// Creates missing variables in a `VarMap` with seeded draws, returns existing ones.
pub struct SeededInit {
    /// Where the variables live.
    pub vars: VarMap,
    /// The init seed.
    pub seed: u64,
    /// Fused weights drawn as their parts (name -> parts' names and rows), so that a model
    /// whose projections are one product starts from the same values as when they were apart.
    pub fused: HashMap<String, Vec<(String, usize)>>,
}

impl SeededInit {
    /// A fresh variable map and an f32 `VarBuilder` on `device` that creates its variables
    /// with draws seeded by `seed` (each part of a `fused` weight by its own name).
    pub fn builder(
        seed: u64,
        device: &Device,
        fused: &[FusedParam],
    ) -> (VarMap, VarBuilder<'static>) {
        let vars = VarMap::new();
        let vb = VarBuilder::from_backend(
            Box::new(SeededInit {
                vars: vars.clone(),
                seed,
                fused: fused
                    .iter()
                    .map(|f| (f.name.clone(), f.parts.clone()))
                    .collect(),
            }),
            DType::F32,
            device.clone(),
        );
        (vars, vb)
    }

    /// The draws of variable `name` of shape `s`.
    fn values(&self, name: &str, s: &Shape, h: &Init) -> candle_core::Result<Vec<f32>> {
        let seeded = |n: &str| SplitMix64::derived(self.seed, fnv1a(n.as_bytes(), FNV_OFFSET));
        match self.fused.get(name) {
            Some(parts) => {
                let dims = s.dims();
                let rows: usize = parts.iter().map(|p| p.1).sum();
                if dims.len() != 2 || dims[0] != rows {
                    candle_core::bail!(
                        "fused variable `{name}`: shape {dims:?}, parts of {rows} rows"
                    )
                }
                let mut out = Vec::with_capacity(s.elem_count());
                for (part, r) in parts {
                    let ps = Shape::from((*r, dims[1]));
                    out.extend(draws(h, &ps, &mut seeded(part)));
                }
                Ok(out)
            }
            None => Ok(draws(h, s, &mut seeded(name))),
        }
    }
}

/// The (name, variable) pairs of `vars` (for an optimizer or a checkpoint); None when the map's
/// lock is poisoned.
pub fn named_vars(vars: &VarMap) -> Option<Vec<(String, Var)>> {
    let map = vars.data().lock().ok()?;
    Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn draws(init: &candle_nn::Init, shape: &Shape, rng: &mut SplitMix64) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| lo + (up - lo) * rng.next_f64();
    match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.normal()) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| uniform(rng, lo, up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| (std * rng.normal()) as f32).collect(),
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| uniform(rng, -b, b) as f32).collect()
                }
            }
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("variable `{name}`: shape {:?} vs {s:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let t = Tensor::from_vec(self.values(name, &s, &h)?, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        data.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("no variable `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.data().lock().is_ok_and(|d| d.contains_key(name))
    }
}
