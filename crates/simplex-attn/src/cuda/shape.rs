//! What the 2-simplicial kernels take besides their buffers: the launch shape (`struct Shape`
//! of `kernels/common.cuh`) and the key/value sets in the kernels' order.

use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result};
use cudarc::driver::{CudaView, DeviceRepr};

use super::buffers::{typed_view, Element};
use crate::spec::{Dims, Windows};

/// The launch shape every 2-simplicial kernel takes by value; mirrors `struct Shape` in
/// `kernels/common.cuh` field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelShape {
    batch: i32,
    seq: i32,
    heads_q: i32,
    heads_kv: i32,
    d: i32,
    dv: i32,
    causal: i32,
    w1: i32,
    w2: i32,
    scale: f32,
}

// SAFETY: a #[repr(C)] struct of 4-byte plain values, the layout of `Shape` in common.cuh.
unsafe impl DeviceRepr for KernelShape {}

impl KernelShape {
    /// The shape of a call, after checking that the kernels' 32-bit row indices and grid
    /// dimensions hold it.
    pub(crate) fn new(dims: &Dims, win: &Windows, scale: f64) -> Result<KernelShape> {
        let (batch, seq, heads_q, heads_kv) = (dims.batch, dims.seq, dims.heads_q, dims.heads_kv);
        // The kernels index rows (b * N + i) * Hq + h in 32-bit ints and elements in 64-bit.
        if batch
            .checked_mul(seq)
            .and_then(|x| x.checked_mul(heads_q))
            .is_none_or(|x| x > i32::MAX as usize)
        {
            candle_core::bail!(
                "simplicial attention on CUDA: B * N * Hq = {batch} * {seq} * {heads_q} is over 2^31"
            );
        }
        if batch > 65535 || heads_kv > 65535 {
            candle_core::bail!(
                "simplicial attention on CUDA: batch {batch} and heads_kv {heads_kv} must be at most 65535"
            );
        }
        let i = |x: usize| x as i32; // in range: all are at most B * N * Hq or 256
        Ok(KernelShape {
            batch: i(batch),
            seq: i(seq),
            heads_q: i(heads_q),
            heads_kv: i(heads_kv),
            d: i(dims.d),
            dv: i(dims.dv),
            causal: i32::from(win.causal),
            w1: i(win.w1),
            w2: i(win.w2),
            scale: scale as f32,
        })
    }

    /// The shape in the kernels' orientation: windows exchanged when `exchange`
    /// ([`crate::kernels::dispatch::simplicial::exchange_sets`]).
    pub(crate) fn oriented(self, exchange: bool) -> KernelShape {
        if exchange {
            self.swapped()
        } else {
            self
        }
    }

    /// The same shape with the two key/value sets' windows exchanged.
    pub(crate) fn swapped(self) -> KernelShape {
        KernelShape {
            w1: self.w2,
            w2: self.w1,
            ..self
        }
    }
}

/// The two key (or value) sets in the kernels' order: (first, second) = (set 1, set 2), or
/// exchanged when `exchange`.
pub(crate) fn oriented<X>(exchange: bool, set1: X, set2: X) -> (X, X) {
    if exchange {
        (set2, set1)
    } else {
        (set1, set2)
    }
}

/// The contiguous data of a CUDA storage as a typed view of `len` elements.
pub(crate) fn view<'a, T: Element>(
    s: &'a CudaStorage,
    l: &Layout,
    name: &str,
    len: usize,
) -> Result<CudaView<'a, T>> {
    typed_view("simplicial attention", s, l, name, len)
}

/// Views of k1, k2 (`nk` elements each) and v1, v2 (`nv` each) in the kernels' order
/// ([`oriented`] by `exchange`): `[first k, second k, first v, second v]`.
pub(crate) fn key_value_views<'a, T: Element>(
    exchange: bool,
    [(k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)]: [(&'a CudaStorage, &'a Layout); 4],
    nk: usize,
    nv: usize,
) -> Result<[CudaView<'a, T>; 4]> {
    let (ka, kb) = oriented(
        exchange,
        view::<T>(k1, lk1, "k1", nk)?,
        view::<T>(k2, lk2, "k2", nk)?,
    );
    let (va, vb) = oriented(
        exchange,
        view::<T>(v1, lv1, "v1", nv)?,
        view::<T>(v2, lv2, "v2", nv)?,
    );
    Ok([ka, kb, va, vb])
}
