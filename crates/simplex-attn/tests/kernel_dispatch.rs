//! Which kernels run a call ([`simplex_attn::kernels::dispatch`]), checked without a GPU: the
//! automatic choice at the shapes the project measures (the spec's anchors, the LM layer, GQA
//! ratios 1..128, head dims 32..256, bf16 and f32), the forced choices, and, over a grid of
//! several hundred thousand (shape, dtype, choice, device) combinations, the same kernels,
//! grids and shared memory as the choice made before it became one function
//! (`dispatch_legacy/mod.rs`).

mod dispatch_legacy;

use candle_core::DType;
use dispatch_legacy as legacy;
use simplex_attn::dot::DotDims;
use simplex_attn::kernels::dispatch::simplicial::Backward;
use simplex_attn::kernels::dispatch::{dot, simplicial};
use simplex_attn::kernels::{
    DeviceLimits, DotTensorCores, ForwardVariant, Kernels, Launch, OffsetsBackward, WgmmaBackward,
};
use simplex_attn::{AttnSpec, Dims};

const HOPPER: DeviceLimits = DeviceLimits::HOPPER;

fn dims(b: usize, n: usize, hq: usize, hkv: usize, d: usize, dv: usize) -> Dims {
    Dims {
        batch: b,
        seq: n,
        heads_q: hq,
        heads_kv: hkv,
        d,
        dv,
    }
}

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
        (
            format!("simplicial_fwd_{dt}_dv{f}"),
            vec![
                if dt == "bf16" {
                    "simplicial_bwd_delta_bf16"
                } else {
                    "simplicial_bwd_delta_f32"
                },
                simplex_attn::kernels::TABLE
                    .iter()
                    .find(|k| k.symbol == format!("simplicial_bwd_dq_{dt}_d{q}"))
                    .unwrap()
                    .symbol,
                simplex_attn::kernels::TABLE
                    .iter()
                    .find(|k| k.symbol == format!("simplicial_bwd_dkv_{dt}_d{kv}"))
                    .unwrap()
                    .symbol,
            ],
        )
    };
    let lm = dims(32, 1024, 8, 8, 64, 64);
    assert_eq!(
        symbols(&lm, &c(512, 32), DType::F32, &HOPPER),
        core("f32", 64, 64, 64)
    );
    let anchor = dims(2, 8192, 64, 1, 128, 128);
    assert_eq!(
        symbols(&anchor, &c(32, 512), DType::F32, &HOPPER),
        core("f32", 128, 128, 128)
    );
    assert_eq!(
        symbols(&dims(1, 50, 4, 2, 256, 256), &c(5, 9), bf, &HOPPER),
        core("bf16", 256, 256, 256)
    );
    assert_eq!(
        symbols(&dims(1, 50, 4, 2, 64, 32), &c(5, 9), bf, &HOPPER),
        core("bf16", 32, 64, 64)
    );
    // determinant logits at D = 48: the kernels see q, k at 2D = 96 and v at 48
    assert_eq!(
        symbols(&dims(1, 1024, 8, 1, 96, 48), &c(64, 32), bf, &HOPPER),
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
            ForwardVariant::Specialized {
                positions_per_handover: 1,
            },
            "simplicial_fwd_wgmma_tj1_bf16_d128",
            "simplicial_fwd_wgmma_tj1_bf16_d64",
        ),
        (
            ForwardVariant::Specialized {
                positions_per_handover: 2,
            },
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
            ForwardVariant::Offsets {
                offsets_per_step: 1,
            },
            "simplicial_fwd_offsets_to1_bf16_d128",
            "simplicial_fwd_offsets_to1_bf16_d64",
        ),
        (
            ForwardVariant::Offsets {
                offsets_per_step: 2,
            },
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
        bwd(WgmmaBackward::Both, off, &anchor),
        ("simplicial_bwd_q_wgmma_d128", "simplicial_bwd_k_wgmma_d128")
    );
    assert_eq!(
        bwd(WgmmaBackward::Off, off, &anchor),
        ("simplicial_bwd_q_mma_d128", "simplicial_bwd_k_mma_d128")
    );
    assert_eq!(
        bwd(WgmmaBackward::K, off, &lm),
        ("simplicial_bwd_q_mma_d64", "simplicial_bwd_k_wgmma_d64")
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

#[test]
fn the_dot_product_choice() {
    let k = Kernels::default();
    let mma = Kernels {
        dot: DotTensorCores::MmaSync,
        ..k
    };
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
        v.extend(b.delta.map(|l| l.symbol()));
        v.extend([b.dq.symbol(), b.dkv.symbol()]);
        v
    };
    let bf = DType::BF16;
    // the LM layer: the mma.sync forward, the wgmma backward (which computes delta in dq)
    assert_eq!(
        syms(&lm, bf, true, &k),
        [
            "dot_fwd_bf16_d64",
            "dot_bwd_dq_wgmma_bf16_d64",
            "dot_bwd_dkv_wgmma_bf16_d64"
        ]
    );
    assert_eq!(
        syms(&gqa, bf, true, &k),
        [
            "dot_fwd_wgmma_bf16_d128",
            "dot_bwd_dq_wgmma_bf16_d128",
            "dot_bwd_dkv_wgmma_bf16_d128"
        ]
    );
    assert_eq!(
        syms(&gqa, bf, true, &mma),
        [
            "dot_fwd_bf16_d128",
            "dot_bwd_delta_bf16",
            "dot_bwd_dq_bf16_d128",
            "dot_bwd_dkv_bf16_d128"
        ]
    );
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
    assert_eq!(b.dq.grid, (3, 1, 1));
    assert_eq!(b.dkv.grid, (1, 1, 1));
    assert_eq!(
        dot::backward(&lm, bf, true, &k, &HOPPER).unwrap().dq.grid,
        (132, 1, 1)
    );
}

fn as_legacy(l: &Launch) -> legacy::L {
    (l.symbol().to_string(), l.grid, l.threads(), l.smem)
}

fn simplicial_launches(
    d: &Dims,
    spec: &AttnSpec,
    dtype: DType,
    dev: &DeviceLimits,
) -> (Result<Vec<legacy::L>, ()>, Result<Vec<legacy::L>, ()>) {
    let win = spec.windows(d.seq);
    let k = &spec.kernels;
    let f = simplicial::forward(d, &win, dtype, k, dev)
        .map(|l| vec![as_legacy(&l)])
        .map_err(|_| ());
    let b = simplicial::backward(d, &win, dtype, k, dev)
        .map(|b| match b {
            Backward::Core { delta, dq, dkv } => vec![delta, dq, dkv],
            Backward::TensorCore { delta, q, k, round } => vec![delta, q, k, round],
        })
        .map(|v| v.iter().map(as_legacy).collect())
        .map_err(|_| ());
    (f, b)
}

#[test]
fn the_same_kernels_as_before_for_every_shape_and_choice() {
    let variants = [
        None,
        Some(ForwardVariant::Specialized {
            positions_per_handover: 1,
        }),
        Some(ForwardVariant::Specialized {
            positions_per_handover: 2,
        }),
        Some(ForwardVariant::PingPong),
        Some(ForwardVariant::Producer),
        Some(ForwardVariant::Offsets {
            offsets_per_step: 1,
        }),
        Some(ForwardVariant::Offsets {
            offsets_per_step: 2,
        }),
    ];
    let wgmma = [
        WgmmaBackward::Auto,
        WgmmaBackward::Off,
        WgmmaBackward::Q,
        WgmmaBackward::K,
        WgmmaBackward::Both,
        WgmmaBackward::Producer,
    ];
    let offsets = [
        OffsetsBackward::Auto,
        OffsetsBackward::Off,
        OffsetsBackward::Q,
        OffsetsBackward::K,
        OffsetsBackward::Both,
    ];
    let heads = [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (12, 2),
        (8, 8),
        (16, 2),
        (32, 4),
        (8, 1),
        (16, 1),
        (32, 1),
        (64, 1),
        (128, 2),
        (96, 1),
        (128, 1),
        (192, 1),
        (256, 1),
    ];
    let head_dims = [
        (3, 3),
        (32, 32),
        (64, 64),
        (64, 32),
        (96, 96),
        (96, 48),
        (128, 128),
        (200, 200),
        (256, 256),
        (300, 64),
    ];
    let windows = [
        AttnSpec::causal(32, 512),
        AttnSpec::causal(512, 32),
        AttnSpec::causal(1, 1),
        AttnSpec::causal(1500, 2000),
        AttnSpec::bidirectional().with_windows(Some(20), Some(90)),
        AttnSpec::bidirectional().with_windows(Some(700), None),
    ];
    let devices = [
        HOPPER,
        DeviceLimits {
            max_smem: 100 * 1024,
            multiprocessors: 1,
        },
    ];
    let mut checked = 0;
    for &(hq, hkv) in &heads {
        for &(d, dv) in &head_dims {
            for &n in &[1, 77, 1024, 4096] {
                for base in &windows {
                    for dtype in [DType::BF16, DType::F32, DType::F16] {
                        for dev in &devices {
                            let shape = dims(2, n, hq, hkv, d, dv);
                            let win = base.windows(n);
                            let ls = legacy::Shape {
                                b: 2,
                                n,
                                hq,
                                hkv,
                                d,
                                dv,
                                w1: win.w1,
                                w2: win.w2,
                                causal: win.causal,
                                bf16: dtype == DType::BF16,
                            };
                            for tensor_cores in [true, false] {
                                for deterministic in [false, true] {
                                    for &forward in &variants {
                                        for (&w, &o) in wgmma.iter().zip(offsets.iter().cycle()) {
                                            let k = Kernels {
                                                tensor_cores,
                                                deterministic,
                                                forward,
                                                wgmma_backward: w,
                                                offsets_backward: o,
                                                ..Kernels::default()
                                            };
                                            let sw = legacy::Switches {
                                                tensor_cores,
                                                deterministic,
                                                forward,
                                                wgmma: w,
                                                offsets: o,
                                                max_smem: dev.max_smem,
                                            };
                                            let spec = base.with_kernels(k);
                                            let (f, b) =
                                                simplicial_launches(&shape, &spec, dtype, dev);
                                            let (lf, lb) = if dtype == DType::F16 {
                                                (Err(()), Err(()))
                                            } else {
                                                (
                                                    legacy::forward(&ls, &sw).map_err(|_| ()),
                                                    legacy::backward(&ls, &sw).map_err(|_| ()),
                                                )
                                            };
                                            assert_eq!(f, lf, "forward {ls:?} {k:?} {dev:?}");
                                            // the backward runs only after a forward
                                            if f.is_ok() {
                                                assert_eq!(b, lb, "backward {ls:?} {k:?}");
                                            }
                                            checked += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
}

#[test]
fn the_same_dot_product_kernels_as_before() {
    let mut checked = 0;
    for &(b, nq, nk) in &[(1, 1, 1), (2, 100, 100), (32, 1024, 1024), (1, 7, 300)] {
        for &(hq, hkv) in &[(1, 1), (8, 8), (32, 8), (3, 1), (16, 2)] {
            for &(d, dv) in &[
                (64, 64),
                (128, 128),
                (64, 32),
                (96, 96),
                (3, 200),
                (256, 256),
            ] {
                for dtype in [DType::BF16, DType::F32, DType::F16] {
                    for aligned in [true, false] {
                        for tensor_cores in [true, false] {
                            for family in [DotTensorCores::Wgmma, DotTensorCores::MmaSync] {
                                for sms in [132, 1] {
                                    let dims = DotDims {
                                        batch: b,
                                        seq_q: nq,
                                        seq_k: nk,
                                        heads_q: hq,
                                        heads_kv: hkv,
                                        d,
                                        dv,
                                    };
                                    let k = Kernels {
                                        tensor_cores,
                                        dot: family,
                                        ..Kernels::default()
                                    };
                                    let dev = DeviceLimits {
                                        max_smem: 227 * 1024,
                                        multiprocessors: sms,
                                    };
                                    let f = dot::forward(&dims, dtype, aligned, &k, &dev)
                                        .map(|l| vec![as_legacy(&l)])
                                        .map_err(|_| ());
                                    let bw = dot::backward(&dims, dtype, aligned, &k, &dev)
                                        .map(|p| {
                                            let mut v: Vec<_> =
                                                p.delta.iter().map(as_legacy).collect();
                                            v.extend([as_legacy(&p.dq), as_legacy(&p.dkv)]);
                                            v
                                        })
                                        .map_err(|_| ());
                                    let s = legacy::DotShape {
                                        b,
                                        nq,
                                        nk,
                                        hq,
                                        hkv,
                                        d,
                                        dv,
                                        bf16: dtype == DType::BF16,
                                        aligned,
                                    };
                                    let mma = family == DotTensorCores::MmaSync;
                                    let (lf, lb) = if dtype == DType::F16 {
                                        (Err(()), Err(()))
                                    } else {
                                        (
                                            legacy::dot_forward(&s, tensor_cores, mma, sms)
                                                .map_err(|_| ()),
                                            legacy::dot_backward(&s, tensor_cores, mma, sms)
                                                .map_err(|_| ()),
                                        )
                                    };
                                    assert_eq!(f, lf, "{s:?} {k:?} {sms}");
                                    assert_eq!(bw, lb, "{s:?} {k:?} {sms}");
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 5_000, "{checked}");
}
