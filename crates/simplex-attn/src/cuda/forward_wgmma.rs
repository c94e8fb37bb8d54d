//! Launch of `kernels/simplicial_fwd_wgmma.cu`: the tensor-core (wgmma) forward for bf16 with
//! D = Dv in {64, 128}. Other shapes and dtypes run the CUDA-core kernel of `forward.rs`.
//!
//! The kernel walks its first window one position at a time and tiles its second window for
//! the tensor cores, so it wants the small window first: when `w1 > w2` the two key/value sets
//! are exchanged here (the layer is symmetric in them).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Result, Shape};

use super::module::{self, Family};
use super::{blocks, check_smem, exchange_sets, launch_config, set_ranges, view, KernelShape};
use crate::op::SimplicialOp;

/// Rows (query, head) per block; `ROWS` in the kernel.
const ROWS: usize = 64;
const THREADS: u32 = 256;

/// Which compiled variant of the wgmma forward runs (`kernels/simplicial_fwd_wgmma.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardVariant {
    /// Window-1 positions per hand-over between the warpgroups (`TJ`): 1 or 2.
    pub positions_per_handover: usize,
    /// The ping-pong layout (`PP`): 128 rows per block, each warpgroup computing logits,
    /// softmax and values for its own 64 (always with one position per hand-over: two spill).
    pub ping_pong: bool,
}

impl ForwardVariant {
    /// The fastest measured on the H200 for G = Hq/Hkv query heads per K/V head
    /// (kernels/NOTES.md, v6): the ping-pong layout when G >= 8 (measured faster at G = 8, 16,
    /// 32, 64, 128), else two positions per hand-over between specialized warpgroups (at G = 1
    /// a 128-row block spans 128 queries and masks more of its windows; G = 2, 4 not measured).
    pub fn fastest(group: usize) -> Self {
        if group >= 8 {
            ForwardVariant {
                positions_per_handover: 1,
                ping_pong: true,
            }
        } else {
            ForwardVariant {
                positions_per_handover: 2,
                ping_pong: false,
            }
        }
    }
}

static VARIANT: std::sync::Mutex<Option<ForwardVariant>> = std::sync::Mutex::new(None);

/// Runs `variant` of the wgmma forward from now on; `None` (the default) picks
/// [`ForwardVariant::fastest`] per call. For comparisons and tests. `SIMPLEX_WGMMA_TJ=1|2` and
/// `SIMPLEX_WGMMA_PP=0|1` in the environment override the fields. Positions other than 1 and 2
/// are taken as 2; the ping-pong layout runs one position per hand-over.
pub fn set_forward_variant(variant: Option<ForwardVariant>) {
    if let Ok(mut v) = VARIANT.lock() {
        *v = variant;
    }
}

fn variant(group: usize) -> ForwardVariant {
    let mut v = VARIANT
        .lock()
        .ok()
        .and_then(|v| *v)
        .unwrap_or_else(|| ForwardVariant::fastest(group));
    match std::env::var("SIMPLEX_WGMMA_TJ").as_deref() {
        Ok("1") => v.positions_per_handover = 1,
        Ok("2") => v.positions_per_handover = 2,
        _ => {}
    }
    match std::env::var("SIMPLEX_WGMMA_PP").as_deref() {
        Ok("0") => v.ping_pong = false,
        Ok("1") => v.ping_pong = true,
        _ => {}
    }
    if v.positions_per_handover != 1 {
        v.positions_per_handover = 2;
    }
    if v.ping_pong {
        v.positions_per_handover = 1;
    }
    v
}

/// Dynamic shared memory of one block; `Smem<D, TJ>::BYTES` in the kernel.
fn smem_bytes(d: usize, tj: usize) -> usize {
    let (tk, jc) = (64, 128);
    let k_tile = tk * d * 2;
    let p_tile = tj * ROWS * tk * 2;
    let v_tile = tk * (d + 8) * 2;
    let j_rows = jc * d * 2;
    2 * k_tile + 2 * p_tile + 2 * v_tile + 2 * j_rows + 2 * ROWS * 4 + 2 * ROWS * 4 + 1024
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
    let ex = exchange_sets(&op.win);
    let shape = KernelShape::new(&dims, &op.win, op.scale)?.oriented(ex);
    let variant = variant(hq / hkv);
    let tj = variant.positions_per_handover;
    let layout = if variant.ping_pong { "pp_" } else { "" };
    let name = format!("simplicial_fwd_wgmma_{layout}tj{tj}_bf16_d{d}");
    // rows per block: 64, or one 64-row block per warpgroup in the ping-pong layout
    let cta_rows = if variant.ping_pong { 2 * ROWS } else { ROWS };
    let dev = q.device().clone();
    let kernel = module::kernel(&dev, Family::ForwardWgmma, &name)?;
    let smem = smem_bytes(d, tj);
    check_smem(&name, smem, kernel.max_smem, d, d)?;

    let nk = b * n * hkv * d;
    let qv = view::<T>(q, lq, "q", b * n * hq * d)?;
    let kv = view::<T>(k, lk, "K", 2 * nk)?;
    let vv = view::<T>(v, lv, "V", 2 * nk)?;
    let (r1, r2) = set_ranges(ex, nk);
    let cfg = launch_config(
        (blocks(n * (hq / hkv), cta_rows)?, hkv as u32, b as u32),
        THREADS,
        smem,
    );
    // SAFETY: simplicial_fwd_wgmma_* takes (q, k1, k2, v1, v2, o, lse, Shape) in bf16; `view`
    // checked the element counts; the grid covers all N * G rows.
    unsafe {
        super::launch_forward(
            op,
            &dev,
            (&kernel.func, &name),
            cfg,
            &qv,
            [(&kv, (r1.clone(), r2.clone())), (&vv, (r1, r2))],
            &shape,
        )
    }
}
