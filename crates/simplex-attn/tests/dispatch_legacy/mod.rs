//! The kernel choice as it was made before it became one pure function (commit b597ab9:
//! `src/cuda/forward.rs`, `forward_wgmma.rs`, `backward.rs`, `backward_mma.rs`,
//! `src/backward_plan.rs`, `src/cuda/dot.rs`, `dot_backward.rs`, `src/dot/plan.rs`), restated
//! here with the process-global switches as arguments, so that `tests/kernel_dispatch.rs` can
//! check that `kernels::dispatch` picks the same kernels, grids and shared memory for every
//! shape. Each launch: (symbol, grid, threads, dynamic shared memory).
#![allow(dead_code)]

use simplex_attn::kernels::{ForwardVariant, OffsetsBackward, WgmmaBackward};

pub type L = (String, (u32, u32, u32), u32, usize);

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub n: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
    /// clamped windows, as `Windows`
    pub w1: usize,
    pub w2: usize,
    pub causal: bool,
    pub bf16: bool,
}

pub struct Switches {
    pub tensor_cores: bool,
    pub deterministic: bool,
    pub forward: Option<ForwardVariant>,
    pub wgmma: WgmmaBackward,
    pub offsets: OffsetsBackward,
    pub max_smem: usize,
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

fn width(dim: usize) -> Result<usize, String> {
    match dim {
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        129..=256 => Ok(256),
        _ => Err(format!("head dim {dim}")),
    }
}

fn dt(s: &Shape) -> &'static str {
    if s.bf16 {
        "bf16"
    } else {
        "f32"
    }
}

// ---- forward (forward.rs, forward_wgmma.rs) ----

fn fwd_smem(d: usize, tj: usize) -> usize {
    let (tk, jc) = (64, 128);
    let k_tile = tk * d * 2;
    let p_tile = tj * 64 * tk * 2;
    let v_tile = tk * (d + 8) * 2;
    let j_rows = jc * d * 2;
    2 * k_tile + 2 * p_tile + 2 * v_tile + 2 * j_rows + 2 * 64 * 4 + 2 * 64 * 4 + 1024
}

fn producer_smem(d: usize) -> usize {
    (4 + 3) * 72 * d * 2 + 2 * 128 * d * 2 + 1024
}

pub fn partner_positions(
    own_rows: usize,
    group: usize,
    seq: usize,
    w1: usize,
    causal: bool,
) -> usize {
    let own = (own_rows - 1) / group + 2;
    let span = if causal { w1 } else { 2 * w1 - 1 };
    (own + span - 1).min(seq)
}

fn offsets_smem(s: &Shape) -> usize {
    let rows = partner_positions(128, s.hq / s.hkv, s.n, s.w1.min(s.w2), s.causal);
    4 * 64 * s.d * 2 + 2 * rows * (s.d + 8) * 2 + 1024
}

fn fastest(group: usize, d: usize) -> ForwardVariant {
    if group >= 64 || (d > 64 && group >= 16) {
        ForwardVariant::Producer
    } else {
        ForwardVariant::Offsets
    }
}

pub fn forward(s: &Shape, k: &Switches) -> Result<Vec<L>, String> {
    let g = s.hq / s.hkv;
    if s.bf16 && s.d == s.dv && matches!(s.d, 64 | 128) && k.tensor_cores {
        let d = s.d;
        let mut variant = k.forward.unwrap_or_else(|| fastest(g, d));
        loop {
            let (name, smem, threads) = match variant {
                ForwardVariant::Offsets => {
                    let to = if d == 64 { 2 } else { 1 };
                    (
                        format!("simplicial_fwd_offsets_to{to}_bf16_d{d}"),
                        offsets_smem(s),
                        256,
                    )
                }
                ForwardVariant::PingPong => (
                    format!("simplicial_fwd_wgmma_pp_tj1_bf16_d{d}"),
                    fwd_smem(d, 1),
                    256,
                ),
                ForwardVariant::Producer => (
                    format!("simplicial_fwd_producer_bf16_d{d}"),
                    producer_smem(d),
                    384,
                ),
                ForwardVariant::Specialized => (
                    format!("simplicial_fwd_wgmma_tj2_bf16_d{d}"),
                    fwd_smem(d, 2),
                    256,
                ),
            };
            if variant == ForwardVariant::Offsets && smem > k.max_smem {
                variant = if g >= 8 {
                    ForwardVariant::PingPong
                } else {
                    ForwardVariant::Specialized
                };
                continue;
            }
            let rows = match variant {
                ForwardVariant::Specialized => 64,
                _ => 128,
            };
            let grid = (blocks(s.n * g, rows), s.hkv as u32, s.b as u32);
            return Ok(vec![(name, grid, threads, smem)]);
        }
    }
    let name = format!("simplicial_fwd_{}_dv{}", dt(s), width(s.dv)?);
    width(s.d)?;
    let smem = 4 * (64 * (s.d | 1) + 64 * s.dv + 2 * 16 * s.d + 16 * 64);
    let grid = (blocks(s.n * g, 16), s.hkv as u32, s.b as u32);
    Ok(vec![(name, grid, 256, smem)])
}

// ---- backward (backward.rs, backward_mma.rs, backward_plan.rs) ----

fn q_chunk(d: usize) -> usize {
    match d {
        0..=64 => 96,
        65..=96 => 64,
        _ => 48,
    }
}

fn wgmma_launch(d: usize, which: &str) -> (String, u32, usize) {
    let hand_over = 4 * 64 * 64 * 2;
    let swizzled = 64 * d * 2;
    let padded = 64 * (d + 8) * 2;
    let smem = if which == "q" {
        let jc = if d <= 64 { 96 } else { 48 };
        4 * swizzled + hand_over + 2 * padded + 2 * jc * d * 2 + 2 * jc * d * 4 + 1024
    } else {
        4 * swizzled + hand_over + 4 * 64 * d * 2 + 2 * padded + 64 * 48 + 1024
    };
    (
        format!("simplicial_bwd_{which}_wgmma_d{d}"),
        128 * (1 + d as u32 / 64),
        smem,
    )
}

fn producer_k2(d: usize) -> (String, u32, usize) {
    let tile = 64 * d * 2;
    (
        format!("simplicial_bwd_producer_k2_bf16_d{d}"),
        384,
        4 * tile + 3 * (2 * tile + 2 * 64 * 4) + 2 * 2 * tile + 1024,
    )
}

fn mma_q(d: usize) -> (String, u32, usize) {
    let jc = q_chunk(d);
    (
        format!("simplicial_bwd_q_mma_d{d}"),
        128,
        2 * 64 * (d + 8) * 2 + 2 * jc * d * 2 + 2 * jc * d * 4,
    )
}

fn mma_k(d: usize, group: usize) -> (String, u32, usize) {
    let rows = if group < 64 { 32 } else { 64 };
    let name = if rows == 64 {
        format!("simplicial_bwd_k_mma_d{d}")
    } else {
        format!("simplicial_bwd_k_mma_r{rows}_d{d}")
    };
    (
        name,
        128,
        2 * 64 * (d + 8) * 2 + 2 * rows * (d + 8) * 2 + 2 * 64 * d * 2 + rows * 12,
    )
}

fn kernels(choice: WgmmaBackward, group: usize) -> (bool, bool) {
    match choice {
        WgmmaBackward::Auto => (group >= 8, false),
        WgmmaBackward::Off => (false, false),
        WgmmaBackward::Q => (true, false),
        WgmmaBackward::Producer => (true, false),
    }
}

fn producer_keys(choice: WgmmaBackward, group: usize) -> bool {
    matches!(choice, WgmmaBackward::Producer | WgmmaBackward::Auto) && group.is_multiple_of(64)
}

fn sides(choice: OffsetsBackward, group: usize) -> (bool, bool) {
    match choice {
        OffsetsBackward::Auto => (group <= 16, group <= 16),
        OffsetsBackward::Off => (false, false),
        OffsetsBackward::Q => (true, false),
        OffsetsBackward::K => (false, true),
        OffsetsBackward::Both => (true, true),
    }
}

fn offsets_q(s: &Shape, choice: OffsetsBackward, max_smem: usize) -> Option<(String, u32, usize)> {
    let (d, group) = (s.d, s.hq / s.hkv);
    if d != 64 || !group.is_power_of_two() || group > 128 || !sides(choice, group).0 {
        return None;
    }
    let rows = 64;
    let padded = (d + 8) * 2;
    let tiles = 3 * 2 * 64 * d * 2;
    let operands = 2 * 2 * rows * d * 2;
    let own = 2 * rows * padded;
    let partners = 2 * partner_positions(rows, group, s.n, s.w1.min(s.w2), s.causal) * padded;
    let sums = 2 * 2 * ((rows / group).max(1) + 16 - 1) * d * 4;
    let smem = tiles + operands + own + partners + sums + 1024;
    (smem <= max_smem).then(|| (format!("simplicial_bwd_offsets_qk1_bf16_d{d}"), 256, smem))
}

fn offsets_k2(s: &Shape, choice: OffsetsBackward, max_smem: usize) -> Option<(String, u32, usize)> {
    let (d, group) = (s.d, s.hq / s.hkv);
    if d != 64 || !sides(choice, group).1 {
        return None;
    }
    let rows = partner_positions(64, group, s.n, s.w1.min(s.w2), s.causal);
    let padded = (d + 8) * 2;
    let ops = 4 * 64 * d * 2;
    let stage = 2 * 64 * padded + 2 * rows * padded + 2 * 64 * 4;
    let smem = ops + 2 * stage + 1024;
    (smem <= max_smem).then(|| (format!("simplicial_bwd_offsets_k2_bf16_d{d}"), 256, smem))
}

pub fn backward(s: &Shape, k: &Switches) -> Result<Vec<L>, String> {
    let g = s.hq / s.hkv;
    let delta = (
        format!("simplicial_bwd_delta_{}", dt(s)),
        (blocks(s.b * s.n * s.hq, 8), 1, 1),
        256,
        0,
    );
    let tc = s.bf16
        && s.d == s.dv
        && matches!(s.d, 32 | 64 | 96 | 128)
        && k.tensor_cores
        && !k.deterministic;
    if !tc {
        let (d, dv) = (s.d, s.dv);
        let dq_name = format!("simplicial_bwd_dq_{}_d{}", dt(s), width(d)?);
        width(dv)?;
        let dq_smem = 4 * (64 * (d | 1) + 64 * (dv | 1) + 2 * 16 * d + 2 * 16 * dv + 16 * 64);
        let dkv_name = format!("simplicial_bwd_dkv_{}_d{}", dt(s), width(d.max(dv))?);
        let floats = 32 * (d | 1) + 32 * (dv | 1) + 32 * (d + dv) + 2 * 32 * 33 + 2 * 32;
        let dkv_smem = 4 * floats + 32 * (8 + 12);
        let (y, z) = (s.hkv as u32, s.b as u32);
        return Ok(vec![
            delta,
            (dq_name, (blocks(s.n * g, 16), y, z), 256, dq_smem),
            (dkv_name, (blocks(s.n, 32), y, z), 256, dkv_smem),
        ]);
    }
    let d = s.d;
    let wgmma_d = matches!(d, 64 | 128);
    let (wq, wk) = kernels(k.wgmma, g);
    let q = if wq && wgmma_d {
        wgmma_launch(d, "q")
    } else {
        mma_q(d)
    };
    let kk = if producer_keys(k.wgmma, g) && wgmma_d {
        producer_k2(d)
    } else if wk && wgmma_d {
        wgmma_launch(d, "k")
    } else {
        mma_k(d, g)
    };
    let q = offsets_q(s, k.offsets, k.max_smem).unwrap_or(q);
    let (kk, keys) = match offsets_k2(s, k.offsets, k.max_smem) {
        Some(k2) => (k2, 128),
        None if kk.0.contains("producer") => (kk, 128),
        None => (kk, 64),
    };
    let (y, z) = (s.hkv as u32, s.b as u32);
    let nk = s.b * s.n * s.hkv * d;
    Ok(vec![
        delta,
        (q.0, (blocks(s.n * g, 64), y, z), q.1, q.2),
        (kk.0, (blocks(s.n, keys), y, z), kk.1, kk.2),
        (
            "simplicial_bwd_f32_to_bf16".into(),
            (blocks(nk, 1024).min(65535), 1, 1),
            256,
            0,
        ),
    ])
}

mod dot;

pub use dot::{dot_backward, dot_forward, DotShape};
