//! Decoding past `max_seq_len`: every prediction of the cached [`Decoder`] equals the full
//! forward (no cache) of the cropped context, for every layer kind, across many slides.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{assert_close, build, flat, small_cfg};
use simplex_model::{Decoder, Model, Sampler, SamplingConfig, SimplicialVariant};

fn greedy() -> anyhow::Result<Sampler> {
    Ok(Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    })?)
}

/// Greedy continuation of `prompt` by `steps` tokens without any cache: each step runs the
/// full forward on the context the documented rule keeps (the prompt's last `max_seq_len`
/// tokens; when the context would exceed `max_seq_len`, its last `max_seq_len + 1 - shift`).
/// Returns the tokens and each step's logits.
fn reference(
    model: &Model,
    prompt: &[u32],
    steps: usize,
    shift: usize,
) -> anyhow::Result<(Vec<u32>, Vec<Vec<f64>>)> {
    let max = model.config().max_seq_len;
    let mut ctx = prompt.to_vec();
    let mut start = ctx.len().saturating_sub(max);
    let (mut toks, mut logits) = (Vec::new(), Vec::new());
    let mut sampler = greedy()?;
    for _ in 0..steps {
        if ctx.len() - start > max {
            start = ctx.len() - (max + 1 - shift);
        }
        let window = &ctx[start..];
        assert!(window.len() <= max);
        let input = Tensor::new(window, &Device::Cpu)?.unsqueeze(0)?;
        let last = model.forward(&input)?.i((0, window.len() - 1))?;
        let next = sampler.sample(&last)?;
        logits.push(flat(&last)?);
        toks.push(next);
        ctx.push(next);
    }
    Ok((toks, logits))
}

/// What [`decode`] returns: per row, the tokens and the logits of every step; the slides.
struct Decoded {
    tokens: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f64>>>,
    slides: usize,
}

/// Greedy decoding of `prompts` (one batch) with the decoder.
fn decode(
    model: &Model,
    prompts: &[Vec<u32>],
    steps: usize,
    shift: Option<usize>,
) -> anyhow::Result<Decoded> {
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (mut dec, mut logits) = Decoder::new(model, &rows, shift)?;
    let b = prompts.len();
    let mut samplers: Vec<Sampler> = (0..b).map(|_| greedy()).collect::<anyhow::Result<_>>()?;
    let (mut toks, mut all) = (vec![Vec::new(); b], vec![Vec::new(); b]);
    for s in 0..steps {
        let mut next = Vec::new();
        for (r, sampler) in samplers.iter_mut().enumerate() {
            let row = logits.get(r)?;
            next.push(sampler.sample(&row)?);
            all[r].push(flat(&row)?);
        }
        for (r, &t) in next.iter().enumerate() {
            toks[r].push(t);
        }
        assert!(dec.window(0).map_or(0, <[u32]>::len) <= model.config().max_seq_len);
        if s + 1 < steps {
            logits = dec.step(&next)?;
        }
    }
    Ok(Decoded {
        tokens: toks,
        logits: all,
        slides: dec.slides(),
    })
}

fn seeded_prompt(n: usize, vocab: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(7919).wrapping_add(seed * 31)) % vocab as u32)
        .collect()
}

fn check_kind(pattern: &str, variant: SimplicialVariant, rotate: bool) -> anyhow::Result<()> {
    let cfg = small_cfg(pattern, variant, rotate);
    let max = cfg.max_seq_len; // 32
    let (_vm, model) = build(&cfg, DType::F64, 0.5, 11)?;
    // a prompt longer than max_seq_len, and more new tokens than max_seq_len
    let prompt = seeded_prompt(45, cfg.vocab_size, 3);
    let steps = 70;
    for shift in [1, Decoder::default_shift(max), 13, max] {
        let (want, want_logits) = reference(&model, &prompt, steps, shift)?;
        let Decoded {
            tokens: got,
            logits: got_logits,
            slides,
        } = decode(&model, std::slice::from_ref(&prompt), steps, Some(shift))?;
        assert_eq!(got[0], want, "{pattern} {variant:?} shift {shift}: tokens");
        for (s, (g, w)) in got_logits[0].iter().zip(&want_logits).enumerate() {
            assert_close(
                &format!("{pattern} {variant:?} shift {shift}, step {s}"),
                g,
                w,
                1e-9,
                1e-9,
            );
        }
        // the prompt fills the window: a slide at the first new token, then every `shift`
        assert_eq!(slides, (steps - 1).div_ceil(shift), "shift {shift}");
    }
    Ok(())
}

#[test]
fn sliding_decode_matches_full_forward_of_the_window_trilinear() -> anyhow::Result<()> {
    check_kind("DLS", SimplicialVariant::Trilinear, false)
}

#[test]
fn sliding_decode_matches_full_forward_of_the_window_determinant_rotated() -> anyhow::Result<()> {
    check_kind("SLDS", SimplicialVariant::Determinant, true)
}

#[test]
fn sliding_decode_matches_full_forward_of_the_window_determinant() -> anyhow::Result<()> {
    check_kind("DSSD", SimplicialVariant::Determinant, false)
}

#[test]
fn a_batch_decodes_each_row_as_alone_and_short_prompts_slide_later() -> anyhow::Result<()> {
    let cfg = small_cfg("LSD", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F64, 0.5, 12)?;
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|s| seeded_prompt(5, cfg.vocab_size, s))
        .collect();
    let steps = 50;
    let Decoded {
        tokens: got,
        slides,
        ..
    } = decode(&model, &prompts, steps, Some(6))?;
    for (p, g) in prompts.iter().zip(&got) {
        let (want, _) = reference(&model, p, steps, 6)?;
        assert_eq!(g, &want, "prompt {p:?}");
    }
    // 5 + 27 tokens fill the window; the 28th new token slides it, then every 6th
    assert_eq!(slides, 1 + (steps - 1 - 28) / 6);
    Ok(())
}

#[test]
fn generate_goes_past_max_seq_len() -> anyhow::Result<()> {
    let cfg = small_cfg("DLS", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F64, 0.5, 13)?;
    let prompt = seeded_prompt(40, cfg.vocab_size, 9);
    let got = model.generate(&prompt, 60, &mut greedy()?)?;
    let (want, _) = reference(&model, &prompt, 60, Decoder::default_shift(32))?;
    assert_eq!(got, want);
    assert!(model.generate(&prompt, 0, &mut greedy()?)?.is_empty());
    Ok(())
}

#[test]
fn bad_decoder_input_is_named() -> anyhow::Result<()> {
    let cfg = small_cfg("DS", SimplicialVariant::Trilinear, false);
    let (_vm, model) = build(&cfg, DType::F32, 0.3, 14)?;
    let p: &[u32] = &[1, 2, 3];
    let e = Decoder::new(&model, &[p], Some(0)).unwrap_err().to_string();
    assert!(e.contains("shift = 0"), "{e}");
    let e = Decoder::new(&model, &[p], Some(33))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shift = 33") && e.contains("max_seq_len = 32"),
        "{e}"
    );
    let e = Decoder::new(&model, &[p, &[1, 2]], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt 1 has 2 tokens"), "{e}");
    let e = Decoder::new(&model, &[&[]], None).unwrap_err().to_string();
    assert!(e.contains("empty prompt"), "{e}");
    let e = Decoder::new(&model, &[], None).unwrap_err().to_string();
    assert!(e.contains("no prompt"), "{e}");
    let (mut dec, _) = Decoder::new(&model, &[p], None)?;
    let e = dec.step(&[1, 2]).unwrap_err().to_string();
    assert!(e.contains("one token per row"), "{e}");
    let e = dec.step(&[99]).unwrap_err().to_string();
    assert!(e.contains("token id 99"), "{e}");
    Ok(())
}
