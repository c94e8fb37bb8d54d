//! Which tensor-core backward kernels run a 2-simplicial call, with their block size and shared
//! memory: plain Rust, so it is tested without a GPU. The CUDA side mirrors the byte counts in
//! `QSmem` / `KSmem` (kernels/simplicial_bwd_mma.cu) and `QLayout` / `KLayout`
//! (kernels/simplicial_bwd_wgmma.cu); the launch code is `src/cuda/backward_mma.rs`.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

/// The kernel file a launch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelFile {
    /// `kernels/simplicial_bwd_mma.cu` (mma.sync; D in {32, 64, 96, 128}).
    Mma,
    /// `kernels/simplicial_bwd_wgmma.cu` (wgmma; D in {64, 128}).
    Wgmma,
    /// `kernels/simplicial_bwd_offsets.cu` (the offset walk's dq and dk1/dv1 passes; D = 64).
    Offsets,
    /// `kernels/simplicial_bwd_producer.cu` (dk2, dv2 with a producer warpgroup; D in {64,
    /// 128}, G a multiple of 64).
    Producer,
}

/// Rows per block of the q kernel and keys per block of the k kernel (`RB`, `TK`, `BLK`).
pub(crate) const BLOCK: usize = 64;
/// Window-1 rows per chunk in the mma.sync k kernel (`JK`).
const K_CHUNK: usize = 64;

/// Window-1 rows per chunk in the mma.sync q kernel (`q_chunk` in the kernel): the most that
/// keep two blocks per SM.
fn q_chunk(d: usize) -> usize {
    match d {
        0..=64 => 96,
        65..=96 => 64,
        _ => 48,
    }
}

/// One kernel launch of the backward: function name, source file, threads and dynamic shared
/// memory per block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Launch {
    pub(crate) name: String,
    pub(crate) file: KernelFile,
    pub(crate) threads: u32,
    pub(crate) smem: usize,
}

/// Which of the two tensor-core backward kernels (the q kernel: dq, dk1, dv1; the k kernel:
/// dk2, dv2) run on wgmma (`kernels/simplicial_bwd_wgmma.cu`, D in {64, 128}) instead of
/// mma.sync (`kernels/simplicial_bwd_mma.cu`). Both compute the same gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WgmmaBackward {
    /// The faster of the two per kernel as measured on the H200 (kernels/NOTES.md, v4, v6 and
    /// v9): the q kernel on wgmma when G = Hq/Hkv >= 8 (measured faster at G = 8, 16, 32, 64,
    /// 128; at G = 1 a block's 64 rows are 64 queries and mma.sync's per-warp window skipping
    /// wins; G = 2, 4 not measured); dk2, dv2 from the producer kernel when G is a multiple of
    /// 64 (33.9 against 63.1 ms for the mma.sync k kernel at the anchor, 21.0 against 34.0 at
    /// B = 4, N = 4096, D = 64), else the mma.sync k kernel (faster than or equal to the wgmma
    /// one at every G measured).
    #[default]
    Auto,
    /// Both on mma.sync.
    Off,
    /// The q kernel on wgmma, the k kernel on mma.sync.
    Q,
    /// The k kernel on wgmma, the q kernel on mma.sync.
    K,
    /// Both on wgmma.
    Both,
    /// The q kernel on wgmma, dk2 and dv2 from `kernels/simplicial_bwd_producer.cu` where it
    /// covers the call (G a multiple of 64), else from the mma.sync k kernel.
    Producer,
}

impl WgmmaBackward {
    /// From `SIMPLEX_BWD_WGMMA`: `0` off, `q` or `k` that kernel only, `1` both, `p` the
    /// producer k side, else auto.
    pub fn parse(value: &str) -> Self {
        match value {
            "0" => WgmmaBackward::Off,
            "q" => WgmmaBackward::Q,
            "k" => WgmmaBackward::K,
            "1" => WgmmaBackward::Both,
            "p" => WgmmaBackward::Producer,
            _ => WgmmaBackward::Auto,
        }
    }

    /// (q kernel on wgmma, k kernel on wgmma) for G query heads per K/V head.
    fn kernels(self, group: usize) -> (bool, bool) {
        match self {
            WgmmaBackward::Auto => (group >= 8, false),
            WgmmaBackward::Off => (false, false),
            WgmmaBackward::Q => (true, false),
            WgmmaBackward::K => (false, true),
            WgmmaBackward::Both => (true, true),
            WgmmaBackward::Producer => (true, false),
        }
    }

    /// Whether dk2, dv2 come from the producer kernel for G query heads per K/V head.
    fn producer_keys(self, group: usize) -> bool {
        matches!(self, WgmmaBackward::Producer | WgmmaBackward::Auto) && group.is_multiple_of(64)
    }
}

/// The q kernel (dq, dk1, dv1) and k kernel (dk2, dv2) for head dim `d` and `group` = G query
/// heads per K/V head: each on wgmma where `choice` puts it there and D is 64 or 128, else on
/// mma.sync.
pub(crate) fn plan(d: usize, group: usize, choice: WgmmaBackward) -> (Launch, Launch) {
    let wgmma_d = matches!(d, 64 | 128);
    let (wq, wk) = choice.kernels(group);
    let q = if wq && wgmma_d {
        wgmma_launch(d, "q")
    } else {
        mma_q(d)
    };
    let k = if choice.producer_keys(group) && wgmma_d {
        producer_k2(d)
    } else if wk && wgmma_d {
        wgmma_launch(d, "k")
    } else {
        mma_k(d, group)
    };
    (q, k)
}

/// Rows (query or key, head) per block of the offset-walk passes (`CTA_ROWS`).
pub(crate) const OFFSETS_BLOCK: usize = 128;

/// Query rows per block of the qk1 pass (`ROWS`: its two warpgroups share the rows and split
/// the window-1 offsets).
pub(crate) const QK1_BLOCK: usize = 64;

/// The window-1 side of a call in the kernels' orientation (window 1 = the smaller window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window1 {
    /// Sequence length.
    pub(crate) seq: usize,
    /// Width of the (smaller) window 1.
    pub(crate) w1: usize,
    /// Causal windows (else bidirectional).
    pub(crate) causal: bool,
}

/// Which parts of the backward run the offset walk (`kernels/simplicial_bwd_offsets.cu`, bf16,
/// D = 64): its q side (the qk1 pass for dq, dk1 and dv1, instead of the q kernel) and
/// its k2 pass (dk2, dv2, instead of the k kernel). Where it does not cover a call (other D, or
/// its staged rows do not fit shared memory) the other kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetsBackward {
    /// As measured on the H200 (kernels/NOTES.md v7, v8): both for G = Hq/Hkv <= 16. The qk1
    /// pass: 5.9 against 17.2 ms (mma.sync q kernel) at the LM layer (G = 1), faster at G = 2,
    /// 4, 8, 16, equal to the wgmma q kernel at G = 32, slower at 64 and 128; the k2 pass: 7.2
    /// against 15.8 ms (mma.sync k kernel) at the LM layer, faster at G = 2, 4, 16, slower at
    /// G = 64.
    #[default]
    Auto,
    /// Neither.
    Off,
    /// The q side only.
    Q,
    /// The k2 pass only.
    K,
    /// Both.
    Both,
}

impl OffsetsBackward {
    /// From `SIMPLEX_BWD_OFFSETS`: `0` off, `q` or `k` that side only, `1` both, else auto.
    pub fn parse(value: &str) -> Self {
        match value {
            "0" => OffsetsBackward::Off,
            "q" => OffsetsBackward::Q,
            "k" => OffsetsBackward::K,
            "1" => OffsetsBackward::Both,
            _ => OffsetsBackward::Auto,
        }
    }

    /// (q side, k2 pass) on the offset walk for G query heads per K/V head.
    fn sides(self, group: usize) -> (bool, bool) {
        match self {
            OffsetsBackward::Auto => (group <= 16, group <= 16),
            OffsetsBackward::Off => (false, false),
            OffsetsBackward::Q => (true, false),
            OffsetsBackward::K => (false, true),
            OffsetsBackward::Both => (true, true),
        }
    }
}

/// Positions of the partners one block (or query tile) of `own_rows` rows of the offset walk
/// stages, forward or backward: its own positions widened by the window-1 span, at most the
/// sequence (`partner_positions` in kernels/offset_walk.cuh).
pub(crate) fn partner_positions(own_rows: usize, group: usize, win: Window1) -> usize {
    let own = (own_rows - 1) / group + 2;
    let span = if win.causal { win.w1 } else { 2 * win.w1 - 1 };
    (own + span - 1).min(win.seq)
}

fn offsets_launch(which: &str, d: usize, smem: usize) -> Launch {
    Launch {
        name: format!("simplicial_bwd_offsets_{which}_bf16_d{d}"),
        file: KernelFile::Offsets,
        threads: 256,
        smem: smem + 1024,
    }
}

/// Offsets per flush of the qk1 pass's key sums (`Qk1Layout::CHUNK`).
const QK1_CHUNK: usize = 16;

/// The offset walk's q side, the qk1 pass (dq, dk1, dv1 in one walk; 64 query rows per block),
/// where `choice` selects it, D = 64, G = Hq/Hkv is a power of two up to 128 (the heads of a
/// position are summed by warp shuffles, and from G = 32 on by shared-memory atomics) and its shared memory fits `max_smem` (`Qk1Layout` in the kernel):
/// three K2/V2 tile buffers, (A_o, B_o) per warpgroup, the block's q and dout rows, its window-1
/// k1 and v1 rows, and per warpgroup f32 dk1 / dv1 sums for the keys of CHUNK offsets.
pub(crate) fn offsets_q_plan(
    d: usize,
    group: usize,
    win: Window1,
    choice: OffsetsBackward,
    max_smem: usize,
) -> Option<Launch> {
    if d != 64 || !group.is_power_of_two() || group > 128 || !choice.sides(group).0 {
        return None;
    }
    let rows = QK1_BLOCK;
    let padded = (d + 8) * 2;
    let tiles = 3 * 2 * 64 * d * 2;
    let operands = 2 * 2 * rows * d * 2;
    let own = 2 * rows * padded;
    let partners = 2 * partner_positions(rows, group, win) * padded;
    let sums = 2 * 2 * ((rows / group).max(1) + QK1_CHUNK - 1) * d * 4;
    let qk1 = offsets_launch("qk1", d, tiles + operands + own + partners + sums);
    (qk1.smem <= max_smem).then_some(qk1)
}

/// The offset walk's k2 pass (dk2, dv2; 128 window-2 keys per block) where `choice` selects it,
/// D = 64 and its shared memory fits `max_smem`: two (A_o, B_o) buffers of [64][D] bf16 (both
/// warpgroups build and read one copy), and two staging buffers of a query tile's q, dout rows,
/// window-1 rows, lse and delta (`K2Layout` in the kernel).
pub(crate) fn offsets_k2_plan(
    d: usize,
    group: usize,
    win: Window1,
    choice: OffsetsBackward,
    max_smem: usize,
) -> Option<Launch> {
    if d != 64 || !choice.sides(group).1 {
        return None;
    }
    let rows = partner_positions(BLOCK, group, win);
    let padded = (d + 8) * 2;
    let ops = 4 * BLOCK * d * 2;
    let stage = 2 * BLOCK * padded + 2 * rows * padded + 2 * BLOCK * 4;
    let k2 = offsets_launch("k2", d, ops + 2 * stage);
    (k2.smem <= max_smem).then_some(k2)
}

/// `QLayout<D>` / `KLayout<D>` in simplicial_bwd_wgmma.cu: 1 + D/64 warpgroups.
fn wgmma_launch(d: usize, which: &str) -> Launch {
    let hand_over = 4 * BLOCK * BLOCK * 2; // [2 buffers][P, dS], 64 x 128 B each
    let swizzled = BLOCK * d * 2; // one [64 x D] bf16 tile
    let padded = BLOCK * (d + 8) * 2; // one padded [64 x D] tile
    let smem = if which == "q" {
        // K2, V2 tiles x 2 buffers, P/dS, q and dout rows, k1 / v1 rows and f32 accumulators
        let jc = if d <= 64 { 96 } else { 48 };
        4 * swizzled + hand_over + 2 * padded + 2 * jc * d * 2 + 2 * jc * d * 4 + 1024
    } else {
        // q, dout steps x 2 buffers, P/dS, k1 / v1 rows x 2 buffers, own k2 and v2, row metadata
        4 * swizzled + hand_over + 4 * K_CHUNK * d * 2 + 2 * padded + BLOCK * 48 + 1024
    };
    Launch {
        name: format!("simplicial_bwd_{which}_wgmma_d{d}"),
        file: KernelFile::Wgmma,
        threads: 128 * (1 + d as u32 / 64),
        smem,
    }
}

/// Window-2 keys per block of the producer k kernel (`CTA_KEYS`).
pub(crate) const PRODUCER_KEYS: usize = 128;

/// `Smem<D>` in simplicial_bwd_producer.cu: the two consumers' own K2, V2 rows, three step
/// buffers (A, B and 64 lse, 64 delta), two q / dout staging buffers; 384 threads.
fn producer_k2(d: usize) -> Launch {
    let tile = BLOCK * d * 2;
    Launch {
        name: format!("simplicial_bwd_producer_k2_bf16_d{d}"),
        file: KernelFile::Producer,
        threads: 384,
        smem: 4 * tile + 3 * (2 * tile + 2 * BLOCK * 4) + 2 * 2 * tile + 1024,
    }
}

/// `QSmem<D>` in simplicial_bwd_mma.cu: two padded 64-row tiles, the chunk's k1 and v1 rows,
/// two f32 accumulators.
fn mma_q(d: usize) -> Launch {
    let jc = q_chunk(d);
    Launch {
        name: format!("simplicial_bwd_q_mma_d{d}"),
        file: KernelFile::Mma,
        threads: 128,
        smem: 2 * BLOCK * (d + 8) * 2 + 2 * jc * d * 2 + 2 * jc * d * 4,
    }
}

/// `KSmem<D, R>` in simplicial_bwd_mma.cu: padded k2, v2 tiles and q, dout rows, the chunk's k1
/// and v1 rows, the rows' (lse, delta) and query index. R rows per step: 64, or 32 when G < 64
/// packs several queries into a step (a step walks the union of its queries' window 1, so
/// fewer queries waste less).
fn mma_k(d: usize, group: usize) -> Launch {
    let rows = if group < 64 { 32 } else { 64 };
    Launch {
        name: if rows == 64 {
            format!("simplicial_bwd_k_mma_d{d}")
        } else {
            format!("simplicial_bwd_k_mma_r{rows}_d{d}")
        },
        file: KernelFile::Mma,
        threads: 128,
        smem: 2 * BLOCK * (d + 8) * 2 + 2 * rows * (d + 8) * 2 + 2 * K_CHUNK * d * 2 + rows * 12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared memory one block may use on an H100/H200 (227 KB).
    const MAX_SMEM: usize = 227 * 1024;

    fn source(file: KernelFile) -> String {
        let path = match file {
            KernelFile::Mma => "kernels/simplicial_bwd_mma.cu",
            KernelFile::Wgmma => "kernels/simplicial_bwd_wgmma.cu",
            KernelFile::Offsets => "kernels/simplicial_bwd_offsets.cu",
            KernelFile::Producer => "kernels/simplicial_bwd_producer.cu",
        };
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + path)
            .unwrap()
    }

    #[test]
    fn wgmma_runs_d64_and_d128_only_when_allowed() {
        for d in [32, 64, 96, 128] {
            for group in [1, 8, 64, 128] {
                let (q, k) = plan(d, group, WgmmaBackward::Both);
                let want = if matches!(d, 64 | 128) {
                    KernelFile::Wgmma
                } else {
                    KernelFile::Mma
                };
                assert_eq!((q.file, k.file), (want, want), "d {d} group {group}");
                let (q, k) = plan(d, group, WgmmaBackward::Off);
                assert_eq!((q.file, k.file), (KernelFile::Mma, KernelFile::Mma));
                let (q, k) = plan(d, group, WgmmaBackward::parse("q"));
                assert_eq!((q.file, k.file), (want, KernelFile::Mma));
                let (q, k) = plan(d, group, WgmmaBackward::parse("k"));
                assert_eq!((q.file, k.file), (KernelFile::Mma, want));
            }
        }
        let on = WgmmaBackward::Both;
        assert_eq!(plan(128, 64, on).0.threads, 384);
        assert_eq!(plan(64, 64, on).1.threads, 256);
        assert_eq!(plan(96, 64, on).0.threads, 128);
        assert!(plan(64, 8, WgmmaBackward::Off).1.name.contains("_r32_"));
        assert!(!plan(64, 64, WgmmaBackward::Off).1.name.contains("_r32_"));
        assert_eq!(WgmmaBackward::parse("1"), on);
        assert_eq!(WgmmaBackward::parse("0"), WgmmaBackward::Off);
        assert_eq!(WgmmaBackward::parse(""), WgmmaBackward::Auto);
        // auto: the q kernel on wgmma only for G >= 8, the k side from the producer kernel for
        // G a multiple of 64, else mma.sync
        let auto = |d, g| {
            let (q, k) = plan(d, g, WgmmaBackward::Auto);
            (q.file, k.file)
        };
        assert_eq!(auto(128, 64), (KernelFile::Wgmma, KernelFile::Producer));
        assert_eq!(auto(64, 128), (KernelFile::Wgmma, KernelFile::Producer));
        assert_eq!(auto(128, 32), (KernelFile::Wgmma, KernelFile::Mma));
        assert_eq!(auto(64, 1), (KernelFile::Mma, KernelFile::Mma));
        assert_eq!(auto(64, 4), (KernelFile::Mma, KernelFile::Mma));
        assert_eq!(auto(128, 8), (KernelFile::Wgmma, KernelFile::Mma));
        assert_eq!(auto(96, 64), (KernelFile::Mma, KernelFile::Mma));
    }

    #[test]
    fn producer_keys_run_where_g_is_a_multiple_of_64() {
        for d in [64, 128] {
            for group in [64, 128, 192] {
                let (q, k) = plan(d, group, WgmmaBackward::Producer);
                assert_eq!((q.file, k.file), (KernelFile::Wgmma, KernelFile::Producer));
                assert_eq!(k.threads, 384);
            }
            for group in [1, 8, 32, 96] {
                let (_, k) = plan(d, group, WgmmaBackward::Producer);
                assert_eq!(k.file, KernelFile::Mma, "d {d} group {group}");
            }
        }
        // D = 32, 96: no wgmma kernels, so mma.sync
        assert_eq!(
            plan(96, 64, WgmmaBackward::Producer).1.file,
            KernelFile::Mma
        );
        assert_eq!(WgmmaBackward::parse("p"), WgmmaBackward::Producer);
        // 226.5 KB at D = 128: fits the H200's 227 KB
        assert_eq!(producer_k2(128).smem, 231_936);
    }

    #[test]
    fn every_planned_kernel_exists_and_fits() {
        for d in [32, 64, 96, 128] {
            for group in [1, 3, 64, 128] {
                for choice in [
                    WgmmaBackward::Off,
                    WgmmaBackward::Both,
                    WgmmaBackward::Producer,
                ] {
                    let (q, k) = plan(d, group, choice);
                    for l in [q, k] {
                        assert!(l.smem <= MAX_SMEM, "{} wants {} bytes", l.name, l.smem);
                        // the name is defined by the file's macro: prefix ## D
                        let stem = l.name.trim_end_matches(&format!("d{d}"));
                        let src = source(l.file);
                        assert!(src.contains(stem), "{} not in {:?}", l.name, l.file);
                        assert!(
                            src.contains(&format!(
                                "SIMPLICIAL_BWD_{}({d})",
                                match l.file {
                                    KernelFile::Mma => "MMA",
                                    KernelFile::Wgmma => "WGMMA",
                                    KernelFile::Offsets => "OFFSETS",
                                    KernelFile::Producer => "PRODUCER_K2",
                                }
                            )),
                            "{:?} is not compiled for D = {d}",
                            l.file
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn offset_walk_runs_where_chosen_compiled_and_fitting() {
        let lm = Window1 {
            seq: 1024,
            w1: 32,
            causal: true,
        };
        let both = OffsetsBackward::Both;
        // automatic: as measured (the qk1 and k2 passes up to G = 16); D = 64 only
        let auto = OffsetsBackward::Auto;
        assert!(offsets_q_plan(64, 1, lm, auto, MAX_SMEM).is_some());
        assert!(offsets_q_plan(64, 16, lm, auto, MAX_SMEM).is_some());
        assert!(offsets_q_plan(64, 32, lm, auto, MAX_SMEM).is_none());
        assert!(offsets_k2_plan(64, 16, lm, auto, MAX_SMEM).is_some());
        assert!(offsets_k2_plan(64, 32, lm, auto, MAX_SMEM).is_none());
        let qk1 = offsets_q_plan(64, 1, lm, both, MAX_SMEM).expect("the LM layer shape");
        let k2 = offsets_k2_plan(64, 1, lm, both, MAX_SMEM).expect("the LM layer shape");
        assert!(offsets_q_plan(128, 1, lm, both, MAX_SMEM).is_none());
        assert!(offsets_k2_plan(128, 1, lm, both, MAX_SMEM).is_none());
        assert!(offsets_q_plan(64, 1, lm, OffsetsBackward::K, MAX_SMEM).is_none());
        assert!(offsets_k2_plan(64, 1, lm, OffsetsBackward::Q, MAX_SMEM).is_none());
        assert!(offsets_k2_plan(64, 1, lm, OffsetsBackward::Off, MAX_SMEM).is_none());
        // the qk1 pass: G a power of two up to 128
        for group in [2, 4, 8, 16, 32, 64, 128] {
            assert!(offsets_q_plan(64, group, lm, both, MAX_SMEM).is_some());
        }
        for group in [3, 12, 256] {
            assert!(offsets_q_plan(64, group, lm, both, MAX_SMEM).is_none());
        }
        assert_eq!(OffsetsBackward::parse("k"), OffsetsBackward::K);
        assert_eq!(OffsetsBackward::parse("1"), both);
        assert_eq!(OffsetsBackward::parse("x"), OffsetsBackward::Auto);
        // the qk1 pass: 3 tile buffers, 2 x (A_o, B_o), 64 q and dout rows, 63 + 2 + 31
        // window-1 rows (144 bytes each), 2 x 2 x (64 + 15) rows of f32 key sums
        let fixed = 3 * 2 * 64 * 64 * 2 + 4 * 64 * 64 * 2 + 2 * 64 * 72 * 2;
        assert_eq!(qk1.smem, fixed + 2 * 96 * 72 * 2 + 4 * 79 * 64 * 4 + 1024);
        assert!(qk1.smem <= MAX_SMEM);
        // the k2 pass: A_o / B_o x 2 buffers, two stages of 64 rows + 63 + 2 + 31 window-1 rows
        assert_eq!(
            k2.smem,
            4 * 64 * 64 * 2 + 2 * (2 * 64 * 72 * 2 + 2 * 96 * 72 * 2 + 512) + 1024
        );
        // a window 1 too wide for shared memory falls back
        let wide = Window1 { w1: 200, ..lm };
        assert!(offsets_q_plan(64, 1, wide, both, MAX_SMEM).is_none());
        assert!(offsets_k2_plan(64, 1, Window1 { w1: 1200, ..lm }, both, MAX_SMEM).is_none());
        // short sequences stage at most the sequence
        let short = Window1 { seq: 10, ..lm };
        let q_short = offsets_q_plan(64, 1, short, both, MAX_SMEM).expect("fits");
        assert_eq!(
            q_short.smem,
            fixed + 2 * 10 * 72 * 2 + 4 * 79 * 64 * 4 + 1024
        );
        // names exist in the file and are compiled for D = 64
        let src = source(KernelFile::Offsets);
        for l in [qk1, k2] {
            assert!(l.name.ends_with("_d64"));
            assert!(src.contains(l.name.trim_end_matches("d64")), "{}", l.name);
        }
        assert!(src.contains("SIMPLICIAL_BWD_OFFSETS_QK1(64)"));
        assert!(src.contains("SIMPLICIAL_BWD_OFFSETS_K2(64)"));
    }
}
