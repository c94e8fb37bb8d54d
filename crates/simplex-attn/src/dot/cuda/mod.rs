//! CUDA launch code of dot-product attention (feature `cuda`; shapes of
//! [`crate::dot::DotSpec`]). [`crate::kernels::dispatch::dot`] picks the kernels (tensor cores
//! for bf16, D = Dv in {64, 128}, aligned inputs: the forward of `kernels/dot_attn_fwd.cu` at
//! D = 64 and of `dot_attn_fwd_wgmma.cu` at D = 128, the backward of `dot_attn_bwd_wgmma.cu`;
//! else `kernels/dot_attn_simple.cu`); the code here loads and launches them.
//!
//! * `forward`: o and lse, one launch.
//! * `backward`: delta (a pre-pass, or inside the wgmma dq kernel, which writes it with lse as
//!   the rows' pairs for its dk/dv kernel), dq, dk/dv; deterministic (no atomics: every block
//!   owns the gradient rows it writes), except the fused D = 128 backward (pairs pre-pass,
//!   dk/dv adding dq's f32 sums, rounding), which `Kernels::dot_backward` and `deterministic`
//!   choose.

mod backward;
mod forward;

pub(crate) use backward::backward;
pub(crate) use forward::forward;

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Layout, Result};
use cudarc::driver::{CudaView, DeviceRepr};

use super::{DotCall, DotDims};
use crate::cuda::tma::{self, TensorMap};

/// The launch shape every dot-product kernel takes by value; mirrors `struct DotShape` in
/// `kernels/dot_attn.cuh` field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DotKernelShape {
    batch: i32,
    seq_q: i32,
    seq_k: i32,
    heads_q: i32,
    heads_kv: i32,
    d: i32,
    dv: i32,
    causal: i32,
    window: i32,
    scale: f32,
}

// SAFETY: a #[repr(C)] struct of 4-byte plain values, the layout of `DotShape` in dot_attn.cuh.
unsafe impl DeviceRepr for DotKernelShape {}

impl DotKernelShape {
    /// The shape of a call, after checking that the kernels' 32-bit row indices and grid
    /// dimensions hold it.
    fn new(call: &DotCall) -> Result<DotKernelShape> {
        let dims = call.dims;
        let (batch, seq_q, seq_k) = (dims.batch, dims.seq_q, dims.seq_k);
        let (heads_q, heads_kv) = (dims.heads_q, dims.heads_kv);
        let rows = |n: usize, h: usize| {
            batch
                .checked_mul(n)
                .and_then(|x| x.checked_mul(h))
                .is_some_and(|x| x <= i32::MAX as usize)
        };
        if !rows(seq_q, heads_q) || !rows(seq_k, heads_kv) || seq_k > 1 << 30 {
            candle_core::bail!(
                "dot attention on CUDA: B * Nq * Hq = {batch} * {seq_q} * {heads_q} and \
                 B * Nk * Hkv = {batch} * {seq_k} * {heads_kv} must be under 2^31 (and Nk under 2^30)"
            );
        }
        if batch > 65535 || heads_q > 65535 {
            candle_core::bail!(
                "dot attention on CUDA: batch {batch} and heads_q {heads_q} must be at most 65535"
            );
        }
        let i = |x: usize| x as i32; // in range: each is at most one of the products above
        Ok(DotKernelShape {
            batch: i(batch),
            seq_q: i(seq_q),
            seq_k: i(seq_k),
            heads_q: i(heads_q),
            heads_kv: i(heads_kv),
            d: i(dims.d),
            dv: i(dims.dv),
            causal: i32::from(call.keys.causal),
            window: i(call.keys.w),
            scale: call.scale as f32,
        })
    }
}

/// True when the view starts on a 16-byte boundary (the tensor-core kernels copy 16-byte
/// chunks with cp.async and read K and V through TMA maps, whose base must be 16-byte aligned;
/// candle's buffers themselves are 256-byte aligned).
fn aligned(l: &Layout, dtype: DType) -> bool {
    (l.start_offset() * dtype.size_in_bytes()).is_multiple_of(16)
}

/// K's and V's tensor maps (boxes of `map_rows` keys) for a kernel that loads them through the
/// TMA; none where `map_rows` is `None`.
fn kv_maps<T>(
    dev: &CudaDevice,
    dims: &DotDims,
    map_rows: Option<usize>,
    [k, v]: [&CudaView<'_, T>; 2],
) -> Result<Vec<TensorMap>> {
    let Some(rows) = map_rows else {
        return Ok(vec![]);
    };
    let stream = dev.cuda_stream();
    let k_shape = [dims.batch, dims.seq_k, dims.heads_kv, dims.d];
    let v_shape = [dims.batch, dims.seq_k, dims.heads_kv, dims.dv];
    Ok(vec![
        tma::bf16_rows(&stream, k, k_shape, (1, rows))?,
        tma::bf16_rows(&stream, v, v_shape, (1, rows))?,
    ])
}
