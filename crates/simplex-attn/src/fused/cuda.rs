//! Launch code of the fused ops' kernels (`kernels/fused_ops.cu`): one function per op and
//! direction, the shapes checked here, element types bf16 and f32 (symbol suffix `_bf16`,
//! `_f32`).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::adamw::{AdamWStep, Slice, CHUNK};
use super::heads::{Layout3, RopeTables, MAX_PARTS};
use crate::cuda::module::Family;
use crate::cuda::{cuda_err, wrap_tensor};

const THREADS: u32 = 256;

/// The symbol suffix of a dtype.
fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F32 => Ok("f32"),
        other => candle_core::bail!("{op} on CUDA: {other:?} inputs; the kernels take bf16 or f32"),
    }
}

/// The device address of the first element of a contiguous view (bf16, f32 or u32).
pub(crate) fn addr(s: &CudaStorage, l: &Layout, op: &str, name: &str) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} on CUDA: {name} {:?} must be contiguous", l.shape())
    };
    let stream = s.device().cuda_stream();
    let (base, size) = match s.dtype() {
        DType::BF16 => (s.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0, 2),
        DType::F32 => (s.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
        DType::U32 => (s.as_cuda_slice::<u32>()?.device_ptr(&stream).0, 4),
        other => candle_core::bail!("{op} on CUDA: {name} is {other:?}"),
    };
    Ok(base + (start * size) as u64)
}

/// [`addr`] of a tensor on the CUDA device.
pub(crate) fn tensor_addr(t: &Tensor, op: &str, name: &str) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => addr(c, l, op, name),
        _ => candle_core::bail!("{op}: {name} is not on the CUDA device"),
    }
}

/// Whether 16-byte accesses of 8 elements are aligned for every address and row width.
fn vec_ok(addrs: &[u64], widths: &[usize], dtype: DType) -> i32 {
    let ok = addrs.iter().all(|a| a % 16 == 0)
        && widths
            .iter()
            .all(|w| w % 8 == 0 && (w * dtype.size_in_bytes()).is_multiple_of(16));
    i32::from(ok)
}

/// A fresh buffer of `len` elements of `dtype` (NaN-filled when the crate poisons outputs).
fn alloc(dev: &CudaDevice, dtype: DType, len: usize, name: &str) -> Result<CudaStorage> {
    let stream = dev.cuda_stream();
    Ok(match dtype {
        DType::BF16 => CudaStorage::wrap_cuda_slice(
            crate::cuda::output::<half::bf16>(&stream, len, name)?,
            dev.clone(),
        ),
        DType::F32 => CudaStorage::wrap_cuda_slice(
            crate::cuda::output::<f32>(&stream, len, name)?,
            dev.clone(),
        ),
        other => candle_core::bail!("fused op on CUDA: cannot allocate {other:?}"),
    })
}

fn storage_addr(s: &CudaStorage, len: usize, op: &str, name: &str) -> Result<u64> {
    addr(s, &Layout::contiguous(len), op, name)
}

fn cfg(blocks: usize, threads: u32, smem: usize) -> Result<LaunchConfig> {
    let grid = u32::try_from(blocks.max(1))
        .map_err(|_| candle_core::Error::Msg(format!("fused op: {blocks} blocks are too many")))?;
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

/// Loads `name` from `kernels/fused_ops.cu` and launches it ([`crate::launch_in_family`]).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {
        crate::launch_in_family!(Family::FusedOps, $dev, $name, $cfg; $($arg),*)
    };
}

/// What the RMSNorm forward produces.
pub(crate) struct NormOut {
    pub(crate) h: Option<CudaStorage>,
    pub(crate) y: CudaStorage,
    pub(crate) rstd: Tensor,
}

pub(crate) fn norm_forward(
    x: &CudaStorage,
    lx: &Layout,
    a: Option<(&CudaStorage, &Layout)>,
    w: &CudaStorage,
    lw: &Layout,
    eps: f64,
) -> Result<NormOut> {
    let op = "rms_norm";
    let (rows, c) = super::rows_cols(op, lx.shape())?;
    let dev = x.device().clone();
    let dt = x.dtype();
    let name = format!("rms_norm_fwd_{}", suffix(dt, op)?);
    let xa = addr(x, lx, op, "x")?;
    let wa = addr(w, lw, op, "weight")?;
    let aa = a
        .map(|(s, l)| addr(s, l, op, "residual"))
        .transpose()?
        .unwrap_or(0);
    let h = a.map(|_| alloc(&dev, dt, rows * c, "h")).transpose()?;
    let y = alloc(&dev, dt, rows * c, "y")?;
    let rstd = alloc(&dev, DType::F32, rows, "rstd")?;
    let ha = h
        .as_ref()
        .map(|h| storage_addr(h, rows * c, op, "h"))
        .transpose()?
        .unwrap_or(0);
    let (ya, ra) = (
        storage_addr(&y, rows * c, op, "y")?,
        storage_addr(&rstd, rows, op, "rstd")?,
    );
    let vec = vec_ok(&[xa, wa, aa, ha, ya], &[c], dt);
    let (r, cc, e) = (rows as i32, c as i32, eps as f32);
    launch!(&dev, name, cfg(rows.div_ceil(8), THREADS, 0)?; &xa, &aa, &wa, &ha, &ya, &ra, &r, &cc, &e, &vec);
    let rstd = Tensor::from_storage(
        Storage::Cuda(rstd),
        rows,
        candle_core::op::BackpropOp::none(),
        false,
    );
    Ok(NormOut { h, y, rstd })
}

/// Blocks of the RMSNorm backward (a function of the shape only, so dw sums in a fixed order).
fn norm_bwd_blocks(rows: usize) -> usize {
    rows.div_ceil(4).clamp(1, 528)
}

pub(crate) fn norm_backward(
    dy: &Tensor,
    h: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let op = "rms_norm backward";
    let (rows, c) = super::rows_cols(op, h.shape())?;
    let Some(dev) = h.device().as_cuda_device().ok().cloned() else {
        candle_core::bail!("{op}: not on the CUDA device")
    };
    let dt = h.dtype();
    let sfx = suffix(dt, op)?;
    let (dya, ha, wa, ra) = (
        tensor_addr(dy, op, "dy")?,
        tensor_addr(h, op, "h")?,
        tensor_addr(w, op, "weight")?,
        tensor_addr(rstd, op, "rstd")?,
    );
    let blocks = norm_bwd_blocks(rows);
    let warps = (THREADS / 32) as usize;
    let dh = alloc(&dev, dt, rows * c, "dh")?;
    let part = alloc(&dev, DType::F32, blocks * c, "dw partials")?;
    let dw = alloc(&dev, dt, c, "dw")?;
    let (dha, pa, dwa) = (
        storage_addr(&dh, rows * c, op, "dh")?,
        storage_addr(&part, blocks * c, op, "partials")?,
        storage_addr(&dw, c, op, "dw")?,
    );
    let vec = vec_ok(&[dya, ha, wa, dha], &[c], dt);
    let (r, cc, nb) = (rows as i32, c as i32, blocks as i32);
    launch!(&dev, &format!("rms_norm_bwd_{sfx}"), cfg(blocks, THREADS, warps * c * 4)?; &dya, &ha, &wa, &ra, &dha, &pa, &r, &cc, &vec);
    launch!(&dev, &format!("rms_norm_dw_{sfx}"), cfg(c.div_ceil(256), 256, 0)?; &pa, &dwa, &nb, &cc);
    drop(part);
    Ok((
        Tensor::from_storage(
            Storage::Cuda(dh),
            h.shape().clone(),
            candle_core::op::BackpropOp::none(),
            false,
        ),
        Tensor::from_storage(
            Storage::Cuda(dw),
            c,
            candle_core::op::BackpropOp::none(),
            false,
        ),
    ))
}

/// Mirrors `SplitArgs` in kernels/fused_ops.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SplitArgs {
    rows: i64,
    n: i32,
    width: i32,
    d: i32,
    pos: i32,
    parts: i32,
    col0: [i32; MAX_PARTS],
    heads: [i32; MAX_PARTS],
    rotate: [i32; MAX_PARTS],
}

// SAFETY: #[repr(C)] plain integers, the layout of `SplitArgs` in fused_ops.cu.
unsafe impl DeviceRepr for SplitArgs {}

/// Mirrors `Parts` in kernels/fused_ops.cu: up to five device addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Parts([u64; MAX_PARTS]);

// SAFETY: #[repr(C)] plain addresses.
unsafe impl DeviceRepr for Parts {}

fn split_args(lay: &Layout3) -> SplitArgs {
    let mut a = SplitArgs {
        rows: (lay.b * lay.n) as i64,
        n: lay.n as i32,
        width: lay.width as i32,
        d: lay.d as i32,
        pos: lay.pos as i32,
        parts: lay.parts.len() as i32,
        col0: [0; MAX_PARTS],
        heads: [0; MAX_PARTS],
        rotate: [0; MAX_PARTS],
    };
    for (p, part) in lay.parts.iter().enumerate() {
        a.col0[p] = lay.col0(p) as i32;
        a.heads[p] = part.heads as i32;
        a.rotate[p] = i32::from(part.rotate);
    }
    a
}

/// Threads of a split: one per 8 pair slots of a head of a row.
fn split_threads(lay: &Layout3) -> usize {
    let hp = lay.d.div_ceil(2);
    let heads: usize = lay.parts.iter().map(|p| p.heads).sum();
    lay.b * lay.n * heads * hp.div_ceil(8)
}

fn rope_addrs(rope: Option<&RopeTables>) -> Result<(u64, u64)> {
    match rope {
        Some(t) => Ok((
            tensor_addr(&t.cos, "split_heads", "cos")?,
            tensor_addr(&t.sin, "split_heads", "sin")?,
        )),
        None => Ok((0, 0)),
    }
}

pub(crate) fn split_heads_forward(
    x: &CudaStorage,
    l: &Layout,
    lay: &Layout3,
    rope: Option<&RopeTables>,
) -> Result<Vec<CudaStorage>> {
    let op = "split_heads";
    let dev = x.device().clone();
    let dt = x.dtype();
    let xa = addr(x, l, op, "x")?;
    let rows = lay.b * lay.n;
    let outs: Vec<CudaStorage> = lay
        .parts
        .iter()
        .map(|p| alloc(&dev, dt, rows * p.heads * lay.d, "part"))
        .collect::<Result<_>>()?;
    let mut parts = Parts([0; MAX_PARTS]);
    for (k, (o, p)) in outs.iter().zip(&lay.parts).enumerate() {
        parts.0[k] = storage_addr(o, rows * p.heads * lay.d, op, "part")?;
    }
    let (ca, sa) = rope_addrs(rope)?;
    let hp = lay.d.div_ceil(2);
    let vec = vec_ok(&[xa], &[hp, lay.width], dt);
    let args = split_args(lay);
    let n = split_threads(lay);
    launch!(&dev, &format!("split_heads_fwd_{}", suffix(dt, op)?), cfg(n.div_ceil(256), 256, 0)?; &xa, &parts, &ca, &sa, &args, &vec);
    Ok(outs)
}

pub(crate) fn split_heads_backward(
    x: &Tensor,
    grads: &[Option<Tensor>],
    lay: &Layout3,
    rope: Option<&RopeTables>,
) -> Result<Tensor> {
    let op = "split_heads backward";
    let Some(dev) = x.device().as_cuda_device().ok().cloned() else {
        candle_core::bail!("{op}: not on the CUDA device")
    };
    let dt = x.dtype();
    let rows = lay.b * lay.n;
    let dx = alloc(&dev, dt, rows * lay.width, "dx")?;
    let dxa = storage_addr(&dx, rows * lay.width, op, "dx")?;
    let mut parts = Parts([0; MAX_PARTS]);
    for (k, g) in grads.iter().enumerate() {
        if let Some(g) = g {
            parts.0[k] = tensor_addr(g, op, "a part's gradient")?;
        }
    }
    let (ca, sa) = rope_addrs(rope)?;
    let hp = lay.d.div_ceil(2);
    let mut addrs = vec![dxa];
    addrs.extend(parts.0.iter().filter(|&&a| a != 0));
    let vec = vec_ok(&addrs, &[hp, lay.width], dt);
    let args = split_args(lay);
    let n = split_threads(lay);
    launch!(&dev, &format!("split_heads_bwd_{}", suffix(dt, op)?), cfg(n.div_ceil(256), 256, 0)?; &parts, &dxa, &ca, &sa, &args, &vec);
    Ok(Tensor::from_storage(
        Storage::Cuda(dx),
        (lay.b, lay.n, lay.width),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

pub(crate) fn swiglu_forward(s: &CudaStorage, l: &Layout, h: usize) -> Result<CudaStorage> {
    let op = "swiglu";
    let (rows, _) = super::rows_cols(op, l.shape())?;
    let dev = s.device().clone();
    let dt = s.dtype();
    let ga = addr(s, l, op, "gu")?;
    let out = alloc(&dev, dt, rows * h, "out")?;
    let oa = storage_addr(&out, rows * h, op, "out")?;
    let vec = vec_ok(&[ga, oa], &[h], dt);
    let (r, hh) = (rows as i64, h as i32);
    let n = rows * h.div_ceil(8);
    launch!(&dev, &format!("swiglu_fwd_{}", suffix(dt, op)?), cfg(n.div_ceil(256), 256, 0)?; &ga, &oa, &r, &hh, &vec);
    Ok(out)
}

pub(crate) fn swiglu_backward(gu: &Tensor, dout: &Tensor, h: usize) -> Result<Tensor> {
    let op = "swiglu backward";
    let (rows, _) = super::rows_cols(op, gu.shape())?;
    let Some(dev) = gu.device().as_cuda_device().ok().cloned() else {
        candle_core::bail!("{op}: not on the CUDA device")
    };
    let dt = gu.dtype();
    let (ga, da) = (tensor_addr(gu, op, "gu")?, tensor_addr(dout, op, "dout")?);
    let d = alloc(&dev, dt, rows * 2 * h, "dgu")?;
    let dga = storage_addr(&d, rows * 2 * h, op, "dgu")?;
    let vec = vec_ok(&[ga, da, dga], &[h], dt);
    let (r, hh) = (rows as i64, h as i32);
    let n = rows * h.div_ceil(8);
    launch!(&dev, &format!("swiglu_bwd_{}", suffix(dt, op)?), cfg(n.div_ceil(256), 256, 0)?; &ga, &da, &dga, &r, &hh, &vec);
    Ok(Tensor::from_storage(
        Storage::Cuda(d),
        gu.shape().clone(),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

pub(crate) fn xent_rows(
    z: &CudaStorage,
    lz: &Layout,
    ids: &CudaStorage,
    li: &Layout,
    inv: &CudaStorage,
    linv: &Layout,
    ignore: Option<u32>,
) -> Result<(CudaStorage, Tensor)> {
    let op = "cross_entropy";
    let (rows, v) = lz.shape().dims2()?;
    let dev = z.device().clone();
    let dt = z.dtype();
    if inv.dtype() != DType::F32 || ids.dtype() != DType::U32 {
        candle_core::bail!("{op} on CUDA: targets must be u32 and 1/n f32")
    }
    let (za, ia, va) = (
        addr(z, lz, op, "logits")?,
        addr(ids, li, op, "targets")?,
        addr(inv, linv, op, "1/n")?,
    );
    let dz = alloc(&dev, dt, rows * v, "dz")?;
    let loss = alloc(&dev, DType::F32, rows, "loss rows")?;
    let (dza, la) = (
        storage_addr(&dz, rows * v, op, "dz")?,
        storage_addr(&loss, rows, op, "loss")?,
    );
    let (vv, ig, has) = (v as i32, ignore.unwrap_or(0), i32::from(ignore.is_some()));
    let threads = if v >= 1024 { 256 } else { 128 };
    launch!(&dev, &format!("xent_rows_{}", suffix(dt, op)?), cfg(rows, threads, 0)?; &za, &ia, &va, &dza, &la, &vv, &ig, &has);
    let loss = Tensor::from_storage(
        Storage::Cuda(loss),
        rows,
        candle_core::op::BackpropOp::none(),
        false,
    );
    Ok((dz, loss))
}

// ------------------------------------------------------------------------------ flat AdamW

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
        Ok(wrap_tensor(copy, &self.dev, &Shape::from(1)))
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
            wrap_tensor(out, &self.dev, &Shape::from(s.len)).reshape(shape.clone())
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
