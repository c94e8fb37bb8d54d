//! Launch of `kernels/simplicial_fwd_wgmma.cu`: the tensor-core (wgmma) forward for bf16 with
//! D = Dv in {64, 128}. Other shapes and dtypes run the CUDA-core kernel of `forward.rs`.
//!
//! The kernel walks its first window one position at a time and tiles its second window for
//! the tensor cores, so it wants the small window first: when `w1 > w2` the two key/value sets
//! are exchanged here (the layer is symmetric in them).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Result, Shape};
use cudarc::driver::PushKernelArg;

use super::module::{self, Family};
use super::{blocks, check_smem, cuda_err, launch_config, output, view, KernelShape};
use crate::op::SimplicialOp;

/// Rows (query, head) per block; `ROWS` in the kernel.
const ROWS: usize = 64;
const THREADS: u32 = 256;

/// Window-1 positions per hand-over between the kernel's warpgroups (`TJ`); 1 or 2 are
/// compiled. `SIMPLEX_WGMMA_TJ=1` picks 1 (for comparisons).
fn positions_per_handover() -> usize {
    match std::env::var("SIMPLEX_WGMMA_TJ").as_deref() {
        Ok("1") => 1,
        _ => 2,
    }
}

/// Dynamic shared memory of one block; `Smem<D, TJ>::BYTES` in the kernel.
fn smem_bytes(d: usize, tj: usize) -> usize {
    let (tk, jc) = (64, 128);
    let k_tile = tk * d * 2;
    let p_tile = tj * ROWS * tk * 2;
    let v_tile = tk * (d + 8) * 2;
    let j_rows = jc * d * 2;
    2 * k_tile + 2 * p_tile + 2 * v_tile + 2 * j_rows + 2 * ROWS * 4 + ROWS * 4 + 1024
}

/// Whether the tensor-core forward covers this call.
pub(crate) fn covers(op: &SimplicialOp, dtype: DType) -> bool {
    dtype == DType::BF16 && op.dims.d == op.dims.dv && matches!(op.dims.d, 64 | 128)
}

/// The forward on CUDA tensor cores: o (bf16) and lse (f32, saved in the op).
pub(crate) fn forward(
    op: &SimplicialOp,
    (q, lq): (&CudaStorage, &Layout),
    (k, lk): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    type T = half::bf16;
    let dims = op.dims;
    let (b, n, hq, hkv, d) = (dims.batch, dims.seq, dims.heads_q, dims.heads_kv, dims.d);
    let swap = op.win.w1 > op.win.w2;
    let shape = KernelShape::new(&dims, &op.win, op.scale)?;
    let shape = if swap { shape.swapped() } else { shape };
    let tj = positions_per_handover();
    let name = format!("simplicial_fwd_wgmma_tj{tj}_bf16_d{d}");
    let dev = q.device().clone();
    let stream = dev.cuda_stream();
    let kernel = module::kernel(&dev, Family::ForwardWgmma, &name)?;
    let smem = smem_bytes(d, tj);
    check_smem(&name, smem, kernel.max_smem, d, d)?;

    let nk = b * n * hkv * d;
    let qv = view::<T>(q, lq, "q", b * n * hq * d)?;
    let kv = view::<T>(k, lk, "K", 2 * nk)?;
    let vv = view::<T>(v, lv, "V", 2 * nk)?;
    let (mut k1, mut k2) = (kv.slice(..nk), kv.slice(nk..));
    let (mut v1, mut v2) = (vv.slice(..nk), vv.slice(nk..));
    if swap {
        std::mem::swap(&mut k1, &mut k2);
        std::mem::swap(&mut v1, &mut v2);
    }
    let mut o = output::<T>(&stream, b * n * hq * d, "o")?;
    let mut lse = output::<f32>(&stream, b * n * hq, "lse")?;
    let cfg = launch_config(
        (blocks(n * (hq / hkv), ROWS)?, hkv as u32, b as u32),
        THREADS,
        smem,
    );
    let mut launch = stream.launch_builder(&kernel.func);
    launch
        .arg(&qv)
        .arg(&k1)
        .arg(&k2)
        .arg(&v1)
        .arg(&v2)
        .arg(&mut o)
        .arg(&mut lse)
        .arg(&shape);
    // SAFETY: the arguments match the kernel's signature (five const bf16*, bf16* o, float* lse,
    // Shape by value); each view holds the element count the kernel indexes (checked by `view`);
    // the grid covers all N * G rows of every (batch, K/V head), so o and lse are fully written.
    unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(&name, e))?;

    super::forward_outputs(op, &dev, o, lse)
}
