//! The routed experts of an MoE layer as one op whose backward is written out:
//!
//! ```text
//! forward   xp = permute(x)                  [A, C]   rows in slot order
//!           gu = xp W_gu,e^T                 [A, 2H]  grouped product
//!           h  = silu(gu[:, :H]) * gu[:, H:] [A, H]
//!           y  = h W_down,e^T                [A, C]   grouped product
//!           out[t] = sum_j w[t, j] y[slot_of[t k + j]]          (combine, its own op)
//! backward  dh = dy W_down,e     dW_down,e = dy_e^T h_e
//!           dgu = swiglu'(gu, dh)
//!           dxp = dgu W_gu,e     dW_gu,e = dgu_e^T xp_e
//!           dx[t] = sum_j dxp[slot_of[t k + j]]
//! ```
//!
//! Why one op: candle 0.11's backward adds every gradient into a fresh zero tensor, once per
//! edge of the graph. Composed from [`permute`](super::permute), two
//! [`grouped_matmul`](super::grouped_matmul)s and [`swiglu`](crate::fused::swiglu), the
//! path has edges on `xp`, `gu` and `h`, `[A, C + 3H]` elements of slot rows (for 32K tokens,
//! top-2, H = 704: 340 MB in bf16) zero-filled and added per layer and update; as one op its
//! edges are `x`, the two weights and `y`. The forward keeps `xp`, `gu` and `h` for the
//! backward, as the composed graph does. [`routed_experts_twin`] is the composed version, the
//! reference of the tests.
//!
//! On CUDA the four products run as `d.products` says ([`ExpertProducts`]): the grouped
//! kernels, or one cuBLAS product per expert after reading the offsets to the host once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::ops::{combine_grads, combine_saved, Gmm, Rows, RowsKind};
use super::{combine, grouped_matmul, permute, Dispatch, ExpertProducts};
use crate::fused::{
    compute_dtype, put, same_as, slot, swiglu, swiglu_grad, swiglu_no_grad, take, unwrap_storage,
    Slot,
};

/// The routed experts' output `out [T, C]` for tokens `x [T, C]` routed by `d` with weights
/// `weights [T, k]`: each token's weighted sum of its experts' SwiGLU MLPs
/// `swiglu(x W_gu,e^T) W_down,e^T`, `gate_up [E, 2H, C]` (each expert's gate rows, then its up
/// rows), `down [E, C, H]`. Differentiable in `x`, `weights`, `gate_up` and `down`; equal to
/// [`routed_experts_twin`] (one op instead of five, see the module doc).
pub fn routed_experts(
    x: &Tensor,
    weights: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    d: &Dispatch,
) -> candle_core::Result<Tensor> {
    let p = Prepared::new(x, gate_up, down, d)?;
    let y = p.x.apply_op3(&p.gate_up, &p.down, p.experts)?;
    combine(&y, weights, d)?.to_dtype(p.dtype)
}

/// [`routed_experts`] outside autograd: the output `[T, C]` and what
/// [`routed_experts_grads`] needs (the slot rows `xp`, `gu`, `h` and `y`, and the dispatch).
pub fn routed_experts_saved(
    x: &Tensor,
    weights: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    d: &Dispatch,
) -> candle_core::Result<(Tensor, RoutedSaved)> {
    let p = Prepared::new(x, gate_up, down, d)?;
    let y = p.x.apply_op3_no_bwd(&p.gate_up, &p.down, &p.experts)?;
    let acts = take(&p.experts.saved, "the routed experts' saved activations")?;
    let (out, combine_weights) = combine_saved(&y, weights, d)?;
    let saved = RoutedSaved {
        acts,
        y,
        combine_weights,
        weights_dtype: weights.dtype(),
        down: p.down,
        weight_dtypes: (gate_up.dtype(), down.dtype()),
        experts: p.experts,
        dtype: p.dtype,
    };
    Ok((out.to_dtype(p.dtype)?, saved))
}

/// What [`routed_experts_saved`] keeps for [`routed_experts_grads`].
pub struct RoutedSaved {
    experts: Experts,
    /// `(xp, gu, h)` in slot order.
    acts: (Tensor, Tensor, Tensor),
    /// The experts' outputs in slot order `[A, C]`.
    y: Tensor,
    combine_weights: Tensor,
    weights_dtype: DType,
    /// `down` in the compute dtype (`gate_up` is the op's own, `experts.gate_up`).
    down: Tensor,
    weight_dtypes: (DType, DType),
    dtype: DType,
}

/// The gradients `(dx, d weights, d gate_up, d down)` of [`routed_experts`] given the
/// output's gradient `dout [T, C]`, for a forward of [`routed_experts_saved`]; each in the
/// dtype of the input it belongs to.
pub fn routed_experts_grads(
    saved: RoutedSaved,
    dout: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor, Tensor)> {
    let want = [saved.combine_weights.dim(0)?, saved.experts.c];
    if dout.dims() != want {
        candle_core::bail!(
            "moe routed_experts backward: dout {:?} must be {want:?} (the output's shape)",
            dout.dims()
        )
    }
    if !dout.device().same_device(saved.y.device()) {
        candle_core::bail!(
            "moe routed_experts backward: dout is on another device than the forward"
        )
    }
    let (dy, dw) = combine_grads(&saved.y, &saved.combine_weights, &saved.experts.d, dout)?;
    let experts = &saved.experts;
    let (dx, dgu, dd) = experts.grads(saved.acts, &experts.gate_up, &saved.down, &dy)?;
    Ok((
        dx.to_dtype(saved.dtype)?,
        dw.to_dtype(saved.weights_dtype)?,
        dgu.to_dtype(saved.weight_dtypes.0)?,
        dd.to_dtype(saved.weight_dtypes.1)?,
    ))
}

/// The checked inputs of the routed experts in their compute dtype, and the op over them.
struct Prepared {
    x: Tensor,
    gate_up: Tensor,
    down: Tensor,
    experts: Experts,
    /// `x`'s dtype, the output's.
    dtype: DType,
}

impl Prepared {
    fn new(
        x: &Tensor,
        gate_up: &Tensor,
        down: &Tensor,
        d: &Dispatch,
    ) -> candle_core::Result<Prepared> {
        let op = "moe routed_experts";
        let (t, c) = x.dims2().map_err(|_| {
            candle_core::Error::Msg(format!("{op}: x {:?} must be [tokens, C]", x.dims()))
        })?;
        let (e, h2, cg) = gate_up.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{op}: gate_up {:?} must be [experts, 2H, C]",
                gate_up.dims()
            ))
        })?;
        let h = h2 / 2;
        if h2 % 2 != 0 || cg != c || e != d.experts {
            candle_core::bail!(
                "{op}: gate_up {:?} must be [{}, 2H, {c}] (experts, an even row count, x's width)",
                gate_up.dims(),
                d.experts
            )
        }
        if down.dims() != [e, c, h] {
            candle_core::bail!("{op}: down {:?} must be [{e}, {c}, {h}]", down.dims())
        }
        let a = d.slot_assign.elem_count();
        if t * d.k != a {
            candle_core::bail!(
                "{op}: x has {t} rows but the dispatch routes {a} assignments of {} each",
                d.k
            )
        }
        same_as(op, "gate_up", gate_up, x)?;
        same_as(op, "down", down, x)?;
        if !d.slot_assign.device().same_device(x.device()) {
            candle_core::bail!("{op}: the dispatch is on another device than x")
        }
        let cd = compute_dtype(op, x)?;
        let up = |t: &Tensor| t.to_dtype(cd)?.contiguous();
        let (xc, guc, downc) = (up(x)?, up(gate_up)?, up(down)?);
        // per-expert cuBLAS products need the offsets on the host: one synchronization here
        let per_expert =
            x.device().is_cuda() && d.products.choose(d.experts, cd) == ExpertProducts::PerExpert;
        let experts = Experts {
            d: d.clone(),
            host: per_expert.then(|| d.host_offsets()).transpose()?,
            c,
            h,
            x: xc.detach(),
            gate_up: guc.detach(),
            saved: slot(),
        };
        Ok(Prepared {
            x: xc,
            gate_up: guc,
            down: downc,
            experts,
            dtype: x.dtype(),
        })
    }
}

/// The composed routed experts ([`permute`], [`grouped_matmul`], [`swiglu`],
/// [`grouped_matmul`], [`combine`]; autograd): the reference of [`routed_experts`].
pub fn routed_experts_twin(
    x: &Tensor,
    weights: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    d: &Dispatch,
) -> candle_core::Result<Tensor> {
    let xp = permute(x, d)?;
    let h = swiglu(&grouped_matmul(&xp, gate_up, &d.offsets)?)?;
    combine(&grouped_matmul(&h, down, &d.offsets)?, weights, d)
}

/// The op `(x, gate_up, down) -> y [A, C]` (slot rows, before the weighted combine). It holds
/// `x` and `gate_up` (the same tensors as its inputs, without a graph) so that the forward runs
/// the permutation and the first product as tensor ops; the last product writes its output
/// storage directly. The forward leaves `(xp, gu, h)` for the backward.
struct Experts {
    d: Dispatch,
    /// The offsets on the host where the products run per expert on cuBLAS.
    host: Option<Vec<u32>>,
    c: usize,
    h: usize,
    x: Tensor,
    gate_up: Tensor,
    saved: Slot<(Tensor, Tensor, Tensor)>,
}

impl Experts {
    fn rows(&self, kind: RowsKind) -> Rows {
        Rows {
            kind,
            d: self.d.clone(),
            weights: None,
            c: self.c,
        }
    }

    /// The first product `gu [A, 2H]` of the slot rows `xp [A, C]`.
    fn gate_up_product(&self) -> Gmm {
        Gmm::forward(&self.d.offsets, self.a(), (2 * self.h, self.c)).per_expert(self.host.clone())
    }

    /// The second product `y [A, C]` of `h [A, H]`.
    fn down_product(&self) -> Gmm {
        Gmm::forward(&self.d.offsets, self.a(), (self.c, self.h)).per_expert(self.host.clone())
    }

    fn a(&self) -> usize {
        self.d.slot_assign.elem_count()
    }

    /// `(dx, d gate_up, d down)` from the slot rows' gradient `dy [A, C]` and the forward's
    /// `(xp, gu, h)`.
    fn grads(
        &self,
        (xp, gu, h): (Tensor, Tensor, Tensor),
        gate_up: &Tensor,
        down: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (dh, d_down) = self.down_product().grads(&h, down, dy)?;
        let dgu = swiglu_grad(&gu, &dh, self.h)?;
        let (dxp, d_gate_up) = self.gate_up_product().grads(&xp, gate_up, &dgu)?;
        let dx = dxp.apply_op1_no_bwd(&self.rows(RowsKind::PermuteGrad))?;
        Ok((dx, d_gate_up, d_down))
    }

    /// `xp`, `gu` and `h` as tensors, then `y` through `last` (the down product on the
    /// device's storage).
    fn forward<S: BackendStorage + 'static>(
        &self,
        (down, ldown): (&S, &Layout),
        last: impl Fn(&Gmm, &S, &Layout, &S, &Layout) -> candle_core::Result<(S, Shape)>,
    ) -> candle_core::Result<(S, Shape)> {
        let xp = self.x.apply_op1_no_bwd(&self.rows(RowsKind::Permute))?;
        let gu = xp.apply_op2_no_bwd(&self.gate_up, &self.gate_up_product())?;
        let h = swiglu_no_grad(&gu, self.h)?;
        let y = {
            let (hs, lh) = h.storage_and_layout();
            last(
                &self.down_product(),
                unwrap_storage::<S>(&hs)?,
                lh,
                down,
                ldown,
            )?
        };
        put(&self.saved, (xp, gu, h))?;
        Ok(y)
    }
}

impl CustomOp3 for Experts {
    fn name(&self) -> &'static str {
        "moe-routed-experts"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _lx: &Layout,
        _gate_up: &CpuStorage,
        _lgu: &Layout,
        down: &CpuStorage,
        ldown: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((down, ldown), |g, h, lh, w, lw| g.cpu_fwd(h, lh, w, lw))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _lx: &Layout,
        _gate_up: &candle_core::CudaStorage,
        _lgu: &Layout,
        down: &candle_core::CudaStorage,
        ldown: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.forward((down, ldown), |g, h, lh, w, lw| g.cuda_fwd(h, lh, w, lw))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        gate_up: &Tensor,
        down: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let acts = take(&self.saved, "the routed experts' saved activations")?;
        let (dx, d_gate_up, d_down) = self.grads(acts, gate_up, down, dy)?;
        Ok((Some(dx), Some(d_gate_up), Some(d_down)))
    }
}
