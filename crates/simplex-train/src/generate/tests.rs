//! The generator on small random f64 models (byte tokenizer): past `max_seq_len` every token
//! equals the greedy choice of the full forward of the cropped context, for every layer kind;
//! batched samples equal their seeds alone.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use simplex_model::{
    Config, Decoder, Model, Sampler, SamplingConfig, SimplicialConfig, SimplicialVariant,
};

use super::{GenerateOptions, Generator};
use crate::data::Tokenizer;
use crate::error::Result;
use crate::rng::SplitMix64;

const MAX: usize = 32;

fn cfg(pattern: &str, variant: SimplicialVariant, rotate: bool) -> Config {
    Config {
        vocab_size: 257,
        d_model: 12,
        pattern: pattern.to_string(),
        heads_q: 4,
        heads_kv: Some(2),
        head_dim: Some(4),
        window: 5,
        simplicial: SimplicialConfig {
            heads_q: Some(2),
            heads_kv: Some(1),
            head_dim: Some(6),
            w1: 6,
            w2: 3,
            variant,
            rotate,
        },
        mlp_hidden: 20,
        rope_theta: 100.0,
        tie_embeddings: false,
        norm_eps: 1e-5,
        max_seq_len: MAX,
        bidirectional: false,
        rope: true,
        moe: None,
    }
}

/// A generator over a model of `cfg` with seeded N(0, 0.4^2) f64 weights (norm gains near 1).
fn generator(cfg: &Config, seed: u64) -> Result<Generator> {
    let vm = VarMap::new();
    let model = Model::new(cfg, VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu))?;
    let mut rng = SplitMix64::new(seed);
    let data = vm.data().lock().expect("var map lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let (mean, std) = if name.contains("norm") {
            (1.0, 0.1)
        } else {
            (0.0, 0.4)
        };
        let v: Vec<f64> = (0..var.elem_count())
            .map(|_| mean + std * rng.normal())
            .collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
    }
    Ok(Generator {
        model,
        tokenizer: Tokenizer::Bytes,
        step: 0,
        device: Device::Cpu,
    })
}

fn greedy() -> SamplingConfig {
    SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    }
}

/// The greedy tokens of the full forward (no cache) of the context the documented rule
/// keeps: the last `max_seq_len` tokens of the prompt, then, whenever the context would pass
/// `max_seq_len`, its last `max_seq_len + 1 - shift`.
fn reference(model: &Model, prompt: &[u32], steps: usize, shift: usize) -> Result<Vec<u32>> {
    let mut ctx = prompt.to_vec();
    let mut start = ctx.len().saturating_sub(MAX);
    let mut out = Vec::new();
    let mut sampler = Sampler::new(greedy())?;
    for _ in 0..steps {
        if ctx.len() - start > MAX {
            start = ctx.len() - (MAX + 1 - shift);
        }
        let w = &ctx[start..];
        let logits = model.forward(&Tensor::new(w, &Device::Cpu)?.unsqueeze(0)?)?;
        let next = sampler.sample(&logits.i((0, w.len() - 1))?)?;
        out.push(next);
        ctx.push(next);
    }
    Ok(out)
}

#[test]
fn generate_past_max_seq_len_equals_the_full_forward_of_the_window() -> Result<()> {
    // a prompt of 62 tokens (with the end-of-text) and 100 new tokens, max_seq_len 32
    let prompt = "The quick brown fox jumps over the lazy dog, again and again.";
    let kinds = [
        ("DLS", SimplicialVariant::Trilinear, false),
        ("SDL", SimplicialVariant::Determinant, true),
        ("LSSD", SimplicialVariant::Determinant, false),
    ];
    for (i, (pattern, variant, rotate)) in kinds.into_iter().enumerate() {
        let g = generator(&cfg(pattern, variant, rotate), 7 + i as u64)?;
        let mut ids = vec![g.tokenizer.eot()];
        ids.extend(g.tokenizer.encode(prompt)?);
        assert_eq!(ids.len(), 62);
        for shift in [None, Some(1), Some(MAX)] {
            let opts = GenerateOptions {
                max_tokens: 100,
                sampling: greedy(),
                stop_at_eot: false,
                num_samples: 1,
                shift,
            };
            let got = g.generate_samples(prompt, &opts)?.remove(0);
            let s = shift.unwrap_or(Decoder::default_shift(MAX));
            let want = reference(&g.model, &ids, 100, s)?;
            assert_eq!(got.tokens, want, "{pattern} {variant:?} shift {s}");
            assert_eq!(got.prompt_tokens, ids.len());
            assert_eq!(
                got.cropped,
                ids.len() - MAX,
                "the prompt is cropped to its tail"
            );
            assert_eq!(got.slides, 99usize.div_ceil(s));
            assert!(!got.ended);
        }
    }
    Ok(())
}

#[test]
fn samples_are_one_batch_and_each_equals_its_seed_alone() -> Result<()> {
    let g = generator(&cfg("DLS", SimplicialVariant::Trilinear, false), 3)?;
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_k: Some(50),
        top_p: None,
        seed: 5,
    };
    let opts = GenerateOptions {
        max_tokens: 45,
        sampling,
        stop_at_eot: false,
        num_samples: 3,
        shift: None,
    };
    let all = g.generate_samples("Once upon a time", &opts)?;
    assert_eq!(all.len(), 3);
    for (i, s) in all.iter().enumerate() {
        let alone = g.generate(
            "Once upon a time",
            45,
            SamplingConfig {
                seed: 5 + i as u64,
                ..sampling
            },
            false,
        )?;
        assert_eq!(s.seed, 5 + i as u64);
        assert_eq!(s.tokens, alone.tokens, "sample {i}");
        assert_eq!(s.tokens.len(), 45);
    }
    assert!(
        all[0].tokens != all[1].tokens && all[1].tokens != all[2].tokens,
        "each sample has its own draws"
    );
    assert_eq!(g.generate_samples("Once upon a time", &opts)?, all);
    Ok(())
}

#[test]
fn a_sample_stops_at_end_of_text_while_the_others_go_on() -> Result<()> {
    let g = generator(&cfg("DS", SimplicialVariant::Trilinear, false), 4)?;
    let opts = GenerateOptions {
        max_tokens: 200,
        sampling: SamplingConfig {
            temperature: 3.0,
            seed: 1,
            ..Default::default()
        },
        stop_at_eot: true,
        num_samples: 8,
        shift: None,
    };
    // hot sampling over 257 ids: some samples draw end-of-text within 200 tokens, some not
    let all = g.generate_samples("a", &opts)?;
    let ended: Vec<bool> = all.iter().map(|s| s.ended).collect();
    assert!(ended.contains(&true) && ended.contains(&false), "{ended:?}");
    for s in &all {
        assert!(!s.tokens.contains(&g.tokenizer.eot()));
        assert_eq!(s.ended, s.tokens.len() < 200);
        let alone = g.generate_samples(
            "a",
            &GenerateOptions {
                num_samples: 1,
                sampling: SamplingConfig {
                    seed: s.seed,
                    ..opts.sampling
                },
                ..opts
            },
        )?;
        assert_eq!(alone[0].tokens, s.tokens, "seed {}", s.seed);
    }
    Ok(())
}

#[test]
fn bad_options_name_the_setting() -> Result<()> {
    let g = generator(&cfg("DS", SimplicialVariant::Trilinear, false), 5)?;
    let opts = GenerateOptions {
        num_samples: 0,
        ..GenerateOptions::default()
    };
    let e = g.generate_samples("x", &opts).unwrap_err().to_string();
    assert!(e.contains("num_samples = 0"), "{e}");
    for shift in [0, MAX + 1] {
        let opts = GenerateOptions {
            shift: Some(shift),
            ..GenerateOptions::default()
        };
        let e = g.generate_samples("x", &opts).unwrap_err().to_string();
        assert!(e.contains(&format!("shift = {shift}")), "{e}");
    }
    let none = GenerateOptions {
        max_tokens: 0,
        num_samples: 2,
        ..GenerateOptions::default()
    };
    let out = g.generate_samples("x", &none)?;
    assert!(out.len() == 2 && out.iter().all(|s| s.tokens.is_empty()));
    Ok(())
}
