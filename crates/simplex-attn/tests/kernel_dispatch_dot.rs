//! Which kernels run a dot-product call ([`simplex_attn::kernels::dispatch::dot`]), checked
//! without a GPU: the LM layer and a D = 128 GQA shape on the tensor cores, the CUDA-core
//! kernels where the tensor cores do not apply, the persistent grids.

use candle_core::DType;
use simplex_attn::dot::DotDims;
use simplex_attn::kernels::dispatch::dot;
use simplex_attn::kernels::{DeviceLimits, Kernels};

const HOPPER: DeviceLimits = DeviceLimits::HOPPER;

#[test]
fn the_dot_product_choice() {
    let k = Kernels::default();
    let lm = DotDims {
        batch: 32,
        seq_q: 1024,
        seq_k: 1024,
        heads_q: 8,
        heads_kv: 8,
        d: 64,
        dv: 64,
    };
    let gqa = DotDims {
        batch: 4,
        seq_q: 4096,
        seq_k: 4096,
        heads_q: 32,
        heads_kv: 8,
        d: 128,
        dv: 128,
    };
    let syms = |d: &DotDims, dtype, aligned, k: &Kernels| {
        let f = dot::forward(d, dtype, aligned, k, &HOPPER).unwrap();
        let b = dot::backward(d, dtype, aligned, k, &HOPPER).unwrap();
        let mut v = vec![f.symbol()];
        v.extend(b.launches().iter().map(|l| l.symbol()));
        v
    };
    let bf = DType::BF16;
    // the LM layer: the one-warpgroup forward, the wgmma backward (which computes delta in dq)
    assert_eq!(
        syms(&lm, bf, true, &k),
        [
            "dot_fwd_bf16_d64",
            "dot_bwd_dq_wgmma_bf16_d64",
            "dot_bwd_dkv_wgmma_bf16_d64"
        ]
    );
    // D = 128 with G dividing 64: the fused backward (pre-pass, dk/dv with dq's sums,
    // rounding); the split kernels when deterministic
    assert_eq!(
        syms(&gqa, bf, true, &k),
        [
            "dot_fwd_wgmma_bf16_d128",
            "dot_bwd_pairs_bf16_d128",
            "dot_bwd_fused_wgmma_bf16_d128",
            "dot_bwd_dq_round_bf16_d128"
        ]
    );
    let split = [
        "dot_fwd_wgmma_bf16_d128",
        "dot_bwd_dq_wgmma_bf16_d128",
        "dot_bwd_dkv_wgmma_bf16_d128",
    ];
    let det = Kernels {
        deterministic: true,
        ..k
    };
    assert_eq!(syms(&gqa, bf, true, &det), split);
    // forced: fused where covered (D = 128, G dividing 64, not deterministic), split otherwise
    use simplex_attn::kernels::DotBackwardKernels;
    let fused = Kernels {
        dot_backward: DotBackwardKernels::Fused,
        ..k
    };
    assert_eq!(syms(&gqa, bf, true, &fused), syms(&gqa, bf, true, &k));
    let forced_split = Kernels {
        dot_backward: DotBackwardKernels::Split,
        ..k
    };
    assert_eq!(syms(&gqa, bf, true, &forced_split), split);
    let b = dot::backward(&gqa, bf, true, &fused, &HOPPER).unwrap();
    // 16 threads per row of the 4 * 8 * 4096 * 4 rows (no padding: 4096 * 4 is a multiple of
    // 64); a thread per four float4s of the f32 sums
    assert_eq!(
        b.delta.unwrap().grid,
        ((4 * 8 * 4096 * 4 / 16) as u32, 1, 1)
    );
    assert_eq!(
        b.dq_round.unwrap().grid,
        ((4 * 8 * 4096 * 4 * 128 / 16 / 256) as u32, 1, 1)
    );
    // padded rows: Nq G = 5 * 4 = 20 -> 64 rows of sums per (batch, K/V head)
    let odd = DotDims {
        batch: 2,
        seq_q: 5,
        seq_k: 7,
        heads_q: 4,
        heads_kv: 1,
        ..gqa
    };
    let padded = dot::backward(&odd, bf, true, &fused, &HOPPER).unwrap();
    assert_eq!(
        padded.delta.unwrap().grid,
        ((2 * 64 * 16usize).div_ceil(256) as u32, 1, 1)
    );
    assert_eq!(
        padded.dq_round.unwrap().grid,
        ((2 * 64 * 128 / 16usize).div_ceil(256) as u32, 1, 1)
    );
    assert_eq!(b.dkv.grid, (132, 1, 1));
    let det_fused = Kernels {
        deterministic: true,
        ..fused
    };
    assert_eq!(syms(&gqa, bf, true, &det_fused), split);
    assert_eq!(syms(&lm, bf, true, &fused), syms(&lm, bf, true, &k));
    let g3 = DotDims { heads_q: 24, ..gqa };
    assert_eq!(syms(&g3, bf, true, &fused), split);
    // misaligned, f32, other head dims, tensor cores off: the CUDA-core kernels
    let simple = |dt: &str, w| {
        vec![
            format!("dot_fwd_simple_{dt}_w{w}"),
            format!("dot_bwd_delta_{dt}"),
            format!("dot_bwd_dq_simple_{dt}_w{w}"),
            format!("dot_bwd_dkv_simple_{dt}_w{w}"),
        ]
    };
    let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
    assert_eq!(owned(syms(&lm, bf, false, &k)), simple("bf16", 64));
    assert_eq!(owned(syms(&lm, DType::F32, true, &k)), simple("f32", 64));
    let off = Kernels {
        tensor_cores: false,
        ..k
    };
    assert_eq!(owned(syms(&gqa, bf, true, &off)), simple("bf16", 128));
    let odd = DotDims {
        d: 96,
        dv: 40,
        ..lm
    };
    assert_eq!(owned(syms(&odd, bf, true, &k)), simple("bf16", 128));
    // the persistent kernels: one block per multiprocessor, fewer when there are fewer items
    let small = DotDims {
        batch: 1,
        seq_q: 100,
        seq_k: 100,
        heads_q: 3,
        heads_kv: 1,
        ..lm
    };
    let b = dot::backward(&small, bf, true, &k, &HOPPER).unwrap();
    assert_eq!(b.dq.unwrap().grid, (3, 1, 1));
    assert_eq!(b.dkv.grid, (1, 1, 1));
    assert_eq!(
        dot::backward(&lm, bf, true, &k, &HOPPER)
            .unwrap()
            .dq
            .unwrap()
            .grid,
        (132, 1, 1)
    );
    // the D = 64 forward: blocks of 64 of the Nq * G rows of each (K/V head, batch)
    let f = dot::forward(&small, bf, true, &k, &HOPPER).unwrap();
    assert_eq!(f.grid, (300usize.div_ceil(64) as u32, 1, 1));
    assert_eq!(
        dot::forward(&lm, bf, true, &k, &HOPPER).unwrap().grid,
        (1024 / 64, 8, 32)
    );
}
