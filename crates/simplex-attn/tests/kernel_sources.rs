//! The kernel table (`simplex_attn::kernels::TABLE`) against the CUDA sources, without a GPU
//! or nvcc: every `extern "C"` entry point the attention `.cu` files compile is listed, in its
//! file, and nothing else; each listed thread count is the kernel's `__launch_bounds__`; each
//! fixed shared-memory size is the `BYTES` of the kernel's layout struct (or, for the kernels
//! that carve their shared memory with pointer arithmetic, that carving restated with the
//! file's tile constants); the run-time formulas follow the kernels' carving; the rows per
//! block are the files' tile constants. So the Rust copies of these numbers cannot drift from
//! the `.cu` files unseen.

mod cu_source;

use std::collections::BTreeSet;
use std::path::PathBuf;

use cu_source::Source;
use simplex_attn::kernels::smem::{
    partner_positions, SmemArgs, Window1, CORE_KEYS, CORE_ROWS, DKV_KEYS, DKV_ROWS, QK1_CHUNK,
    SIMPLE_WARPS, WG_ROWS,
};
use simplex_attn::kernels::tma::{kv_map_rows, DKV_STEP_ROWS};
use simplex_attn::kernels::{Family, Kernel, Smem, TABLE};

fn source(family: Family) -> Source {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    Source::load(&dir, family.file().trim_start_matches("kernels/"))
}

/// Every family of attention kernels (the table's files).
fn families() -> Vec<Family> {
    let mut f: Vec<Family> = vec![];
    for k in &TABLE {
        if !f.contains(&k.family) {
            f.push(k.family);
        }
    }
    f
}

#[test]
fn the_table_lists_every_compiled_kernel_and_its_threads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cu") && (n.starts_with("simplicial_") || n.starts_with("dot_")))
        .collect();
    files.sort();
    let mut listed: Vec<String> = families()
        .iter()
        .map(|f| f.file().trim_start_matches("kernels/").to_string())
        .collect();
    listed.sort();
    assert_eq!(files, listed, "attention .cu files vs the table's families");
    for family in families() {
        let src = source(family);
        let compiled = src.entry_points();
        let have: BTreeSet<&str> = compiled.iter().map(|e| e.symbol.as_str()).collect();
        let want: BTreeSet<&str> = TABLE
            .iter()
            .filter(|k| k.family == family)
            .map(|k| k.symbol)
            .collect();
        assert_eq!(have, want, "{}: compiled vs listed", family.file());
        assert_eq!(
            have.len(),
            compiled.len(),
            "{}: a symbol twice",
            family.file()
        );
        for e in &compiled {
            let k = TABLE.iter().find(|k| k.symbol == e.symbol).expect("listed");
            if let Some(threads) = &e.threads {
                assert_eq!(
                    src.eval(threads),
                    i64::from(k.threads),
                    "{}: __launch_bounds__({threads})",
                    k.symbol
                );
            }
        }
    }
}

/// The layout struct whose `BYTES` is a kernel's shared memory, or the carving of the kernels
/// that have none (restated from their pointer arithmetic, with the file's tile constants).
fn layout(k: Kernel, src: &Source) -> Option<i64> {
    Some(match k {
        Kernel::FwdWgmma { d, tj, .. } => src.eval(&format!("Smem<{d}, {tj}>::BYTES")),
        Kernel::FwdProducer { d, dv } => src.eval(&format!("Smem<{d}, {dv}, {}>::BYTES", d != dv)),
        Kernel::BwdProducerK2 { d } => src.eval(&format!("Smem<{d}>::BYTES")),
        Kernel::BwdQMma { d } => src.eval(&format!("QSmem<{d}>::BYTES")),
        Kernel::BwdKMma { d, rows } => src.eval(&format!("KSmem<{d}, {rows}>::BYTES")),
        Kernel::BwdQWgmma { d } => src.eval(&format!("QLayout<{d}>::BYTES")),
        Kernel::DotFwdWgmma { d } => src.eval(&format!("WgmmaFwdSmem<{d}>::BYTES")),
        Kernel::DotDqWgmma { d } => src.eval(&format!("RingSmem<TKQ, {d}>::BYTES")),
        Kernel::DotDkvWgmma { d } => src.eval(&format!("DkvSmem<{d}, false>::BYTES")),
        Kernel::DotBwdFused { d } => src.eval(&format!("DkvSmem<{d}, true>::BYTES")),
        Kernel::DotFwd { d } => src.eval(&format!("FwdSmem<{d}>::BYTES")),
        _ => return None,
    })
}

#[test]
fn fixed_shared_memory_is_the_kernels_layout() {
    let mut checked = 0;
    for family in families() {
        let src = source(family);
        for k in TABLE.iter().filter(|k| k.family == family) {
            let want = layout(k.kernel, &src);
            match (k.smem, want) {
                (Smem::Fixed(n), Some(want)) => {
                    assert_eq!(n as i64, want, "{}", k.symbol);
                    checked += 1;
                }
                (Smem::Fixed(_), None) => panic!("{}: no layout to check against", k.symbol),
                (other, Some(_)) => panic!("{}: {other:?} but the file has a layout", k.symbol),
                _ => {}
            }
        }
    }
    assert!(checked >= 28, "{checked}");
}

/// The rows (or keys) per block of a kernel: its file's tile constant.
fn rows(k: Kernel, src: &Source) -> Option<i64> {
    Some(src.eval(match k {
        Kernel::Fwd { .. } | Kernel::BwdDq { .. } | Kernel::BwdQMma { .. } => "RB",
        Kernel::FwdWgmma {
            ping_pong: true, ..
        } => "2 * ROWS",
        Kernel::FwdWgmma { .. } => "ROWS",
        Kernel::FwdOffsets { .. } | Kernel::FwdProducer { .. } | Kernel::BwdOffsetsK2 { .. } => {
            "CTA_ROWS"
        }
        Kernel::BwdDelta { .. } | Kernel::DotDelta { .. } => "WARPS",
        Kernel::DotFwdSimple { .. } | Kernel::DotDqSimple { .. } | Kernel::DotDkvSimple { .. } => {
            "WARPS"
        }
        Kernel::BwdDkv { .. } => "KB",
        Kernel::BwdKMma { .. } => "TK",
        Kernel::BwdQWgmma { .. } => "BLK",
        Kernel::BwdOffsetsQk1 { .. } => "ROWS",
        Kernel::BwdProducerK2 { .. } => "CTA_KEYS",
        Kernel::DotFwd { .. } => "BM",
        Kernel::DotFwdWgmma { .. }
        | Kernel::DotDqWgmma { .. }
        | Kernel::DotDkvWgmma { .. }
        | Kernel::DotBwdFused { .. } => "dot_wgmma::CTA_ROWS",
        // threads per row, float4s per thread: launch choices, not tiles
        Kernel::DotPairs { .. } | Kernel::DotDqRound { .. } => return None,
        // elements per block of a grid-stride loop: a launch choice, not a tile
        Kernel::BwdF32ToBf16 => return None,
    }))
}

#[test]
fn rows_per_block_and_tile_constants_are_the_files() {
    for family in families() {
        let src = source(family);
        for k in TABLE.iter().filter(|k| k.family == family) {
            if let Some(want) = rows(k.kernel, &src) {
                assert_eq!(k.rows as i64, want, "{}: rows per block", k.symbol);
            }
        }
    }
    let fwd = source(Family::Forward);
    assert_eq!(fwd.eval("RB"), CORE_ROWS as i64);
    assert_eq!(fwd.eval("TK"), CORE_KEYS as i64);
    let dq = source(Family::BackwardQuery);
    assert_eq!(dq.eval("RB"), CORE_ROWS as i64);
    assert_eq!(dq.eval("TK"), CORE_KEYS as i64);
    let dkv = source(Family::BackwardKey);
    assert_eq!(dkv.eval("KB"), DKV_KEYS as i64);
    assert_eq!(dkv.eval("RS"), DKV_ROWS as i64);
    assert_eq!(dkv.eval("PS"), DKV_KEYS as i64 + 1);
    let walk = source(Family::ForwardOffsets);
    assert_eq!(walk.eval("ROWS"), WG_ROWS as i64);
    assert_eq!(walk.eval("TK"), WG_ROWS as i64);
    let bwd = source(Family::BackwardOffsets);
    assert_eq!(bwd.eval("Qk1Layout<64>::CHUNK"), QK1_CHUNK as i64);
    assert_eq!(source(Family::DotSimple).eval("WARPS"), SIMPLE_WARPS as i64);
    // the TMA boxes of the kernels that load K and V through tensor maps: their key tiles
    for k in &TABLE {
        let tile = match k.kernel {
            Kernel::DotFwdWgmma { .. } => source(k.family).eval("TK"),
            Kernel::DotDqWgmma { .. } => source(k.family).eval("TKQ"),
            _ => continue,
        };
        assert_eq!(
            kv_map_rows(k.kernel),
            Some(tile as usize),
            "{}: TMA box rows",
            k.symbol
        );
    }
    // the dk/dv kernel's steps of rows: its maps' boxes and the pairs' padding
    let bwd = source(Family::DotBackwardWgmma);
    assert_eq!(bwd.eval("TQ"), DKV_STEP_ROWS as i64);
    assert_eq!(
        bwd.eval("DkvSmem<64, false>::PAIRS"),
        DKV_STEP_ROWS as i64 * 8
    );
}

fn args(d: usize, dv: usize, group: usize, window1: Window1) -> SmemArgs {
    SmemArgs {
        d,
        dv,
        width: d.max(dv),
        group,
        window1,
    }
}

#[test]
fn run_time_shared_memory_follows_the_kernels_carving() {
    let windows = [
        Window1 {
            seq: 1024,
            w1: 32,
            causal: true,
        },
        Window1 {
            seq: 10,
            w1: 32,
            causal: true,
        },
        Window1 {
            seq: 4096,
            w1: 300,
            causal: false,
        },
        Window1 {
            seq: 77,
            w1: 1,
            causal: false,
        },
    ];
    let fwd = source(Family::Forward);
    let dq = source(Family::BackwardQuery);
    let dkv = source(Family::BackwardKey);
    let fwd_walk = source(Family::ForwardOffsets);
    let bwd_walk = source(Family::BackwardOffsets);
    let simple = source(Family::DotSimple);
    for (d, dv) in [(3, 3), (32, 32), (64, 64), (64, 17), (96, 128), (256, 256)] {
        let a = args(d, dv, 1, windows[0]);
        let (d, dv) = (d as i64, dv as i64);
        let (ks, vs) = (d | 1, dv | 1);
        // simplicial_fwd.cu: k2s [TK][KS], v2s [TK][Dv], qs, xs [RB][D], ps [RB][TK], f32
        let (tk, rb) = (fwd.eval("TK"), fwd.eval("RB"));
        let want = 4 * (tk * ks + tk * dv + 2 * rb * d + rb * tk);
        assert_eq!(Smem::CoreForward.bytes(&a) as i64, want);
        // simplicial_bwd_dq.cu: k2s [TK][KS], v2s [TK][VS], qs, xs [RB][D], dos, ys [RB][Dv],
        // dss [RB][TK]
        let (tk, rb) = (dq.eval("TK"), dq.eval("RB"));
        let want = 4 * (tk * ks + tk * vs + 2 * rb * d + 2 * rb * dv + rb * tk);
        assert_eq!(Smem::CoreDq.bytes(&a) as i64, want);
        // simplicial_bwd_dkv.cu: k2s [KB][KS], v2s [KB][VS], xs [RS][D], ys [RS][Dv], pss, dss
        // [RS][PS], rlse, rdl [RS] (f32), rq [RS] (i64), rj, rklo, rkhi [RS] (i32)
        let (kb, rs, ps) = (dkv.eval("KB"), dkv.eval("RS"), dkv.eval("PS"));
        let floats = kb * ks + kb * vs + rs * d + rs * dv + 2 * rs * ps + 2 * rs;
        assert_eq!(
            Smem::CoreDkv.bytes(&a) as i64,
            4 * floats + rs * 8 + 3 * rs * 4
        );
        // dot_attn_simple.cu: [WARPS][rows][W] f32
        for rows in [1, 2] {
            assert_eq!(
                Smem::SimpleRows(rows).bytes(&a) as i64,
                simple.eval("WARPS") * rows as i64 * a.width as i64 * 4
            );
        }
    }
    for group in [1, 2, 4, 8, 16, 32, 64, 128] {
        for w in windows {
            let a = args(64, 64, group, w);
            let pp = |rows: i64| {
                partner_positions(rows as usize, group, w) as i64 // offset_walk.cuh's
            };
            // simplicial_fwd_offsets.cu: K2, V2 tiles x 2 buffers, then k1_s, v1_s [jcap][JS]
            // (jcap: the CTA_ROWS rows' partners), after a 1024-byte alignment
            let kt = fwd_walk.eval("TK") * 64 * 2;
            let js = 64 + 8;
            let want = 4 * kt + 2 * pp(fwd_walk.eval("CTA_ROWS")) * js * 2 + 1024;
            assert_eq!(
                Smem::OffsetsForward.bytes(&a) as i64,
                want,
                "G {group} {w:?}"
            );
            // the k2 pass: OPS, then two stages of q, dout rows (QR each), k1, v1 partner rows
            // (jcap of ROWS rows) and lse, delta [ROWS] f32
            let l = |m: &str| bwd_walk.eval(&format!("K2Layout<64>::{m}"));
            let rows = bwd_walk.eval("ROWS");
            let stage = 2 * l("QR") + 2 * pp(rows) * l("JS") * 2 + 2 * rows * 4;
            assert_eq!(
                Smem::OffsetsK2.bytes(&a) as i64,
                l("OPS") + 2 * stage + 1024,
                "G {group} {w:?}"
            );
            // the qk1 pass: TILES, OPS, OWN, k1, v1 partner rows [pcap][JS], then per
            // warpgroup dk1, dv1 sums [acc_rows][D] f32, acc_rows = max(ROWS / G, 1) + CHUNK - 1
            let l = |m: &str| bwd_walk.eval(&format!("Qk1Layout<64>::{m}"));
            let acc_rows = (rows / group as i64).max(1) + l("CHUNK") - 1;
            let want = l("TILES")
                + l("OPS")
                + l("OWN")
                + 2 * pp(rows) * l("JS") * 2
                + 2 * 2 * acc_rows * 64 * 4
                + 1024;
            assert_eq!(Smem::OffsetsQk1.bytes(&a) as i64, want, "G {group} {w:?}");
        }
    }
}
