//! The fused ops' test cases, shared by `fused_vs_twin.rs` (CPU) and `cuda_fused.rs` (GPU):
//! each case builds its outputs from random inputs either with the fused op or with its
//! candle-op twin; [`run`] gives the outputs and the gradients of `sum_k sum(out_k * r_k)`
//! (random `r_k`) with respect to every input.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simplex_attn::dot::DotSpec;
use simplex_attn::fused::{self, DotLayer, HeadPart, RopeTables, Targets};

/// Which implementation a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Fused,
    Twin,
}

type Body = Box<dyn Fn(&[Tensor], Impl, &Device) -> Result<Vec<Tensor>>>;

/// A run's outputs and input gradients, as f64 vectors.
pub type Run = (Vec<Vec<f64>>, Vec<Vec<f64>>);

/// One case: named random inputs (shape, amplitude) and the op applied to them.
pub struct OpCase {
    pub name: String,
    pub inputs: Vec<(Vec<usize>, f64)>,
    pub body: Body,
}

fn case(name: &str, inputs: Vec<(Vec<usize>, f64)>, body: Body) -> OpCase {
    OpCase {
        name: name.to_string(),
        inputs,
        body,
    }
}

/// Values of a case's inputs (f64, seeded by the case and input index).
pub fn input_values(c: &OpCase, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = StdRng::seed_from_u64(seed);
    c.inputs
        .iter()
        .map(|(shape, amp)| {
            let n: usize = shape.iter().product();
            (0..n).map(|_| rng.random_range(-*amp..*amp)).collect()
        })
        .collect()
}

/// Outputs and input gradients (as f64 vectors) of case `c` run by `which` on `dev` in `dtype`.
pub fn run(
    c: &OpCase,
    which: Impl,
    dev: &Device,
    dtype: DType,
    values: &[Vec<f64>],
) -> Result<Run> {
    let vars: Vec<Var> = c
        .inputs
        .iter()
        .zip(values)
        .map(|((shape, _), v)| {
            Var::from_tensor(&Tensor::from_vec(v.clone(), shape.as_slice(), dev)?.to_dtype(dtype)?)
        })
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let outs = (c.body)(&ts, which, dev)?;
    let mut rng = StdRng::seed_from_u64(99);
    let mut loss: Option<Tensor> = None;
    for o in &outs {
        let r: Vec<f64> = (0..o.elem_count())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let r = Tensor::from_vec(r, o.dims(), dev)?.to_dtype(DType::F64)?;
        let term = (o.to_dtype(DType::F64)? * r)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => (l + term)?,
            None => term,
        });
    }
    let grads = loss.expect("a case has outputs").backward()?;
    let host =
        |t: &Tensor| -> Result<Vec<f64>> { t.to_dtype(DType::F64)?.flatten_all()?.to_vec1() };
    let outs = outs.iter().map(host).collect::<Result<_>>()?;
    let gs = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => host(g),
            None => Ok(vec![0.0; v.elem_count()]),
        })
        .collect::<Result<_>>()?;
    Ok((outs, gs))
}

/// The scalar loss of [`run`] for given input values (f64 on the CPU, fused op): for finite
/// differences.
pub fn loss_at(c: &OpCase, values: &[Vec<f64>]) -> Result<f64> {
    let dev = Device::Cpu;
    let ts: Vec<Tensor> = c
        .inputs
        .iter()
        .zip(values)
        .map(|((shape, _), v)| Tensor::from_vec(v.clone(), shape.as_slice(), &dev))
        .collect::<Result<_>>()?;
    let outs = (c.body)(&ts, Impl::Fused, &dev)?;
    let mut rng = StdRng::seed_from_u64(99);
    let mut total = 0.0;
    for o in &outs {
        let o = o.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for x in o {
            total += x * rng.random_range(-1.0..1.0);
        }
    }
    Ok(total)
}

fn targets(n: usize, v: usize, ignore: Option<(u32, usize)>, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| match ignore {
            Some((id, every)) if i % every == 1 => id,
            _ => rng.random_range(0..v as u32),
        })
        .collect()
}

/// Every case; `big` adds the shapes that take the kernels' vector paths and more rows.
pub fn cases(big: bool) -> Vec<OpCase> {
    let mut out = Vec::new();
    let mut norms = vec![(vec![3, 5, 7], 7usize), (vec![1, 1], 1), (vec![2, 16], 16)];
    if big {
        norms.extend([
            (vec![4, 33, 64], 64),
            (vec![300, 512], 512),
            (vec![5, 24], 24),
        ]);
    }
    for (shape, c) in norms {
        out.push(case(
            &format!("rms_norm x{shape:?}"),
            vec![(shape.clone(), 2.0), (vec![c], 1.5)],
            Box::new(|t, which, _| {
                Ok(vec![match which {
                    Impl::Fused => fused::rms_norm(&t[0], &t[1], 1e-5)?,
                    Impl::Twin => fused::rms_norm_twin(&t[0], &t[1], 1e-5)?,
                }])
            }),
        ));
        out.push(case(
            &format!("add_rms_norm x{shape:?}"),
            vec![(shape.clone(), 2.0), (shape.clone(), 1.0), (vec![c], 1.5)],
            Box::new(|t, which, _| {
                let (h, y) = match which {
                    Impl::Fused => fused::add_rms_norm(&t[0], &t[1], &t[2], 1e-6)?,
                    Impl::Twin => fused::add_rms_norm_twin(&t[0], &t[1], &t[2], 1e-6)?,
                };
                Ok(vec![h, y])
            }),
        ));
    }
    // (B, N, D, heads per part, rotated per part, rope position)
    type Split = (usize, usize, usize, Vec<usize>, Vec<bool>, usize);
    let mut splits: Vec<Split> = vec![
        (2, 5, 8, vec![3, 1, 1], vec![true, true, false], 2),
        (1, 1, 4, vec![1, 1, 1], vec![true, true, false], 0),
        (2, 3, 6, vec![2, 1, 1, 1, 1], vec![false; 5], 0),
        (1, 4, 3, vec![1, 2], vec![false, false], 0),
        (
            1,
            3,
            6,
            vec![2, 1, 1, 1, 1],
            vec![true, true, true, false, false],
            5,
        ),
    ];
    if big {
        splits.extend([
            (2, 33, 32, vec![4, 2, 2], vec![true, true, false], 7),
            (3, 17, 64, vec![2, 2, 2, 2, 2], vec![false; 5], 0),
            (1, 9, 10, vec![1, 1, 1], vec![true, true, false], 1),
        ]);
    }
    for (b, n, d, heads, rot, pos) in splits {
        let w: usize = heads.iter().sum::<usize>() * d;
        let parts: Vec<HeadPart> = heads
            .iter()
            .zip(&rot)
            .map(|(&h, &r)| HeadPart {
                heads: h,
                rotate: r,
            })
            .collect();
        let any_rot = rot.iter().any(|&r| r);
        out.push(case(
            &format!("split_heads B{b} N{n} D{d} {heads:?} {rot:?} pos {pos}"),
            vec![(vec![b, n, w], 1.5)],
            Box::new(move |t, which, dev| {
                let tables = if any_rot {
                    Some(RopeTables::new(d, pos + n + 3, 10_000.0, dev)?)
                } else {
                    None
                };
                let rope = tables.as_ref().map(|t| (t, pos));
                match which {
                    Impl::Fused => fused::split_heads(&t[0], d, &parts, rope),
                    Impl::Twin => fused::split_heads_twin(&t[0], d, &parts, rope),
                }
            }),
        ));
    }
    let mut glus = vec![vec![4, 6], vec![2, 3, 16], vec![1, 2]];
    if big {
        glus.extend([vec![64, 2816], vec![3, 5, 22]]);
    }
    for shape in glus {
        out.push(case(
            &format!("swiglu {shape:?}"),
            vec![(shape, 3.0)],
            Box::new(|t, which, _| {
                Ok(vec![match which {
                    Impl::Fused => fused::swiglu(&t[0])?,
                    Impl::Twin => fused::swiglu_twin(&t[0])?,
                }])
            }),
        ));
    }
    // (x shape, hidden H)
    let mut mlps = vec![(vec![2, 5, 6], 7usize), (vec![3, 4], 2)];
    if big {
        mlps.push((vec![4, 33, 64], 88));
    }
    for (shape, h) in mlps {
        let c = *shape.last().unwrap();
        out.push(case(
            &format!("swiglu_mlp x{shape:?} H{h}"),
            vec![
                (shape.clone(), 1.5),
                (vec![2 * h, c], 0.5),
                (vec![c, h], 0.5),
            ],
            Box::new(|t, which, _| {
                Ok(vec![match which {
                    Impl::Fused => fused::swiglu_mlp(&t[0], &t[1], &t[2])?,
                    Impl::Twin => fused::swiglu_mlp_twin(&t[0], &t[1], &t[2])?,
                }])
            }),
        ));
    }
    // (B, N, C, Hq, Hkv, D, causal, window, rope position)
    type Attn = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        Option<usize>,
        Option<usize>,
    );
    let mut attns: Vec<Attn> = vec![
        (2, 7, 16, 2, 1, 8, true, None, Some(0)),
        (1, 5, 12, 2, 2, 6, false, Some(3), None),
        (1, 1, 8, 1, 1, 4, true, None, Some(3)),
    ];
    if big {
        attns.extend([
            (2, 70, 128, 2, 2, 64, true, None, Some(0)),
            (1, 40, 64, 4, 2, 64, true, Some(16), Some(5)),
        ]);
    }
    for (b, n, c, hq, hkv, d, causal, window, pos) in attns {
        let w = (hq + 2 * hkv) * d;
        out.push(case(
            &format!("dot_attention_layer B{b} N{n} C{c} Hq{hq} Hkv{hkv} D{d} causal {causal} window {window:?} rope {pos:?}"),
            vec![(vec![b, n, c], 1.0), (vec![w, c], 0.4), (vec![c, hq * d], 0.4)],
            Box::new(move |t, which, dev| {
                let base = if causal { DotSpec::causal() } else { DotSpec::bidirectional() };
                let layer = DotLayer {
                    heads_q: hq,
                    heads_kv: hkv,
                    head_dim: d,
                    spec: base.with_window(window),
                    rope: match pos {
                        Some(p) => Some((RopeTables::new(d, p + n + 2, 1e4, dev)?, p)),
                        None => None,
                    },
                };
                Ok(vec![match which {
                    Impl::Fused => fused::dot_attention_layer(&t[0], &t[1], &t[2], &layer)?,
                    Impl::Twin => fused::dot_attention_layer_twin(&t[0], &t[1], &t[2], &layer)?,
                }])
            }),
        ));
    }
    // (T, C, V, ignore (id, every k-th row), rows per chunk)
    let mut xents = vec![
        (11usize, 5usize, 7usize, None, None),
        (9, 4, 6, Some((999u32, 3usize)), None),
        (13, 5, 7, None, Some(3usize)),
        (10, 3, 5, Some((2, 4)), Some(4)),
        (1, 2, 1, None, None),
    ];
    if big {
        xents.extend([
            (700, 64, 256, None, None),
            (129, 32, 1000, Some((999, 5)), Some(50)),
        ]);
    }
    for (t_rows, c, v, ignore, chunk) in xents {
        let ids = targets(t_rows, v, ignore, t_rows as u64);
        out.push(case(
            &format!("linear_cross_entropy T{t_rows} C{c} V{v} ignore {ignore:?} chunk {chunk:?}"),
            vec![(vec![t_rows, c], 1.5), (vec![v, c], 1.0)],
            Box::new(move |t, which, dev| {
                let ids = Tensor::new(ids.as_slice(), dev)?;
                let tg = Targets {
                    ids: &ids,
                    ignore: ignore.map(|(id, _)| id),
                };
                Ok(vec![match which {
                    Impl::Fused => match chunk {
                        Some(rows) => {
                            fused::linear_cross_entropy_chunked(&t[0], &t[1], tg, rows * v)?
                        }
                        None => fused::linear_cross_entropy(&t[0], &t[1], tg)?,
                    },
                    Impl::Twin => fused::linear_cross_entropy_twin(&t[0], &t[1], tg)?,
                }])
            }),
        ));
    }
    out
}
