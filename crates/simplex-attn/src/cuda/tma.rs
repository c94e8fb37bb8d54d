//! TMA tensor maps for the kernels that load through them ([`crate::kernels::tma`] says which,
//! and lays the map out): encoded by the driver (`cuTensorMapEncodeTiled`) for one call's
//! buffer, passed to the kernel by value (`const __grid_constant__ TensorMap` in
//! `kernels/tma.cuh`).

use candle_core::Result;
use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaStream, CudaView, DevicePtr, DeviceRepr};

use crate::kernels::tma::RowsMap;

/// An encoded tensor map, a kernel argument.
#[repr(transparent)]
pub(crate) struct TensorMap(sys::CUtensorMap);

// SAFETY: the driver's 128-byte CUtensorMap, which the kernels take by value as `TensorMap`
// (kernels/tma.cuh: the same 128 bytes, 64-byte aligned).
unsafe impl DeviceRepr for TensorMap {}

/// The map of `rows` (contiguous `[b, n, h, d]` bf16) with boxes of `box_rows` positions x 64
/// columns, 128-byte swizzled (the wgmma operand layout), rows past N read as zeros; an error
/// where `T` is not a 2-byte element or the view holds another count.
pub(crate) fn bf16_rows<T>(
    stream: &CudaStream,
    rows: &CudaView<'_, T>,
    bnhd: [usize; 4],
    box_rows: usize,
) -> Result<TensorMap> {
    let m = RowsMap::new(bnhd, box_rows)?;
    if std::mem::size_of::<T>() != 2 || rows.len() != bnhd.iter().product::<usize>() {
        candle_core::bail!(
            "TMA rows map of {bnhd:?}: a view of {} elements of {} bytes",
            rows.len(),
            std::mem::size_of::<T>()
        );
    }
    let (ptr, _sync) = rows.device_ptr(stream);
    let elem_strides = [1u32; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: `map` is written by the call; the arrays hold the rank's 4 (3 for the strides)
    // entries; `ptr` is the view's device address, 16-byte aligned (the dispatch takes the TMA
    // kernels only for aligned inputs), and `m` describes at most the view's elements.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            4,
            ptr as *mut std::ffi::c_void,
            m.dims.as_ptr(),
            m.strides.as_ptr(),
            m.boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| candle_core::Error::Msg(format!("cuTensorMapEncodeTiled for {m:?}: {e}")))?;
        Ok(TensorMap(map.assume_init()))
    }
}
