//! Which kernels run a dot-product call (shapes of [`crate::dot::DotSpec`]: `q [B,Nq,Hq,D]`,
//! `k [B,Nk,Hkv,D]`, `v [B,Nk,Hkv,Dv]`).

use candle_core::DType;

use super::{launch, persistent, DeviceLimits, Launch};
use crate::dot::DotDims;
use crate::kernels::smem::{SmemArgs, Window1};
use crate::kernels::table::{Elem, Kernel};
use crate::kernels::{DotBackwardKernels, Kernels, MAX_HEAD_DIM};
use crate::AttnError;

/// The kernel family that runs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKernel {
    /// Tensor cores: the backward on wgmma (`kernels/dot_attn_bwd_wgmma.cu`, a producer
    /// warpgroup and two consumers), the forward on wgmma: at D = 128 persistent with a
    /// producer warpgroup (`kernels/dot_attn_fwd_wgmma.cu`), at D = 64 one warpgroup per CTA
    /// and four CTAs per SM (`kernels/dot_attn_fwd.cu`; faster at the LM layer,
    /// docs/kernels.md). bf16, `D = Dv = d` in {64, 128}, 16-byte aligned inputs, any GQA
    /// ratio, window, causality and `Nk >= Nq`.
    Wgmma {
        /// D = Dv.
        d: usize,
    },
    /// CUDA cores: `kernels/dot_attn_simple.cu`, bf16 or f32, compiled for `D, Dv <= width`.
    Simple {
        /// 32, 64, 128 or 256.
        width: usize,
    },
}

impl DotKernel {
    /// Picks the kernels for inputs of `dtype` with head dims `d` (q, k) and `dv` (v).
    /// `aligned`: every input view starts at a multiple of 16 bytes (cp.async needs it);
    /// `tensor_cores`: the tensor-core kernels are allowed. Errors name what no kernel takes.
    pub fn choose(
        dtype: DType,
        d: usize,
        dv: usize,
        aligned: bool,
        tensor_cores: bool,
    ) -> Result<DotKernel, AttnError> {
        Elem::of(dtype, "dot attention")?;
        for (name, x) in [("D", d), ("Dv", dv)] {
            if x == 0 || x > MAX_HEAD_DIM {
                return Err(AttnError::Shape(format!(
                    "dot attention on CUDA: {name} = {x}, but the CUDA kernels take head dims \
                     1..={MAX_HEAD_DIM}"
                )));
            }
        }
        if tensor_cores && aligned && dtype == DType::BF16 && d == dv && matches!(d, 64 | 128) {
            return Ok(DotKernel::Wgmma { d });
        }
        let width = d.max(dv).next_power_of_two().max(32);
        Ok(DotKernel::Simple { width })
    }
}

fn choose(
    dims: &DotDims,
    dtype: DType,
    aligned: bool,
    k: &Kernels,
) -> Result<(DotKernel, Elem), AttnError> {
    let kernel = DotKernel::choose(dtype, dims.d, dims.dv, aligned, k.tensor_cores)?;
    Ok((kernel, Elem::of(dtype, "dot attention")?))
}

fn smem(
    kernel: Kernel,
    width: usize,
) -> Result<(&'static crate::kernels::KernelInfo, usize), AttnError> {
    let info = kernel.info()?;
    let args = SmemArgs {
        d: 0,
        dv: 0,
        width,
        group: 1,
        window1: Window1 {
            seq: 1,
            w1: 1,
            causal: true,
        },
    };
    Ok((info, info.smem.bytes(&args)))
}

/// Work items of the wgmma forward and dq kernels: blocks of 128 of the `Nq * G` rows
/// (query, head) of each (batch, K/V head).
pub fn wgmma_row_items(dims: &DotDims) -> usize {
    (dims.seq_q * dims.group()).div_ceil(128) * dims.heads_kv * dims.batch
}

/// Work items of the wgmma dk/dv kernel: blocks of 128 keys of each (batch, K/V head).
pub fn wgmma_key_items(dims: &DotDims) -> usize {
    dims.seq_k.div_ceil(128) * dims.heads_kv * dims.batch
}

/// The forward of a call (o and lse in one launch): [`DotKernel::choose`], then the launch of
/// the kernel it names. `aligned`: q, k and v start on 16-byte boundaries.
pub fn forward(
    dims: &DotDims,
    dtype: DType,
    aligned: bool,
    k: &Kernels,
    dev: &DeviceLimits,
) -> Result<Launch, AttnError> {
    let (kernel, dtype) = choose(dims, dtype, aligned, k)?;
    let b = dims.batch;
    match kernel {
        DotKernel::Wgmma { d: 64 } => {
            // blocks of the Nq * G rows of each (K/V head, batch)
            let (info, smem) = smem(Kernel::DotFwd { d: 64 }, 0)?;
            launch(info, dims.seq_q * dims.group(), (dims.heads_kv, b), smem)
        }
        DotKernel::Wgmma { d } => {
            let (info, smem) = smem(Kernel::DotFwdWgmma { d }, 0)?;
            persistent(info, wgmma_row_items(dims), dev, smem)
        }
        DotKernel::Simple { width } => {
            let (info, smem) = smem(Kernel::DotFwdSimple { dtype, width }, width)?;
            launch(info, b * dims.seq_q * dims.heads_q, (1, 1), smem)
        }
    }
}

/// The launches of a dot-product backward, in order ([`DotBackward::launches`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DotBackward {
    /// The pre-pass: delta into `[B,Nq,Hq]` for the CUDA-core kernels, delta and lse as the
    /// rows' pairs for the fused wgmma backward; `None` for the split wgmma kernels, whose dq
    /// kernel computes delta and writes the pairs for their dk/dv kernel.
    pub delta: Option<Launch>,
    /// dq (`None` for the fused backward, whose dk/dv kernel adds dq's f32 sums).
    pub dq: Option<Launch>,
    /// dk, dv (the G query heads of a K/V head summed in the block: no atomics), and dq's sums
    /// for the fused backward.
    pub dkv: Launch,
    /// The fused backward's rounding of dq from its f32 sums.
    pub dq_round: Option<Launch>,
}

impl DotBackward {
    /// Every launch, in the order they run.
    pub fn launches(&self) -> Vec<Launch> {
        let mut v: Vec<Launch> = self.delta.into_iter().collect();
        v.extend(self.dq);
        v.push(self.dkv);
        v.extend(self.dq_round);
        v
    }
}

/// Float4s of the fused backward's dq sums: `[B, Hkv, row blocks of 64, 64 x D]` f32 over the
/// `Nq * G` rows of each (batch, K/V head) (`dq_tile` in `kernels/dot_attn_bwd_wgmma.cu`).
pub fn fused_dq_float4s(dims: &DotDims) -> usize {
    let rows = crate::kernels::tma::pairs_rows(dims.seq_q, dims.group());
    dims.batch * dims.heads_kv * rows * dims.d / 4
}

/// The backward of a call. `aligned`: q, k, v and dout start on 16-byte boundaries.
pub fn backward(
    dims: &DotDims,
    dtype: DType,
    aligned: bool,
    k: &Kernels,
    dev: &DeviceLimits,
) -> Result<DotBackward, AttnError> {
    let (kernel, dtype) = choose(dims, dtype, aligned, k)?;
    let (b, nq, nk) = (dims.batch, dims.seq_q, dims.seq_k);
    let delta = launch(
        Kernel::DotDelta { dtype }.info()?,
        b * nq * dims.heads_q,
        (1, 1),
        0,
    )?;
    Ok(match kernel {
        DotKernel::Wgmma { d }
            if k.dot_backward.choose(d, dims.group(), k.deterministic)
                == DotBackwardKernels::Fused =>
        {
            let (fused, fused_smem) = smem(Kernel::DotBwdFused { d }, 0)?;
            // the pre-pass: every padded row (it zeroes their dq sums); the rounding: one
            // thread per four float4s of the sums
            let rows = crate::kernels::tma::pairs_rows(nq, dims.group()) * dims.heads_kv * b;
            DotBackward {
                delta: Some(launch(Kernel::DotPairs { d }.info()?, rows, (1, 1), 0)?),
                dq: None,
                dkv: persistent(fused, wgmma_key_items(dims), dev, fused_smem)?,
                dq_round: Some(launch(
                    Kernel::DotDqRound { d }.info()?,
                    fused_dq_float4s(dims) / 4,
                    (1, 1),
                    0,
                )?),
            }
        }
        DotKernel::Wgmma { d } => {
            let (dq, dq_smem) = smem(Kernel::DotDqWgmma { d }, 0)?;
            let (dkv, dkv_smem) = smem(Kernel::DotDkvWgmma { d }, 0)?;
            DotBackward {
                delta: None,
                dq: Some(persistent(dq, wgmma_row_items(dims), dev, dq_smem)?),
                dkv: persistent(dkv, wgmma_key_items(dims), dev, dkv_smem)?,
                dq_round: None,
            }
        }
        DotKernel::Simple { width } => {
            let (dq, dq_smem) = smem(Kernel::DotDqSimple { dtype, width }, width)?;
            let (dkv, dkv_smem) = smem(Kernel::DotDkvSimple { dtype, width }, width)?;
            DotBackward {
                delta: Some(delta),
                dq: Some(launch(dq, b * nq * dims.heads_q, (1, 1), dq_smem)?),
                dkv: launch(dkv, b * nk * dims.heads_kv, (1, 1), dkv_smem)?,
                dq_round: None,
            }
        }
    })
}
