//! One projection output split into contiguous attention heads, with rotary position
//! embedding on the chosen parts:
//!
//! ```text
//! x [B, N, W], W = sum_p H_p * D   (the q|k|v or q|k1|k2|v1|v2 columns of one product)
//! part p -> [B, N, H_p, D]; if rotated, each pair (x_i, x_{i+D/2}) of a head at position t:
//!   (x_i cos(t f_i) - x_{i+D/2} sin(t f_i),  x_i sin(t f_i) + x_{i+D/2} cos(t f_i)),
//!   f_i = theta^(-2i/D)
//! backward: dx of a rotated pair is the opposite rotation of the pair's gradients
//! ```
//! candle ops have one output, so this is `Split(x) -> marker` (its forward writes every part
//! and leaves them in a slot) followed by one `Take(marker) -> part` per part. Each `Take`'s
//! backward leaves its gradient in a second slot; `Split`'s backward (which candle runs after
//! all of them, the marker being their input) writes dx from them in one pass. No narrow, cat
//! or copy happens outside the two kernels.

use candle_core::{
    CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor, WithDType,
};

use super::{compute_dtype, cpu_data, poisoned, put, slot, take, Slot};
use crate::cpu::Real;

/// The most parts one call splits into.
pub const MAX_PARTS: usize = 5;

/// One part of a split: `heads` consecutive heads of the input's columns, rotated or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadPart {
    /// Heads in this part.
    pub heads: usize,
    /// Apply the rotary embedding (needs a table and an even head dim).
    pub rotate: bool,
}

/// Rotary tables `cos, sin [max_seq, D/2]` in f32 for head dim `D` (even).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    dim: usize,
}

impl RopeTables {
    /// Tables for head dim `dim` (even, > 0), positions `0..max_seq`, base `theta`.
    pub fn new(dim: usize, max_seq: usize, theta: f64, dev: &Device) -> candle_core::Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            candle_core::bail!("rotary embedding: head dim {dim} must be even and > 0")
        }
        if !(theta > 0.0 && theta.is_finite()) {
            candle_core::bail!("rotary embedding: rope_theta = {theta} must be > 0")
        }
        let half = dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| theta.powf(-2.0 * i as f64 / dim as f64))
            .collect();
        let angle = |p: usize, i: usize| p as f64 * freqs[i];
        let table = |f: fn(f64) -> f64| -> candle_core::Result<Tensor> {
            let v: Vec<f32> = (0..max_seq * half)
                .map(|k| f(angle(k / half, k % half)) as f32)
                .collect();
            Tensor::from_vec(v, (max_seq, half), dev)
        };
        Ok(RopeTables {
            cos: table(f64::cos)?,
            sin: table(f64::sin)?,
            dim,
        })
    }

    /// The head dim the tables are for.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Positions the tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// Validated description of one split.
#[derive(Debug, Clone)]
pub(crate) struct Layout3 {
    pub(crate) b: usize,
    pub(crate) n: usize,
    pub(crate) width: usize,
    pub(crate) d: usize,
    pub(crate) parts: Vec<HeadPart>,
    pub(crate) pos: usize,
}

impl Layout3 {
    /// First column of part `p`.
    pub(crate) fn col0(&self, p: usize) -> usize {
        self.parts[..p].iter().map(|q| q.heads * self.d).sum()
    }
}

/// Splits `x [B, N, W]` into `parts` of `[B, N, H_p, head_dim]` (W must be their total width),
/// rotating the parts marked `rotate` with `rope` for positions `pos..pos+N`. Differentiable.
pub fn split_heads(
    x: &Tensor,
    head_dim: usize,
    parts: &[HeadPart],
    rope: Option<(&RopeTables, usize)>,
) -> candle_core::Result<Vec<Tensor>> {
    let split = Split::new(validate(x, head_dim, parts, rope)?, rope);
    split.run(x, true)
}

/// The plain candle-op split (narrow, reshape, rotation by broadcast products and a cat): the
/// reference of [`split_heads`].
pub fn split_heads_twin(
    x: &Tensor,
    head_dim: usize,
    parts: &[HeadPart],
    rope: Option<(&RopeTables, usize)>,
) -> candle_core::Result<Vec<Tensor>> {
    let lay = validate(x, head_dim, parts, rope)?;
    let d = head_dim;
    let mut out = Vec::with_capacity(parts.len());
    for (p, part) in parts.iter().enumerate() {
        let t = x
            .narrow(2, lay.col0(p), part.heads * d)?
            .reshape((lay.b, lay.n, part.heads, d))?;
        out.push(match (part.rotate, rope) {
            (true, Some((tab, pos))) => {
                let half = d / 2;
                let rows = |t: &Tensor| -> candle_core::Result<Tensor> {
                    t.narrow(0, pos, lay.n)?
                        .reshape((1, lay.n, 1, half))?
                        .to_dtype(x.dtype())
                };
                let (cos, sin) = (rows(&tab.cos)?, rows(&tab.sin)?);
                let (x1, x2) = (t.narrow(3, 0, half)?, t.narrow(3, half, half)?);
                let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let r2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
                Tensor::cat(&[r1, r2], 3)?
            }
            _ => t.contiguous()?,
        });
    }
    Ok(out)
}

fn validate(
    x: &Tensor,
    d: usize,
    parts: &[HeadPart],
    rope: Option<(&RopeTables, usize)>,
) -> candle_core::Result<Layout3> {
    let op = "split_heads";
    let (b, n, width) = x.dims3().map_err(|_| {
        candle_core::Error::Msg(format!("{op}: x {:?} must be [B, N, W]", x.dims()))
    })?;
    if parts.is_empty() || parts.len() > MAX_PARTS {
        candle_core::bail!(
            "{op}: {} parts; 1 to {MAX_PARTS} are supported",
            parts.len()
        )
    }
    let heads: usize = parts.iter().map(|p| p.heads).sum();
    if d == 0 || heads * d != width || parts.iter().any(|p| p.heads == 0) {
        candle_core::bail!(
            "{op}: x has {width} columns, the parts {:?} of head dim {d} need {}",
            parts.iter().map(|p| p.heads).collect::<Vec<_>>(),
            heads * d
        )
    }
    let pos = match rope {
        Some((tab, pos)) => {
            if tab.dim != d {
                candle_core::bail!(
                    "{op}: rotary tables for head dim {}, heads are {d}",
                    tab.dim
                )
            }
            if pos + n > tab.max_seq() {
                candle_core::bail!(
                    "{op}: positions {pos}..{} exceed the rotary tables' {} (max_seq_len)",
                    pos + n,
                    tab.max_seq()
                )
            }
            if !tab.cos.device().same_device(x.device()) {
                candle_core::bail!("{op}: the rotary tables are on another device than x")
            }
            pos
        }
        None => {
            if parts.iter().any(|p| p.rotate) {
                candle_core::bail!("{op}: a part is marked rotate but no rotary tables were given")
            }
            0
        }
    };
    Ok(Layout3 {
        b,
        n,
        width,
        d,
        parts: parts.to_vec(),
        pos,
    })
}

/// `Split(x) -> marker` (see the module doc). Clones share the slots.
#[derive(Clone)]
struct Split {
    lay: Layout3,
    rope: Option<RopeTables>,
    outs: Slot<Vec<Option<Storage>>>,
    grads: Slot<Vec<Option<Tensor>>>,
}

/// `Take(marker) -> part index`.
struct Take {
    index: usize,
    shape: Shape,
    parts: usize,
    outs: Slot<Vec<Option<Storage>>>,
    grads: Slot<Vec<Option<Tensor>>>,
}

impl Split {
    fn new(lay: Layout3, rope: Option<(&RopeTables, usize)>) -> Self {
        Split {
            lay,
            rope: rope.map(|(t, _)| t.clone()),
            outs: slot(),
            grads: slot(),
        }
    }

    /// The parts of `x`, through the `Split` and `Take` ops; recorded for autograd when
    /// `record`, else computed only (the caller does the backward with [`Split::merge`]).
    fn run(&self, x: &Tensor, record: bool) -> candle_core::Result<Vec<Tensor>> {
        let dtype = x.dtype();
        let x = x.to_dtype(compute_dtype("split_heads", x)?)?.contiguous()?;
        let marker = if record {
            x.apply_op1(self.clone())?
        } else {
            x.detach().apply_op1_no_bwd(self)?
        };
        let lay = &self.lay;
        (0..lay.parts.len())
            .map(|index| {
                let take = Take {
                    index,
                    shape: Shape::from((lay.b, lay.n, lay.parts[index].heads, lay.d)),
                    outs: self.outs.clone(),
                    grads: self.grads.clone(),
                    parts: lay.parts.len(),
                };
                if record {
                    marker.apply_op1(take)?.to_dtype(dtype)
                } else {
                    marker.apply_op1_no_bwd(&take)?.to_dtype(dtype)
                }
            })
            .collect()
    }

    fn tables_cpu<T: Real + WithDType>(&self) -> candle_core::Result<Option<(Vec<T>, Vec<T>)>> {
        let Some(tab) = &self.rope else {
            return Ok(None);
        };
        let (p, n, half) = (self.lay.pos, self.lay.n, self.lay.d / 2);
        let rows = |t: &Tensor| -> candle_core::Result<Vec<T>> {
            Ok(t.narrow(0, p, n)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .take(n * half)
                .map(|v| <T as Real>::from_f64(v as f64))
                .collect())
        };
        Ok(Some((rows(&tab.cos)?, rows(&tab.sin)?)))
    }

    fn cpu_split<T: Real + WithDType>(&self, x: &[T]) -> candle_core::Result<Vec<Option<Storage>>> {
        let lay = &self.lay;
        let tabs = self.tables_cpu::<T>()?;
        let (d, half, rows) = (lay.d, lay.d / 2, lay.b * lay.n);
        let mut outs = Vec::with_capacity(lay.parts.len());
        for (p, part) in lay.parts.iter().enumerate() {
            let (c0, w) = (lay.col0(p), part.heads * d);
            let mut out = poisoned::<T>(rows * w);
            for r in 0..rows {
                let (src, dst) = (&x[r * lay.width + c0..][..w], &mut out[r * w..][..w]);
                match (&tabs, part.rotate) {
                    (Some((cos, sin)), true) => {
                        let t = r % lay.n;
                        for h in 0..part.heads {
                            for i in 0..half {
                                let (a, b) = (src[h * d + i], src[h * d + i + half]);
                                let (c, s) = (cos[t * half + i], sin[t * half + i]);
                                dst[h * d + i] = a * c - b * s;
                                dst[h * d + i + half] = a * s + b * c;
                            }
                        }
                    }
                    _ => dst.copy_from_slice(src),
                }
            }
            outs.push(Some(Storage::Cpu(T::to_cpu_storage_owned(out))));
        }
        Ok(outs)
    }

    fn cpu_merge<T: Real + WithDType>(
        &self,
        grads: &[Option<Tensor>],
    ) -> candle_core::Result<Tensor> {
        let lay = &self.lay;
        let tabs = self.tables_cpu::<T>()?;
        let (d, half, rows) = (lay.d, lay.d / 2, lay.b * lay.n);
        let mut dx = poisoned::<T>(rows * lay.width);
        for (p, part) in lay.parts.iter().enumerate() {
            let (c0, w) = (lay.col0(p), part.heads * d);
            let g: Option<Vec<T>> = grads[p]
                .as_ref()
                .map(|g| g.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>())
                .transpose()?;
            for r in 0..rows {
                let dst = &mut dx[r * lay.width + c0..][..w];
                let Some(g) = &g else {
                    dst.fill(T::ZERO);
                    continue;
                };
                let src = &g[r * w..][..w];
                match (&tabs, part.rotate) {
                    (Some((cos, sin)), true) => {
                        let t = r % lay.n;
                        for h in 0..part.heads {
                            for i in 0..half {
                                let (a, b) = (src[h * d + i], src[h * d + i + half]);
                                let (c, s) = (cos[t * half + i], sin[t * half + i]);
                                dst[h * d + i] = a * c + b * s;
                                dst[h * d + i + half] = b * c - a * s;
                            }
                        }
                    }
                    _ => dst.copy_from_slice(src),
                }
            }
        }
        Ok(super::cpu_tensor(dx, (lay.b, lay.n, lay.width)))
    }
}

impl CustomOp1 for Split {
    fn name(&self) -> &'static str {
        "fused-split-heads"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let outs = match x {
            CpuStorage::F32(_) => self.cpu_split(cpu_data::<f32>(x, l, "split_heads", "x")?)?,
            CpuStorage::F64(_) => self.cpu_split(cpu_data::<f64>(x, l, "split_heads", "x")?)?,
            _ => candle_core::bail!("split_heads: CPU inputs must be f32 or f64 here"),
        };
        put(&self.outs, outs)?;
        Ok(crate::inputs::marker_cpu())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let outs = super::cuda::split_heads_forward(x, l, &self.lay, self.rope.as_ref())?;
        put(
            &self.outs,
            outs.into_iter().map(|s| Some(Storage::Cuda(s))).collect(),
        )?;
        crate::inputs::marker_cuda(x)
    }

    fn bwd(&self, x: &Tensor, _m: &Tensor, _g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grads = take(&self.grads, "the gradients of split_heads' parts")?;
        Ok(Some(self.merge(x, grads)?))
    }
}

/// A split run outside autograd, kept for the backward of a layer that computes its own
/// gradients: [`HeadSplit::merge`] turns the parts' gradients into the input's.
pub(crate) struct HeadSplit {
    split: Split,
}

/// The parts of `x` (see [`split_heads`]) computed without recording a graph, and the split for
/// the backward.
pub(crate) fn split_no_grad(
    x: &Tensor,
    head_dim: usize,
    parts: &[HeadPart],
    rope: Option<(&RopeTables, usize)>,
) -> candle_core::Result<(Vec<Tensor>, HeadSplit)> {
    let split = Split::new(validate(x, head_dim, parts, rope)?, rope);
    let out = split.run(x, false)?;
    Ok((out, HeadSplit { split }))
}

impl HeadSplit {
    /// `dx` `[B, N, W]` from the parts' gradients (None: zero), in the dtype and on the device
    /// of `like`.
    pub(crate) fn merge(
        &self,
        like: &Tensor,
        grads: Vec<Option<Tensor>>,
    ) -> candle_core::Result<Tensor> {
        self.split.merge(like, grads)
    }
}

impl Split {
    fn merge(&self, x: &Tensor, grads: Vec<Option<Tensor>>) -> candle_core::Result<Tensor> {
        let dx = match x.device() {
            Device::Cpu => match x.dtype() {
                DType::F32 => self.cpu_merge::<f32>(&grads)?,
                DType::F64 => self.cpu_merge::<f64>(&grads)?,
                dt => candle_core::bail!("split_heads backward: {dt:?} on the CPU"),
            },
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                let grads: Vec<Option<Tensor>> = grads
                    .into_iter()
                    .map(|g| g.map(|g| g.to_dtype(x.dtype())?.contiguous()).transpose())
                    .collect::<candle_core::Result<_>>()?;
                super::cuda::split_heads_backward(x, &grads, &self.lay, self.rope.as_ref())?
            }
            _ => candle_core::bail!("split_heads backward: unsupported device"),
        };
        Ok(dx)
    }
}

impl CustomOp1 for Take {
    fn name(&self) -> &'static str {
        "fused-take-heads"
    }

    fn cpu_fwd(&self, _m: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.take_out()? {
            Storage::Cpu(s) => Ok((s, self.shape.clone())),
            _ => candle_core::bail!("split_heads: a part is not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _m: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.take_out()? {
            Storage::Cuda(s) => Ok((s, self.shape.clone())),
            _ => candle_core::bail!("split_heads: a part is not on the CUDA device"),
        }
    }

    fn bwd(&self, m: &Tensor, _out: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        {
            let mut slot = self
                .grads
                .lock()
                .map_err(|_| candle_core::Error::Msg("split_heads: slot poisoned".into()))?;
            let grads = slot.get_or_insert_with(|| vec![None; self.parts]);
            grads[self.index] = Some(g.clone());
        }
        Ok(Some(m.zeros_like()?))
    }
}

impl Take {
    fn take_out(&self) -> candle_core::Result<Storage> {
        let mut slot = self
            .outs
            .lock()
            .map_err(|_| candle_core::Error::Msg("split_heads: slot poisoned".into()))?;
        slot.as_mut()
            .and_then(|v| v.get_mut(self.index))
            .and_then(Option::take)
            .ok_or_else(|| candle_core::Error::Msg("split_heads: part already taken".into()))
    }
}
