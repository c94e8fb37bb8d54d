//! Mixture-of-experts building blocks: routing, the permutation of token rows into expert
//! order and back, and grouped matrix products, on the CPU and (feature `cuda`) on CUDA.
//!
//! For `T` tokens routed to `k` of `E` experts there are `A = T k` assignments (`a = t k + j`,
//! the `j`-th choice of token `t`). [`dispatch`] sorts them by expert, stably (earlier
//! assignments first), into `A` slots:
//!
//! ```text
//! slots:  [ expert 0 | expert 1 | ... | expert E-1 | empty ]      offsets [E + 1] (u32)
//! slot_of[a]     the slot of assignment a, or NONE when its expert was full (capacity)
//! slot_assign[s] the assignment in slot s, or NONE (slots >= offsets[E])
//! ```
//!
//! The expert computation then runs on rows in slot order:
//!
//! | op | computes | differentiable in |
//! | --- | --- | --- |
//! | [`permute`] | `xp[s] = x[slot_assign[s] / k]`, zero rows for empty slots | `x` |
//! | [`grouped_matmul`] | `y[s] = xp[s] W_e^T` for the slots of expert `e`, zero past `offsets[E]` | `xp`, `W [E, N, K]` |
//! | [`combine`] | `out[t] = sum_j w[t, j] y[slot_of[t k + j]]` | `y`, `w [T, k]` |
//!
//! [`routed_experts`] is the whole routed path of an MoE layer (permute, the gate/up product,
//! SwiGLU, the down product, combine) with the backward of the first four written out as one
//! op; [`routed_experts_twin`] composes it from the ops above.
//!
//! The grouped products read no count back to the host: each thread block finds its group
//! from `offsets` on the device (`kernels/moe.cu`); only [`routed_experts`] with per-expert
//! cuBLAS products ([`ExpertProducts::PerExpert`]) reads the offsets once. Every op is tested against a plain
//! per-token reference ([`moe_reference`]) and against finite differences (`tests/moe.rs`),
//! and on the GPU against the CPU (`tests/cuda_moe.rs`).
//!
//! Inputs on the CPU are computed in f32 or f64 (bf16 and f16 in f32, converted around the
//! op); on CUDA in bf16 (tensor cores) or f32, f32 accumulation, router weights in f32. The
//! bf16 products take the tensor cores when the widths are multiples of 8, else CUDA cores.

pub mod bench;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod experts;
mod ops;
mod reference;

pub use experts::{
    routed_experts, routed_experts_grads, routed_experts_saved, routed_experts_twin, RoutedSaved,
};
pub use ops::{combine, grouped_matmul, grouped_matmul_backward, permute};
pub use reference::{grouped_matmul_twin, moe_reference};

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Result, Shape, Tensor};

pub use crate::kernels::ExpertProducts;

/// An assignment dropped by the capacity, or a slot that holds none.
pub const NONE: u32 = u32::MAX;

/// Which product a grouped matmul computes (`W [E, N, K]`, rows grouped by `offsets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GmmKind {
    /// `y [M, N] = x [M, K] W_e^T` per group; rows past `offsets[E]` zero.
    Forward,
    /// `dx [M, K] = dy [M, N] W_e` per group; rows past `offsets[E]` zero.
    InputGrad,
    /// `dW_e [N, K] = dy_e^T x_e` (zero for a group without rows).
    WeightGrad,
}

impl GmmKind {
    /// The output shape for `m` rows of the grouped operand, `groups` experts and weights
    /// `[groups, n, k]`.
    pub(crate) fn out_shape(self, m: usize, groups: usize, (n, k): (usize, usize)) -> Shape {
        match self {
            GmmKind::Forward => Shape::from((m, n)),
            GmmKind::InputGrad => Shape::from((m, k)),
            GmmKind::WeightGrad => Shape::from((groups, n, k)),
        }
    }
}

/// Checks host `offsets [E + 1]` of a grouped product over `m` rows: ascending from 0 to at
/// most `m`; the error names `op`.
pub(crate) fn check_offsets(op: &str, offsets: &[u32], m: usize) -> Result<()> {
    let last = offsets.last().copied().unwrap_or(0) as usize;
    if offsets.first() != Some(&0) || offsets.windows(2).any(|p| p[1] < p[0]) || last > m {
        candle_core::bail!("{op}: offsets {offsets:?} must ascend from 0 to at most {m} (the rows)")
    }
    Ok(())
}

/// The routing tables of one batch (see the module doc); all u32 on the batch's device.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// `[A]`: the slot of each assignment, [`NONE`] when dropped.
    pub slot_of: Tensor,
    /// `[A]`: the assignment in each slot, [`NONE`] when empty.
    pub slot_assign: Tensor,
    /// `[E + 1]`: expert `e` owns slots `offsets[e]..offsets[e + 1]`.
    pub offsets: Tensor,
    /// `[E]`: assignments routed to each expert before the capacity (its load).
    pub counts: Tensor,
    /// Experts per token.
    pub k: usize,
    /// Experts.
    pub experts: usize,
    /// How [`routed_experts`] runs the expert products on CUDA (default automatic).
    pub products: ExpertProducts,
    /// `offsets` read to the host, once, where per-expert products need them.
    host_offsets: Arc<OnceLock<Vec<u32>>>,
}

impl Dispatch {
    /// The dispatch with the expert products run as `products` says.
    pub fn with_products(mut self, products: ExpertProducts) -> Self {
        self.products = products;
        self
    }

    /// `offsets` on the host: read from the device once (a synchronization), then kept.
    pub fn host_offsets(&self) -> Result<Vec<u32>> {
        if let Some(v) = self.host_offsets.get() {
            return Ok(v.clone());
        }
        let v = self.offsets.to_vec1::<u32>()?;
        Ok(self.host_offsets.get_or_init(|| v).clone())
    }
}

/// The `k` largest scores of each row of `scores [T, E]` as expert ids `[T, k]` (u32),
/// descending; ties go to the lower expert. Not differentiable (the router's gradient flows
/// through the weights gathered at these ids).
pub fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    let (t, e) = scores.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "moe top_k: scores {:?} must be [tokens, experts]",
            scores.dims()
        ))
    })?;
    if k == 0 || k > e {
        candle_core::bail!("moe top_k: k = {k} must be in 1..={e} (the number of experts)")
    }
    let scores = scores.to_dtype(DType::F32)?.contiguous()?;
    match scores.device() {
        Device::Cpu => {
            let s = scores.flatten_all()?.to_vec1::<f32>()?;
            Tensor::from_vec(cpu::top_k(&s, e, k), (t, k), &Device::Cpu)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::top_k(&scores, k),
        _ => candle_core::bail!("moe top_k: unsupported device"),
    }
}

/// Sorts the assignments `experts [T, k]` (u32 ids below `n_experts`) by expert into slots,
/// keeping at most `capacity` per expert (earlier tokens first; `None`: every assignment is
/// kept, dropless). Ids are not checked on the device (a check would wait for it): they come
/// from [`top_k`].
pub fn dispatch(experts: &Tensor, n_experts: usize, capacity: Option<usize>) -> Result<Dispatch> {
    let (t, k) = experts.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "moe dispatch: expert ids {:?} must be [tokens, k]",
            experts.dims()
        ))
    })?;
    if experts.dtype() != DType::U32 {
        candle_core::bail!(
            "moe dispatch: expert ids are {:?}, not u32",
            experts.dtype()
        )
    }
    if n_experts == 0 || k == 0 || t == 0 {
        candle_core::bail!("moe dispatch: {t} tokens x {k} choices over {n_experts} experts")
    }
    let a = t * k;
    if u32::try_from(a).is_err() || a == NONE as usize {
        candle_core::bail!("moe dispatch: {a} assignments do not fit u32 slot ids")
    }
    let cap = capacity.map_or(NONE, |c| c.min(a) as u32);
    let flat = experts.flatten_all()?.contiguous()?;
    let dev = experts.device();
    let (slot_of, slot_assign, offsets, counts) = match dev {
        Device::Cpu => {
            let idx = flat.to_vec1::<u32>()?;
            if let Some(bad) = idx.iter().find(|&&x| x as usize >= n_experts) {
                candle_core::bail!("moe dispatch: expert id {bad} >= {n_experts} experts")
            }
            let (so, sa, off, cnt) = cpu::dispatch(&idx, n_experts, cap);
            (
                Tensor::from_vec(so, a, dev)?,
                Tensor::from_vec(sa, a, dev)?,
                Tensor::from_vec(off, n_experts + 1, dev)?,
                Tensor::from_vec(cnt, n_experts, dev)?,
            )
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::dispatch(&flat, n_experts, cap)?,
        _ => candle_core::bail!("moe dispatch: unsupported device"),
    };
    Ok(Dispatch {
        slot_of,
        slot_assign,
        offsets,
        counts,
        k,
        experts: n_experts,
        products: ExpertProducts::Auto,
        host_offsets: Arc::new(OnceLock::new()),
    })
}
