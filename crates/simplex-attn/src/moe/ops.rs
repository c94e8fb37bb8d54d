//! The differentiable MoE ops ([`permute`], [`grouped_matmul`], [`combine`]) as candle custom
//! ops, and the kernels of their backward passes as ops without a graph.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};

use super::{cpu, Dispatch, GmmKind};
use crate::cpu::Real;
use crate::fused::{compute_dtype, cpu_data, cpu_tensor, with_cpu};

/// The u32 data of a CPU tensor (an index table).
fn indices(t: &Tensor, op: &str, name: &str) -> candle_core::Result<Vec<u32>> {
    if !t.device().is_cpu() {
        candle_core::bail!("{op}: {name} is not on the CPU")
    }
    t.flatten_all()?.to_vec1::<u32>()
}

/// `[rows, c]` of a 2-d tensor, or an error naming it.
fn dims2(op: &str, name: &str, t: &Tensor) -> candle_core::Result<(usize, usize)> {
    t.dims2()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: {name} {:?} must be 2-d", t.dims())))
}

fn same_device(op: &str, name: &str, t: &Tensor, x: &Tensor) -> candle_core::Result<()> {
    if !t.device().same_device(x.device()) {
        candle_core::bail!("{op}: {name} is on another device than the rows")
    }
    Ok(())
}

/// The rows of `x [T, C]` in slot order: `[A, C]`, zero rows for empty slots. Differentiable
/// in `x` (the gradient sums each token's slots).
pub fn permute(x: &Tensor, d: &Dispatch) -> candle_core::Result<Tensor> {
    let (t, c) = dims2("moe permute", "x", x)?;
    let a = d.slot_assign.elem_count();
    if t * d.k != a {
        candle_core::bail!(
            "moe permute: x has {t} rows but the dispatch routes {a} assignments of {} each",
            d.k
        )
    }
    same_device("moe permute", "the dispatch", &d.slot_assign, x)?;
    let dtype = x.dtype();
    let xc = x.to_dtype(compute_dtype("moe permute", x)?)?.contiguous()?;
    let op = Rows {
        kind: RowsKind::Permute,
        d: d.clone(),
        weights: None,
        c,
    };
    xc.apply_op1(op)?.to_dtype(dtype)
}

/// `out[t] = sum_j weights[t, j] y[slot_of[t k + j]]` for `y [A, C]` in slot order and
/// `weights [T, k]`: `[T, C]` in `y`'s dtype. Differentiable in `y` and `weights`. On the CPU
/// the weights are used in `y`'s compute dtype, on CUDA in f32.
pub fn combine(y: &Tensor, weights: &Tensor, d: &Dispatch) -> candle_core::Result<Tensor> {
    let (yc, wc, op) = combine_inputs(y, weights, d)?;
    yc.apply_op2(&wc, op)?.to_dtype(y.dtype())
}

/// [`combine`] outside autograd: the output in `y`'s compute dtype and the weights in the
/// dtype the op used (what [`combine_grads`] takes).
pub(super) fn combine_saved(
    y: &Tensor,
    weights: &Tensor,
    d: &Dispatch,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (yc, wc, op) = combine_inputs(y, weights, d)?;
    Ok((yc.apply_op2_no_bwd(&wc, &op)?, wc))
}

/// Checks the inputs of [`combine`] and converts them to the dtypes its kernels take.
fn combine_inputs(
    y: &Tensor,
    weights: &Tensor,
    d: &Dispatch,
) -> candle_core::Result<(Tensor, Tensor, Combine)> {
    let (a, c) = dims2("moe combine", "y", y)?;
    let (t, k) = dims2("moe combine", "weights", weights)?;
    if a != d.slot_of.elem_count() || k != d.k || t * k != a {
        candle_core::bail!(
            "moe combine: y {:?} and weights {:?} do not fit the dispatch ({} assignments, k = {})",
            y.dims(),
            weights.dims(),
            d.slot_of.elem_count(),
            d.k
        )
    }
    same_device("moe combine", "weights", weights, y)?;
    same_device("moe combine", "the dispatch", &d.slot_of, y)?;
    let cd = compute_dtype("moe combine", y)?;
    let wd = if y.device().is_cpu() { cd } else { DType::F32 };
    let yc = y.to_dtype(cd)?.contiguous()?;
    let wc = weights.to_dtype(wd)?.contiguous()?;
    Ok((yc, wc, Combine { d: d.clone(), c }))
}

/// `y [M, N]`: rows `offsets[e]..offsets[e + 1]` of `x [M, K]` times `w[e]^T` (`w [E, N, K]`),
/// rows from `offsets[E]` on zero. Differentiable in `x` and `w`. `offsets [E + 1]` (u32,
/// ascending, at most `M`) is not checked on CUDA (that would wait for the device): it comes
/// from [`super::dispatch`].
pub fn grouped_matmul(x: &Tensor, w: &Tensor, offsets: &Tensor) -> candle_core::Result<Tensor> {
    let (m, k) = dims2("grouped_matmul", "x", x)?;
    let (e, n, kw) = w.dims3().map_err(|_| {
        candle_core::Error::Msg(format!(
            "grouped_matmul: weights {:?} must be [experts, out, in]",
            w.dims()
        ))
    })?;
    if kw != k {
        candle_core::bail!(
            "grouped_matmul: x {:?} has {k} columns, the weights {:?} take {kw}",
            x.dims(),
            w.dims()
        )
    }
    if offsets.dims() != [e + 1] || offsets.dtype() != DType::U32 {
        candle_core::bail!(
            "grouped_matmul: offsets {:?} {:?} must be [{}] u32 (experts + 1)",
            offsets.dims(),
            offsets.dtype(),
            e + 1
        )
    }
    same_device("grouped_matmul", "the weights", w, x)?;
    same_device("grouped_matmul", "offsets", offsets, x)?;
    if offsets.device().is_cpu() {
        super::check_offsets("grouped_matmul", &offsets.to_vec1::<u32>()?, m)?;
    }
    let dtype = x.dtype();
    let cd = compute_dtype("grouped_matmul", x)?;
    let xc = x.to_dtype(cd)?.contiguous()?;
    let wc = w.to_dtype(cd)?.contiguous()?;
    let op = Gmm::forward(offsets, m, (n, k));
    xc.apply_op2(&wc, op)?.to_dtype(dtype)
}

/// The gradients `(dx, dw)` of [`grouped_matmul`]`(x, w, offsets)` given the output's
/// gradient `dy [M, N]`, without autograd: `dx = dy W_e` for the rows of group `e` (zero past
/// `offsets[E]`) and `dW_e = dy_e^T x_e`. The products the backward runs, callable directly.
pub fn grouped_matmul_backward(
    x: &Tensor,
    w: &Tensor,
    offsets: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (m, k) = dims2("grouped_matmul backward", "x", x)?;
    let (_, n, _) = w.dims3()?;
    if dy.dims() != [m, n] {
        candle_core::bail!(
            "grouped_matmul backward: dy {:?} must be [{m}, {n}] (x rows, weight rows)",
            dy.dims()
        )
    }
    let cd = compute_dtype("grouped_matmul", x)?;
    let op = Gmm::forward(offsets, m, (n, k));
    let (xc, wc) = (x.to_dtype(cd)?.contiguous()?, w.to_dtype(cd)?.contiguous()?);
    let (dx, dw) = op.grads(&xc, &wc, dy)?;
    Ok((dx.to_dtype(x.dtype())?, dw.to_dtype(w.dtype())?))
}

/// One grouped product; `m` rows of the grouped operand, `nk` the dims of one expert weight.
#[derive(Clone)]
pub(super) struct Gmm {
    kind: GmmKind,
    offsets: Tensor,
    m: usize,
    nk: (usize, usize),
    /// `offsets` on the host: on CUDA, one cuBLAS product per expert instead of the grouped
    /// kernel ([`crate::kernels::ExpertProducts::PerExpert`]).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    host: Option<Vec<u32>>,
}

impl Gmm {
    /// The forward product `[m, K] -> [m, N]` over weights `[E, N, K]` (`nk = (N, K)`).
    pub(super) fn forward(offsets: &Tensor, m: usize, nk: (usize, usize)) -> Gmm {
        Gmm {
            kind: GmmKind::Forward,
            offsets: offsets.clone(),
            m,
            nk,
            host: None,
        }
    }

    /// The same product as one cuBLAS product per expert, with `offsets` read to the host.
    pub(super) fn per_expert(self, host_offsets: Option<Vec<u32>>) -> Gmm {
        Gmm {
            host: host_offsets,
            ..self
        }
    }

    fn out_shape(&self) -> Shape {
        self.kind
            .out_shape(self.m, self.offsets.elem_count() - 1, self.nk)
    }

    fn cpu<T: Real + candle_core::WithDType>(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<Vec<T>> {
        let off = indices(&self.offsets, "grouped_matmul", "offsets")?;
        let a = cpu_data::<T>(a, la, "grouped_matmul", "a")?;
        let b = cpu_data::<T>(b, lb, "grouped_matmul", "b")?;
        Ok(cpu::gmm(self.kind, a, b, &off, self.m, self.nk))
    }
}

impl CustomOp2 for Gmm {
    fn name(&self) -> &'static str {
        "moe-grouped-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match a {
            CpuStorage::F32(_) => CpuStorage::F32(self.cpu::<f32>(a, la, b, lb)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.cpu::<f64>(a, la, b, lb)?),
            _ => candle_core::bail!("grouped_matmul: CPU inputs must be f32 or f64 here"),
        };
        Ok((out, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = match &self.host {
            Some(off) => {
                super::cuda::gmm_per_expert(self.kind, (a, la), (b, lb), off, self.m, self.nk)?
            }
            None => super::cuda::gmm(self.kind, (a, la), (b, lb), &self.offsets, self.m, self.nk)?,
        };
        Ok((out, self.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl Gmm {
    /// `(dx, dw)` of the forward product from `dy`.
    pub(super) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dy = dy.to_dtype(x.dtype())?.contiguous()?;
        let dx = dy.apply_op2_no_bwd(
            w,
            &Gmm {
                kind: GmmKind::InputGrad,
                ..self.clone()
            },
        )?;
        let dw = dy.apply_op2_no_bwd(
            x,
            &Gmm {
                kind: GmmKind::WeightGrad,
                ..self.clone()
            },
        )?;
        Ok((dx, dw))
    }
}

/// The row moves that take one float tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowsKind {
    /// `x [T, C] -> xp [A, C]`
    Permute,
    /// `dxp [A, C] -> dx [T, C]`
    PermuteGrad,
    /// `dout [T, C] -> dy [A, C]` (needs the weights)
    CombineGrad,
}

#[derive(Clone)]
pub(super) struct Rows {
    pub(super) kind: RowsKind,
    pub(super) d: Dispatch,
    pub(super) weights: Option<Tensor>,
    pub(super) c: usize,
}

impl Rows {
    fn out_shape(&self) -> Shape {
        let a = self.d.slot_of.elem_count();
        match self.kind {
            RowsKind::Permute | RowsKind::CombineGrad => Shape::from((a, self.c)),
            RowsKind::PermuteGrad => Shape::from((a / self.d.k, self.c)),
        }
    }

    fn cpu<T: Real + candle_core::WithDType>(
        &self,
        s: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<Vec<T>> {
        let op = "moe rows";
        let x = cpu_data::<T>(s, l, op, "rows")?;
        let (c, k) = (self.c, self.d.k);
        Ok(match self.kind {
            RowsKind::Permute => {
                let sa = indices(&self.d.slot_assign, op, "slot_assign")?;
                cpu::gather_rows(x, None, &sa, c, k)
            }
            RowsKind::PermuteGrad => {
                cpu::sum_slots(x, None, &indices(&self.d.slot_of, op, "slot_of")?, c, k)
            }
            RowsKind::CombineGrad => {
                let w = self
                    .weights
                    .as_ref()
                    .ok_or_else(|| candle_core::Error::Msg("moe combine: weights missing".into()))?
                    .flatten_all()?
                    .to_vec1::<T>()?;
                let sa = indices(&self.d.slot_assign, op, "slot_assign")?;
                cpu::gather_rows(x, Some(&w), &sa, c, k)
            }
        })
    }
}

impl CustomOp1 for Rows {
    fn name(&self) -> &'static str {
        "moe-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.cpu::<f32>(s, l)?),
            CpuStorage::F64(_) => CpuStorage::F64(self.cpu::<f64>(s, l)?),
            _ => candle_core::bail!("moe rows: CPU inputs must be f32 or f64 here"),
        };
        Ok((out, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::rows(self.kind, (s, l), &self.d, self.weights.as_ref(), self.c)?;
        Ok((out, self.out_shape()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.kind != RowsKind::Permute {
            candle_core::bail!("moe rows: only the permutation has a backward here")
        }
        let dy = dy.contiguous()?;
        let op = Rows {
            kind: RowsKind::PermuteGrad,
            ..self.clone()
        };
        Ok(Some(dy.apply_op1_no_bwd(&op)?))
    }
}

/// `out = sum_j w y[slot]` (forward) with its backward.
#[derive(Clone)]
struct Combine {
    d: Dispatch,
    c: usize,
}

impl CustomOp2 for Combine {
    fn name(&self) -> &'static str {
        "moe-combine"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        ly: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let so = indices(&self.d.slot_of, "moe combine", "slot_of")?;
        let (c, k) = (self.c, self.d.k);
        fn sum<T: Real + candle_core::WithDType>(
            (y, ly): (&CpuStorage, &Layout),
            (w, lw): (&CpuStorage, &Layout),
            so: &[u32],
            (c, k): (usize, usize),
        ) -> candle_core::Result<Vec<T>> {
            let y = cpu_data::<T>(y, ly, "moe combine", "y")?;
            let w = cpu_data::<T>(w, lw, "moe combine", "weights")?;
            Ok(cpu::sum_slots(y, Some(w), so, c, k))
        }
        let out = match y {
            CpuStorage::F32(_) => CpuStorage::F32(sum::<f32>((y, ly), (w, lw), &so, (c, k))?),
            CpuStorage::F64(_) => CpuStorage::F64(sum::<f64>((y, ly), (w, lw), &so, (c, k))?),
            _ => candle_core::bail!("moe combine: CPU inputs must be f32 or f64 here"),
        };
        Ok((out, Shape::from((so.len() / k, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &candle_core::CudaStorage,
        ly: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::combine((y, ly), (w, lw), &self.d, self.c)?;
        let t = self.d.slot_of.elem_count() / self.d.k;
        Ok((out, Shape::from((t, self.c))))
    }

    fn bwd(
        &self,
        y: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dy, dw) = combine_grads(y, w, &self.d, dout)?;
        Ok((Some(dy), Some(dw)))
    }
}

/// The gradients `(dy, d weights)` of [`combine`] given `dout [T, C]`, for its inputs in the
/// dtypes the op used (`y` in the compute dtype, `w` as [`combine_saved`] returns it):
/// `dy[slot_of[t k + j]] = w[t, j] dout[t]`, `dw[t, j] = <dout[t], y[slot_of[t k + j]]>`.
pub(super) fn combine_grads(
    y: &Tensor,
    w: &Tensor,
    d: &Dispatch,
    dout: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let c = y.dim(1)?;
    let dout = dout.to_dtype(y.dtype())?.contiguous()?;
    let rows = Rows {
        kind: RowsKind::CombineGrad,
        d: d.clone(),
        weights: Some(w.clone()),
        c,
    };
    let dy = dout.apply_op1_no_bwd(&rows)?;
    let dw = match dout.device() {
        Device::Cpu => {
            let so = indices(&d.slot_of, "moe combine", "slot_of")?;
            let k = d.k;
            fn grad<T: Real + candle_core::WithDType>(
                dout: &Tensor,
                y: &Tensor,
                so: &[u32],
                (c, k): (usize, usize),
            ) -> candle_core::Result<Tensor> {
                let names = ["dout", "y"];
                with_cpu::<T, _, 2>("moe combine backward", [dout, y], names, |[d, y]| {
                    let w = cpu::combine_bwd_weights(d, y, so, c, k);
                    Ok(cpu_tensor(w, (so.len() / k, k)))
                })
            }
            match y.dtype() {
                DType::F32 => grad::<f32>(&dout, y, &so, (c, k))?,
                DType::F64 => grad::<f64>(&dout, y, &so, (c, k))?,
                dt => candle_core::bail!("moe combine backward: {dt:?} on the CPU"),
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::cuda::combine_weight_grad(&dout, y, d, c)?,
        _ => candle_core::bail!("moe combine backward: unsupported device"),
    };
    Ok((dy, dw))
}
