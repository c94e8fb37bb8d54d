//! Bad input gives an error that names the problem, never a panic.

use candle_core::{DType, Device, Tensor};
use simplex_attn::{simplicial_attn, AttnSpec, Variant};

fn t(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::ones(shape, dtype, &Device::Cpu).expect("alloc")
}

fn err(q: &[usize], k: &[usize], v: &[usize], spec: AttnSpec) -> String {
    let f = DType::F32;
    match simplicial_attn(&t(q, f), &t(k, f), &t(k, f), &t(v, f), &t(v, f), &spec) {
        Ok(_) => panic!("expected an error for q {q:?} k {k:?} v {v:?} {spec:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_problem() {
    let c = AttnSpec::causal(4, 4);
    let cases: Vec<(String, &str)> = vec![
        (
            err(&[1, 8, 4, 16], &[1, 7, 2, 16], &[1, 7, 2, 16], c),
            "sequence lengths differ",
        ),
        (
            err(&[1, 8, 4, 16], &[2, 8, 2, 16], &[2, 8, 2, 16], c),
            "batch sizes differ",
        ),
        (
            err(&[1, 8, 6, 16], &[1, 8, 4, 16], &[1, 8, 4, 16], c),
            "heads_q = 6 is not a multiple of heads_kv = 4",
        ),
        (
            err(&[1, 8, 4, 16], &[1, 8, 2, 8], &[1, 8, 2, 8], c),
            "head dims of q and k differ",
        ),
        (
            err(
                &[1, 8, 4, 16],
                &[1, 8, 2, 16],
                &[1, 8, 2, 16],
                c.with_variant(Variant::Determinant),
            ),
            "divisible by 3",
        ),
        (
            err(
                &[1, 8, 4, 16],
                &[1, 8, 2, 16],
                &[1, 8, 2, 16],
                AttnSpec::causal(0, 2),
            ),
            "w1 = 0",
        ),
        (
            err(
                &[1, 8, 4, 16],
                &[1, 8, 2, 16],
                &[1, 8, 2, 16],
                AttnSpec::causal(3, 0),
            ),
            "w2 = 0",
        ),
        (
            err(&[1, 0, 4, 16], &[1, 0, 2, 16], &[1, 0, 2, 16], c),
            "empty tensor",
        ),
        (
            err(&[8, 4, 16], &[8, 2, 16], &[8, 2, 16], c),
            "expected 4 dims",
        ),
        (
            err(&[1, 8, 4, 16], &[1, 8, 2, 16], &[1, 8, 3, 16], c),
            "numbers of key/value heads differ",
        ),
        (
            err(
                &[1, 8, 4, 16],
                &[1, 8, 2, 16],
                &[1, 8, 2, 16],
                c.with_scale(f64::NAN),
            ),
            "scale",
        ),
    ];
    for (msg, want) in cases {
        assert!(
            msg.contains(want),
            "message `{msg}` should contain `{want}`"
        );
    }
}

#[test]
fn mixed_or_unsupported_dtypes_are_rejected() {
    let (q, k) = ([1, 4, 2, 8], [1, 4, 1, 8]);
    let e = simplicial_attn(
        &t(&q, DType::F32),
        &t(&k, DType::F64),
        &t(&k, DType::F32),
        &t(&k, DType::F32),
        &t(&k, DType::F32),
        &AttnSpec::causal(2, 2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("k1 is F64 but q is F32"), "{e}");
    let e = simplicial_attn(
        &t(&q, DType::U32),
        &t(&k, DType::U32),
        &t(&k, DType::U32),
        &t(&k, DType::U32),
        &t(&k, DType::U32),
        &AttnSpec::causal(2, 2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected f32, f64, bf16 or f16"), "{e}");
}

#[test]
fn non_contiguous_inputs_are_accepted() -> anyhow::Result<()> {
    // q given as a transposed view: same result as its contiguous copy
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, 4, 6, 8), &dev)?.transpose(1, 2)?; // [1,6,4,8] strided
    let k = Tensor::randn(0f32, 1.0, (1, 6, 2, 8), &dev)?;
    let spec = AttnSpec::causal(3, 2);
    let a = simplicial_attn(&q, &k, &k, &k, &k, &spec)?.o;
    let b = simplicial_attn(&q.contiguous()?, &k, &k, &k, &k, &spec)?.o;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    Ok(())
}
