//! The flat multi-tensor AdamW on CUDA: the device buffers, the parameter and chunk tables,
//! and the gather, norm, update and write-back launches.

use std::sync::Arc;

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};

use super::{cfg, tensor_addr, THREADS};
use crate::cuda::{cuda_err, wrap_tensor};
use crate::fused::adamw::{AdamWStep, Slice, CHUNK};

/// Mirrors `FlatEntry` in kernels/fused_ops.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FlatEntry {
    offset: u64,
    len: u64,
    work: u64,
    grad: u64,
    work_bf16: i32,
    grad_bf16: i32,
    decay: i32,
    pad: i32,
}

// SAFETY: #[repr(C)] plain integers, the layout of `FlatEntry` in fused_ops.cu.
unsafe impl DeviceRepr for FlatEntry {}

/// Mirrors `AdamWArgs` in kernels/fused_ops.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamWArgs {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    keep: f32,
    bc1: f32,
    bc2: f32,
    max_norm: f32,
    partials: i32,
}

// SAFETY: #[repr(C)] plain 4-byte values, the layout of `AdamWArgs` in fused_ops.cu.
unsafe impl DeviceRepr for AdamWArgs {}

/// Blocks of the sum of squares (fixed: the order of the norm's sum).
const NORM_BLOCKS: usize = 512;

/// The flat buffers on the device, the parameter table and the block-to-chunk table.
pub(crate) struct FlatBuffers {
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    master: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    grad: CudaSlice<f32>,
    partials: CudaSlice<f32>,
    norm: CudaSlice<f32>,
    host: Vec<FlatEntry>,
    entries: CudaSlice<FlatEntry>,
    chunks: CudaSlice<u32>,
    blocks: usize,
    total: usize,
    /// Keeps the working copies (whose addresses the table holds) alive.
    _work: Vec<Tensor>,
}

impl FlatBuffers {
    pub(crate) fn new(
        dev: &CudaDevice,
        master: &[f32],
        slices: &[Slice],
        work: &[Tensor],
    ) -> Result<Self> {
        let stream = dev.cuda_stream();
        let total = master.len();
        let n = total.max(1);
        let err = |e| cuda_err("allocating the optimizer's flat buffers", e);
        let mut host = Vec::with_capacity(slices.len());
        let mut chunks = Vec::new();
        for (i, (s, w)) in slices.iter().zip(work).enumerate() {
            host.push(FlatEntry {
                offset: s.offset as u64,
                len: s.len as u64,
                work: tensor_addr(w, "adamw", "a working copy")?,
                grad: 0,
                work_bf16: i32::from(w.dtype() == DType::BF16),
                grad_bf16: 0,
                decay: i32::from(s.decay),
                pad: 0,
            });
            for start in (0..s.len).step_by(CHUNK) {
                chunks.extend([i as u32, start as u32]);
            }
        }
        if host.is_empty() {
            host.push(FlatEntry::default());
        }
        let blocks = chunks.len() / 2;
        let mut master_d = stream.alloc_zeros::<f32>(n).map_err(err)?;
        if total > 0 {
            stream.memcpy_htod(master, &mut master_d).map_err(err)?;
        }
        let chunks_d = if chunks.is_empty() {
            stream.alloc_zeros::<u32>(2).map_err(err)?
        } else {
            stream.clone_htod(&chunks).map_err(err)?
        };
        Ok(FlatBuffers {
            dev: dev.clone(),
            master: master_d,
            m: stream.alloc_zeros::<f32>(n).map_err(err)?,
            v: stream.alloc_zeros::<f32>(n).map_err(err)?,
            grad: stream.alloc_zeros::<f32>(n).map_err(err)?,
            partials: stream.alloc_zeros::<f32>(NORM_BLOCKS).map_err(err)?,
            norm: stream.alloc_zeros::<f32>(1).map_err(err)?,
            entries: stream.clone_htod(&host).map_err(err)?,
            host,
            chunks: chunks_d,
            blocks,
            total,
            stream,
            _work: work.to_vec(),
        })
    }

    pub(crate) fn gather(&mut self, grads: &[Option<Tensor>], accumulate: bool) -> Result<()> {
        let mut kept = Vec::new();
        for (e, g) in self.host.iter_mut().zip(grads) {
            match g {
                Some(g) => {
                    let g = match g.dtype() {
                        DType::BF16 | DType::F32 => g.clone(),
                        _ => g.to_dtype(DType::F32)?,
                    };
                    e.grad = tensor_addr(&g, "adamw", "a gradient")?;
                    e.grad_bf16 = i32::from(g.dtype() == DType::BF16);
                    kept.push(g);
                }
                None => e.grad = 0,
            }
        }
        self.stream
            .memcpy_htod(&self.host, &mut self.entries)
            .map_err(|e| cuda_err("uploading the gradient table", e))?;
        if self.blocks == 0 {
            return Ok(());
        }
        let acc = i32::from(accumulate);
        let (e, c, g) = (&self.entries, &self.chunks, &mut self.grad);
        launch!(&self.dev, "flat_gather", cfg(self.blocks, THREADS, 0)?; e, c, g, &acc);
        // the gradients must live until the gather has read them: stream order does that, the
        // allocator's stream-ordered free keeps their memory until then
        drop(kept);
        Ok(())
    }

    pub(crate) fn step(&mut self, hp: &AdamWStep) -> Result<()> {
        if self.blocks == 0 {
            return Ok(());
        }
        let n = self.total as u64;
        let (g, p) = (&self.grad, &mut self.partials);
        launch!(&self.dev, "flat_sumsq", cfg(NORM_BLOCKS, THREADS, 0)?; g, &n, p);
        let (bc1, bc2) = hp.bias_corrections();
        let args = AdamWArgs {
            lr: hp.lr as f32,
            beta1: hp.beta1 as f32,
            beta2: hp.beta2 as f32,
            eps: hp.eps as f32,
            keep: 1.0 - (hp.lr * hp.weight_decay) as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            max_norm: hp.max_norm as f32,
            partials: NORM_BLOCKS as i32,
        };
        let FlatBuffers {
            entries,
            chunks,
            master,
            m,
            v,
            grad,
            partials,
            norm,
            ..
        } = self;
        launch!(&self.dev, "flat_adamw", cfg(self.blocks, THREADS, 0)?;
            &*entries, &*chunks, master, m, v, &*grad, &*partials, &args, norm);
        Ok(())
    }

    pub(crate) fn write_working(&mut self) -> Result<()> {
        if self.blocks == 0 {
            return Ok(());
        }
        let (e, c, m) = (&self.entries, &self.chunks, &self.master);
        launch!(&self.dev, "flat_write", cfg(self.blocks, THREADS, 0)?; e, c, m);
        Ok(())
    }

    pub(crate) fn grad_norm(&self) -> Result<Tensor> {
        let copy = self
            .stream
            .clone_dtod(&self.norm)
            .map_err(|e| cuda_err("copying the gradient norm", e))?;
        Ok(wrap_tensor(copy, &self.dev, Shape::from(1)))
    }

    pub(crate) fn state(&self, s: Slice, shape: &Shape) -> Result<[Tensor; 3]> {
        let part = |b: &CudaSlice<f32>| -> Result<Tensor> {
            let view = b.slice(s.offset..s.offset + s.len);
            let mut out = unsafe { self.stream.alloc::<f32>(s.len.max(1)) }
                .map_err(|e| cuda_err("copying optimizer state", e))?;
            if s.len > 0 {
                self.stream
                    .memcpy_dtod(&view, &mut out)
                    .map_err(|e| cuda_err("copying optimizer state", e))?;
            }
            wrap_tensor(out, &self.dev, Shape::from(s.len)).reshape(shape.clone())
        };
        Ok([part(&self.master)?, part(&self.m)?, part(&self.v)?])
    }

    pub(crate) fn set_state(&mut self, s: Slice, [p, m, v]: [&[f32]; 3]) -> Result<()> {
        let err = |e| cuda_err("loading optimizer state", e);
        for (src, dst) in [(p, &mut self.master), (m, &mut self.m), (v, &mut self.v)] {
            let mut view = dst.slice_mut(s.offset..s.offset + s.len);
            self.stream.memcpy_htod(src, &mut view).map_err(err)?;
        }
        Ok(())
    }
}
