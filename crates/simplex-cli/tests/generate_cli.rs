//! `simplex generate` end to end: past max_seq_len on every layer kind (each greedy token
//! checked against the full forward of the cropped window), --num-samples, --interactive.
//! Two small models (max_seq_len 32; D, L, S layers, trilinear and determinant) are trained
//! for a few steps once per test binary.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use candle_core::{Device, IndexOp, Tensor};
use common::simplex;
use simplex_model::Decoder;
use simplex_train::{GenerateOptions, Generator};

const MAX: usize = 32;

/// The runs: `DLS` with trilinear S layers, `SLD` with rotated determinant ones.
fn runs() -> &'static [PathBuf; 2] {
    static RUNS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("simplex-cli-gen-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clean temp dir");
        }
        std::fs::create_dir_all(&dir).expect("temp dir");
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus");
        let train = |name: &str, pattern: &str, simplicial: &str| {
            let cfg = dir.join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "vocab_size = 257\nd_model = 24\npattern = \"{pattern}\"\nheads_q = 2\n\
                     mlp_hidden = 48\nmax_seq_len = {MAX}\nwindow = 6\n\n[simplicial]\n\
                     heads_q = 2\nheads_kv = 1\nhead_dim = 12\nw1 = 8\nw2 = 4\n{simplicial}"
                ),
            )
            .expect("write config");
            let run = dir.join(name);
            let (ok, out, err) = simplex(&[
                "train",
                "--data",
                corpus.to_str().expect("path"),
                "--out",
                run.to_str().expect("path"),
                "--config",
                cfg.to_str().expect("path"),
                "--steps",
                "30",
                "--batch-size",
                "4",
                "--seq-len",
                "32",
                "--eval-every",
                "0",
                "--log-every",
                "30",
            ]);
            assert!(ok, "train {name} failed:\n{out}\n{err}");
            run
        };
        [
            train("tri", "DLS", ""),
            train("det", "SLD", "variant = \"determinant\"\nrotate = true\n"),
        ]
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `simplex ARGS` with `RUST_LOG=info` and `stdin` piped in: (success, stdout, stderr).
fn simplex_with(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simplex");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Decoding `tokens` after `prompt_ids` with the cache gives, at every step, the logits of
/// the full forward (no cache) of the window the documented rule keeps (up to 2e-5: f32
/// rounding differs between the cached and the full path), and each token is the most likely
/// one of its step (greedy).
fn check_greedy_windows(g: &Generator, prompt_ids: &[u32], tokens: &[u32], shift: usize) {
    let (mut dec, mut cached) =
        Decoder::new(&g.model, &[prompt_ids], Some(shift)).expect("decoder");
    let mut ctx = prompt_ids.to_vec();
    let mut start = ctx.len().saturating_sub(MAX);
    for (i, &t) in tokens.iter().enumerate() {
        if ctx.len() - start > MAX {
            start = ctx.len() - (MAX + 1 - shift);
        }
        let w = &ctx[start..];
        let input = Tensor::new(w, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("input");
        let full: Vec<f32> = g
            .model
            .forward(&input)
            .and_then(|l| Ok(l.i((0, w.len() - 1))?.to_vec1()?))
            .expect("forward");
        let got: Vec<f32> = cached.get(0).and_then(|l| l.to_vec1()).expect("logits");
        let diff = got
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 2e-5,
            "step {i} (window {start}..{}): cached logits differ from the full forward by {diff}",
            ctx.len()
        );
        let best = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(
            got[t as usize], best,
            "step {i}: token {t} is not the greedy choice"
        );
        ctx.push(t);
        cached = dec.step(&[t]).expect("step");
    }
}

#[test]
fn generate_goes_past_max_seq_len_on_every_layer_kind() {
    // 100 bytes: with the leading end-of-text, 101 tokens for a model of max_seq_len 32
    let prompt = "Once upon a time there was a little fox who lived at the edge of a wood, and every morning she went.";
    assert_eq!(prompt.len(), 100);
    for run in runs() {
        let g = Generator::load(run, &Device::Cpu).expect("load");
        let mut ids = vec![g.tokenizer.eot()];
        ids.extend(g.tokenizer.encode(prompt).expect("encode"));
        for shift in [None, Some(1), Some(MAX)] {
            let shift_s = shift.map(|s| s.to_string());
            let mut args = vec![
                "generate",
                "--checkpoint",
                s(run),
                "--prompt",
                prompt,
                "--max-tokens",
                "120",
                "--temperature",
                "0",
                "--ignore-eot",
                "--only-new",
            ];
            if let Some(sh) = &shift_s {
                args.extend(["--context-shift", sh]);
            }
            let (ok, out, err) = simplex_with(&args, "");
            assert!(ok, "{}: {err}", run.display());
            assert!(
                err.contains("the first 69 are dropped") && err.contains("120 new"),
                "the crop is noted and all 120 tokens came: {err}"
            );
            let opts = GenerateOptions {
                max_tokens: 120,
                sampling: simplex_model::SamplingConfig {
                    temperature: 0.0,
                    ..Default::default()
                },
                stop_at_eot: false,
                num_samples: 1,
                shift,
            };
            let lib = g
                .generate_samples(prompt, &opts)
                .expect("generate")
                .remove(0);
            assert_eq!(
                out,
                format!("{}\n", lib.text),
                "the binary prints the library's text"
            );
            assert_eq!(lib.tokens.len(), 120);
            let sh = shift.unwrap_or(Decoder::default_shift(MAX));
            assert_eq!(lib.slides, 119usize.div_ceil(sh));
            check_greedy_windows(&g, &ids, &lib.tokens, sh);
        }
        let (ok, _, err) = simplex(&[
            "generate",
            "--checkpoint",
            s(run),
            "--prompt",
            "x",
            "--context-shift",
            "33",
        ]);
        assert!(
            !ok && err.contains("--context-shift 33") && err.contains("max_seq_len = 32"),
            "{err}"
        );
    }
}

#[test]
fn num_samples_prints_each_sample_after_its_header_as_its_seed_alone() {
    let run = s(&runs()[0]);
    let gen = |seed: &str, n: &str| {
        simplex(&[
            "generate",
            "--checkpoint",
            run,
            "--prompt",
            "The cat",
            "--max-tokens",
            "40",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--num-samples",
            n,
        ])
    };
    let (ok, out, err) = gen("4", "3");
    assert!(ok, "{err}");
    assert_eq!(gen("4", "3").1, out, "same seed, same samples");
    let mut parts = Vec::new();
    let mut rest = out.as_str();
    for i in 1..=3 {
        let header = format!("--- sample {i} ---\n");
        assert!(rest.starts_with(&header), "sample {i} header in {out:?}");
        rest = &rest[header.len()..];
        let end = rest.find("--- sample ").unwrap_or(rest.len());
        parts.push(&rest[..end]);
        rest = &rest[end..];
    }
    assert!(rest.is_empty());
    for (i, part) in parts.iter().enumerate() {
        let (ok, alone, err) = gen(&(4 + i).to_string(), "1");
        assert!(ok, "{err}");
        assert_eq!(*part, alone, "sample {} is seed {} alone", i + 1, 4 + i);
        assert!(part.starts_with("The cat"));
    }
    assert!(
        parts[0] != parts[1] || parts[1] != parts[2],
        "the samples draw differently: {parts:?}"
    );
    let (ok, _, err) = gen("4", "0");
    assert!(!ok && err.contains("--num-samples 0"), "{err}");
}

#[test]
fn interactive_answers_each_line_of_stdin_with_the_model_loaded_once() {
    let run = s(&runs()[1]);
    let base = [
        "generate",
        "--checkpoint",
        run,
        "--max-tokens",
        "30",
        "--seed",
        "2",
        "--num-samples",
        "2",
    ];
    let mut want = String::new();
    for p in ["Once upon a time", "The dog ran"] {
        let mut args = base.to_vec();
        args.extend(["--prompt", p]);
        let (ok, out, err) = simplex(&args);
        assert!(ok, "{err}");
        want.push_str(&out);
    }
    let mut args = base.to_vec();
    args.push("--interactive");
    // a blank line is skipped; the last line has no newline; EOF ends the session
    let (ok, out, err) = simplex_with(&args, "Once upon a time\n\n  \nThe dog ran");
    assert!(ok, "{err}");
    assert_eq!(out, want, "each line answered as --prompt LINE would be");
    assert_eq!(
        err.matches("loaded checkpoint").count(),
        1,
        "the model is loaded once: {err}"
    );
    let (ok, out, _) = simplex_with(&args, "");
    assert!(ok && out.is_empty(), "no input, no output: {out}");
    let (ok, _, err) = simplex(&["generate", "--checkpoint", run]);
    assert!(!ok && err.contains("--prompt"), "{err}");
    let (ok, _, err) = simplex(&[
        "generate",
        "--checkpoint",
        run,
        "--prompt",
        "a",
        "--interactive",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
