//! Launch of the tensor-core (wgmma) forwards for bf16 with D = Dv in {64, 128}:
//! `kernels/simplicial_fwd_wgmma.cu` (specialized and ping-pong layouts) and
//! `kernels/simplicial_fwd_producer.cu` (a producer warpgroup and two consumers), for many query
//! heads per K/V head, and `kernels/simplicial_fwd_offsets.cu` (the offset walk, for few). Other
//! shapes and dtypes run the CUDA-core kernel of `forward.rs`.
//!
//! The kernels walk their first window one position (or offset) at a time and tile their second
//! window for the tensor cores, so they want the small window first: when `w1 > w2` the two
//! key/value sets are exchanged here (the layer is symmetric in them).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Result, Shape};

use super::module::{self, Family};
use super::{blocks, check_smem, exchange_sets, key_value_views, launch_config, view, KernelShape};
use crate::backward_plan::{partner_positions, Window1};
use crate::op::SimplicialOp;

/// Rows (query, head) per warpgroup; `ROWS` in the kernels.
const ROWS: usize = 64;
const THREADS: u32 = 256;
/// Threads of `simplicial_fwd_producer.cu`: a producer warpgroup and two consumers.
const PRODUCER_THREADS: u32 = 384;

/// Which compiled layout of the tensor-core forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardVariant {
    /// `simplicial_fwd_wgmma.cu`, 64 rows per block: one warpgroup computes logits and softmax,
    /// the other the values, handing P over through shared memory every
    /// `positions_per_handover` window-1 positions (1 or 2).
    Specialized {
        /// Window-1 positions per hand-over (`TJ`): 1 or 2 (anything else runs 2).
        positions_per_handover: usize,
    },
    /// `simplicial_fwd_wgmma.cu`, 128 rows per block: each warpgroup computes logits, softmax
    /// and values for its own 64 (one position per step).
    PingPong,
    /// `simplicial_fwd_producer.cu`, 128 rows per block: the ping-pong walk with v1_j folded
    /// into the values operand (O += P @ (V2_tile ∘ v1_j)), which a third, producer,
    /// warpgroup builds in shared memory while the two consumers keep P in registers.
    Producer,
    /// `simplicial_fwd_offsets.cu`, 128 rows per block: steps over window-1 offsets, each row
    /// with its own window-1 position, so rows of different queries waste no masked work
    /// (for few query heads per K/V head). Needs the block's window-1 rows in shared memory;
    /// where they do not fit, [`ForwardVariant::fastest`] without it runs.
    Offsets {
        /// Window-1 offsets per step (`TO`): 1 or 2 (2 only for D = 64; else 1 runs).
        offsets_per_step: usize,
    },
}

impl ForwardVariant {
    /// The fastest measured on the H200 for G = Hq/Hkv query heads per K/V head and head dim
    /// `d` (kernels/NOTES.md, v6, v7 and v9; B = 8, N = 2048, (32, 512) unless said): the
    /// producer layout from G = 64 at D = 64 (264 vs 246 TFLOP/s for the offset walk at B = 4,
    /// N = 4096, (512, 32); the offset walk wins at G = 16 and 32: 223 vs 186, 231 vs 216) and
    /// from G = 16 at D = 128 (279 vs 276 for ping-pong at 16, 389 vs 322 at 64, 396-405 vs
    /// 317 at the anchor); below, the offset walk (two offsets per step at D = 64; at D = 128
    /// and G = 8 259 vs 227 for ping-pong and 229 for the producer).
    pub fn fastest(group: usize, d: usize) -> Self {
        if group >= 64 || (d > 64 && group >= 16) {
            ForwardVariant::Producer
        } else if d <= 64 {
            ForwardVariant::Offsets {
                offsets_per_step: 2,
            }
        } else {
            ForwardVariant::Offsets {
                offsets_per_step: 1,
            }
        }
    }

    /// Parses `tj1`, `tj2`, `pp`, `producer`, `offsets` or `offsets2` (the values of `SIMPLEX_WGMMA_FWD`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tj1" => Some(ForwardVariant::Specialized {
                positions_per_handover: 1,
            }),
            "tj2" => Some(ForwardVariant::Specialized {
                positions_per_handover: 2,
            }),
            "pp" => Some(ForwardVariant::PingPong),
            "producer" => Some(ForwardVariant::Producer),
            "offsets" => Some(ForwardVariant::Offsets {
                offsets_per_step: 1,
            }),
            "offsets2" => Some(ForwardVariant::Offsets {
                offsets_per_step: 2,
            }),
            _ => None,
        }
    }
}

static VARIANT: std::sync::Mutex<Option<ForwardVariant>> = std::sync::Mutex::new(None);

/// Runs `variant` of the tensor-core forward from now on; `None` (the default) picks
/// [`ForwardVariant::fastest`] per call. For comparisons and tests. `SIMPLEX_WGMMA_FWD=tj1|tj2|
/// pp|producer|offsets|offsets2` in the environment overrides it ([`ForwardVariant::parse`]).
pub fn set_forward_variant(variant: Option<ForwardVariant>) {
    if let Ok(mut v) = VARIANT.lock() {
        *v = variant;
    }
}

fn variant(group: usize, d: usize) -> ForwardVariant {
    if let Some(v) = std::env::var("SIMPLEX_WGMMA_FWD")
        .ok()
        .and_then(|v| ForwardVariant::parse(&v))
    {
        return v;
    }
    VARIANT
        .lock()
        .ok()
        .and_then(|v| *v)
        .unwrap_or_else(|| ForwardVariant::fastest(group, d))
}

/// Dynamic shared memory of one block of `simplicial_fwd_wgmma.cu`; `Smem<D, TJ>::BYTES` there.
fn smem_bytes(d: usize, tj: usize) -> usize {
    let (tk, jc) = (64, 128);
    let k_tile = tk * d * 2;
    let p_tile = tj * ROWS * tk * 2;
    let v_tile = tk * (d + 8) * 2;
    let j_rows = jc * d * 2;
    2 * k_tile + 2 * p_tile + 2 * v_tile + 2 * j_rows + 2 * ROWS * 4 + 2 * ROWS * 4 + 1024
}

/// Dynamic shared memory of one block of `simplicial_fwd_producer.cu` (`Smem<D>::BYTES` there):
/// K2 and V2 tiles (two buffers each), three built V' tiles (72 rows each: 64 keys and a shift
/// of up to 8 between the two consumers), 128 window-1 rows of k1 and v1.
fn producer_smem_bytes(d: usize) -> usize {
    let (rows, jc, nv) = (72, 128, 3);
    (4 + nv) * rows * d * 2 + 2 * jc * d * 2 + 1024
}

/// Dynamic shared memory of one block of the offset walk: K2 and V2 tiles (two buffers each)
/// and the window-1 rows of k1 and v1 (padded by 8 elements) of its 128 rows.
fn offsets_smem_bytes(d: usize, shape: &KernelShape) -> usize {
    let win = Window1 {
        seq: shape.seq as usize,
        w1: shape.w1 as usize,
        causal: shape.causal != 0,
    };
    let group = (shape.heads_q / shape.heads_kv) as usize;
    let rows = partner_positions(2 * ROWS, group, win);
    4 * 64 * d * 2 + 2 * rows * (d + 8) * 2 + 1024
}

/// Whether the tensor-core forward covers this call.
pub(crate) fn covers(op: &SimplicialOp, dtype: DType) -> bool {
    dtype == DType::BF16 && op.dims.d == op.dims.dv && matches!(op.dims.d, 64 | 128)
}

/// The forward on CUDA tensor cores: o (bf16) and lse (f32, saved in the op).
pub(crate) fn forward(
    op: &SimplicialOp,
    [(q, lq), (k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)]: [(&CudaStorage, &Layout); 5],
) -> Result<(CudaStorage, Shape)> {
    type T = half::bf16;
    let dims = op.dims;
    let (b, n, hq, hkv, d) = (dims.batch, dims.seq, dims.heads_q, dims.heads_kv, dims.d);
    let ex = exchange_sets(&op.win);
    let shape = KernelShape::new(&dims, &op.win, op.scale)?.oriented(ex);
    let dev = q.device().clone();
    let mut variant = variant(hq / hkv, d);
    let (name, smem, threads, kernel) = loop {
        let (name, smem, threads, family) = match variant {
            ForwardVariant::Offsets { offsets_per_step } => {
                let to = if offsets_per_step == 2 && d == 64 {
                    2
                } else {
                    1
                };
                (
                    format!("simplicial_fwd_offsets_to{to}_bf16_d{d}"),
                    offsets_smem_bytes(d, &shape),
                    THREADS,
                    Family::ForwardOffsets,
                )
            }
            ForwardVariant::PingPong => (
                format!("simplicial_fwd_wgmma_pp_tj1_bf16_d{d}"),
                smem_bytes(d, 1),
                THREADS,
                Family::ForwardWgmma,
            ),
            ForwardVariant::Producer => (
                format!("simplicial_fwd_producer_bf16_d{d}"),
                producer_smem_bytes(d),
                PRODUCER_THREADS,
                Family::ForwardProducer,
            ),
            ForwardVariant::Specialized {
                positions_per_handover,
            } => {
                let tj = if positions_per_handover == 1 { 1 } else { 2 };
                (
                    format!("simplicial_fwd_wgmma_tj{tj}_bf16_d{d}"),
                    smem_bytes(d, tj),
                    THREADS,
                    Family::ForwardWgmma,
                )
            }
        };
        let kernel = module::kernel(&dev, family, &name)?;
        // the offset walk's window-1 rows grow with the window: past the limit, the fastest
        // other layout runs instead
        if matches!(variant, ForwardVariant::Offsets { .. }) && smem > kernel.max_smem {
            variant = if hq / hkv >= 8 {
                ForwardVariant::PingPong
            } else {
                ForwardVariant::Specialized {
                    positions_per_handover: 2,
                }
            };
            continue;
        }
        break (name, smem, threads, kernel);
    };
    check_smem(&name, smem, kernel.max_smem, d, d)?;

    let nk = b * n * hkv * d;
    let qv = view::<T>(q, lq, "q", b * n * hq * d)?;
    let [k1, k2, v1, v2] =
        key_value_views::<T>(ex, [(k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)], nk, nk)?;
    // rows (query, head) per block: 64 for the specialized layout, 128 for the others
    let cta_rows = match variant {
        ForwardVariant::Specialized { .. } => ROWS,
        _ => 2 * ROWS,
    };
    let cfg = launch_config(
        (blocks(n * (hq / hkv), cta_rows)?, hkv as u32, b as u32),
        threads,
        smem,
    );
    // SAFETY: simplicial_fwd_wgmma_*, simplicial_fwd_producer_* and simplicial_fwd_offsets_* take (q, k1, k2, v1, v2, o, lse, Shape) in bf16; `view`
    // checked the element counts; the grid covers all N * G rows.
    unsafe {
        super::launch_forward(
            op,
            &dev,
            (&kernel.func, &name),
            cfg,
            &qv,
            [&k1, &k2, &v1, &v2],
            &shape,
        )
    }
}
