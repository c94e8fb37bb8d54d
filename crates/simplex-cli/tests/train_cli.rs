//! `simplex train / generate / model info / plot` end to end through the binary, on the demo
//! corpus shipped with simplex-train; bad input gives a non-zero exit and names the path.

mod common;

use common::simplex;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

fn rows(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

#[test]
fn train_generate_info_plot() {
    let tmp = tempfile_dir("e2e");
    let run = tmp.join("run");
    let run_s = run.to_str().expect("utf-8 path");
    let corpus = corpus();
    let (ok, stdout, stderr) = simplex(&[
        "train",
        "--data",
        corpus.to_str().expect("path"),
        "--out",
        run_s,
        "--preset",
        "tiny",
        "--steps",
        "40",
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--eval-every",
        "20",
        "--log-every",
        "10",
        "--ckpt-every",
        "30",
        "--seed",
        "3",
        "--kernels",
        "deterministic=on",
    ]);
    assert!(ok, "train failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("step 40"), "{stdout}");
    let r = rows(&run);
    assert_eq!(r.len(), 4, "a row every 10 steps");
    for row in &r {
        for key in ["step", "train_loss", "lr", "tokens_per_s"] {
            num(row, key);
        }
    }
    let vals: Vec<f64> = r.iter().filter_map(|x| x["val_loss"].as_f64()).collect();
    assert_eq!(vals.len(), 2, "evals at 20 and 40");
    assert!(r.iter().filter(|x| x["val_bpb"].is_number()).count() == 2);
    let (first, last) = (num(&r[0], "train_loss"), num(&r[3], "train_loss"));
    // uniform over 257 ids is ln 257 = 5.55; 40 updates of 256 tokens learn the byte statistics
    assert!(
        last < first - 0.5 && last < 3.3,
        "train loss {first} -> {last}"
    );
    assert!(vals[1] < vals[0], "val loss {vals:?}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    assert!(csv.starts_with("step,train_loss,lr,"));
    assert_eq!(csv.lines().count(), 5);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.toml",
    ] {
        assert!(run.join("checkpoint").join(f).is_file(), "checkpoint/{f}");
    }

    let gen = |seed: &str| {
        simplex(&[
            "generate",
            "--checkpoint",
            run_s,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "40",
            "--seed",
            seed,
        ])
    };
    let (ok, text, stderr) = gen("5");
    assert!(ok, "generate failed: {stderr}");
    assert!(
        text.starts_with("Once upon a time") && text.len() > "Once upon a time".len(),
        "{text}"
    );
    assert_eq!(gen("5").1, text, "same seed, same text");

    let (ok, info, _) = simplex(&["model", "info", "--preset", "tiny"]);
    assert!(
        ok && info.contains("non-embedding") && info.contains("2-simplicial"),
        "{info}"
    );

    let (ok, out, stderr) = simplex(&["plot", run_s]);
    assert!(ok, "plot failed: {stderr}");
    assert!(out.contains("loss.png"));
    let png = std::fs::read(run.join("plots/loss.png")).expect("loss.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(run.join("plots/loss.svg")).expect("loss.svg");
    assert!(svg.contains("<svg") && svg.contains("val"));
    for panel in ["tokens seen", "learning rate", "step"] {
        assert!(svg.contains(panel), "the plot has a `{panel}` panel");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    let tmp = tempfile_dir("kill");
    let run = tmp.join("run");
    let run_s = run.to_str().expect("utf-8 path");
    let corpus = corpus();
    let args = [
        "train",
        "--data",
        corpus.to_str().expect("path"),
        "--out",
        run_s,
        "--steps",
        "400",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--ckpt-every",
        "3",
        "--log-every",
        "1",
        "--eval-every",
        "0",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn simplex train");
    let start = Instant::now();
    while !run.join("checkpoint/state.json").is_file() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill"); // SIGKILL: no chance to clean up
    child.wait().expect("wait");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/state.json"))
            .expect("a complete checkpoint survives"),
    )
    .expect("state.json parses");
    let saved = state["step"].as_u64().expect("step");
    assert!(
        saved >= 3 && saved.is_multiple_of(3),
        "checkpoint at step {saved}"
    );
    let (ok, stdout, stderr) = simplex(&[
        "train",
        "--out",
        run_s,
        "--resume",
        "--until",
        &(saved + 2).to_string(),
    ]);
    assert!(ok, "resume failed:\n{stdout}\n{stderr}");
    let steps: Vec<u64> = rows(&run)
        .iter()
        .map(|r| r["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(
        steps,
        (1..=saved + 2).collect::<Vec<_>>(),
        "every step once, none lost before the checkpoint"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn bad_input_names_the_path() {
    let tmp = tempfile_dir("bad");
    let out = tmp.join("run");
    let out_s = out.to_str().expect("path");
    let (ok, _, err) = simplex(&["train", "--data", "/no/such/corpus", "--out", out_s]);
    assert!(
        !ok && err.contains("/no/such/corpus") && err.contains("no such file"),
        "{err}"
    );
    let bin = tmp.join("latin1.txt");
    std::fs::write(&bin, b"na\xefve text").expect("write");
    let (ok, _, err) = simplex(&[
        "train",
        "--data",
        bin.to_str().expect("path"),
        "--out",
        out_s,
    ]);
    assert!(
        !ok && err.contains("latin1.txt") && err.contains("not UTF-8"),
        "{err}"
    );
    let cfg = tmp.join("bad.toml");
    std::fs::write(&cfg, "vocab_size = 300\nd_model = 30\npattern = \"DS\"\nheads_q = 4\nmlp_hidden = 8\nmax_seq_len = 64\n").expect("write");
    let (ok, _, err) = simplex(&[
        "train",
        "--data",
        corpus().to_str().expect("path"),
        "--out",
        out_s,
        "--config",
        cfg.to_str().expect("path"),
    ]);
    assert!(
        !ok && err.contains("bad.toml") && err.contains("d_model"),
        "{err}"
    );
    let (ok, _, err) = simplex(&[
        "generate",
        "--checkpoint",
        tmp.join("nothing").to_str().expect("path"),
        "--prompt",
        "hi",
    ]);
    assert!(
        !ok && err.contains("nothing") && err.contains("no checkpoint"),
        "{err}"
    );
    let (ok, _, err) = simplex(&[
        "train",
        "--out",
        tmp.join("never").to_str().expect("path"),
        "--resume",
    ]);
    assert!(!ok && err.contains("nothing to resume"), "{err}");
    let (ok, _, err) = simplex(&[
        "train",
        "--data",
        corpus().to_str().expect("path"),
        "--out",
        out_s,
        "--kernels",
        "determinstic=on",
    ]);
    assert!(!ok && err.contains("determinstic"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}

/// A fresh folder under the target's temp dir (no tempfile dependency in this crate).
fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("simplex-cli-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clean temp dir");
    }
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
