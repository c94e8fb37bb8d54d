//! The dot-product choice before issue 15 (`src/cuda/dot.rs`, `dot_backward.rs`,
//! `src/dot/plan.rs`), less the mma.sync backward and D = 128 forward retired since (the
//! `DotTensorCores::MmaSync` choice that selected them is gone).

use super::{blocks, L};

#[derive(Debug, Clone, Copy)]
pub struct DotShape {
    pub b: usize,
    pub nq: usize,
    pub nk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
    pub bf16: bool,
    pub aligned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum K {
    Wgmma(usize),
    Tc(usize),
    Simple(usize),
}

fn choose(s: &DotShape, tensor_cores: bool) -> Result<K, String> {
    for x in [s.d, s.dv] {
        if x == 0 || x > 256 {
            return Err(format!("head dim {x}"));
        }
    }
    if tensor_cores && s.aligned && s.bf16 && s.d == s.dv && matches!(s.d, 64 | 128) {
        return Ok(K::Wgmma(s.d));
    }
    Ok(K::Simple(s.d.max(s.dv).next_power_of_two().max(32)))
}

fn persistent(items: usize, sms: usize) -> (u32, u32, u32) {
    (items.min(sms.max(1)) as u32, 1, 1)
}

fn row_items(s: &DotShape) -> usize {
    (s.nq * (s.hq / s.hkv)).div_ceil(128) * s.hkv * s.b
}

fn key_items(s: &DotShape) -> usize {
    s.nk.div_ceil(128) * s.hkv * s.b
}

fn ddt(s: &DotShape) -> &'static str {
    if s.bf16 {
        "bf16"
    } else {
        "f32"
    }
}

pub fn dot_forward(s: &DotShape, tensor_cores: bool, sms: usize) -> Result<Vec<L>, String> {
    let k = match choose(s, tensor_cores)? {
        K::Wgmma(64) => K::Tc(64),
        k => k,
    };
    Ok(vec![match k {
        K::Wgmma(d) => (
            format!("dot_fwd_wgmma_bf16_d{d}"),
            persistent(row_items(s), sms),
            384,
            // three stages of K, V tiles, the ring's six mbarriers (since the TMA loads), the
            // block's Q tile and its two mbarriers (since 2026-12-08)
            3 * 2 * 128 * d * 2 + 6 * 8 + 128 * d * 2 + 2 * 8 + 1024,
        ),
        // the one-warpgroup forward (since 2026-12-07; the mma.sync one it replaced is retired):
        // blocks of 64 of the Nq G rows of each (K/V head, batch); two stages of 64-key K, V
        // tiles and the block's Q
        K::Tc(d) => (
            format!("dot_fwd_bf16_d{d}"),
            (blocks(s.nq * (s.hq / s.hkv), 64), s.hkv as u32, s.b as u32),
            128,
            2 * 2 * 64 * d * 2 + 64 * d * 2 + 1024,
        ),
        K::Simple(w) => (
            format!("dot_fwd_simple_{}_w{w}", ddt(s)),
            (blocks(s.b * s.nq * s.hq, 4), 1, 1),
            128,
            4 * w * 4,
        ),
    }])
}

pub fn dot_backward(s: &DotShape, tensor_cores: bool, sms: usize) -> Result<Vec<L>, String> {
    let k = choose(s, tensor_cores)?;
    let g = s.hq / s.hkv;
    if k == K::Wgmma(128) && 64 % g == 0 {
        // the fused backward (since 2026-12-07): the pairs pre-pass (16 threads per padded
        // row), the dk/dv kernel with dS^T tiles and dQ staging, the rounding pass (a thread
        // per four float4s of dq's f32 sums)
        let rows = (s.nq * g).div_ceil(64) * 64;
        let tile = 64 * 128 * 2;
        return Ok(vec![
            (
                "dot_bwd_pairs_bf16_d128".into(),
                (blocks(s.b * s.hkv * rows, 16), 1, 1),
                256,
                0,
            ),
            (
                "dot_bwd_fused_wgmma_bf16_d128".into(),
                persistent(key_items(s), sms),
                384,
                4 * tile
                    + 3 * 2 * tile
                    + 4 * 64 * 64 * 2
                    + 2 * 64 * 64 * 4
                    + 3 * 512
                    + 6 * 8
                    + 1024,
            ),
            (
                "dot_bwd_dq_round_bf16_d128".into(),
                (blocks(s.b * s.hkv * rows * 128 / 16, 256), 1, 1),
                256,
                0,
            ),
        ]);
    }
    let mut out = vec![];
    if !matches!(k, K::Wgmma(_)) {
        out.push((
            format!("dot_bwd_delta_{}", ddt(s)),
            (blocks(s.b * s.nq * s.hq, 4), 1, 1),
            128,
            0,
        ));
    }
    match k {
        K::Wgmma(d) => {
            let tile = 64 * d * 2;
            let own = if d > 64 { 4 * tile } else { 0 };
            out.push((
                format!("dot_bwd_dq_wgmma_bf16_d{d}"),
                persistent(row_items(s), sms),
                384,
                3 * 2 * 64 * d * 2 + 6 * 8 + 1024,
            ));
            out.push((
                format!("dot_bwd_dkv_wgmma_bf16_d{d}"),
                persistent(key_items(s), sms),
                384,
                own + 3 * (2 * tile + 2 * 64 * 4) + 6 * 8 + 1024,
            ));
        }
        K::Tc(_) => unreachable!("the mma.sync backward is retired"),
        K::Simple(w) => {
            out.push((
                format!("dot_bwd_dq_simple_{}_w{w}", ddt(s)),
                (blocks(s.b * s.nq * s.hq, 4), 1, 1),
                128,
                4 * 2 * w * 4,
            ));
            out.push((
                format!("dot_bwd_dkv_simple_{}_w{w}", ddt(s)),
                (blocks(s.b * s.nk * s.hkv, 4), 1, 1),
                128,
                4 * 2 * w * 4,
            ));
        }
    }
    Ok(out)
}
