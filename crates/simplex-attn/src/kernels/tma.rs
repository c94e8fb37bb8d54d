//! The TMA tensor maps the K / V loads of the persistent dot-product kernels read (forward and
//! dq: `produce_kv` in `kernels/dot_attn_wgmma.cuh`): which kernels take them, and the layout
//! of a map over `[B, N, H, D]` bf16 rows, as pure values tested without a GPU. The CUDA side
//! (`crate::cuda::tma`) hands a [`RowsMap`] to the driver's `cuTensorMapEncodeTiled`.

use super::table::Kernel;
use crate::AttnError;

/// Columns per box: 64 bf16 = 128 bytes, the span of the 128-byte swizzle (one wgmma atom).
pub const BOX_COLS: usize = 64;

/// The largest box edge a tensor map allows.
const MAX_BOX: usize = 256;

/// The layout of a tensor map over `[B, N, H, D]` bf16 rows, for loads of `box_rows`
/// consecutive positions of one (batch, head) and 64 of its columns: the driver's arguments,
/// innermost dimension first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsMap {
    /// Sizes of (D, H, N, B).
    pub dims: [u64; 4],
    /// Bytes between consecutive heads, positions and batches (the innermost stride is the
    /// element's 2 bytes, implied).
    pub strides: [u64; 3],
    /// The box: (64 columns, 1 head, `box_rows` positions, 1 batch).
    pub boxes: [u32; 4],
}

impl RowsMap {
    /// The map over contiguous `[b, n, h, d]` bf16 rows with boxes of `box_rows` positions; an
    /// error naming the limit a shape breaks (the kernels that take maps have D = 64 or 128, and
    /// the CUDA launch code bounds B * N * H before).
    pub fn new([b, n, h, d]: [usize; 4], box_rows: usize) -> Result<RowsMap, AttnError> {
        if b == 0 || n == 0 || h == 0 || d == 0 || d % BOX_COLS != 0 {
            return Err(AttnError::Shape(format!(
                "TMA rows map: [B, N, H, D] = [{b}, {n}, {h}, {d}] needs every size positive \
                 and D a multiple of {BOX_COLS}"
            )));
        }
        if box_rows == 0 || box_rows > MAX_BOX {
            return Err(AttnError::Config(format!(
                "TMA rows map: a box of {box_rows} rows (1 to {MAX_BOX})"
            )));
        }
        let row = 2 * d as u64; // bytes per (position, head)
        let strides = [row, row * h as u64, row * h as u64 * n as u64];
        // the driver's limits: sizes up to 2^32, strides multiples of 16 below 2^40
        if [b, n, h, d].iter().any(|&x| x as u64 > 1 << 32) || strides[2] >= 1 << 40 {
            return Err(AttnError::Shape(format!(
                "TMA rows map: [B, N, H, D] = [{b}, {n}, {h}, {d}] is past the tensor map's \
                 limits (sizes up to 2^32, N * H * D * 2 bytes under 2^40)"
            )));
        }
        Ok(RowsMap {
            dims: [d as u64, h as u64, n as u64, b as u64],
            strides,
            boxes: [BOX_COLS as u32, 1, box_rows as u32, 1],
        })
    }
}

/// Keys per box of the kernels whose K and V come in through tensor maps (passed after the
/// shape, K's then V's); `None` for the others.
pub fn kv_map_rows(kernel: Kernel) -> Option<usize> {
    match kernel {
        // TK of dot_attn_fwd_wgmma.cu, TKQ of dot_attn_bwd_wgmma.cu
        Kernel::DotFwdWgmma { .. } => Some(128),
        Kernel::DotDqWgmma { .. } => Some(64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_of_the_lm_and_gqa_layouts() {
        // k of the D = 128 benchmark: [4, 4096, 8, 128]
        let m = RowsMap::new([4, 4096, 8, 128], 128).unwrap();
        assert_eq!(m.dims, [128, 8, 4096, 4]);
        assert_eq!(m.strides, [256, 256 * 8, 256 * 8 * 4096]);
        assert_eq!(m.boxes, [64, 1, 128, 1]);
        // every stride a multiple of 16 bytes, as the driver requires
        let m = RowsMap::new([3, 77, 5, 64], 64).unwrap();
        assert!(m.strides.iter().all(|s| s % 16 == 0), "{m:?}");
        assert_eq!(m.strides, [128, 640, 640 * 77]);
    }

    #[test]
    fn rows_map_errors_name_the_limit() {
        let e = RowsMap::new([1, 8, 1, 96], 64).unwrap_err().to_string();
        assert!(e.contains("multiple of 64") && e.contains("96"), "{e}");
        let e = RowsMap::new([1, 0, 1, 64], 64).unwrap_err().to_string();
        assert!(e.contains("positive"), "{e}");
        let e = RowsMap::new([1, 8, 1, 64], 512).unwrap_err().to_string();
        assert!(e.contains("512 rows"), "{e}");
        let e = RowsMap::new([1, 1 << 31, 64, 128], 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2^40"), "{e}");
    }

    #[test]
    fn the_persistent_row_kernels_take_kv_maps() {
        for d in [64, 128] {
            assert_eq!(kv_map_rows(Kernel::DotDqWgmma { d }), Some(64));
            assert_eq!(kv_map_rows(Kernel::DotDkvWgmma { d }), None);
        }
        assert_eq!(kv_map_rows(Kernel::DotFwdWgmma { d: 128 }), Some(128));
        assert_eq!(kv_map_rows(Kernel::DotFwd { d: 64 }), None);
    }
}
