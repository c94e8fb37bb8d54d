//! Launches of the split of one projection into contiguous heads (RoPE on the chosen parts),
//! forward and backward.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result, Storage, Tensor};
use cudarc::driver::DeviceRepr;

use super::{addr, alloc, cfg, storage_addr, symbol, tensor_addr, vec_ok};
use crate::fused::heads::{Layout3, RopeTables, MAX_PARTS};

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
    launch!(&dev, symbol(dt, op, ["split_heads_fwd_bf16", "split_heads_fwd_f32"])?, cfg(n.div_ceil(256), 256, 0)?; &xa, &parts, &ca, &sa, &args, &vec);
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
    launch!(&dev, symbol(dt, op, ["split_heads_bwd_bf16", "split_heads_bwd_f32"])?, cfg(n.div_ceil(256), 256, 0)?; &parts, &dxa, &ca, &sa, &args, &vec);
    Ok(Tensor::from_storage(
        Storage::Cuda(dx),
        (lay.b, lay.n, lay.width),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}
