//! `simplex prepare`, `train` on a prepared folder with SIGINT then `--resume`, and `sweep`,
//! end to end through the binary.

mod common;

use common::simplex;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("simplex-sweep-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clean temp dir");
    }
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn prepare_skips_binary_files_and_train_stops_on_sigint() {
    let tmp = temp("sigint");
    // a source tree with a .pyc and a binary file beside the text
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("__pycache__")).expect("mkdir");
    for i in 0..6 {
        std::fs::write(
            src.join(format!("m{i}.py")),
            format!("def f{i}(x):\n    return x * {i}\n").repeat(200),
        )
        .expect("write");
    }
    std::fs::write(
        src.join("__pycache__/m0.cpython-311.pyc"),
        [0xa7u8, 0x0d, 0xff, 0x00],
    )
    .expect("write");
    std::fs::write(src.join("logo.png"), [0x89u8, b'P', b'N', b'G', 0, 0, 0xff]).expect("write");
    let data = tmp.join("data");
    let (ok, stdout, stderr) = simplex(&[
        "prepare",
        "--data",
        s(&src),
        "--out",
        s(&data),
        "--doc-sep",
        "",
        "--val-frac",
        "0.2",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("6 files (2 skipped as not text)"),
        "{stdout}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when piped: {stderr}"
    );
    let (ok, _, stderr) = simplex(&["prepare", "--data", s(&src), "--out", s(&data)]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let (ok, _, stderr) = simplex(&[
        "prepare",
        "--data",
        s(&src),
        "--out",
        s(&tmp.join("strict")),
        "--strict",
    ]);
    assert!(!ok && stderr.contains("not UTF-8"), "{stderr}");

    let run = tmp.join("run");
    let args = [
        "train",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--steps",
        "2000",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--ckpt-every",
        "1000",
        "--eval-every",
        "0",
        "--log-every",
        "1",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simplex train");
    let start = Instant::now();
    while !run.join("metrics.jsonl").is_file()
        || std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
            < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped at step"), "{stderr}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/state.json")).expect("a checkpoint"),
    )
    .expect("state.json parses");
    let step = state["step"].as_u64().expect("step");
    assert!((3..2000).contains(&step), "checkpoint at step {step}");
    assert!(
        run.join("data").is_symlink(),
        "the prepared folder is linked, not copied"
    );
    let until = (step + 2).to_string();
    let (ok, stdout, stderr) = simplex(&[
        "train",
        "--out",
        s(&run),
        "--resume",
        "--steps",
        "2000",
        "--until",
        &until,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("step {until}")), "{stdout}");
}

#[test]
fn sweep_plans_runs_and_reports_bad_files() {
    let tmp = temp("plan");
    let data = tmp.join("data");
    let (ok, _, stderr) = simplex(&["prepare", "--data", s(&corpus()), "--out", s(&data)]);
    assert!(ok, "{stderr}");
    let file = tmp.join("grid.toml");
    let text = format!(
        "data = \"{}\"\ntokens_per_param = 0.01\nseq_len = 32\nbatch_size = 4\nlr = 3e-3\neval_sets = [\"heldout\", \"gsm\"]\neval_items = 3\neval_batches = 1\n\n[kinds.dot]\npattern = \"D\"\n[kinds.simplicial]\npattern = \"DS\"\nsimplicial = {{ w1 = 8, w2 = 4 }}\n\n[[sizes]]\nname = \"a\"\nd_model = 32\nlayers = 2\nheads = 2\n",
        s(&data)
    );
    std::fs::write(&file, &text).expect("write");
    let (ok, stdout, stderr) = simplex(&["sweep", s(&file), "--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("a-dot-s0") && stdout.contains("a-simplicial-s0"),
        "{stdout}"
    );
    let out = tmp.join("out");
    let (ok, stdout, stderr) = simplex(&["sweep", s(&file), "--out", s(&out)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 of 2 runs done (2 in this session"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = simplex(&["sweep", s(&file), "--out", s(&out)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 of 2 runs done (0 in this session"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    // bad files name the problem
    std::fs::write(&file, text.replace("pattern = \"DS\"", "pattern = \"DSD\"")).expect("write");
    let (ok, _, stderr) = simplex(&["sweep", s(&file), "--dry-run"]);
    assert!(
        !ok && stderr.contains("grid.toml") && stderr.contains("does not divide"),
        "{stderr}"
    );
    std::fs::write(&file, text.replace(s(&data), s(&tmp.join("nope")))).expect("write");
    let (ok, _, stderr) = simplex(&["sweep", s(&file), "--out", s(&out)]);
    assert!(!ok && stderr.contains("nope"), "{stderr}");
}
