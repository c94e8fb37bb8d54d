//! `simplex attn run` end to end: outputs against the float64 oracle, and bad input; `simplex
//! bench attn` on the CPU.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use simplex_attn::reference::{
    simplicial_attn_backward_reference, simplicial_attn_reference, Inputs,
};
use simplex_attn::AttnSpec;

fn simplex(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .output()
        .expect("run simplex");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn randn(shape: &[usize], seed: u64) -> Vec<f64> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..shape.iter().product::<usize>())
        .map(|_| r.random_range(-1.0..1.0))
        .collect()
}

fn save(path: &Path, tensors: &[(&str, &[usize], Vec<f64>, DType)]) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, s, v, dt)| {
            let t = Tensor::from_vec(v.clone(), s.to_vec(), &Device::Cpu)
                .unwrap()
                .to_dtype(*dt)
                .unwrap();
            (n.to_string(), t)
        })
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn run_matches_the_oracle_forward_and_backward() {
    let dir = tempdir();
    let (qs, ks): (&[usize], &[usize]) = (&[1, 9, 4, 6], &[1, 9, 2, 6]);
    let x: Vec<Vec<f64>> = (0..6)
        .map(|s| randn(if s == 0 || s == 5 { qs } else { ks }, s as u64))
        .collect();
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    let f = DType::F64;
    save(
        &input,
        &[
            ("q", qs, x[0].clone(), f),
            ("k1", ks, x[1].clone(), f),
            ("k2", ks, x[2].clone(), f),
            ("v1", ks, x[3].clone(), f),
            ("v2", ks, x[4].clone(), f),
            ("do", qs, x[5].clone(), f),
        ],
    );
    let (ok, text) = simplex(&[
        "attn",
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--w1",
        "3",
        "--w2",
        "5",
        "--variant",
        "determinant",
        "--backward",
    ]);
    assert!(ok, "{text}");
    let spec = AttnSpec::causal(3, 5).with_variant(simplex_attn::Variant::Determinant);
    let dims = spec.dims(qs, ks, ks, ks, ks).unwrap();
    let inp = Inputs {
        q: &x[0],
        k1: &x[1],
        k2: &x[2],
        v1: &x[3],
        v2: &x[4],
    };
    let want = simplicial_attn_reference(&spec, &dims, &inp);
    let wg = simplicial_attn_backward_reference(&spec, &dims, &inp, &x[5]);
    let got = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
    let flat = |n: &str| {
        got[n]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    for (name, w) in [
        ("o", &want.o),
        ("lse", &want.lse),
        ("dq", &wg.dq),
        ("dk1", &wg.dk1),
        ("dk2", &wg.dk2),
        ("dv1", &wg.dv1),
        ("dv2", &wg.dv2),
    ] {
        let g = flat(name);
        let err = g
            .iter()
            .zip(w.iter())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-10, "{name}: max error {err}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempdir();
    let good = dir.join("good.safetensors");
    let out = dir.join("o.safetensors");
    let (qs, ks): (&[usize], &[usize]) = (&[1, 5, 2, 6], &[1, 5, 1, 6]);
    let f = DType::F32;
    let base = vec![
        ("q", qs, randn(qs, 1), f),
        ("k1", ks, randn(ks, 2), f),
        ("k2", ks, randn(ks, 3), f),
        ("v1", ks, randn(ks, 4), f),
    ];
    let run = |input: &Path, extra: &[&str]| {
        let mut args = vec![
            "attn",
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        simplex(&args)
    };
    // a missing tensor
    save(&good, &base);
    let (ok, text) = run(&good, &[]);
    assert!(!ok && text.contains("no tensor named `v2`"), "{text}");
    // a wrongly typed tensor
    let mut typed = base.clone();
    typed.push(("v2", ks, randn(ks, 5), DType::U32));
    save(&good, &typed);
    let (ok, text) = run(&good, &[]);
    assert!(!ok && text.contains("`v2` is U32"), "{text}");
    // mismatched shapes
    let mut shaped = base.clone();
    shaped.push(("v2", &[1, 4, 1, 6], randn(&[1, 4, 1, 6], 5), f));
    save(&good, &shaped);
    let (ok, text) = run(&good, &[]);
    assert!(!ok && text.contains("sequence lengths differ"), "{text}");
    // window 0, determinant with D % 3 != 0 is fine here (6), a missing `do`, a missing file
    let mut fine = base.clone();
    fine.push(("v2", ks, randn(ks, 5), f));
    save(&good, &fine);
    let (ok, text) = run(&good, &["--w1", "0"]);
    assert!(!ok && text.contains("w1 = 0"), "{text}");
    let (ok, text) = run(&good, &["--backward"]);
    assert!(!ok && text.contains("no tensor named `do`"), "{text}");
    let (ok, text) = run(&dir.join("nope.safetensors"), &[]);
    assert!(!ok && text.contains("no such file"), "{text}");
    std::fs::write(dir.join("junk.safetensors"), b"not a safetensors file").unwrap();
    let (ok, text) = run(&dir.join("junk.safetensors"), &[]);
    assert!(
        !ok && text.contains("not a readable safetensors file"),
        "{text}"
    );
    let (ok, text) = run(&good, &["--device", "tpu"]);
    assert!(!ok && text.contains("expected `cpu` or `cuda"), "{text}");
    // a kernel choice with a bad value is an error naming it (a good one runs on the CPU)
    let (ok, text) = run(&good, &["--kernels", "forward=fast"]);
    assert!(!ok && text.contains("forward=\"fast\""), "{text}");
    assert!(!out.exists(), "no output is written on error");
    let (ok, text) = run(&good, &["--kernels", "forward=pp,deterministic=on"]);
    assert!(ok, "{text}");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "simplex-cli-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bench_attn_times_both_backward_paths_on_the_cpu() {
    let dir = tempdir();
    let json = dir.join("bench.jsonl");
    let (ok, out) = simplex(&[
        "bench",
        "attn",
        "--shape",
        "b=1,n=24,hq=2,hkv=1,d=8,w1=4,w2=3,dtype=f32",
        "--shape",
        "b=1,n=24,hq=2,hkv=1,d=6,w1=4,w2=3,dtype=f32,variant=det",
        "--reps",
        "1",
        "--seconds",
        "0",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{out}");
    // the trilinear row is timed outside autograd too; the determinant lift needs autograd
    assert_eq!(out.matches("outside autograd").count(), 1, "{out}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .expect("bench json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let direct = rows[0]["forward_backward_direct_s"].as_f64();
    assert!(direct.is_some_and(|t| t > 0.0), "{:?}", rows[0]);
    assert!(
        rows[1]["forward_backward_direct_s"].is_null(),
        "{:?}",
        rows[1]
    );
    for row in &rows {
        let t = row["forward_backward_s"].as_f64();
        assert!(t.is_some_and(|t| t > 0.0), "{row:?}");
    }
    let (ok, out) = simplex(&["bench", "attn", "--shape", "b=1,n=24,hq=2,d=8,w1=4"]);
    assert!(!ok && out.contains("hkv"), "{out}");
    for (flag, value) in [("--seconds", "nan"), ("--seconds", "-1"), ("--reps", "0")] {
        let (ok, out) = simplex(&["bench", "attn", flag, value]);
        assert!(!ok && out.contains(flag), "{flag} {value}: {out}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
