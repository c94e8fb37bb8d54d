//! [`simplex_attn::kernels::dispatch`] against the choice as it was made before it became one
//! function (`dispatch_legacy/`: the process-global switches as arguments): the same kernels,
//! grids, threads and shared memory over a grid of about three million (shape, dtype, choice,
//! device) combinations of 2-simplicial calls and thousands of dot-product ones. No GPU. The
//! forward layouts and the wgmma k kernel retired since (docs/history/kernels.md) are gone from
//! both sides.

mod common;
mod dispatch_legacy;

use candle_core::DType;
use common::dims;
use dispatch_legacy as legacy;
use simplex_attn::dot::DotDims;
use simplex_attn::kernels::dispatch::simplicial::Backward;
use simplex_attn::kernels::dispatch::{dot, simplicial};
use simplex_attn::kernels::{
    DeviceLimits, ForwardVariant, Kernels, Launch, OffsetsBackward, WgmmaBackward,
};
use simplex_attn::{AttnSpec, Dims};

const HOPPER: DeviceLimits = DeviceLimits::HOPPER;

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
        Some(ForwardVariant::Specialized),
        Some(ForwardVariant::PingPong),
        Some(ForwardVariant::Producer),
        Some(ForwardVariant::Offsets),
    ];
    let wgmma = [
        WgmmaBackward::Auto,
        WgmmaBackward::Off,
        WgmmaBackward::Q,
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
                                    .map(|p| p.launches().iter().map(as_legacy).collect::<Vec<_>>())
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
                                let (lf, lb) = if dtype == DType::F16 {
                                    (Err(()), Err(()))
                                } else {
                                    (
                                        legacy::dot_forward(&s, tensor_cores, sms).map_err(|_| ()),
                                        legacy::dot_backward(&s, tensor_cores, sms).map_err(|_| ()),
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
    assert!(checked > 2_500, "{checked}");
}
