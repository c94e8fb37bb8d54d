//! The shared-memory formulas of the kernels whose dynamic shared memory depends on the call
//! ([`Smem`] other than `Fixed`), with the tile constants they use (named as in the `.cu` files;
//! `tests/kernel_sources.rs` checks them there).

use super::table::Smem::{self, *};

/// The window-1 side of a call in the kernels' orientation (window 1 = the smaller window),
/// which sizes the offset walks' staged rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window1 {
    /// Sequence length.
    pub seq: usize,
    /// Width of the (smaller) window 1.
    pub w1: usize,
    /// Causal windows (else bidirectional).
    pub causal: bool,
}

/// Positions of the partners one block (or query tile) of `own_rows` rows of the offset walk
/// stages, forward or backward: its own positions widened by the window-1 span, at most the
/// sequence (`partner_positions` in kernels/offset_walk.cuh).
pub fn partner_positions(own_rows: usize, group: usize, win: Window1) -> usize {
    let own = (own_rows - 1) / group + 2;
    let span = if win.causal { win.w1 } else { 2 * win.w1 - 1 };
    (own + span - 1).min(win.seq)
}

/// What the shared-memory formulas read of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmemArgs {
    /// D, the head dim of q and k.
    pub d: usize,
    /// Dv, the head dim of v.
    pub dv: usize,
    /// The kernel's width class (the CUDA-core dot-product kernels).
    pub width: usize,
    /// G = Hq / Hkv.
    pub group: usize,
    /// Window 1 in the kernels' orientation.
    pub window1: Window1,
}

/// Window-2 keys per tile of the CUDA-core forward and dq kernels (`TK`).
pub const CORE_KEYS: usize = 64;
/// Rows per block of the CUDA-core forward and dq kernels (`RB`).
pub const CORE_ROWS: usize = 16;
/// Owned keys per block (`KB`) and streamed rows per batch (`RS`) of the CUDA-core dk/dv kernel.
pub const DKV_KEYS: usize = 32;
/// See [`DKV_KEYS`].
pub const DKV_ROWS: usize = 32;
/// Rows per warpgroup of the tensor-core kernels (`ROWS`, wgmma M) and keys per tile (`TK`).
pub const WG_ROWS: usize = 64;
/// Offsets per flush of the qk1 pass's key sums (`Qk1Layout::CHUNK`).
pub const QK1_CHUNK: usize = 16;
/// Warps per block of the CUDA-core dot-product kernels (`WARPS` in dot_attn_simple.cu).
pub const SIMPLE_WARPS: usize = 4;

impl Smem {
    /// Bytes for a call.
    pub fn bytes(self, a: &SmemArgs) -> usize {
        let (d, dv) = (a.d, a.dv);
        let padded = (d + 8) * 2; // one bf16 row padded by 16 bytes
        match self {
            Zero => 0,
            Fixed(n) => n,
            CoreForward => {
                4 * (CORE_KEYS * (d | 1)
                    + CORE_KEYS * dv
                    + 2 * CORE_ROWS * d
                    + CORE_ROWS * CORE_KEYS)
            }
            CoreDq => {
                4 * (CORE_KEYS * (d | 1)
                    + CORE_KEYS * (dv | 1)
                    + 2 * CORE_ROWS * d
                    + 2 * CORE_ROWS * dv
                    + CORE_ROWS * CORE_KEYS)
            }
            CoreDkv => {
                let floats = DKV_KEYS * (d | 1)
                    + DKV_KEYS * (dv | 1)
                    + DKV_ROWS * (d + dv)
                    + 2 * DKV_ROWS * (DKV_KEYS + 1)
                    + 2 * DKV_ROWS;
                4 * floats + DKV_ROWS * (8 + 3 * 4)
            }
            OffsetsForward => {
                let rows = partner_positions(2 * WG_ROWS, a.group, a.window1);
                4 * WG_ROWS * d * 2 + 2 * rows * padded + 1024
            }
            OffsetsQk1 => {
                // three K2/V2 tile buffers, (A_o, B_o) per warpgroup, the block's q and dout
                // rows, its window-1 k1 and v1 rows, per warpgroup f32 dk1 / dv1 sums for the
                // keys of CHUNK offsets
                let rows = WG_ROWS;
                let tiles = 3 * 2 * WG_ROWS * d * 2;
                let operands = 2 * 2 * rows * d * 2;
                let own = 2 * rows * padded;
                let partners = 2 * partner_positions(rows, a.group, a.window1) * padded;
                let sums = 2 * 2 * ((rows / a.group).max(1) + QK1_CHUNK - 1) * d * 4;
                tiles + operands + own + partners + sums + 1024
            }
            OffsetsK2 => {
                // two (A_o, B_o) buffers, two staging buffers of a query tile's q, dout rows,
                // window-1 rows, lse and delta
                let rows = partner_positions(WG_ROWS, a.group, a.window1);
                let ops = 4 * WG_ROWS * d * 2;
                let stage = 2 * WG_ROWS * padded + 2 * rows * padded + 2 * WG_ROWS * 4;
                ops + 2 * stage + 1024
            }
            SimpleRows(rows) => SIMPLE_WARPS * rows * a.width * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(d: usize, group: usize, window1: Window1) -> SmemArgs {
        SmemArgs {
            d,
            dv: d,
            width: d,
            group,
            window1,
        }
    }

    #[test]
    fn offset_walk_shared_memory_follows_its_layouts() {
        let lm = Window1 {
            seq: 1024,
            w1: 32,
            causal: true,
        };
        // the qk1 pass: 3 tile buffers, 2 x (A_o, B_o), 64 q and dout rows, 63 + 2 + 31
        // window-1 rows (144 bytes each), 2 x 2 x (64 + 15) rows of f32 key sums
        let fixed = 3 * 2 * 64 * 64 * 2 + 4 * 64 * 64 * 2 + 2 * 64 * 72 * 2;
        assert_eq!(
            OffsetsQk1.bytes(&args(64, 1, lm)),
            fixed + 2 * 96 * 72 * 2 + 4 * 79 * 64 * 4 + 1024
        );
        // short sequences stage at most the sequence
        let short = Window1 { seq: 10, ..lm };
        assert_eq!(
            OffsetsQk1.bytes(&args(64, 1, short)),
            fixed + 2 * 10 * 72 * 2 + 4 * 79 * 64 * 4 + 1024
        );
        // the k2 pass: A_o / B_o x 2 buffers, two stages of 64 rows + 63 + 2 + 31 window-1 rows
        assert_eq!(
            OffsetsK2.bytes(&args(64, 1, lm)),
            4 * 64 * 64 * 2 + 2 * (2 * 64 * 72 * 2 + 2 * 96 * 72 * 2 + 512) + 1024
        );
        // the forward: K2, V2 tiles x 2 buffers, 127 + 2 + 31 window-1 rows of k1 and v1
        assert_eq!(
            OffsetsForward.bytes(&args(64, 1, lm)),
            4 * 64 * 64 * 2 + 2 * 160 * 72 * 2 + 1024
        );
        // bidirectional: the span is 2 w1 - 1
        let bi = Window1 {
            causal: false,
            ..lm
        };
        assert_eq!(partner_positions(64, 1, bi), 63 + 2 + 63 - 1);
        assert_eq!(partner_positions(64, 64, lm), 2 + 31);
    }

    #[test]
    fn cuda_core_shared_memory_follows_the_file_headers() {
        let a = |d, dv| SmemArgs {
            d,
            dv,
            width: 0,
            group: 1,
            window1: Window1 {
                seq: 1,
                w1: 1,
                causal: true,
            },
        };
        // simplicial_fwd.cu's header: 84 KiB at D = Dv = 128, 164 KiB at 256
        assert_eq!(CoreForward.bytes(&a(128, 128)), 86_272);
        assert_eq!(CoreForward.bytes(&a(256, 256)) / 1024, 164);
        assert_eq!(
            SimpleRows(2).bytes(&SmemArgs {
                width: 256,
                ..a(1, 1)
            }),
            8192
        );
        assert_eq!(Fixed(7).bytes(&a(1, 1)), 7);
    }
}
