//! The MoE ops on the CPU: the routed path (the fused op and its composed twin: permute, grouped
//! products, SwiGLU, combine) against the per-token reference, every gradient included, in f64,
//! f32 and bf16; the fused op against the twin; the routing tables;
//! the grouped product against its twin and finite differences; bad inputs.

mod common;
mod moe_common;

use candle_core::{DType, Device, Tensor, Var};
use common::assert_close;
use moe_common::{cases, run, MoeData, Path, PATHS};
use simplex_attn::moe::{self, dispatch, grouped_matmul, grouped_matmul_twin, NONE};

fn compare(dtype: DType, rtol: f64) {
    for (i, c) in cases(true).iter().enumerate() {
        let d = MoeData::new(c, 7 + i as u64);
        let want = run(c, &d, &Device::Cpu, DType::F64, Path::Reference).unwrap();
        for path in PATHS {
            let got = run(c, &d, &Device::Cpu, dtype, path).unwrap();
            assert_eq!(got.ids, want.ids, "{}: routing", c.name);
            got.assert_close_to(&want, &format!("{} {dtype:?} {path:?}", c.name), rtol);
        }
    }
}

/// The fused op computes what its twin does, in the same order: equal in f64 to rounding.
#[test]
fn fused_routed_experts_equal_the_twin() {
    for (i, c) in cases(true).iter().enumerate() {
        let d = MoeData::new(c, 30 + i as u64);
        let fused = run(c, &d, &Device::Cpu, DType::F64, Path::Fused).unwrap();
        let twin = run(c, &d, &Device::Cpu, DType::F64, Path::Composed).unwrap();
        fused.assert_close_to(&twin, c.name, 1e-12);
    }
}

#[test]
fn routed_path_equals_reference_in_f64() {
    compare(DType::F64, 1e-10);
}

#[test]
fn routed_path_equals_reference_in_f32() {
    compare(DType::F32, 2e-5);
}

#[test]
fn routed_path_equals_reference_in_bf16() {
    compare(DType::BF16, 3e-2);
}

/// Ties go to the lower expert and the choices come out best first.
#[test]
fn top_k_orders_and_breaks_ties_low() {
    let s = Tensor::new(
        &[[0.5f32, 1.0, 1.0, -2.0, 1.0], [3.0, 3.0, 3.0, 3.0, 3.0]],
        &Device::Cpu,
    )
    .unwrap();
    let ids = moe::top_k(&s, 3).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(ids, vec![vec![1, 2, 4], vec![0, 1, 2]]);
    assert!(moe::top_k(&s, 6).is_err());
    assert!(moe::top_k(&s, 0).is_err());
}

/// Slots are sorted by expert, stable in assignment order, `slot_of` and `slot_assign` invert
/// each other, the capacity keeps the earliest assignments, and the loads count every one.
#[test]
fn dispatch_sorts_stably_and_drops_past_capacity() {
    let ids: Vec<u32> = vec![2, 0, 2, 2, 1, 2, 0, 2]; // 4 tokens x k = 2, expert 3 idle
    let t = Tensor::from_vec(ids.clone(), (4, 2), &Device::Cpu).unwrap();
    for cap in [None, Some(3), Some(1)] {
        let d = dispatch(&t, 4, cap).unwrap();
        let so = d.slot_of.to_vec1::<u32>().unwrap();
        let sa = d.slot_assign.to_vec1::<u32>().unwrap();
        let off = d.offsets.to_vec1::<u32>().unwrap();
        assert_eq!(d.counts.to_vec1::<u32>().unwrap(), vec![2, 1, 5, 0]);
        let c = cap.unwrap_or(usize::MAX) as u32;
        let kept = |n: u32| n.min(c);
        assert_eq!(
            off,
            vec![
                0,
                kept(2),
                kept(2) + kept(1),
                kept(2) + kept(1) + kept(5),
                kept(2) + kept(1) + kept(5)
            ]
        );
        let mut seen = [0u32; 4];
        for (a, &e) in ids.iter().enumerate() {
            let rank = seen[e as usize];
            seen[e as usize] += 1;
            if rank < c {
                assert_eq!(so[a], off[e as usize] + rank, "cap {cap:?}: assignment {a}");
                assert_eq!(sa[so[a] as usize], a as u32);
            } else {
                assert_eq!(
                    so[a], NONE,
                    "cap {cap:?}: assignment {a} is past the capacity"
                );
            }
        }
        assert!(sa[off[4] as usize..].iter().all(|&s| s == NONE));
    }
    let bad = Tensor::from_vec(vec![0u32, 4], (1, 2), &Device::Cpu).unwrap();
    let e = dispatch(&bad, 4, None).unwrap_err().to_string();
    assert!(e.contains("expert id 4"), "{e}");
}

/// The grouped product and both gradients against the per-group candle product, with an
/// empty group, a tail of rows past the last group, in f64.
#[test]
fn grouped_matmul_equals_twin() {
    let dev = Device::Cpu;
    let (m, k, n) = (11, 6, 5);
    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (m, k), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, n, k), &dev).unwrap()).unwrap();
    let dy = Tensor::randn(0f64, 1.0, (m, n), &dev).unwrap();
    let off = Tensor::new(&[0u32, 3, 3, 7, 9], &dev).unwrap();
    let mut results = Vec::new();
    for twin in [false, true] {
        let y = if twin {
            grouped_matmul_twin(&x, &w, &off).unwrap()
        } else {
            grouped_matmul(&x, &w, &off).unwrap()
        };
        let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        results.push([v(&y), v(g.get(&x).unwrap()), v(g.get(&w).unwrap())]);
    }
    for (i, name) in ["y", "dx", "dw"].iter().enumerate() {
        assert_close(name, &results[0][i], &results[1][i], 1e-12, 1e-12);
    }
    // rows 9, 10 are past the last group: zero out, zero gradient
    assert!(results[0][0][9 * n..].iter().all(|&v| v == 0.0));
    assert!(results[0][1][9 * k..].iter().all(|&v| v == 0.0));
    // expert 1 has no rows: zero weight gradient
    assert!(results[0][2][n * k..2 * n * k].iter().all(|&v| v == 0.0));
}

/// Central differences of `sum(grouped_matmul(x, w) * dy)` for a few entries of x and w.
#[test]
fn grouped_matmul_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let (m, k, n) = (9, 4, 3);
    let xv: Vec<f64> = (0..m * k)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let wv: Vec<f64> = (0..3 * n * k)
        .map(|i| ((i * 5 % 13) as f64 - 6.0) / 6.0)
        .collect();
    let dyv: Vec<f64> = (0..m * n)
        .map(|i| ((i * 3 % 7) as f64 - 3.0) / 3.0)
        .collect();
    let off = Tensor::new(&[0u32, 4, 4, 8], &dev).unwrap();
    let dy = Tensor::from_slice(&dyv, (m, n), &dev).unwrap();
    let loss = |xv: &[f64], wv: &[f64]| -> f64 {
        let x = Tensor::from_slice(xv, (m, k), &dev).unwrap();
        let w = Tensor::from_slice(wv, (3, n, k), &dev).unwrap();
        (grouped_matmul(&x, &w, &off).unwrap() * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x = Var::from_slice(&xv, (m, k), &dev).unwrap();
    let w = Var::from_slice(&wv, (3, n, k), &dev).unwrap();
    let g = (grouped_matmul(&x, &w, &off).unwrap() * &dy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let gw = g
        .get(&w)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let h = 1e-6;
    for i in (0..m * k).step_by(5) {
        let (mut p, mut q) = (xv.clone(), xv.clone());
        p[i] += h;
        q[i] -= h;
        let fd = (loss(&p, &wv) - loss(&q, &wv)) / (2.0 * h);
        assert!((fd - gx[i]).abs() < 1e-6, "dx[{i}]: {} vs {fd}", gx[i]);
    }
    for i in (0..3 * n * k).step_by(4) {
        let (mut p, mut q) = (wv.clone(), wv.clone());
        p[i] += h;
        q[i] -= h;
        let fd = (loss(&xv, &p) - loss(&xv, &q)) / (2.0 * h);
        assert!((fd - gw[i]).abs() < 1e-6, "dw[{i}]: {} vs {fd}", gw[i]);
    }
}

#[test]
fn bad_inputs_name_the_problem() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((4, 6), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((2, 3, 5), DType::F32, &dev).unwrap();
    let off = Tensor::new(&[0u32, 2, 4], &dev).unwrap();
    let e = grouped_matmul(&x, &w, &off).unwrap_err().to_string();
    assert!(e.contains("6 columns"), "{e}");
    let w = Tensor::zeros((2, 3, 6), DType::F32, &dev).unwrap();
    let e = grouped_matmul(&x, &w, &Tensor::new(&[0u32, 3, 2], &dev).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("must ascend"), "{e}");
    let e = grouped_matmul(&x, &w, &Tensor::new(&[0u32, 2], &dev).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("experts + 1"), "{e}");
    let ids = Tensor::new(&[[0u32, 1], [1, 0]], &dev).unwrap();
    let d = dispatch(&ids, 2, None).unwrap();
    let e = moe::permute(&Tensor::zeros((3, 6), DType::F32, &dev).unwrap(), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 rows"), "{e}");
    // the fused routed path: 2 tokens, C = 6, H = 4, 2 experts
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();
    let routed = |x: &[usize], gu: &[usize], down: &[usize]| {
        moe::routed_experts(&z(x), &z(&[2, 2]), &z(gu), &z(down), &d)
            .unwrap_err()
            .to_string()
    };
    let e = routed(&[2, 6], &[2, 8, 5], &[2, 6, 4]);
    assert!(e.contains("gate_up [2, 8, 5]"), "{e}");
    let e = routed(&[2, 6], &[3, 8, 6], &[3, 6, 4]);
    assert!(e.contains("gate_up [3, 8, 6] must be [2,"), "{e}");
    let e = routed(&[2, 6], &[2, 8, 6], &[2, 6, 3]);
    assert!(e.contains("down [2, 6, 3] must be [2, 6, 4]"), "{e}");
    let e = routed(&[3, 6], &[2, 8, 6], &[2, 6, 4]);
    assert!(e.contains("x has 3 rows"), "{e}");
    // its backward outside autograd, given a gradient of another shape
    let r = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
    let (_, saved) =
        moe::routed_experts_saved(&r(&[2, 6]), &r(&[2, 2]), &r(&[2, 8, 6]), &r(&[2, 6, 4]), &d)
            .unwrap();
    let e = moe::routed_experts_grads(saved, &z(&[2, 5]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dout [2, 5] must be [2, 6]"), "{e}");
}
