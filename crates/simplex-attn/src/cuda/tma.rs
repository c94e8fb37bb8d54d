//! TMA tensor maps for the kernels that load through them ([`crate::kernels::tma`] says which,
//! and lays the maps out): encoded by the driver (`cuTensorMapEncodeTiled`) for one call's
//! buffer, passed to the kernel by value (`const __grid_constant__ TensorMap` in
//! `kernels/tma.cuh`).

use candle_core::Result;
use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaStream, CudaView, DevicePtr, DeviceRepr};

use crate::kernels::tma::{PairsMap, RowsMap};

/// An encoded tensor map, a kernel argument.
#[repr(transparent)]
pub(crate) struct TensorMap(sys::CUtensorMap);

// SAFETY: the driver's 128-byte CUtensorMap, which the kernels take by value as `TensorMap`
// (kernels/tma.cuh: the same 128 bytes, 64-byte aligned).
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// A map of no tensor (all bytes zero), for a kernel parameter the kernel does not read
    /// at this shape (the dk/dv kernel's row maps where it copies rows with cp.async).
    pub(crate) fn unused() -> TensorMap {
        TensorMap(sys::CUtensorMap { opaque: [0; 16] })
    }
}

/// The map of `rows` (contiguous `[b, n, h, d]` bf16) with boxes of `box_heads` heads x
/// `box_rows` positions x 64 columns, 128-byte swizzled (the wgmma operand layout), rows past N
/// read as zeros; an error where `T` is not a 2-byte element or the view holds another count.
pub(crate) fn bf16_rows<T>(
    stream: &CudaStream,
    rows: &CudaView<'_, T>,
    bnhd: [usize; 4],
    (box_heads, box_rows): (usize, usize),
) -> Result<TensorMap> {
    let m = RowsMap::new(bnhd, box_heads, box_rows)?;
    if std::mem::size_of::<T>() != 2 || rows.len() != bnhd.iter().product::<usize>() {
        candle_core::bail!(
            "TMA rows map of {bnhd:?}: a view of {} elements of {} bytes",
            rows.len(),
            std::mem::size_of::<T>()
        );
    }
    let (ptr, _sync) = rows.device_ptr(stream);
    // SAFETY: the view holds the product of `m.dims` elements of 2 bytes, which the strides
    // describe contiguously; its start is 16-byte aligned (the dispatch takes the TMA kernels
    // only for aligned inputs).
    unsafe {
        encode(
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            ptr,
            (&m.dims, &m.strides, &m.boxes),
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            &m,
        )
    }
}

/// The map of the backward's pairs buffer (f32 `[batch, heads_kv, pairs_rows, 2]`, see
/// [`PairsMap`]), unswizzled; an error where the view holds another count.
pub(crate) fn f32_pairs(
    stream: &CudaStream,
    pairs: &CudaView<'_, f32>,
    [batch, heads_kv, seq_q, group]: [usize; 4],
) -> Result<TensorMap> {
    let m = PairsMap::new(batch, heads_kv, seq_q, group)?;
    let len = batch * heads_kv * crate::kernels::tma::pairs_rows(seq_q, group) * 2;
    if pairs.len() != len {
        candle_core::bail!(
            "TMA pairs map of B = {batch}, Hkv = {heads_kv}, Nq = {seq_q}, G = {group}: a view of \
             {} floats, not {len}",
            pairs.len()
        );
    }
    let (ptr, _sync) = pairs.device_ptr(stream);
    // SAFETY: the view holds B * Hkv groups of `pairs_rows` pairs, of which the map reads the
    // first 2 Nq G floats of each at the strides of that layout; candle's buffers are 256-byte
    // aligned and the view starts at its buffer's start.
    unsafe {
        encode(
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            ptr,
            (&m.dims, &m.strides, &m.boxes),
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            &m,
        )
    }
}

/// Encodes a tiled map of rank `dims.len()` (`strides`: one fewer, in bytes; element strides
/// 1), no interleave, zeros out of bounds; an error names `layout` (the map's description).
///
/// # Safety
/// `ptr` is a device address, 16-byte aligned, of a tensor that holds every element the dims
/// and strides describe.
unsafe fn encode(
    dtype: CUtensorMapDataType,
    ptr: u64,
    (dims, strides, boxes): (&[u64], &[u64], &[u32]),
    swizzle: CUtensorMapSwizzle,
    layout: &dyn std::fmt::Debug,
) -> Result<TensorMap> {
    debug_assert!(strides.len() + 1 == dims.len() && boxes.len() == dims.len());
    let elem_strides = [1u32; 5];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: `map` is written by the call; the arrays hold the rank's entries (one fewer for
    // the strides); the rest is this function's contract.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            dims.len() as u32,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| {
            candle_core::Error::Msg(format!("cuTensorMapEncodeTiled for {layout:?}: {e}"))
        })?;
        Ok(TensorMap(map.assume_init()))
    }
}
