//! Launch of `kernels/simplicial_fwd.cu`: o `[B,N,Hq,Dv]` and lse `[B,N,Hq]` from q, k1, k2,
//! v1, v2.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result, Shape};

use super::module::{self, Family};
use super::{
    blocks, check_smem, exchange_sets, key_value_views, launch_config, variant, view, width, Elem,
    Element, KernelShape,
};
use crate::op::SimplicialOp;

/// Rows (query, head) per block; must match `RB` in simplicial_fwd.cu.
const ROWS_PER_BLOCK: usize = 16;
/// Window-2 keys per shared-memory tile; must match `TK` in simplicial_fwd.cu.
const KEYS_PER_TILE: usize = 64;
const THREADS: u32 = 256;

/// Dynamic shared memory of one block, in bytes (the layout in simplicial_fwd.cu's header).
fn smem_bytes(d: usize, dv: usize) -> usize {
    let floats = KEYS_PER_TILE * (d | 1)
        + KEYS_PER_TILE * dv
        + 2 * ROWS_PER_BLOCK * d
        + ROWS_PER_BLOCK * KEYS_PER_TILE;
    4 * floats
}

/// The forward on CUDA: returns o in the input dtype and saves lse (f32) in the op.
/// `inputs`: the storages of q, k1, k2, v1, v2.
pub(crate) fn forward(
    op: &SimplicialOp,
    inputs: [(&CudaStorage, &Layout); 5],
) -> Result<(CudaStorage, Shape)> {
    let dtype = inputs[0].0.dtype();
    if super::forward_wgmma::covers(op, dtype) && super::tensor_core_kernels() {
        return super::forward_wgmma::forward(op, inputs);
    }
    match Elem::of(dtype)? {
        Elem::Bf16 => forward_typed::<half::bf16>(op, inputs),
        Elem::F32 => forward_typed::<f32>(op, inputs),
    }
}

fn forward_typed<T: Element>(
    op: &SimplicialOp,
    [(q, lq), (k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)]: [(&CudaStorage, &Layout); 5],
) -> Result<(CudaStorage, Shape)> {
    let dims = op.dims;
    let (b, n, hq, hkv, d, dv) = (
        dims.batch,
        dims.seq,
        dims.heads_q,
        dims.heads_kv,
        dims.d,
        dims.dv,
    );
    let shape = KernelShape::new(&dims, &op.win, op.scale)?;
    let name = variant("simplicial_fwd", T::NAME, "dv", width(dv, "Dv")?);
    width(d, "D")?;
    let dev = q.device().clone();
    let kernel = module::kernel(&dev, Family::Forward, &name)?;
    let smem = smem_bytes(d, dv);
    check_smem(&name, smem, kernel.max_smem, d, dv)?;

    let nk = b * n * hkv * d;
    let nv = b * n * hkv * dv;
    let qv = view::<T>(q, lq, "q", b * n * hq * d)?;
    let ex = exchange_sets(&op.win);
    let [k1, k2, v1, v2] =
        key_value_views::<T>(ex, [(k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)], nk, nv)?;
    let cfg = launch_config(
        (
            blocks(n * (hq / hkv), ROWS_PER_BLOCK)?,
            hkv as u32,
            b as u32,
        ),
        THREADS,
        smem,
    );
    // SAFETY: simplicial_fwd_{T}_dv* takes (q, k1, k2, v1, v2, o, lse, Shape) of element type T;
    // `view` checked the element counts; the grid covers all N * G rows.
    unsafe {
        super::launch_forward(
            op,
            &dev,
            (&kernel.func, &name),
            cfg,
            &qv,
            [&k1, &k2, &v1, &v2],
            &shape.oriented(ex),
        )
    }
}
