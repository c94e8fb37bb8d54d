//! Which kernels run a call ([`simplex_attn::kernels::dispatch`]), checked without a GPU: the
//! automatic choice at the shapes the project measures (the spec's anchors, the LM layer, GQA
//! ratios 1..128, head dims 32..256, bf16 and f32), the forced choices, the offset walk's
//! fallback and the errors. `kernel_dispatch_legacy.rs` checks the same function against the
//! choice as it was made before.

mod common;

use candle_core::DType;
use common::dims;
use simplex_attn::dot::DotDims;
use simplex_attn::kernels::dispatch::simplicial::Backward;
use simplex_attn::kernels::dispatch::{dot, simplicial};
use simplex_attn::kernels::{
    DeviceLimits, ForwardVariant, Kernels, OffsetsBackward, WgmmaBackward,
};
use simplex_attn::{AttnSpec, Dims};

const HOPPER: DeviceLimits = DeviceLimits::HOPPER;

/// Symbols of the forward and of the backward launches.
fn symbols(
    d: &Dims,
    spec: &AttnSpec,
    dtype: DType,
    dev: &DeviceLimits,
) -> (String, Vec<&'static str>) {
    let win = spec.windows(d.seq);
    let k = &spec.kernels;
    let f = simplicial::forward(d, &win, dtype, k, dev).expect("a forward kernel");
    let b = match simplicial::backward(d, &win, dtype, k, dev).expect("backward kernels") {
        Backward::Core { delta, dq, dkv } => vec![delta.symbol(), dq.symbol(), dkv.symbol()],
        Backward::TensorCore { delta, q, k, round } => {
            vec![delta.symbol(), q.symbol(), k.symbol(), round.symbol()]
        }
    };
    (f.symbol().to_string(), b)
}

#[test]
fn the_automatic_choice_at_the_measured_shapes() {
    let bf = DType::BF16;
    let c = AttnSpec::causal;
    let tc = |f: &str, q: &'static str, k: &'static str| {
        (
            f.to_string(),
            vec![
                "simplicial_bwd_delta_bf16",
                q,
                k,
                "simplicial_bwd_f32_to_bf16",
            ],
        )
    };
    let cases = [
        // the spec's anchors: G = 64 and 128, D = 128, both window orders
        (
            dims(2, 8192, 64, 1, 128, 128),
            c(32, 512),
            tc(
                "simplicial_fwd_producer_bf16_d128",
                "simplicial_bwd_q_wgmma_d128",
                "simplicial_bwd_producer_k2_bf16_d128",
            ),
        ),
        (
            dims(2, 8192, 64, 1, 128, 128),
            c(512, 32),
            tc(
                "simplicial_fwd_producer_bf16_d128",
                "simplicial_bwd_q_wgmma_d128",
                "simplicial_bwd_producer_k2_bf16_d128",
            ),
        ),
        (
            dims(2, 8192, 128, 1, 128, 128),
            c(32, 512),
            tc(
                "simplicial_fwd_producer_bf16_d128",
                "simplicial_bwd_q_wgmma_d128",
                "simplicial_bwd_producer_k2_bf16_d128",
            ),
        ),
        // b4: G = 64 at D = 64
        (
            dims(4, 4096, 64, 1, 64, 64),
            c(512, 32),
            tc(
                "simplicial_fwd_producer_bf16_d64",
                "simplicial_bwd_q_wgmma_d64",
                "simplicial_bwd_producer_k2_bf16_d64",
            ),
        ),
        // the LM layer: G = 1, D = 64: the offset walk throughout
        (
            dims(32, 1024, 8, 8, 64, 64),
            c(512, 32),
            tc(
                "simplicial_fwd_offsets_to2_bf16_d64",
                "simplicial_bwd_offsets_qk1_bf16_d64",
                "simplicial_bwd_offsets_k2_bf16_d64",
            ),
        ),
        // GQA at D = 64: the offset walk to G = 16, then the wgmma q kernel
        (
            dims(8, 2048, 16, 8, 64, 64),
            c(32, 512),
            tc(
                "simplicial_fwd_offsets_to2_bf16_d64",
                "simplicial_bwd_offsets_qk1_bf16_d64",
                "simplicial_bwd_offsets_k2_bf16_d64",
            ),
        ),
        (
            dims(4, 2048, 128, 8, 64, 64),
            c(512, 32),
            tc(
                "simplicial_fwd_offsets_to2_bf16_d64",
                "simplicial_bwd_offsets_qk1_bf16_d64",
                "simplicial_bwd_offsets_k2_bf16_d64",
            ),
        ),
        (
            dims(8, 2048, 32, 1, 64, 64),
            c(32, 512),
            tc(
                "simplicial_fwd_offsets_to2_bf16_d64",
                "simplicial_bwd_q_wgmma_d64",
                "simplicial_bwd_k_mma_r32_d64",
            ),
        ),
        // G = 3 (not a power of two): the k2 pass, the mma.sync q kernel
        (
            dims(1, 257, 6, 2, 64, 64),
            c(7, 300),
            tc(
                "simplicial_fwd_offsets_to2_bf16_d64",
                "simplicial_bwd_q_mma_d64",
                "simplicial_bwd_offsets_k2_bf16_d64",
            ),
        ),
        // GQA at D = 128: the offset walk below G = 16, the producer layout from there
        (
            dims(2, 4096, 16, 4, 128, 128),
            c(32, 512),
            tc(
                "simplicial_fwd_offsets_to1_bf16_d128",
                "simplicial_bwd_q_mma_d128",
                "simplicial_bwd_k_mma_r32_d128",
            ),
        ),
        (
            dims(8, 2048, 64, 8, 128, 128),
            c(32, 512),
            tc(
                "simplicial_fwd_offsets_to1_bf16_d128",
                "simplicial_bwd_q_wgmma_d128",
                "simplicial_bwd_k_mma_r32_d128",
            ),
        ),
        (
            dims(8, 2048, 16, 1, 128, 128),
            c(32, 512),
            tc(
                "simplicial_fwd_producer_bf16_d128",
                "simplicial_bwd_q_wgmma_d128",
                "simplicial_bwd_k_mma_r32_d128",
            ),
        ),
        // D = 32, 96: the CUDA-core forward, the mma.sync backward
        (
            dims(1, 257, 16, 16, 32, 32),
            c(100, 150),
            tc(
                "simplicial_fwd_bf16_dv32",
                "simplicial_bwd_q_mma_d32",
                "simplicial_bwd_k_mma_r32_d32",
            ),
        ),
        (
            dims(2, 333, 8, 1, 96, 96),
            c(40, 70),
            tc(
                "simplicial_fwd_bf16_dv128",
                "simplicial_bwd_q_mma_d96",
                "simplicial_bwd_k_mma_r32_d96",
            ),
        ),
        (
            dims(1, 96, 64, 1, 96, 96),
            c(32, 512),
            tc(
                "simplicial_fwd_bf16_dv128",
                "simplicial_bwd_q_mma_d96",
                "simplicial_bwd_k_mma_d96",
            ),
        ),
    ];
    for (d, spec, want) in cases {
        assert_eq!(symbols(&d, &spec, bf, &HOPPER), want, "{d:?} {spec:?}");
    }
    // D = 256, D != Dv, f32, the determinant's lifted D: the CUDA-core kernels
    let core = |dt: &str, f: usize, q: usize, kv: usize| {
        let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        (
            format!("simplicial_fwd_{dt}_dv{f}"),
            owned(vec![
                &format!("simplicial_bwd_delta_{dt}"),
                &format!("simplicial_bwd_dq_{dt}_d{q}"),
                &format!("simplicial_bwd_dkv_{dt}_d{kv}"),
            ]),
        )
    };
    let owned =
        |(f, b): (String, Vec<&str>)| (f, b.into_iter().map(String::from).collect::<Vec<_>>());
    let lm = dims(32, 1024, 8, 8, 64, 64);
    assert_eq!(
        owned(symbols(&lm, &c(512, 32), DType::F32, &HOPPER)),
        core("f32", 64, 64, 64)
    );
    let anchor = dims(2, 8192, 64, 1, 128, 128);
    assert_eq!(
        owned(symbols(&anchor, &c(32, 512), DType::F32, &HOPPER)),
        core("f32", 128, 128, 128)
    );
    assert_eq!(
        owned(symbols(&dims(1, 50, 4, 2, 256, 256), &c(5, 9), bf, &HOPPER)),
        core("bf16", 256, 256, 256)
    );
    assert_eq!(
        owned(symbols(&dims(1, 50, 4, 2, 64, 32), &c(5, 9), bf, &HOPPER)),
        core("bf16", 32, 64, 64)
    );
    // determinant logits at D = 48: the kernels see q, k at 2D = 96 and v at 48
    assert_eq!(
        owned(symbols(
            &dims(1, 1024, 8, 1, 96, 48),
            &c(64, 32),
            bf,
            &HOPPER
        )),
        core("bf16", 64, 128, 128)
    );
}

#[test]
fn forced_choices_run_where_they_cover_the_call() {
    let lm = dims(32, 1024, 8, 8, 64, 64);
    let anchor = dims(2, 8192, 64, 1, 128, 128);
    let spec = AttnSpec::causal(512, 32);
    let with = |k: Kernels| spec.with_kernels(k);
    let k = Kernels::default();
    // tensor cores off, or the deterministic backward
    let off = with(Kernels {
        tensor_cores: false,
        ..k
    });
    let (f, b) = symbols(&anchor, &off, DType::BF16, &HOPPER);
    assert_eq!(f, "simplicial_fwd_bf16_dv128");
    assert_eq!(b[1], "simplicial_bwd_dq_bf16_d128");
    let det = with(Kernels {
        deterministic: true,
        ..k
    });
    let (f, b) = symbols(&anchor, &det, DType::BF16, &HOPPER);
    assert_eq!(f, "simplicial_fwd_producer_bf16_d128");
    assert_eq!(b[2], "simplicial_bwd_dkv_bf16_d128");
    // every forward layout at D = 128 and D = 64
    for (variant, d128, d64) in [
        (
            ForwardVariant::Specialized,
            "simplicial_fwd_wgmma_tj2_bf16_d128",
            "simplicial_fwd_wgmma_tj2_bf16_d64",
        ),
        (
            ForwardVariant::PingPong,
            "simplicial_fwd_wgmma_pp_tj1_bf16_d128",
            "simplicial_fwd_wgmma_pp_tj1_bf16_d64",
        ),
        (
            ForwardVariant::Producer,
            "simplicial_fwd_producer_bf16_d128",
            "simplicial_fwd_producer_bf16_d64",
        ),
        (
            ForwardVariant::Offsets,
            "simplicial_fwd_offsets_to1_bf16_d128",
            "simplicial_fwd_offsets_to2_bf16_d64",
        ),
    ] {
        let s = with(Kernels {
            forward: Some(variant),
            ..k
        });
        assert_eq!(symbols(&anchor, &s, DType::BF16, &HOPPER).0, d128);
        assert_eq!(symbols(&lm, &s, DType::BF16, &HOPPER).0, d64);
    }
    // the backward's families
    let bwd = |w, o, d: &Dims| {
        let s = with(Kernels {
            wgmma_backward: w,
            offsets_backward: o,
            ..k
        });
        let b = symbols(d, &s, DType::BF16, &HOPPER).1;
        (b[1], b[2])
    };
    let off = OffsetsBackward::Off;
    assert_eq!(
        bwd(WgmmaBackward::Q, off, &anchor),
        ("simplicial_bwd_q_wgmma_d128", "simplicial_bwd_k_mma_d128")
    );
    assert_eq!(
        bwd(WgmmaBackward::Off, off, &anchor),
        ("simplicial_bwd_q_mma_d128", "simplicial_bwd_k_mma_d128")
    );
    assert_eq!(
        bwd(WgmmaBackward::Off, off, &lm),
        ("simplicial_bwd_q_mma_d64", "simplicial_bwd_k_mma_r32_d64")
    );
    assert_eq!(
        bwd(WgmmaBackward::Q, OffsetsBackward::K, &lm),
        (
            "simplicial_bwd_q_wgmma_d64",
            "simplicial_bwd_offsets_k2_bf16_d64"
        )
    );
    assert_eq!(
        bwd(WgmmaBackward::Producer, OffsetsBackward::Q, &anchor),
        (
            "simplicial_bwd_q_wgmma_d128",
            "simplicial_bwd_producer_k2_bf16_d128"
        )
    );
    // the qk1 pass: G a power of two up to 128, D = 64 only
    let g = |hq, hkv| dims(1, 300, hq, hkv, 64, 64);
    for (hq, hkv, qk1) in [(2, 1, true), (128, 1, true), (3, 1, false), (256, 1, false)] {
        let q = bwd(WgmmaBackward::Off, OffsetsBackward::Both, &g(hq, hkv)).0;
        assert_eq!(q == "simplicial_bwd_offsets_qk1_bf16_d64", qk1, "G {hq}");
    }
}

#[test]
fn the_offset_walk_falls_back_where_its_rows_do_not_fit() {
    let k = Kernels::default();
    // window 1 = 1500 at G = 1: 1500 + 129 partner rows of 272 bytes do not fit 227 KiB
    let wide = AttnSpec::causal(1500, 2000);
    let f = |hq, hkv| {
        let d = dims(1, 4096, hq, hkv, 128, 128);
        simplicial::forward(&d, &wide.windows(4096), DType::BF16, &k, &HOPPER)
            .unwrap()
            .symbol()
    };
    assert_eq!(f(4, 1), "simplicial_fwd_wgmma_tj2_bf16_d128");
    assert_eq!(f(8, 1), "simplicial_fwd_wgmma_pp_tj1_bf16_d128");
    // the backward passes fall back to the other kernels
    let d = dims(1, 4096, 1, 1, 64, 64);
    let b = simplicial::backward(&d, &wide.windows(4096), DType::BF16, &k, &HOPPER).unwrap();
    let Backward::TensorCore { q, k: k2, .. } = b else {
        panic!("tensor cores")
    };
    assert_eq!(q.symbol(), "simplicial_bwd_q_mma_d64");
    assert_eq!(k2.symbol(), "simplicial_bwd_k_mma_r32_d64");
}

#[test]
fn errors_name_what_no_kernel_takes() {
    let k = Kernels::default();
    let spec = AttnSpec::causal(4, 4);
    let e = |d: Dims, dtype| {
        simplicial::forward(&d, &spec.windows(d.seq), dtype, &k, &HOPPER)
            .unwrap_err()
            .to_string()
    };
    let d = dims(1, 9, 2, 1, 64, 64);
    assert!(e(d, DType::F16).contains("F16"));
    assert!(e(d, DType::F16).contains("bf16 or f32"));
    assert!(e(dims(1, 9, 2, 1, 300, 300), DType::BF16).contains("Dv = 300"));
    assert!(e(dims(1, 9, 2, 1, 300, 8), DType::F32).contains("D = 300"));
    let dd = DotDims {
        batch: 1,
        seq_q: 4,
        seq_k: 4,
        heads_q: 2,
        heads_kv: 2,
        d: 8,
        dv: 320,
    };
    let e = dot::forward(&dd, DType::BF16, true, &k, &HOPPER).unwrap_err();
    assert!(e.to_string().contains("Dv = 320"), "{e}");
    let e = dot::forward(&DotDims { dv: 8, ..dd }, DType::F64, true, &k, &HOPPER).unwrap_err();
    assert!(e.to_string().contains("F64"), "{e}");
}

/// Head dims that differ (the determinant lift: q/k 2D, v D) are padded for the tensor cores
/// in bf16 where both are at most 128: to (128, 64) where the producer forward runs at D = 128
/// (G >= 16, or forced), the backward padding the values to 128 itself; to (64, 64) where both
/// fit; else to (128, 128). Otherwise the CUDA-core kernels run them.
#[test]
fn differing_head_dims_pad_to_the_tensor_cores() {
    let k = Kernels::default();
    let bf = DType::BF16;
    // (D, Dv) and G -> the padded dims
    let pad = |d: usize, dv: usize, g: usize, dtype: DType, k: &Kernels| {
        simplicial::padded_head_dims(&dims(2, 1024, g, 1, d, dv), dtype, k)
    };
    assert_eq!(
        pad(126, 63, 64, bf, &k),
        Some((128, 64)),
        "the anchor's lift"
    );
    assert_eq!(
        pad(126, 63, 16, bf, &k),
        Some((128, 64)),
        "G = 16: producer"
    );
    assert_eq!(
        pad(126, 63, 8, bf, &k),
        Some((128, 128)),
        "G = 8: the offset walk"
    );
    assert_eq!(pad(126, 63, 1, bf, &k), Some((128, 128)));
    assert_eq!(pad(96, 48, 64, bf, &k), Some((128, 64)));
    assert_eq!(pad(128, 64, 64, bf, &k), Some((128, 64)), "nothing padded");
    assert_eq!(pad(60, 30, 64, bf, &k), Some((64, 64)), "both fit 64");
    assert_eq!(pad(64, 32, 1, bf, &k), Some((64, 64)));
    assert_eq!(pad(128, 96, 64, bf, &k), Some((128, 128)), "values over 64");
    assert_eq!(pad(192, 96, 64, bf, &k), None, "over 128: CUDA cores");
    assert_eq!(pad(64, 64, 64, bf, &k), None, "D = Dv: nothing to pad");
    assert_eq!(pad(126, 63, 64, DType::F32, &k), None, "f32: CUDA cores");
    let off = Kernels {
        tensor_cores: false,
        ..k
    };
    assert_eq!(pad(126, 63, 64, bf, &off), None, "tensor cores off");
    let producer = Kernels {
        forward: Some(ForwardVariant::Producer),
        ..k
    };
    assert_eq!(pad(126, 63, 1, bf, &producer), Some((128, 64)), "forced");
    let offsets = Kernels {
        forward: Some(ForwardVariant::Offsets),
        ..k
    };
    assert_eq!(pad(126, 63, 64, bf, &offsets), Some((128, 128)), "forced");

    // every padded call is one a tensor-core forward takes
    let win = AttnSpec::causal(32, 512).windows(1024);
    let (narrow, wide) = (dims(2, 1024, 64, 1, 128, 64), dims(2, 1024, 8, 8, 128, 128));
    let f = simplicial::forward(&narrow, &win, bf, &k, &HOPPER).unwrap();
    assert_eq!(f.symbol(), "simplicial_fwd_producer_bf16_d128_dv64");
    let f = simplicial::forward(&narrow, &win, bf, &offsets, &HOPPER).unwrap();
    assert_eq!(
        f.symbol(),
        "simplicial_fwd_bf16_dv64",
        "(128, 64) is the producer's alone"
    );
    let f = simplicial::forward(&wide, &win, bf, &k, &HOPPER).unwrap();
    assert!(
        !f.symbol().starts_with("simplicial_fwd_bf16"),
        "{}",
        f.symbol()
    );
    // the backward of (128, 64) pads the values to 128 for the tensor cores, unless it runs on
    // the CUDA cores anyway
    assert_eq!(simplicial::backward_value_dim(&narrow, bf, &k), Some(128));
    let det = Kernels {
        deterministic: true,
        ..k
    };
    assert_eq!(simplicial::backward_value_dim(&narrow, bf, &det), None);
    assert_eq!(simplicial::backward_value_dim(&wide, bf, &k), None);
    let b = simplicial::backward(&dims(2, 1024, 64, 1, 128, 128), &win, bf, &k, &HOPPER).unwrap();
    assert!(matches!(b, Backward::TensorCore { .. }), "{b:?}");
}
