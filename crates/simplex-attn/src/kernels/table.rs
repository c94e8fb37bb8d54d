//! The one list of the compiled attention kernels: every `extern "C"` entry point of
//! `kernels/simplicial_*.cu` and `kernels/dot_attn_*.cu` with its source file, threads per
//! block, grid unit (rows or keys per block) and dynamic shared memory ([`TABLE`]). Kernels
//! are named by [`Kernel`] values, never by assembling symbol strings; `tests/kernel_sources.rs`
//! checks this list against the `.cu` files (every compiled symbol listed and nothing else, the
//! threads of `__launch_bounds__`, the tile constants, and each fixed shared-memory size against
//! the `BYTES` of the kernel's layout struct). Which kernel runs for a shape is
//! [`super::dispatch`].

/// One `kernels/*.cu` file: one cubin, one CUDA module (loaded by `cuda::module`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `simplicial_fwd.cu` (CUDA-core forward)
    Forward,
    /// `simplicial_fwd_wgmma.cu` (tensor-core forward: specialized and ping-pong layouts)
    ForwardWgmma,
    /// `simplicial_fwd_offsets.cu` (tensor-core forward stepping over window-1 offsets)
    ForwardOffsets,
    /// `simplicial_fwd_producer.cu` (tensor-core forward with a producer warpgroup)
    ForwardProducer,
    /// `simplicial_bwd_dq.cu` (delta pre-pass and CUDA-core dq)
    BackwardQuery,
    /// `simplicial_bwd_dkv.cu` (CUDA-core dk, dv of one key/value set)
    BackwardKey,
    /// `simplicial_bwd_mma.cu` (mma.sync q and k kernels, the dk1/dv1 rounding)
    BackwardMma,
    /// `simplicial_bwd_wgmma.cu` (wgmma q and k kernels)
    BackwardWgmma,
    /// `simplicial_bwd_offsets.cu` (the offset walk's qk1 and k2 passes)
    BackwardOffsets,
    /// `simplicial_bwd_producer.cu` (dk2, dv2 with a producer warpgroup)
    BackwardProducer,
    /// `dot_attn_fwd.cu` (dot-product forward at D = 64, wgmma, one warpgroup per CTA)
    DotForward,
    /// `dot_attn_simple.cu` (dot-product delta pre-pass; CUDA-core forward, dq, dk/dv)
    DotSimple,
    /// `dot_attn_fwd_wgmma.cu` (dot-product forward, wgmma)
    DotForwardWgmma,
    /// `dot_attn_bwd_wgmma.cu` (dot-product dq and dk, dv, wgmma)
    DotBackwardWgmma,
    /// `fused_ops.cu` (the model's fused ops: RMSNorm, split heads + RoPE, SwiGLU,
    /// cross-entropy rows, flat AdamW; launched by `fused::cuda`, not listed in [`TABLE`])
    FusedOps,
    /// `moe.cu` (mixture of experts: routing, row moves, grouped products; launched by
    /// `moe::cuda`, not listed in [`TABLE`])
    Moe,
}

impl Family {
    /// The source file, relative to the crate.
    pub fn file(self) -> &'static str {
        match self {
            Family::Forward => "kernels/simplicial_fwd.cu",
            Family::ForwardWgmma => "kernels/simplicial_fwd_wgmma.cu",
            Family::ForwardOffsets => "kernels/simplicial_fwd_offsets.cu",
            Family::ForwardProducer => "kernels/simplicial_fwd_producer.cu",
            Family::BackwardQuery => "kernels/simplicial_bwd_dq.cu",
            Family::BackwardKey => "kernels/simplicial_bwd_dkv.cu",
            Family::BackwardMma => "kernels/simplicial_bwd_mma.cu",
            Family::BackwardWgmma => "kernels/simplicial_bwd_wgmma.cu",
            Family::BackwardOffsets => "kernels/simplicial_bwd_offsets.cu",
            Family::BackwardProducer => "kernels/simplicial_bwd_producer.cu",
            Family::DotForward => "kernels/dot_attn_fwd.cu",
            Family::DotSimple => "kernels/dot_attn_simple.cu",
            Family::DotForwardWgmma => "kernels/dot_attn_fwd_wgmma.cu",
            Family::DotBackwardWgmma => "kernels/dot_attn_bwd_wgmma.cu",
            Family::FusedOps => "kernels/fused_ops.cu",
            Family::Moe => "kernels/moe.cu",
        }
    }
}

/// The element type a kernel is compiled for (inputs and outputs; accumulation is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    /// bf16
    Bf16,
    /// f32
    F32,
}

impl Elem {
    /// The element type of candle inputs of `dtype`; an error naming it for any other.
    pub fn of(dtype: candle_core::DType, op: &str) -> Result<Elem, crate::AttnError> {
        match dtype {
            candle_core::DType::BF16 => Ok(Elem::Bf16),
            candle_core::DType::F32 => Ok(Elem::F32),
            other => Err(crate::AttnError::Input(format!(
                "{op} on CUDA: inputs are {other:?}, but the CUDA kernels take bf16 or f32 \
                 (convert with .to_dtype(DType::BF16) or DType::F32)"
            ))),
        }
    }
}

/// A compiled attention kernel. `d`, `dv`: the head dim it is compiled for (for the CUDA-core
/// kernels the width class: they take any head dim up to it); `tj`, `to`, `rows`: the
/// template parameters named in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Kernel {
    /// 2-simplicial forward on CUDA cores (o, lse).
    Fwd { dtype: Elem, dv: usize },
    /// Tensor-core forward, `tj` window-1 positions per hand-over; `ping_pong`: the 128-row
    /// layout.
    FwdWgmma {
        d: usize,
        tj: usize,
        ping_pong: bool,
    },
    /// Tensor-core forward, the offset walk with `to` offsets per step.
    FwdOffsets { d: usize, to: usize },
    /// Tensor-core forward with a producer warpgroup, key head dim `d`, value head dim `dv`.
    FwdProducer { d: usize, dv: usize },
    /// delta = rowsum(o * dout), the backward's pre-pass.
    BwdDelta { dtype: Elem },
    /// dq on CUDA cores.
    BwdDq { dtype: Elem, d: usize },
    /// dk, dv of one key/value set on CUDA cores.
    BwdDkv { dtype: Elem, d: usize },
    /// The mma.sync q kernel: dq, and dk1, dv1 into f32 buffers.
    BwdQMma { d: usize },
    /// The mma.sync k kernel: dk2, dv2, `rows` rows per step (64, or 32 for G < 64).
    BwdKMma { d: usize, rows: usize },
    /// dk1, dv1 f32 sums rounded to bf16.
    BwdF32ToBf16,
    /// The wgmma q kernel.
    BwdQWgmma { d: usize },
    /// The offset walk's qk1 pass: dq, dk1, dv1.
    BwdOffsetsQk1 { d: usize },
    /// The offset walk's k2 pass: dk2, dv2.
    BwdOffsetsK2 { d: usize },
    /// dk2, dv2 with a producer warpgroup.
    BwdProducerK2 { d: usize },
    /// Dot-product forward at D = 64, wgmma, one warpgroup per CTA (several per SM).
    DotFwd { d: usize },
    /// Dot-product forward, wgmma (persistent).
    DotFwdWgmma { d: usize },
    /// Dot-product dq and delta, wgmma (persistent).
    DotDqWgmma { d: usize },
    /// Dot-product dk, dv, wgmma (persistent).
    DotDkvWgmma { d: usize },
    /// Dot-product dk, dv and dq's f32 partial sums in one kernel, wgmma (persistent).
    DotBwdFused { d: usize },
    /// The fused dot-product backward's pre-pass: delta and the rows' (lse, delta) pairs, dq's
    /// f32 sums zeroed.
    DotPairs { d: usize },
    /// The fused dot-product backward's last pass: dq rounded from its f32 sums.
    DotDqRound { d: usize },
    /// Dot-product delta pre-pass.
    DotDelta { dtype: Elem },
    /// Dot-product forward on CUDA cores, head dims up to `width`.
    DotFwdSimple { dtype: Elem, width: usize },
    /// Dot-product dq on CUDA cores.
    DotDqSimple { dtype: Elem, width: usize },
    /// Dot-product dk, dv on CUDA cores.
    DotDkvSimple { dtype: Elem, width: usize },
}

/// How a kernel's dynamic shared memory is sized: a fixed count, or a formula of the call
/// (the CUDA-core kernels size f32 tiles by D and Dv; the offset walks stage their partners'
/// rows, whose count grows with window 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smem {
    /// None.
    Zero,
    /// This many bytes: the `BYTES` of the kernel's layout struct in its `.cu` file (+ 1024
    /// alignment slack where the file adds it).
    Fixed(usize),
    /// `simplicial_fwd.cu`: k2 TK*(D|1), v2 TK*Dv, q and x RB*D, p RB*TK, f32.
    CoreForward,
    /// `simplicial_bwd_dq.cu`: k2 TK*(D|1), v2 TK*(Dv|1), q, x RB*D, dout, y RB*Dv, p RB*TK, f32.
    CoreDq,
    /// `simplicial_bwd_dkv.cu`: the owned k, v KB*(D|1), KB*(Dv|1), streamed rows RS*(D+Dv),
    /// P and dS RS*(KB+1), lse and delta, f32; row metadata 20 bytes per streamed row.
    CoreDkv,
    /// `simplicial_fwd_offsets.cu`: K2, V2 tiles x 2 buffers and the block's window-1 rows.
    OffsetsForward,
    /// The qk1 pass of `simplicial_bwd_offsets.cu` (`Qk1Layout`).
    OffsetsQk1,
    /// The k2 pass of `simplicial_bwd_offsets.cu` (`K2Layout`).
    OffsetsK2,
    /// `dot_attn_simple.cu`: each of the block's warps stages this many f32 rows of the width.
    SimpleRows(usize),
}

/// One compiled kernel: its entry point and launch shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelInfo {
    /// What it is.
    pub kernel: Kernel,
    /// Its `extern "C"` symbol.
    pub symbol: &'static str,
    /// The file (module) it is compiled in.
    pub family: Family,
    /// Threads per block (its `__launch_bounds__`).
    pub threads: u32,
    /// The grid unit along x: rows (query, head) per block of the query-side kernels, keys per
    /// block of the key-side ones, queries per block of one head for the dot-product mma.sync
    /// kernels, rows (keys) per work item of the persistent wgmma ones, elements per block of
    /// the rounding kernel.
    pub rows: usize,
    /// Its dynamic shared memory.
    pub smem: Smem,
}

const fn e(
    kernel: Kernel,
    symbol: &'static str,
    family: Family,
    threads: u32,
    rows: usize,
    smem: Smem,
) -> KernelInfo {
    KernelInfo {
        kernel,
        symbol,
        family,
        threads,
        rows,
        smem,
    }
}

use Elem::{Bf16, F32};
use Family::*;
use Kernel::*;
use Smem::*;

/// Every compiled attention kernel.
#[rustfmt::skip]
pub static TABLE: [KernelInfo; 89] = [
    // simplicial_fwd.cu: CUDA cores, bf16 or f32, Dv up to the width
    e(Fwd { dtype: F32, dv: 32 }, "simplicial_fwd_f32_dv32", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: F32, dv: 64 }, "simplicial_fwd_f32_dv64", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: F32, dv: 128 }, "simplicial_fwd_f32_dv128", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: F32, dv: 256 }, "simplicial_fwd_f32_dv256", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: Bf16, dv: 32 }, "simplicial_fwd_bf16_dv32", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: Bf16, dv: 64 }, "simplicial_fwd_bf16_dv64", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: Bf16, dv: 128 }, "simplicial_fwd_bf16_dv128", Forward, 256, 16, CoreForward),
    e(Fwd { dtype: Bf16, dv: 256 }, "simplicial_fwd_bf16_dv256", Forward, 256, 16, CoreForward),
    // simplicial_fwd_wgmma.cu: specialized (64 rows) and ping-pong (128 rows) layouts
    e(FwdWgmma { d: 64, tj: 1, ping_pong: true }, "simplicial_fwd_wgmma_pp_tj1_bf16_d64", ForwardWgmma, 256, 128, Fixed(86_016)),
    e(FwdWgmma { d: 128, tj: 1, ping_pong: true }, "simplicial_fwd_wgmma_pp_tj1_bf16_d128", ForwardWgmma, 256, 128, Fixed(151_552)),
    e(FwdWgmma { d: 64, tj: 2, ping_pong: false }, "simplicial_fwd_wgmma_tj2_bf16_d64", ForwardWgmma, 256, 64, Fixed(102_400)),
    e(FwdWgmma { d: 128, tj: 2, ping_pong: false }, "simplicial_fwd_wgmma_tj2_bf16_d128", ForwardWgmma, 256, 64, Fixed(167_936)),
    // simplicial_fwd_offsets.cu: the offset walk
    e(FwdOffsets { d: 64, to: 2 }, "simplicial_fwd_offsets_to2_bf16_d64", ForwardOffsets, 256, 128, OffsetsForward),
    e(FwdOffsets { d: 128, to: 1 }, "simplicial_fwd_offsets_to1_bf16_d128", ForwardOffsets, 256, 128, OffsetsForward),
    // simplicial_fwd_producer.cu: a producer warpgroup and two consumers
    e(FwdProducer { d: 64, dv: 64 }, "simplicial_fwd_producer_bf16_d64", ForwardProducer, 384, 128, Fixed(98_304)),
    e(FwdProducer { d: 128, dv: 128 }, "simplicial_fwd_producer_bf16_d128", ForwardProducer, 384, 128, Fixed(195_584)),
    e(FwdProducer { d: 128, dv: 64 }, "simplicial_fwd_producer_bf16_d128_dv64", ForwardProducer, 384, 128, Fixed(188_416)),
    // simplicial_bwd_dq.cu: the delta pre-pass and the CUDA-core dq
    e(BwdDelta { dtype: F32 }, "simplicial_bwd_delta_f32", BackwardQuery, 256, 8, Zero),
    e(BwdDelta { dtype: Bf16 }, "simplicial_bwd_delta_bf16", BackwardQuery, 256, 8, Zero),
    e(BwdDq { dtype: F32, d: 32 }, "simplicial_bwd_dq_f32_d32", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: F32, d: 64 }, "simplicial_bwd_dq_f32_d64", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: F32, d: 128 }, "simplicial_bwd_dq_f32_d128", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: F32, d: 256 }, "simplicial_bwd_dq_f32_d256", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: Bf16, d: 32 }, "simplicial_bwd_dq_bf16_d32", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: Bf16, d: 64 }, "simplicial_bwd_dq_bf16_d64", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: Bf16, d: 128 }, "simplicial_bwd_dq_bf16_d128", BackwardQuery, 256, 16, CoreDq),
    e(BwdDq { dtype: Bf16, d: 256 }, "simplicial_bwd_dq_bf16_d256", BackwardQuery, 256, 16, CoreDq),
    // simplicial_bwd_dkv.cu: the CUDA-core dk, dv of one key/value set (keys per block)
    e(BwdDkv { dtype: F32, d: 32 }, "simplicial_bwd_dkv_f32_d32", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: F32, d: 64 }, "simplicial_bwd_dkv_f32_d64", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: F32, d: 128 }, "simplicial_bwd_dkv_f32_d128", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: F32, d: 256 }, "simplicial_bwd_dkv_f32_d256", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: Bf16, d: 32 }, "simplicial_bwd_dkv_bf16_d32", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: Bf16, d: 64 }, "simplicial_bwd_dkv_bf16_d64", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: Bf16, d: 128 }, "simplicial_bwd_dkv_bf16_d128", BackwardKey, 256, 32, CoreDkv),
    e(BwdDkv { dtype: Bf16, d: 256 }, "simplicial_bwd_dkv_bf16_d256", BackwardKey, 256, 32, CoreDkv),
    // simplicial_bwd_mma.cu: mma.sync q and k kernels (keys per block), the dk1/dv1 rounding
    e(BwdQMma { d: 32 }, "simplicial_bwd_q_mma_d32", BackwardMma, 128, 64, Fixed(47_104)),
    e(BwdKMma { d: 32, rows: 64 }, "simplicial_bwd_k_mma_d32", BackwardMma, 128, 64, Fixed(29_440)),
    e(BwdKMma { d: 32, rows: 32 }, "simplicial_bwd_k_mma_r32_d32", BackwardMma, 128, 64, Fixed(23_936)),
    e(BwdQMma { d: 64 }, "simplicial_bwd_q_mma_d64", BackwardMma, 128, 64, Fixed(92_160)),
    e(BwdKMma { d: 64, rows: 64 }, "simplicial_bwd_k_mma_d64", BackwardMma, 128, 64, Fixed(54_016)),
    e(BwdKMma { d: 64, rows: 32 }, "simplicial_bwd_k_mma_r32_d64", BackwardMma, 128, 64, Fixed(44_416)),
    e(BwdQMma { d: 96 }, "simplicial_bwd_q_mma_d96", BackwardMma, 128, 64, Fixed(100_352)),
    e(BwdKMma { d: 96, rows: 64 }, "simplicial_bwd_k_mma_d96", BackwardMma, 128, 64, Fixed(78_592)),
    e(BwdKMma { d: 96, rows: 32 }, "simplicial_bwd_k_mma_r32_d96", BackwardMma, 128, 64, Fixed(64_896)),
    e(BwdQMma { d: 128 }, "simplicial_bwd_q_mma_d128", BackwardMma, 128, 64, Fixed(108_544)),
    e(BwdKMma { d: 128, rows: 64 }, "simplicial_bwd_k_mma_d128", BackwardMma, 128, 64, Fixed(103_168)),
    e(BwdKMma { d: 128, rows: 32 }, "simplicial_bwd_k_mma_r32_d128", BackwardMma, 128, 64, Fixed(85_376)),
    e(BwdF32ToBf16, "simplicial_bwd_f32_to_bf16", BackwardMma, 256, 1024, Zero),
    // simplicial_bwd_wgmma.cu: a producer warpgroup and D/64 consumers
    e(BwdQWgmma { d: 64 }, "simplicial_bwd_q_wgmma_d64", BackwardWgmma, 256, 64, Fixed(158_720)),
    e(BwdQWgmma { d: 128 }, "simplicial_bwd_q_wgmma_d128", BackwardWgmma, 384, 64, Fixed(207_872)),
    // simplicial_bwd_offsets.cu: the offset walk's qk1 pass (rows) and k2 pass (keys)
    e(BwdOffsetsQk1 { d: 64 }, "simplicial_bwd_offsets_qk1_bf16_d64", BackwardOffsets, 256, 64, OffsetsQk1),
    e(BwdOffsetsK2 { d: 64 }, "simplicial_bwd_offsets_k2_bf16_d64", BackwardOffsets, 256, 128, OffsetsK2),
    // simplicial_bwd_producer.cu: dk2, dv2 with a producer warpgroup (keys per block)
    e(BwdProducerK2 { d: 64 }, "simplicial_bwd_producer_k2_bf16_d64", BackwardProducer, 384, 128, Fixed(117_248)),
    e(BwdProducerK2 { d: 128 }, "simplicial_bwd_producer_k2_bf16_d128", BackwardProducer, 384, 128, Fixed(231_936)),
    // dot_attn_fwd.cu: the forward at D = 64, one warpgroup per CTA (rows of a K/V head)
    e(DotFwd { d: 64 }, "dot_fwd_bf16_d64", DotForward, 128, 64, Fixed(41_984)),
    // dot_attn_fwd_wgmma.cu, dot_attn_bwd_wgmma.cu: persistent, rows (keys) per work item
    e(DotFwdWgmma { d: 128 }, "dot_fwd_wgmma_bf16_d128", DotForwardWgmma, 384, 128, Fixed(230_464)),
    e(DotDqWgmma { d: 64 }, "dot_bwd_dq_wgmma_bf16_d64", DotBackwardWgmma, 384, 128, Fixed(50_224)),
    e(DotDkvWgmma { d: 64 }, "dot_bwd_dkv_wgmma_bf16_d64", DotBackwardWgmma, 384, 128, Fixed(51_760)),
    e(DotDqWgmma { d: 128 }, "dot_bwd_dq_wgmma_bf16_d128", DotBackwardWgmma, 384, 128, Fixed(99_376)),
    e(DotDkvWgmma { d: 128 }, "dot_bwd_dkv_wgmma_bf16_d128", DotBackwardWgmma, 384, 128, Fixed(166_448)),
    // the fused backward at D = 128: pre-pass (16 threads per row of the padded row space; it
    // zeroes the dq sums), dk/dv + dq sums, rounding (a thread per four float4s of the sums)
    e(DotPairs { d: 128 }, "dot_bwd_pairs_bf16_d128", DotBackwardWgmma, 256, 16, Zero),
    e(DotBwdFused { d: 128 }, "dot_bwd_fused_wgmma_bf16_d128", DotBackwardWgmma, 384, 128, Fixed(231_984)),
    e(DotDqRound { d: 128 }, "dot_bwd_dq_round_bf16_d128", DotBackwardWgmma, 256, 256, Zero),
    // dot_attn_simple.cu: CUDA cores, one warp per row
    e(DotDelta { dtype: Bf16 }, "dot_bwd_delta_bf16", DotSimple, 128, 4, Zero),
    e(DotDelta { dtype: F32 }, "dot_bwd_delta_f32", DotSimple, 128, 4, Zero),
    e(DotFwdSimple { dtype: Bf16, width: 32 }, "dot_fwd_simple_bf16_w32", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: Bf16, width: 32 }, "dot_bwd_dq_simple_bf16_w32", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: Bf16, width: 32 }, "dot_bwd_dkv_simple_bf16_w32", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: Bf16, width: 64 }, "dot_fwd_simple_bf16_w64", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: Bf16, width: 64 }, "dot_bwd_dq_simple_bf16_w64", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: Bf16, width: 64 }, "dot_bwd_dkv_simple_bf16_w64", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: Bf16, width: 128 }, "dot_fwd_simple_bf16_w128", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: Bf16, width: 128 }, "dot_bwd_dq_simple_bf16_w128", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: Bf16, width: 128 }, "dot_bwd_dkv_simple_bf16_w128", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: Bf16, width: 256 }, "dot_fwd_simple_bf16_w256", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: Bf16, width: 256 }, "dot_bwd_dq_simple_bf16_w256", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: Bf16, width: 256 }, "dot_bwd_dkv_simple_bf16_w256", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: F32, width: 32 }, "dot_fwd_simple_f32_w32", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: F32, width: 32 }, "dot_bwd_dq_simple_f32_w32", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: F32, width: 32 }, "dot_bwd_dkv_simple_f32_w32", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: F32, width: 64 }, "dot_fwd_simple_f32_w64", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: F32, width: 64 }, "dot_bwd_dq_simple_f32_w64", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: F32, width: 64 }, "dot_bwd_dkv_simple_f32_w64", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: F32, width: 128 }, "dot_fwd_simple_f32_w128", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: F32, width: 128 }, "dot_bwd_dq_simple_f32_w128", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: F32, width: 128 }, "dot_bwd_dkv_simple_f32_w128", DotSimple, 128, 4, SimpleRows(2)),
    e(DotFwdSimple { dtype: F32, width: 256 }, "dot_fwd_simple_f32_w256", DotSimple, 128, 4, SimpleRows(1)),
    e(DotDqSimple { dtype: F32, width: 256 }, "dot_bwd_dq_simple_f32_w256", DotSimple, 128, 4, SimpleRows(2)),
    e(DotDkvSimple { dtype: F32, width: 256 }, "dot_bwd_dkv_simple_f32_w256", DotSimple, 128, 4, SimpleRows(2)),
];

impl Kernel {
    /// Its entry in [`TABLE`]; an error where no such kernel is compiled.
    pub fn info(self) -> Result<&'static KernelInfo, crate::AttnError> {
        TABLE.iter().find(|k| k.kernel == self).ok_or_else(|| {
            crate::AttnError::Config(format!("no compiled attention kernel {self:?}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_listed_once() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.kernel, b.kernel, "{} and {}", a.symbol, b.symbol);
                assert_ne!(a.symbol, b.symbol);
            }
            assert_eq!(a.kernel.info().unwrap().symbol, a.symbol);
        }
        let e = Kernel::FwdProducer { d: 96, dv: 96 }
            .info()
            .unwrap_err()
            .to_string();
        assert!(e.contains("FwdProducer { d: 96, dv: 96 }"), "{e}");
    }
}
