//! KV-cache decoding gives the logits of the full forward: prefill, single tokens and chunks,
//! with windows shorter than the sequence so every ring buffer wraps.

mod common;

use candle_core::{DType, IndexOp, Tensor};
use common::{assert_close, build, check_cached_decoding as check, flat, small_cfg, tokens};
use simplex_model::{Cache, Sampler, SamplingConfig, SimplicialVariant};

#[test]
fn cache_matches_full_forward_trilinear() -> anyhow::Result<()> {
    let cfg = small_cfg("DLS", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F64, 0.3, 1)?;
    let toks = tokens(2, 15, cfg.vocab_size, 2)?;
    check(&model, &toks, &[5, 1, 1, 1, 3, 1, 2, 1], 1e-10)
}

#[test]
fn cache_matches_full_forward_determinant_rotated() -> anyhow::Result<()> {
    let cfg = small_cfg("SLDS", SimplicialVariant::Determinant, true);
    let (_vm, model) = build(&cfg, DType::F64, 0.3, 3)?;
    let toks = tokens(2, 14, cfg.vocab_size, 4)?;
    check(&model, &toks, &[4, 1, 1, 2, 1, 5], 1e-10)
}

#[test]
fn cache_matches_full_forward_determinant_one_token_prefill_f32() -> anyhow::Result<()> {
    let cfg = small_cfg("LSD", SimplicialVariant::Determinant, false);
    let (_vm, model) = build(&cfg, DType::F32, 0.3, 5)?;
    let toks = tokens(1, 11, cfg.vocab_size, 6)?;
    check(&model, &toks, &[1; 11], 2e-5)
}

#[test]
fn greedy_generation_with_cache_equals_recomputing_the_prefix() -> anyhow::Result<()> {
    let cfg = small_cfg("DLS", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F64, 0.5, 7)?;
    let prompt = [3u32, 1, 4, 1, 5];
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    })?;
    let got = model.generate(&prompt, 8, &mut sampler)?;
    let mut seq = prompt.to_vec();
    for _ in 0..8 {
        let logits = model
            .forward(&Tensor::new(seq.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?)?;
        let last = logits.i((0, seq.len() - 1))?;
        seq.push(last.argmax(0)?.to_scalar::<u32>()?);
    }
    assert_eq!(got, seq[prompt.len()..]);
    Ok(())
}

#[test]
fn cache_misuse_is_an_error() -> anyhow::Result<()> {
    let cfg = small_cfg("DLS", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F32, 0.3, 8)?;
    let other = small_cfg("DS", SimplicialVariant::Trilinear, false);
    let mut cache = Cache::new(&other);
    let e = model
        .forward_step(&tokens(1, 3, 19, 1)?, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the cache has 2 layers"), "{e}");
    let mut cache = Cache::new(&cfg);
    model.forward_step(&tokens(1, 30, 19, 1)?, &mut cache)?;
    let e = model
        .forward_step(&tokens(1, 3, 19, 1)?, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_seq_len = 32"), "{e}");
    let e = model
        .forward_step(&tokens(2, 1, 19, 1)?, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fresh cache"), "{e}");
    Ok(())
}

#[test]
fn step_twin_matches_the_fused_op_on_whole_sequences() -> anyhow::Result<()> {
    use simplex_attn::{simplicial_attn, AttnSpec, Variant};
    use simplex_model::simplicial::simplicial_step;
    let dev = candle_core::Device::Cpu;
    for variant in [Variant::Trilinear, Variant::Determinant] {
        let spec = AttnSpec::causal(4, 3).with_variant(variant);
        let r = |h: usize, seed: u64| -> anyhow::Result<Tensor> {
            Ok(Tensor::randn(0.0f64, 1.0, (2, 9, h, 6), &dev)?.affine(1.0, seed as f64 * 1e-3)?)
        };
        let (q, k1, k2, v1, v2) = (r(4, 1)?, r(2, 2)?, r(2, 3)?, r(2, 4)?, r(2, 5)?);
        let want = simplicial_attn(&q, &k1, &k2, &v1, &v2, &spec)?.o;
        let got = simplicial_step(&q, &k1, &k2, &v1, &v2, &spec)?;
        assert_close(
            &format!("{variant}"),
            &flat(&got)?,
            &flat(&want)?,
            1e-12,
            1e-12,
        );
        // the last 3 queries alone, over the whole key sequences
        let got = simplicial_step(&q.narrow(1, 6, 3)?, &k1, &k2, &v1, &v2, &spec)?;
        assert_close(
            &format!("{variant} tail"),
            &flat(&got)?,
            &flat(&want.narrow(1, 6, 3)?)?,
            1e-12,
            1e-12,
        );
    }
    Ok(())
}
