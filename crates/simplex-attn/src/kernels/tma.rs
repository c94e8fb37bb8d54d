//! The TMA tensor maps the persistent dot-product kernels load through (`kernels/tma.cuh`):
//! which kernels take them, and their layouts, as pure values tested without a GPU. The
//! forward and dq kernels load K and V (`produce_kv` in `kernels/dot_attn_wgmma.cuh`), the
//! forward also its blocks of q's rows (`QTile` in `kernels/dot_attn_fwd_wgmma.cu`); the
//! dk/dv kernel loads the rows of q and dout and their (lse log2 e, delta) pairs
//! (`produce_rows_tma` in `kernels/dot_attn_bwd_wgmma.cu`). The CUDA side (`crate::cuda::tma`)
//! hands a [`RowsMap`] or a [`PairsMap`] to the driver's `cuTensorMapEncodeTiled`.

use super::table::Kernel;
use crate::AttnError;

/// Columns per box: 64 bf16 = 128 bytes, the span of the 128-byte swizzle (one wgmma atom).
pub const BOX_COLS: usize = 64;

/// Rows of the row space (query, head) per step of the dk/dv kernel (`TQ` in
/// `kernels/dot_attn_wgmma.cuh`), and the padding of the pairs' buffer.
pub const DKV_STEP_ROWS: usize = 64;

/// The largest box edge a tensor map allows.
const MAX_BOX: usize = 256;

/// The layout of a tensor map over `[B, N, H, D]` bf16 rows, for loads of `box_heads`
/// consecutive heads x `box_rows` consecutive positions of one batch, 64 of their columns: the
/// driver's arguments, innermost dimension first. In shared memory a box lands as its
/// `box_rows * box_heads` rows of 128 bytes, the heads of a position adjacent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsMap {
    /// Sizes of (D, H, N, B).
    pub dims: [u64; 4],
    /// Bytes between consecutive heads, positions and batches (the innermost stride is the
    /// element's 2 bytes, implied).
    pub strides: [u64; 3],
    /// The box: (64 columns, `box_heads` heads, `box_rows` positions, 1 batch).
    pub boxes: [u32; 4],
}

impl RowsMap {
    /// The map over contiguous `[b, n, h, d]` bf16 rows with boxes of `box_heads` heads x
    /// `box_rows` positions; an error naming the limit a shape breaks (the kernels that take
    /// maps have D = 64 or 128, and the CUDA launch code bounds B * N * H before).
    pub fn new(
        [b, n, h, d]: [usize; 4],
        box_heads: usize,
        box_rows: usize,
    ) -> Result<RowsMap, AttnError> {
        if b == 0 || n == 0 || h == 0 || d == 0 || d % BOX_COLS != 0 {
            return Err(AttnError::Shape(format!(
                "TMA rows map: [B, N, H, D] = [{b}, {n}, {h}, {d}] needs every size positive \
                 and D a multiple of {BOX_COLS}"
            )));
        }
        if box_rows == 0 || box_rows > MAX_BOX || box_heads == 0 || box_heads > h.min(MAX_BOX) {
            return Err(AttnError::Config(format!(
                "TMA rows map: a box of {box_heads} heads x {box_rows} rows (1 to {MAX_BOX} \
                 rows, 1 to H = {h} heads)"
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
            boxes: [BOX_COLS as u32, box_heads as u32, box_rows as u32, 1],
        })
    }
}

/// Rows per (batch, K/V head) of the backward's pairs buffer: the `Nq * G` rows of the row
/// space padded to a multiple of [`DKV_STEP_ROWS`].
pub fn pairs_rows(seq_q: usize, group: usize) -> usize {
    (seq_q * group).div_ceil(DKV_STEP_ROWS) * DKV_STEP_ROWS
}

/// The layout of the tensor map over the backward's pairs buffer `[B, Hkv, rows, 2]` f32
/// (rows: [`pairs_rows`], of which the first `Nq * G` are written: reads past them land as
/// zeros), for loads of one step's [`DKV_STEP_ROWS`] pairs: the driver's arguments, innermost
/// dimension first, the pairs flattened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairsMap {
    /// Sizes of (2 Nq G, Hkv, B).
    pub dims: [u64; 3],
    /// Bytes between consecutive heads and batches.
    pub strides: [u64; 2],
    /// The box: (2 [`DKV_STEP_ROWS`] floats, 1 head, 1 batch).
    pub boxes: [u32; 3],
}

impl PairsMap {
    /// The map for `batch` x `heads_kv` groups of `seq_q * group` rows; an error naming the
    /// limit a shape breaks.
    pub fn new(
        batch: usize,
        heads_kv: usize,
        seq_q: usize,
        group: usize,
    ) -> Result<PairsMap, AttnError> {
        let rows = seq_q * group;
        if batch == 0 || heads_kv == 0 || rows == 0 {
            return Err(AttnError::Shape(format!(
                "TMA pairs map: B = {batch}, Hkv = {heads_kv}, Nq * G = {rows} must be positive"
            )));
        }
        let head = 8 * pairs_rows(seq_q, group) as u64; // bytes per (batch, K/V head)
        let strides = [head, head * heads_kv as u64];
        if 2 * rows as u64 > 1 << 32 || strides[1] >= 1 << 40 {
            return Err(AttnError::Shape(format!(
                "TMA pairs map: B = {batch}, Hkv = {heads_kv}, Nq * G = {rows} is past the \
                 tensor map's limits"
            )));
        }
        Ok(PairsMap {
            dims: [2 * rows as u64, heads_kv as u64, batch as u64],
            strides,
            boxes: [2 * DKV_STEP_ROWS as u32, 1, 1],
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

/// Rows of the row space per work block of the persistent forward (`CTA_ROWS` in
/// `kernels/dot_attn_wgmma.cuh`): the rows of its Q tile.
pub const FWD_BLOCK_ROWS: usize = 128;

/// The box (heads, positions) of q's map for the wgmma forward at GQA ratio `group`: a block's
/// [`FWD_BLOCK_ROWS`] rows as `group` heads x `FWD_BLOCK_ROWS / group` positions, where `group`
/// divides it; `None` (the consumers copy their rows with cp.async, and the map is not read)
/// otherwise or for another kernel. The kernel makes the same test (`QTile::tma`).
pub fn fwd_q_box(kernel: Kernel, group: usize) -> Option<(usize, usize)> {
    match kernel {
        Kernel::DotFwdWgmma { .. } => heads_by_positions(group, FWD_BLOCK_ROWS),
        _ => None,
    }
}

/// The box (heads, positions) of q's and dout's maps for the dk/dv kernels (split and fused)
/// at GQA ratio
/// `group`: a step's [`DKV_STEP_ROWS`] rows as `group` heads x `DKV_STEP_ROWS / group`
/// positions, where `group` divides it; `None` (the kernel copies rows with cp.async, and its
/// maps are not read) otherwise or for another kernel. The kernel makes the same test
/// (`TQ % G == 0` in `bwd_dkv`).
pub fn dkv_row_box(kernel: Kernel, group: usize) -> Option<(usize, usize)> {
    match kernel {
        Kernel::DotDkvWgmma { .. } | Kernel::DotBwdFused { .. } => {
            heads_by_positions(group, DKV_STEP_ROWS)
        }
        _ => None,
    }
}

/// `rows` consecutive rows of the row space (r = i G + hh) from a multiple of `rows`, as one
/// box of a rows map: `group` heads x `rows / group` positions, where `group` divides `rows`.
fn heads_by_positions(group: usize, rows: usize) -> Option<(usize, usize)> {
    (group > 0 && rows.is_multiple_of(group)).then(|| (group, rows / group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_map_of_the_lm_and_gqa_layouts() {
        // k of the D = 128 benchmark: [4, 4096, 8, 128]
        let m = RowsMap::new([4, 4096, 8, 128], 1, 128).unwrap();
        assert_eq!(m.dims, [128, 8, 4096, 4]);
        assert_eq!(m.strides, [256, 256 * 8, 256 * 8 * 4096]);
        assert_eq!(m.boxes, [64, 1, 128, 1]);
        // every stride a multiple of 16 bytes, as the driver requires
        let m = RowsMap::new([3, 77, 5, 64], 1, 64).unwrap();
        assert!(m.strides.iter().all(|s| s % 16 == 0), "{m:?}");
        assert_eq!(m.strides, [128, 640, 640 * 77]);
    }

    #[test]
    fn rows_map_errors_name_the_limit() {
        let e = RowsMap::new([1, 8, 1, 96], 1, 64).unwrap_err().to_string();
        assert!(e.contains("multiple of 64") && e.contains("96"), "{e}");
        let e = RowsMap::new([1, 0, 1, 64], 1, 64).unwrap_err().to_string();
        assert!(e.contains("positive"), "{e}");
        let e = RowsMap::new([1, 8, 1, 64], 1, 512).unwrap_err().to_string();
        assert!(e.contains("512 rows"), "{e}");
        let e = RowsMap::new([1, 1 << 31, 64, 128], 1, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2^40"), "{e}");
    }

    #[test]
    fn rows_map_of_a_gqa_step_spans_the_group() {
        // q of the D = 128 benchmark at G = 4: 4 heads x 16 positions = one 64-row step
        let m = RowsMap::new([4, 4096, 32, 128], 4, 16).unwrap();
        assert_eq!(m.dims, [128, 32, 4096, 4]);
        assert_eq!(m.boxes, [64, 4, 16, 1]);
        assert_eq!(m.strides, [256, 256 * 32, 256 * 32 * 4096]);
        let e = RowsMap::new([1, 8, 2, 64], 4, 16).unwrap_err().to_string();
        assert!(e.contains("4 heads") && e.contains("H = 2"), "{e}");
    }

    #[test]
    fn pairs_map_pads_rows_and_reads_zeros_past_the_last() {
        assert_eq!(pairs_rows(1, 1), 64);
        assert_eq!(pairs_rows(16, 4), 64);
        assert_eq!(pairs_rows(17, 4), 128);
        assert_eq!(pairs_rows(77, 3), 256);
        let m = PairsMap::new(2, 3, 77, 3).unwrap();
        // the written rows only, so a box past them lands as zeros
        assert_eq!(m.dims, [2 * 77 * 3, 3, 2]);
        assert_eq!(m.strides, [8 * 256, 8 * 256 * 3]);
        assert_eq!(m.boxes, [128, 1, 1]);
        // the box's inner bytes and every stride multiples of 16, as the driver requires
        assert!(m.strides.iter().all(|s| s % 16 == 0));
        assert_eq!(m.boxes[0] as usize * 4 % 16, 0);
        let e = PairsMap::new(1, 0, 8, 1).unwrap_err().to_string();
        assert!(e.contains("Hkv = 0"), "{e}");
    }

    #[test]
    fn the_dkv_kernel_loads_rows_through_maps_where_the_group_divides_a_step() {
        for d in [64, 128] {
            let k = Kernel::DotDkvWgmma { d };
            assert_eq!(dkv_row_box(k, 1), Some((1, 64)));
            assert_eq!(dkv_row_box(k, 4), Some((4, 16)));
            assert_eq!(dkv_row_box(k, 64), Some((64, 1)));
            for g in [3, 5, 6, 12, 128] {
                assert_eq!(dkv_row_box(k, g), None, "G = {g}");
            }
            assert_eq!(dkv_row_box(Kernel::DotDqWgmma { d }, 4), None);
            assert_eq!(dkv_row_box(Kernel::DotBwdFused { d }, 8), Some((8, 8)));
            assert_eq!(fwd_q_box(Kernel::DotDqWgmma { d }, 4), None);
        }
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

    #[test]
    fn the_forward_loads_q_blocks_through_its_map_where_the_group_divides_them() {
        let k = Kernel::DotFwdWgmma { d: 128 };
        assert_eq!(fwd_q_box(k, 1), Some((1, 128)));
        assert_eq!(fwd_q_box(k, 4), Some((4, 32)));
        assert_eq!(fwd_q_box(k, 128), Some((128, 1)));
        for g in [0, 3, 5, 6, 96, 256] {
            assert_eq!(fwd_q_box(k, g), None, "G = {g}");
        }
        // every box is a valid map of the benchmark's q
        let (heads, rows) = fwd_q_box(k, 4).unwrap();
        let m = RowsMap::new([4, 4096, 32, 128], heads, rows).unwrap();
        assert_eq!(m.boxes, [64, 4, 32, 1]);
    }
}
