//! Which kernels run a 2-simplicial call (shapes as in [`crate::AttnSpec`]).
//!
//! The tensor-core kernels walk their window 1 one position (or offset) at a time and tile
//! window 2, so they want the smaller window first: where `w1 > w2` the launch code exchanges
//! the two key/value sets ([`exchange_sets`]; the layer is symmetric in them), and every choice
//! below sees the windows in that orientation.

use candle_core::DType;

use super::{launch, DeviceLimits, Launch};
use crate::kernels::smem::{SmemArgs, Window1};
use crate::kernels::table::{Elem, Kernel};
use crate::kernels::{ForwardVariant, Kernels, OffsetsBackward, WgmmaBackward, MAX_HEAD_DIM};
use crate::spec::{Dims, Windows};
use crate::AttnError;

/// Whether the kernels get the two key/value sets exchanged: the forwards, the dq kernel and
/// the tensor-core backward want the smaller window as their window 1.
pub fn exchange_sets(win: &Windows) -> bool {
    win.w1 > win.w2
}

/// The compiled width class of a CUDA-core kernel for a head dim: the kernels keep
/// `width / 32` columns per lane in registers, so each is compiled for 32, 64, 128 and 256.
pub fn width(dim: usize, what: &str) -> Result<usize, AttnError> {
    match dim {
        0 => Err(AttnError::Shape(format!(
            "simplicial attention on CUDA: {what} = 0"
        ))),
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        129..=MAX_HEAD_DIM => Ok(256),
        _ => Err(AttnError::Shape(format!(
            "simplicial attention on CUDA: {what} = {dim}, but the CUDA kernels take head dims \
             up to {MAX_HEAD_DIM}"
        ))),
    }
}

/// What the choices read of a call.
struct Call {
    dims: Dims,
    /// G = Hq / Hkv.
    group: usize,
    smem: SmemArgs,
}

impl Call {
    fn new(dims: &Dims, win: &Windows) -> Call {
        let window1 = Window1 {
            seq: dims.seq,
            w1: win.w1.min(win.w2),
            causal: win.causal,
        };
        Call {
            dims: *dims,
            group: dims.group(),
            smem: SmemArgs {
                d: dims.d,
                dv: dims.dv,
                width: 0,
                group: dims.group(),
                window1,
            },
        }
    }

    /// A launch over the N * G rows of every (K/V head, batch).
    fn rows(&self, kernel: Kernel) -> Result<Launch, AttnError> {
        let info = kernel.info()?;
        let d = &self.dims;
        let smem = info.smem.bytes(&self.smem);
        launch(info, d.seq * self.group, (d.heads_kv, d.batch), smem)
    }

    /// A launch over the N keys of every (K/V head, batch).
    fn keys(&self, kernel: Kernel) -> Result<Launch, AttnError> {
        let info = kernel.info()?;
        let d = &self.dims;
        let smem = info.smem.bytes(&self.smem);
        launch(info, d.seq, (d.heads_kv, d.batch), smem)
    }

    /// A launch over all B * N * Hq rows (the delta pre-pass).
    fn all_rows(&self, kernel: Kernel) -> Result<Launch, AttnError> {
        let d = &self.dims;
        launch(kernel.info()?, d.batch * d.seq * d.heads_q, (1, 1), 0)
    }
}

/// Whether the tensor-core forward covers a call: bf16, tensor cores on, D = Dv in {64, 128}
/// or (D, Dv) = (128, 64) (the producer layout's determinant instantiation).
fn tensor_core_forward(dims: &Dims, dtype: DType, k: &Kernels) -> bool {
    let dims_ok = matches!((dims.d, dims.dv), (64, 64) | (128, 128) | (128, 64));
    dtype == DType::BF16 && dims_ok && k.tensor_cores
}

/// The tensor-core forward layout of a call: `k.forward` where set, else
/// [`ForwardVariant::fastest`] for its group and key head dim.
fn forward_variant(group: usize, d: usize, k: &Kernels) -> ForwardVariant {
    k.forward
        .unwrap_or_else(|| ForwardVariant::fastest(group, d))
}

/// Whether the tensor-core backward covers a call: bf16, D = Dv in {32, 64, 96, 128}, tensor
/// cores on, the deterministic backward not asked for.
fn tensor_core_backward(dims: &Dims, dtype: DType, k: &Kernels) -> bool {
    dtype == DType::BF16
        && dims.d == dims.dv
        && matches!(dims.d, 32 | 64 | 96 | 128)
        && k.tensor_cores
        && !k.deterministic
}

/// The head dims `(D, Dv)` to which a call whose q/k head dim `d` differs from its value head
/// dim `dv` (as after the determinant lift: `d = 2 Dv`) is zero-padded so that the tensor-core
/// kernels run it on CUDA; `None` where they do not apply (not bf16, tensor cores off,
/// `d == dv` already, or `max(d, dv) > 128`).
///
/// - `d <= 128`, `dv <= 64` where the forward runs the producer layout at D = 128 (G >= 16,
///   or `forward=producer`): `(128, 64)`, the values unpadded to 128 (the producer's
///   determinant instantiation; the backward pads the values to 128 itself, see
///   [`backward_value_dim`]);
/// - else both up to 64 where both fit: `(64, 64)`;
/// - else `(128, 128)`.
///
/// Zero columns add nothing to the logits, and the output's padded columns are dropped, so the
/// result is the unpadded call's; the cost is the padded columns' products (for the lift of
/// D = 63 at G = 64: keys 126 -> 128, values 63 -> 64).
pub fn padded_head_dims(dims: &Dims, dtype: DType, k: &Kernels) -> Option<(usize, usize)> {
    let (d, dv) = (dims.d, dims.dv);
    if dtype != DType::BF16 || !k.tensor_cores || d == dv {
        return None;
    }
    let producer = forward_variant(dims.group(), 128, k) == ForwardVariant::Producer;
    if (65..=128).contains(&d) && dv <= 64 && producer {
        return Some((128, 64));
    }
    match d.max(dv) {
        1..=64 => Some((64, 64)),
        65..=128 => Some((128, 128)),
        _ => None,
    }
}

/// The value head dim to which the backward pads v1, v2, o and dout (zero columns; dv1, dv2
/// narrowed back after) so that the tensor-core backward (D = Dv) runs a call whose values are
/// narrower than its keys: `Some(d)` for the producer forward's `(128, 64)`, `None` where the
/// call runs as it is.
pub fn backward_value_dim(dims: &Dims, dtype: DType, k: &Kernels) -> Option<usize> {
    let wide = Dims {
        dv: dims.d,
        ..*dims
    };
    (dims.dv < dims.d && dims.d == 128 && tensor_core_backward(&wide, dtype, k)).then_some(dims.d)
}

/// The kernel of a forward layout at head dim `d` (= Dv).
fn forward_kernel(variant: ForwardVariant, d: usize) -> Kernel {
    match variant {
        ForwardVariant::Offsets => Kernel::FwdOffsets {
            d,
            to: if d == 64 { 2 } else { 1 },
        },
        ForwardVariant::PingPong => Kernel::FwdWgmma {
            d,
            tj: 1,
            ping_pong: true,
        },
        ForwardVariant::Producer => Kernel::FwdProducer { d, dv: d },
        ForwardVariant::Specialized => Kernel::FwdWgmma {
            d,
            tj: 2,
            ping_pong: false,
        },
    }
}

/// The forward of a call (o and lse in one launch). Tensor cores where they cover it (layout
/// `k.forward`, else [`ForwardVariant::fastest`]; the offset walk falls back to the ping-pong
/// layout for G >= 8, else the specialized one, where its window-1 rows do not fit shared
/// memory), else the CUDA-core kernel. Errors name a dtype or head dim no kernel takes.
pub fn forward(
    dims: &Dims,
    win: &Windows,
    dtype: DType,
    k: &Kernels,
    dev: &DeviceLimits,
) -> Result<Launch, AttnError> {
    let call = Call::new(dims, win);
    let variant = forward_variant(call.group, dims.d, k);
    // D = Dv: every layout; (D, Dv) = (128, 64): the producer layout alone
    let tensor_core = match (tensor_core_forward(dims, dtype, k), variant) {
        (false, _) => None,
        (true, _) if dims.d == dims.dv => Some(forward_kernel(variant, dims.d)),
        (true, ForwardVariant::Producer) => Some(Kernel::FwdProducer {
            d: dims.d,
            dv: dims.dv,
        }),
        (true, _) => None,
    };
    if let Some(kernel) = tensor_core {
        let d = dims.d;
        let l = call.rows(kernel)?;
        if variant == ForwardVariant::Offsets && l.smem > dev.max_smem {
            let fallback = if call.group >= 8 {
                ForwardVariant::PingPong
            } else {
                ForwardVariant::Specialized
            };
            return call.rows(forward_kernel(fallback, d));
        }
        return Ok(l);
    }
    let dtype = Elem::of(dtype, "simplicial attention")?;
    let dv = width(dims.dv, "Dv")?;
    width(dims.d, "D")?;
    call.rows(Kernel::Fwd { dtype, dv })
}

/// The launches of a backward, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backward {
    /// CUDA cores, deterministic: the delta pre-pass, dq, then dk/dv launched once per
    /// key/value set (the kernel owns its "k2" argument: first (k2, v2), then the sets
    /// exchanged for (k1, v1)).
    Core {
        /// delta = rowsum(o * dout)
        delta: Launch,
        /// dq
        dq: Launch,
        /// dk, dv of one set
        dkv: Launch,
    },
    /// Tensor cores: the delta pre-pass; the q side (dq, and dk1, dv1 added into f32 buffers
    /// with atomics); the k side (dk2, dv2, each block owning its keys); dk1, dv1 rounded to
    /// bf16 (launched for each).
    TensorCore {
        /// delta = rowsum(o * dout)
        delta: Launch,
        /// dq, dk1, dv1
        q: Launch,
        /// dk2, dv2
        k: Launch,
        /// f32 to bf16
        round: Launch,
    },
}

/// The backward of a call. Tensor cores where they cover it: the q side from the offset walk's
/// qk1 pass (where `k.offsets_backward` selects it, D = 64, G a power of two up to 128 and its
/// rows fit shared memory), else the wgmma or mma.sync q kernel (`k.wgmma_backward`); the k
/// side from the offset walk's k2 pass (likewise), the producer kernel (G a multiple of 64), the
/// wgmma or the mma.sync k kernel. Else the CUDA-core kernels.
pub fn backward(
    dims: &Dims,
    win: &Windows,
    dtype: DType,
    k: &Kernels,
    dev: &DeviceLimits,
) -> Result<Backward, AttnError> {
    let call = Call::new(dims, win);
    if !tensor_core_backward(dims, dtype, k) {
        let dtype = Elem::of(dtype, "simplicial attention")?;
        let delta = call.all_rows(Kernel::BwdDelta { dtype })?;
        let dq = Kernel::BwdDq {
            dtype,
            d: width(dims.d, "D")?,
        };
        width(dims.dv, "Dv")?;
        let dkv = Kernel::BwdDkv {
            dtype,
            d: width(dims.d.max(dims.dv), "max(D, Dv)")?,
        };
        return Ok(Backward::Core {
            delta,
            dq: call.rows(dq)?,
            dkv: call.keys(dkv)?,
        });
    }
    let (d, group) = (dims.d, call.group);
    let delta = call.all_rows(Kernel::BwdDelta { dtype: Elem::Bf16 })?;
    let (q, k_side) = tensor_core_kernels(d, group, k.wgmma_backward);
    let q = match offsets_qk1(&call, k.offsets_backward, dev)? {
        Some(qk1) => qk1,
        None => call.rows(q)?,
    };
    let k_side = match offsets_k2(&call, k.offsets_backward, dev)? {
        Some(k2) => k2,
        None => call.keys(k_side)?,
    };
    let nk = dims.batch * dims.seq * dims.heads_kv * d;
    let mut round = super::launch(Kernel::BwdF32ToBf16.info()?, nk, (1, 1), 0)?;
    round.grid.0 = round.grid.0.min(65535);
    Ok(Backward::TensorCore {
        delta,
        q,
        k: k_side,
        round,
    })
}

/// The q kernel (dq, dk1, dv1) and k kernel (dk2, dv2) for head dim `d` and G = `group`:
/// each on wgmma where `choice` puts it there and D is 64 or 128, else on mma.sync; dk2, dv2
/// from the producer kernel where `choice` allows it, D is 64 or 128 and G a multiple of 64.
/// The mma.sync k kernel steps over 32 rows when G < 64 (a step walks the union of its queries'
/// window 1, so fewer queries waste less), else 64.
fn tensor_core_kernels(d: usize, group: usize, choice: WgmmaBackward) -> (Kernel, Kernel) {
    let wgmma_d = matches!(d, 64 | 128);
    let q = if choice.wgmma_q(group) && wgmma_d {
        Kernel::BwdQWgmma { d }
    } else {
        Kernel::BwdQMma { d }
    };
    let k = if choice.producer_keys(group) && wgmma_d {
        Kernel::BwdProducerK2 { d }
    } else {
        Kernel::BwdKMma {
            d,
            rows: if group < 64 { 32 } else { 64 },
        }
    };
    (q, k)
}

/// The offset walk's qk1 pass where `choice` selects it, D = 64, G is a power of two up to 128
/// (the heads of a position are summed by warp shuffles, and from G = 32 on by shared-memory
/// atomics) and its shared memory fits the device.
fn offsets_qk1(
    call: &Call,
    choice: OffsetsBackward,
    dev: &DeviceLimits,
) -> Result<Option<Launch>, AttnError> {
    let (d, g) = (call.dims.d, call.group);
    if d != 64 || !g.is_power_of_two() || g > 128 || !choice.sides(g).0 {
        return Ok(None);
    }
    let l = call.rows(Kernel::BwdOffsetsQk1 { d })?;
    Ok((l.smem <= dev.max_smem).then_some(l))
}

/// The offset walk's k2 pass where `choice` selects it, D = 64 and its shared memory fits.
fn offsets_k2(
    call: &Call,
    choice: OffsetsBackward,
    dev: &DeviceLimits,
) -> Result<Option<Launch>, AttnError> {
    let d = call.dims.d;
    if d != 64 || !choice.sides(call.group).1 {
        return Ok(None);
    }
    let l = call.keys(Kernel::BwdOffsetsK2 { d })?;
    Ok((l.smem <= dev.max_smem).then_some(l))
}
