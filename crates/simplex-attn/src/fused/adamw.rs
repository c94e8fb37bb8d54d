//! One AdamW update of every parameter at once, over flat f32 buffers:
//!
//! ```text
//! gather:  grad[off_i .. off_i + n_i] (+)= g_i              every parameter's gradient, any dtype
//! norm:    |g| = sqrt(sum grad^2)                            on the device, no host sync
//! scale:   s = max_norm / (|g| + 1e-6) if 0 < max_norm < |g|, else 1
//! update:  g = s grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//!          master = master (1 - lr wd [matrix]) - lr (m / bc1) / (sqrt(v / bc2) + eps)
//!          work_i = master[off_i ..] in the working dtype (bf16 or f32)
//! ```
//! `bc1 = 1 - b1^t`, `bc2 = 1 - b2^t` for update `t` (the caller counts updates). The master
//! weights, moments and gradients of all parameters live in one buffer each; the working copies
//! are the tensors the model computes with (candle variables), written in place. On CUDA the
//! gather is one kernel per micro-batch, the norm one kernel, the update one kernel; on the CPU
//! the same arithmetic runs over slices with rayon. The sum of squares is reduced in a fixed
//! order (per-block partials, then in block order), so an update repeats bit for bit.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

/// Elements per work unit: a CUDA block, or a rayon task on the CPU.
pub const CHUNK: usize = 4096;

/// One update's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by lr), for the parameters marked `decay`.
    pub weight_decay: f64,
    /// The update's number `t`, from 1 (bias corrections).
    pub t: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_norm: f64,
}

impl AdamWStep {
    /// `(1 - b1^t, 1 - b2^t)`.
    pub fn bias_corrections(&self) -> (f64, f64) {
        let t = self.t.min(i32::MAX as u64) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

/// Where parameter `i` sits in the flat buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// First element.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// Weight decay applies (matrices and embeddings, not gains).
    pub decay: bool,
}

/// The flat master weights, moments and gradients of a set of parameters and their working
/// copies.
pub struct FlatAdamW {
    slices: Vec<Slice>,
    work: Vec<Tensor>,
    total: usize,
    buffers: Buffers,
}

enum Buffers {
    Cpu(CpuBuffers),
    #[cfg(feature = "cuda")]
    Cuda(Box<super::cuda::FlatBuffers>),
}

struct CpuBuffers {
    master: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    grad: Vec<f32>,
    norm: f64,
}

impl FlatAdamW {
    /// Flat buffers for parameters whose f32 master values are `masters[i]` (any shape), working
    /// copies `work[i]` (same shape, f32 or bf16, contiguous, on the same device; they are
    /// overwritten with the masters now and after every update) and `decay[i]`. Moments start
    /// at zero.
    pub fn new(masters: &[Tensor], work: Vec<Tensor>, decay: &[bool]) -> candle_core::Result<Self> {
        if masters.len() != work.len() || masters.len() != decay.len() {
            candle_core::bail!(
                "adamw: {} masters, {} working copies, {} decay flags",
                masters.len(),
                work.len(),
                decay.len()
            )
        }
        let device = match work.first() {
            Some(t) => t.device().clone(),
            None => Device::Cpu,
        };
        let mut slices = Vec::with_capacity(masters.len());
        let mut offset = 0usize;
        for (i, (m, w)) in masters.iter().zip(&work).enumerate() {
            if m.shape() != w.shape() {
                candle_core::bail!(
                    "adamw: parameter {i}: master {:?}, working copy {:?}",
                    m.dims(),
                    w.dims()
                )
            }
            if !matches!(w.dtype(), DType::F32 | DType::BF16) || !w.is_contiguous() {
                candle_core::bail!(
                    "adamw: parameter {i}: working copies must be contiguous f32 or bf16, got {:?}",
                    w.dtype()
                )
            }
            if !w.device().same_device(&device) {
                candle_core::bail!("adamw: parameter {i} is on another device than the first")
            }
            slices.push(Slice {
                offset,
                len: m.elem_count(),
                decay: decay[i],
            });
            offset += m.elem_count();
        }
        let flat: Vec<f32> = if masters.is_empty() {
            Vec::new()
        } else {
            let parts: Vec<Tensor> = masters
                .iter()
                .map(|m| {
                    m.to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_device(&Device::Cpu)
                })
                .collect::<candle_core::Result<_>>()?;
            Tensor::cat(&parts, 0)?.to_vec1::<f32>()?
        };
        let buffers = match &device {
            Device::Cpu => Buffers::Cpu(CpuBuffers {
                master: flat,
                m: vec![0.0; offset],
                v: vec![0.0; offset],
                grad: vec![0.0; offset],
                norm: 0.0,
            }),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Buffers::Cuda(Box::new(super::cuda::FlatBuffers::new(
                dev, &flat, &slices, &work,
            )?)),
            _ => candle_core::bail!("adamw: unsupported device"),
        };
        let mut opt = FlatAdamW {
            slices,
            work,
            total: offset,
            buffers,
        };
        opt.write_working()?;
        Ok(opt)
    }

    /// Parameter slices, in order.
    pub fn slices(&self) -> &[Slice] {
        &self.slices
    }

    /// The working copies, in order.
    pub fn working(&self) -> &[Tensor] {
        &self.work
    }

    /// Elements over all parameters.
    pub fn len(&self) -> usize {
        self.total
    }

    /// No parameters.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Copies `grads[i]` (the gradient of parameter i, any float dtype, or None for zero) into
    /// the flat gradient, or adds it there when `accumulate`.
    pub fn gather(
        &mut self,
        grads: &[Option<Tensor>],
        accumulate: bool,
    ) -> candle_core::Result<()> {
        if grads.len() != self.slices.len() {
            candle_core::bail!(
                "adamw: {} gradients for {} parameters",
                grads.len(),
                self.slices.len()
            )
        }
        for (i, g) in grads.iter().enumerate() {
            if let Some(g) = g {
                if g.elem_count() != self.slices[i].len {
                    candle_core::bail!(
                        "adamw: gradient {i} has {} elements, parameter {}",
                        g.elem_count(),
                        self.slices[i].len
                    )
                }
            }
        }
        match &mut self.buffers {
            Buffers::Cpu(b) => {
                for (s, g) in self.slices.iter().zip(grads) {
                    let dst = &mut b.grad[s.offset..s.offset + s.len];
                    match g {
                        Some(g) => {
                            let src = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                            if accumulate {
                                dst.iter_mut().zip(&src).for_each(|(d, s)| *d += s);
                            } else {
                                dst.copy_from_slice(&src);
                            }
                        }
                        None if !accumulate => dst.fill(0.0),
                        None => {}
                    }
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => {
                let grads: Vec<Option<Tensor>> = grads
                    .iter()
                    .map(|g| g.as_ref().map(|g| g.contiguous()).transpose())
                    .collect::<candle_core::Result<_>>()?;
                b.gather(&grads, accumulate)
            }
        }
    }

    /// One update from the gathered gradient (see the module doc); writes the masters, the
    /// moments and the working copies.
    pub fn step(&mut self, hp: &AdamWStep) -> candle_core::Result<()> {
        if hp.t == 0 {
            candle_core::bail!("adamw: update numbers start at 1")
        }
        match &mut self.buffers {
            Buffers::Cpu(b) => {
                b.norm = cpu_norm(&b.grad);
                cpu_update(b, &self.slices, hp);
            }
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => b.step(hp)?,
        }
        self.write_working()
    }

    /// The global gradient norm (before clipping) of the last [`step`](Self::step): a
    /// one-element f32 tensor on the device (reading it synchronizes; read it when logging).
    pub fn grad_norm(&self) -> candle_core::Result<Tensor> {
        match &self.buffers {
            Buffers::Cpu(b) => Tensor::new(&[b.norm as f32], &Device::Cpu),
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => b.grad_norm(),
        }
    }

    /// `(master, m, v)` of parameter `i` as f32 tensors of the working copy's shape.
    pub fn state(&self, i: usize) -> candle_core::Result<[Tensor; 3]> {
        let s = *self.slice(i)?;
        let shape = self.work[i].shape().clone();
        match &self.buffers {
            Buffers::Cpu(b) => {
                let t = |v: &[f32]| {
                    Tensor::from_slice(&v[s.offset..s.offset + s.len], shape.clone(), &Device::Cpu)
                };
                Ok([t(&b.master)?, t(&b.m)?, t(&b.v)?])
            }
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => b.state(s, &shape),
        }
    }

    /// Sets `(master, m, v)` of parameter `i` (f32 values of its shape). The working copies
    /// follow at the next [`step`](Self::step) or [`write_working`](Self::write_working).
    pub fn set_state(&mut self, i: usize, [master, m, v]: [&Tensor; 3]) -> candle_core::Result<()> {
        let s = *self.slice(i)?;
        for (name, t) in [("master", master), ("m", m), ("v", v)] {
            if t.elem_count() != s.len {
                candle_core::bail!(
                    "adamw: parameter {i}: {name} has {} elements, expected {}",
                    t.elem_count(),
                    s.len
                )
            }
        }
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        let (hm, hmm, hv) = (host(master)?, host(m)?, host(v)?);
        match &mut self.buffers {
            Buffers::Cpu(b) => {
                b.master[s.offset..s.offset + s.len].copy_from_slice(&hm);
                b.m[s.offset..s.offset + s.len].copy_from_slice(&hmm);
                b.v[s.offset..s.offset + s.len].copy_from_slice(&hv);
            }
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => b.set_state(s, [&hm, &hmm, &hv])?,
        }
        Ok(())
    }

    fn slice(&self, i: usize) -> candle_core::Result<&Slice> {
        self.slices
            .get(i)
            .ok_or_else(|| candle_core::Error::Msg(format!("adamw: no parameter {i}")))
    }

    /// Copies every master into its working copy (cast to its dtype).
    pub fn write_working(&mut self) -> candle_core::Result<()> {
        match &mut self.buffers {
            Buffers::Cpu(b) => {
                for (s, w) in self.slices.iter().zip(&self.work) {
                    w.inplace_op1(&CopyFrom(&b.master[s.offset..s.offset + s.len]))?;
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Buffers::Cuda(b) => b.write_working(),
        }
    }
}

/// `sqrt(sum g^2)`, partial sums over fixed chunks added in order.
fn cpu_norm(g: &[f32]) -> f64 {
    let partials: Vec<f64> = g
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    partials.iter().sum::<f64>().sqrt()
}

fn cpu_update(b: &mut CpuBuffers, slices: &[Slice], hp: &AdamWStep) {
    let (bc1, bc2) = hp.bias_corrections();
    let scale = if hp.max_norm > 0.0 && b.norm > hp.max_norm {
        (hp.max_norm / (b.norm + 1e-6)) as f32
    } else {
        1.0
    };
    let (b1, b2, eps, lr) = (
        hp.beta1 as f32,
        hp.beta2 as f32,
        hp.eps as f32,
        hp.lr as f32,
    );
    let (bc1, bc2) = (bc1 as f32, bc2 as f32);
    for s in slices {
        let r = s.offset..s.offset + s.len;
        let keep = if s.decay {
            1.0 - (hp.lr * hp.weight_decay) as f32
        } else {
            1.0
        };
        b.master[r.clone()]
            .par_chunks_mut(CHUNK)
            .zip(b.m[r.clone()].par_chunks_mut(CHUNK))
            .zip(b.v[r.clone()].par_chunks_mut(CHUNK))
            .zip(b.grad[r].par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for k in 0..p.len() {
                    let g = g[k] * scale;
                    m[k] = b1 * m[k] + (1.0 - b1) * g;
                    v[k] = b2 * v[k] + (1.0 - b2) * g * g;
                    let update = (m[k] / bc1) / ((v[k] / bc2).sqrt() + eps);
                    p[k] = p[k] * keep - lr * update;
                }
            });
    }
}

/// Overwrites a CPU tensor with f32 values (cast to its dtype).
struct CopyFrom<'a>(&'a [f32]);

impl InplaceOp1 for CopyFrom<'_> {
    fn name(&self) -> &'static str {
        "adamw-write-working-copy"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("adamw: a working copy is not contiguous")
        };
        if b - a != self.0.len() {
            candle_core::bail!(
                "adamw: a working copy has {} elements, expected {}",
                b - a,
                self.0.len()
            )
        }
        match s {
            CpuStorage::F32(d) => d[a..b].copy_from_slice(self.0),
            CpuStorage::BF16(d) => d[a..b]
                .iter_mut()
                .zip(self.0)
                .for_each(|(d, &x)| *d = half::bf16::from_f32(x)),
            _ => candle_core::bail!("adamw: working copies must be f32 or bf16"),
        }
        Ok(())
    }
}
