//! Launch code of the MoE kernels (`kernels/moe.cu`): routing tables, row moves and grouped
//! products, element types bf16 and f32 (symbol suffix `_bf16`, `_f32`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{Dispatch, GmmKind};
use crate::cuda::module::Family;
use crate::cuda::{cuda_err, output};
use crate::fused::cuda::{addr, tensor_addr};

/// Output tile of the tensor-core products (rows and columns; `BM` in `kernels/moe.cu`).
const MMA_TILE: usize = 128;
/// Their shared memory: 3 stages of two 128 x 64 bf16 tiles (`SMEM` in `kernels/moe.cu`,
/// which asserts the same value).
const MMA_SMEM: usize = 3 * 2 * 128 * 64 * 2;
const MMA_THREADS: u32 = 256;
/// Output tile of the CUDA-core products (`TS` in `kernels/moe.cu`), one thread per element.
const SIMT_TILE: usize = 16;

fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F32 => Ok("f32"),
        other => candle_core::bail!("{op} on CUDA: {other:?}; the kernels take bf16 or f32"),
    }
}

/// A fresh buffer of `len` elements of `dtype` (NaN- or all-ones-filled when the crate poisons
/// outputs).
fn alloc(dev: &CudaDevice, dtype: DType, len: usize, name: &str) -> Result<CudaStorage> {
    let stream = dev.cuda_stream();
    Ok(match dtype {
        DType::BF16 => {
            CudaStorage::wrap_cuda_slice(output::<half::bf16>(&stream, len, name)?, dev.clone())
        }
        DType::F32 => CudaStorage::wrap_cuda_slice(output::<f32>(&stream, len, name)?, dev.clone()),
        DType::U32 => CudaStorage::wrap_cuda_slice(index_table(dev, len, name)?, dev.clone()),
        other => candle_core::bail!("moe on CUDA: cannot allocate {other:?}"),
    })
}

/// A zeroed u32 buffer (index tables are small; the kernels write every entry they own).
fn index_table(dev: &CudaDevice, len: usize, name: &str) -> Result<cudarc::driver::CudaSlice<u32>> {
    dev.cuda_stream()
        .alloc_zeros::<u32>(len.max(1))
        .map_err(|e| cuda_err(format!("allocating {name}"), e))
}

fn grid(x: usize, y: usize, z: usize, threads: u32, smem: usize) -> Result<LaunchConfig> {
    let dim = |v: usize| {
        u32::try_from(v.max(1))
            .map_err(|_| candle_core::Error::Msg(format!("moe: a grid of {v} blocks is too big")))
    };
    Ok(LaunchConfig {
        grid_dim: (dim(x)?, dim(y)?, dim(z)?),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

/// Loads `name` from `kernels/moe.cu` and launches it ([`crate::launch_in_family`]).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {
        crate::launch_in_family!(Family::Moe, $dev, $name, $cfg; $($arg),*)
    };
}

fn cuda_dev(t: &Tensor, op: &str) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("{op}: not on the CUDA device"),
    }
}

fn storage_tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(s),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("moe: {what} = {v} is too big")))
}

/// `[T, k]` u32 expert ids of `scores [T, E]` (f32, contiguous).
pub(crate) fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    let op = "moe top_k";
    let (t, e) = scores.dims2()?;
    let dev = cuda_dev(scores, op)?;
    let idx = index_table(&dev, t * k, "expert ids")?;
    let out = storage_tensor(CudaStorage::wrap_cuda_slice(idx, dev.clone()), (t, k));
    let (s, o) = (
        tensor_addr(scores, op, "scores")?,
        tensor_addr(&out, op, "ids")?,
    );
    let (ti, ei, ki) = (i32_of(t, "tokens")?, i32_of(e, "experts")?, i32_of(k, "k")?);
    launch!(&dev, "moe_topk", grid(t.div_ceil(128), 1, 1, 128, 0)?; &s, &o, &ti, &ei, &ki);
    Ok(out)
}

/// The routing tables of `idx [A]` (u32): `(slot_of, slot_assign, offsets, counts)`.
pub(crate) fn dispatch(
    idx: &Tensor,
    e: usize,
    cap: u32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let op = "moe dispatch";
    let dev = cuda_dev(idx, op)?;
    let a = idx.elem_count();
    let new = |len: usize, name: &str| -> Result<Tensor> {
        Ok(storage_tensor(alloc(&dev, DType::U32, len, name)?, len))
    };
    let (rank, counts, offsets) = (new(a, "rank")?, new(e, "counts")?, new(e + 1, "offsets")?);
    let (slot_of, slot_assign) = (new(a, "slot_of")?, new(a, "slot_assign")?);
    let p = |t: &Tensor, name: &str| tensor_addr(t, op, name);
    let (ip, rp, cp, op_) = (
        p(idx, "ids")?,
        p(&rank, "rank")?,
        p(&counts, "counts")?,
        p(&offsets, "offsets")?,
    );
    let (sop, sap) = (p(&slot_of, "slot_of")?, p(&slot_assign, "slot_assign")?);
    let (ai, ei) = (i32_of(a, "assignments")?, i32_of(e, "experts")?);
    launch!(&dev, "moe_rank", grid(e, 1, 1, 1024, 0)?; &ip, &rp, &cp, &ai);
    launch!(&dev, "moe_offsets", grid(1, 1, 1, 32, 0)?; &cp, &op_, &ei, &cap);
    launch!(&dev, "moe_slots", grid(a.div_ceil(256), 1, 1, 256, 0)?;
        &ip, &rp, &op_, &sop, &sap, &ai, &ei, &cap);
    Ok((slot_of, slot_assign, offsets, counts))
}

/// The arguments of `Gmm<T>` in `kernels/moe.cu`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GmmArgs {
    a: u64,
    b: u64,
    c: u64,
    offsets: u64,
    n_groups: i32,
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    pad: i32,
    b_group: i64,
    c_group: i64,
}

// SAFETY: a plain `repr(C)` struct of integers with the layout of the kernel's parameter.
unsafe impl DeviceRepr for GmmArgs {}

/// One grouped product (see [`GmmKind`]) as one cuBLAS product per expert that has rows
/// (`offsets` on the host), f32 accumulation; rows past `offsets[E]` and the weight gradient of
/// an expert without rows are zero-filled. Row-major `[r, c]` is column-major `[c, r]` to
/// cuBLAS, so each product is computed transposed:
///
/// ```text
/// Forward    y_e  = x_e W_e^T     ->  y_e^T  = op_T(W_e) x_e^T      (m = N, n = rows, k = K)
/// InputGrad  dx_e = dy_e W_e      ->  dx_e^T = W_e^T dy_e^T         (m = K, n = rows, k = N)
/// WeightGrad dW_e = dy_e^T x_e    ->  dW_e^T = x_e^T op_T(dy_e^T)   (m = K, n = N, k = rows)
/// ```
pub(crate) fn gmm_per_expert(
    kind: GmmKind,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    offsets: &[u32],
    m: usize,
    (n, k): (usize, usize),
) -> Result<CudaStorage> {
    use cudarc::cublas::sys::cudaDataType_t;
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t as Op};
    let op = "grouped_matmul (per expert)";
    let dev = a.device().clone();
    let dt = a.dtype();
    let data_type = match dt {
        DType::BF16 => cudaDataType_t::CUDA_R_16BF,
        DType::F32 => cudaDataType_t::CUDA_R_32F,
        other => candle_core::bail!("{op}: {other:?} is not bf16 or f32"),
    };
    super::check_offsets(op, offsets, m)?;
    let groups = offsets.len() - 1;
    let used = offsets[groups] as usize;
    let es = dt.size_in_bytes() as u64;
    let (ap, bp) = (addr(a, la, op, "a")?, addr(b, lb, op, "b")?);
    let out_len = kind.out_shape(m, groups, (n, k)).elem_count();
    let c = alloc(&dev, dt, out_len, "grouped product")?;
    let cp = addr(&c, &Layout::contiguous(out_len), op, "out")?;
    let stream = dev.cuda_stream();
    let zero = |at: u64, elems: usize| -> Result<()> {
        if elems == 0 {
            return Ok(());
        }
        // SAFETY: `at .. at + elems * es` lies inside the output allocated above, on its stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(at, 0, elems * es as usize, stream.cu_stream())
        }
        .map_err(|e| cuda_err(op, e))
    };
    let blas = dev.cublas_handle();
    let (one, nothing) = (1f32, 0f32);
    for e in 0..groups {
        let (r0, rows) = (offsets[e] as usize, (offsets[e + 1] - offsets[e]) as usize);
        let w_e = (e * n * k) as u64 * es;
        // (transa, transb, m, n, k, A, lda, B, ldb, C, ldc)
        let call = match kind {
            GmmKind::Forward if rows > 0 => Some((
                Op::CUBLAS_OP_T,
                Op::CUBLAS_OP_N,
                n,
                rows,
                k,
                bp + w_e,
                k,
                ap + (r0 * k) as u64 * es,
                k,
                cp + (r0 * n) as u64 * es,
                n,
            )),
            GmmKind::InputGrad if rows > 0 => Some((
                Op::CUBLAS_OP_N,
                Op::CUBLAS_OP_N,
                k,
                rows,
                n,
                bp + w_e,
                k,
                ap + (r0 * n) as u64 * es,
                n,
                cp + (r0 * k) as u64 * es,
                k,
            )),
            GmmKind::WeightGrad if rows > 0 => Some((
                Op::CUBLAS_OP_N,
                Op::CUBLAS_OP_T,
                k,
                n,
                rows,
                bp + (r0 * k) as u64 * es,
                k,
                ap + (r0 * n) as u64 * es,
                n,
                cp + w_e,
                k,
            )),
            GmmKind::WeightGrad => {
                zero(cp + w_e, n * k)?;
                None
            }
            _ => None,
        };
        let Some((ta, tb, mm, nn, kk, pa, lda, pb, ldb, pc, ldc)) = call else {
            continue;
        };
        // SAFETY: every pointer is inside its buffer for the extents given (the offsets were
        // checked against the rows above; each expert's weight block is n * k elements), the
        // handle runs on the device's stream, and alpha/beta are f32 for the f32 compute type.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                ta,
                tb,
                i32_of(mm, "m")?,
                i32_of(nn, "n")?,
                i32_of(kk, "k")?,
                (&one) as *const f32 as *const _,
                pa as *const _,
                data_type,
                i32_of(lda, "lda")?,
                pb as *const _,
                data_type,
                i32_of(ldb, "ldb")?,
                (&nothing) as *const f32 as *const _,
                pc as *mut _,
                data_type,
                i32_of(ldc, "ldc")?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("{op}: cuBLAS: {e:?}")))?;
    }
    match kind {
        GmmKind::Forward => zero(cp + (used * n) as u64 * es, (m - used) * n)?,
        GmmKind::InputGrad => zero(cp + (used * k) as u64 * es, (m - used) * k)?,
        GmmKind::WeightGrad => {}
    }
    Ok(c)
}

/// One grouped product (see [`GmmKind`]): `a`, `b` as the op gives them, `m` the rows of the
/// grouped operand, `(n, k)` the dims of one expert's weight.
pub(crate) fn gmm(
    kind: GmmKind,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    offsets: &Tensor,
    m: usize,
    (n, k): (usize, usize),
) -> Result<CudaStorage> {
    let op = "grouped_matmul";
    let dev = a.device().clone();
    let dt = a.dtype();
    let sfx = suffix(dt, op)?;
    let groups = offsets.elem_count() - 1;
    let (ap, bp) = (addr(a, la, op, "a")?, addr(b, lb, op, "b")?);
    let op_ = tensor_addr(offsets, op, "offsets")?;
    let expert = (n * k) as i64;
    let out_len = kind.out_shape(m, groups, (n, k)).elem_count();
    let (rows, cols, inner, lda, ldb, ldc) = match kind {
        GmmKind::Forward => (m, n, k, k, k, n),
        GmmKind::InputGrad => (m, k, n, n, k, k),
        GmmKind::WeightGrad => (n, k, m, n, k, k),
    };
    let c = alloc(&dev, dt, out_len, "grouped product")?;
    let cp = addr(&c, &Layout::contiguous(out_len), op, "out")?;
    let args = GmmArgs {
        a: ap,
        b: bp,
        c: cp,
        offsets: op_,
        n_groups: i32_of(groups, "experts")?,
        m: i32_of(rows, "rows")?,
        n: i32_of(cols, "columns")?,
        k: i32_of(inner, "reduction")?,
        lda: i32_of(lda, "lda")?,
        ldb: i32_of(ldb, "ldb")?,
        ldc: i32_of(ldc, "ldc")?,
        pad: 0,
        b_group: if kind == GmmKind::WeightGrad {
            0
        } else {
            expert
        },
        c_group: if kind == GmmKind::WeightGrad {
            expert
        } else {
            0
        },
    };
    let tc =
        dt == DType::BF16 && n % 8 == 0 && k % 8 == 0 && [ap, bp, cp].iter().all(|p| p % 16 == 0);
    let name = match kind {
        GmmKind::Forward => "fwd",
        GmmKind::InputGrad => "dx",
        GmmKind::WeightGrad => "dw",
    };
    let (tile, threads, smem, symbol) = if tc {
        (
            MMA_TILE,
            MMA_THREADS,
            MMA_SMEM,
            format!("gmm_mma_{name}_bf16"),
        )
    } else {
        (SIMT_TILE, 256, 0, format!("gmm_simt_{name}_{sfx}"))
    };
    let cfg = match kind {
        GmmKind::WeightGrad => grid(
            cols.div_ceil(tile),
            rows.div_ceil(tile),
            groups,
            threads,
            smem,
        )?,
        _ => grid(
            cols.div_ceil(tile),
            m.div_ceil(tile) + groups + 1,
            1,
            threads,
            smem,
        )?,
    };
    launch!(&dev, symbol, cfg; &args);
    Ok(c)
}

/// A row move of one float tensor (see `RowsKind` in `ops.rs`).
pub(crate) fn rows(
    kind: super::ops::RowsKind,
    (s, l): (&CudaStorage, &Layout),
    d: &Dispatch,
    weights: Option<&Tensor>,
    c: usize,
) -> Result<CudaStorage> {
    use super::ops::RowsKind;
    let op = "moe rows";
    let dev = s.device().clone();
    let dt = s.dtype();
    let sfx = suffix(dt, op)?;
    let a = d.slot_of.elem_count();
    let t = a / d.k;
    let x = addr(s, l, op, "rows")?;
    let (ci, ki) = (i32_of(c, "width")?, i32_of(d.k, "k")?);
    let out_rows = if kind == RowsKind::PermuteGrad { t } else { a };
    let out = alloc(&dev, dt, out_rows * c, "rows")?;
    let o = addr(&out, &Layout::contiguous(out_rows * c), op, "out")?;
    let so = tensor_addr(&d.slot_of, op, "slot_of")?;
    let sa = tensor_addr(&d.slot_assign, op, "slot_assign")?;
    match kind {
        RowsKind::Permute => {
            let vec = i32::from(
                (c * dt.size_in_bytes()).is_multiple_of(16) && x % 16 == 0 && o % 16 == 0,
            );
            launch!(&dev, format!("moe_permute_{sfx}"), grid(a, 1, 1, 128, 0)?;
                &x, &sa, &o, &ci, &ki, &vec);
        }
        RowsKind::PermuteGrad => {
            launch!(&dev, format!("moe_permute_bwd_{sfx}"), grid(t, 1, 1, 128, 0)?;
                &x, &so, &o, &ci, &ki);
        }
        RowsKind::CombineGrad => {
            let w = weights
                .ok_or_else(|| candle_core::Error::Msg("moe combine: weights missing".into()))?;
            let wp = tensor_addr(w, op, "weights")?;
            launch!(&dev, format!("moe_combine_bwd_rows_{sfx}"), grid(a, 1, 1, 128, 0)?;
                &x, &wp, &sa, &o, &ci, &ki);
        }
    }
    Ok(out)
}

/// `out [T, C] = sum_j w y[slot]` (`w` f32).
pub(crate) fn combine(
    (y, ly): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    d: &Dispatch,
    c: usize,
) -> Result<CudaStorage> {
    let op = "moe combine";
    let dev = y.device().clone();
    let dt = y.dtype();
    let sfx = suffix(dt, op)?;
    if w.dtype() != DType::F32 {
        candle_core::bail!("{op} on CUDA: the weights are {:?}, not f32", w.dtype())
    }
    let t = d.slot_of.elem_count() / d.k;
    let (yp, wp) = (addr(y, ly, op, "y")?, addr(w, lw, op, "weights")?);
    let so = tensor_addr(&d.slot_of, op, "slot_of")?;
    let out = alloc(&dev, dt, t * c, "combined rows")?;
    let o = addr(&out, &Layout::contiguous(t * c), op, "out")?;
    let (ci, ki) = (i32_of(c, "width")?, i32_of(d.k, "k")?);
    launch!(&dev, format!("moe_combine_{sfx}"), grid(t, 1, 1, 128, 0)?;
        &yp, &wp, &so, &o, &ci, &ki);
    Ok(out)
}

/// `dw [T, k]` (f32) of the combine: `dout[t] . y[slot_of[t k + j]]`.
pub(crate) fn combine_weight_grad(
    dout: &Tensor,
    y: &Tensor,
    d: &Dispatch,
    c: usize,
) -> Result<Tensor> {
    let op = "moe combine backward";
    let dev = cuda_dev(dout, op)?;
    let sfx = suffix(dout.dtype(), op)?;
    let a = d.slot_of.elem_count();
    let dw = storage_tensor(alloc(&dev, DType::F32, a, "weight grads")?, (a / d.k, d.k));
    let (dp, yp) = (tensor_addr(dout, op, "dout")?, tensor_addr(y, op, "y")?);
    let (so, wp) = (
        tensor_addr(&d.slot_of, op, "slot_of")?,
        tensor_addr(&dw, op, "dw")?,
    );
    let (ai, ci, ki) = (
        i32_of(a, "assignments")?,
        i32_of(c, "width")?,
        i32_of(d.k, "k")?,
    );
    launch!(&dev, format!("moe_combine_bwd_weights_{sfx}"), grid(a.div_ceil(8), 1, 1, 256, 0)?;
        &dp, &yp, &so, &wp, &ai, &ci, &ki);
    Ok(dw)
}
