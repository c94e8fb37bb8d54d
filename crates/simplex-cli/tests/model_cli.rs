//! `simplex model info / model config`, `train --pattern`, and the command line's edges: a
//! closed stdout pipe, negative numbers as flag values, old and new flag spellings.

mod common;

use common::simplex;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

/// Asserts that the command failed and that stderr mentions every one of `parts`.
fn fails_with(args: &[&str], parts: &[&str]) -> String {
    let (ok, stdout, stderr) = simplex(args);
    assert!(!ok, "{args:?} succeeded:\n{stdout}");
    for p in parts {
        assert!(stderr.contains(p), "{args:?}: expected {p:?} in `{stderr}`");
    }
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// The process ended quietly: success or SIGPIPE, not a panic (exit code 101).
#[cfg(unix)]
fn quiet_exit(args: &[&str], status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(13),
        "{args:?}: {status:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    for args in [
        &["model", "info", "--preset", "25m"][..],
        &["model", "config", "--preset", "25m"],
        &["--help"],
    ] {
        // a pipe whose reader is gone before the command writes (as after `| head -0`)
        let mut fds = [0i32; 2];
        // SAFETY: `pipe` fills two new descriptors, each then owned by exactly one OwnedFd.
        let (reader, writer) = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe");
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        drop(reader);
        let mut child = Command::new(env!("CARGO_BIN_EXE_simplex"))
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn simplex");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        let status = child.wait().expect("wait");
        quiet_exit(args, status, &stderr);
    }
    // `| head -1`: read one line, then close the pipe
    let args = ["model", "config", "--preset", "300m"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simplex");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read a line");
    assert!(line.starts_with("# model config"), "{line}");
    let out = child.wait_with_output().expect("wait");
    quiet_exit(&args, out.status, &String::from_utf8_lossy(&out.stderr));
}

#[test]
fn model_info_checks_its_flags() {
    let (ok, stdout, stderr) = simplex(&["model", "info", "--preset", "tiny", "--seq", "16"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("preset tiny: pattern DDDS"), "{stdout}");
    fails_with(
        &["model", "info", "--preset", "tiny", "--seq", "0"],
        &["--seq 0", "at least 1"],
    );
    fails_with(
        &["model", "info", "--preset", "tiny", "--seq", "-3"],
        &["--seq -3", "at least 1"],
    );
    fails_with(
        &["model", "info", "--preset", "tiny", "--seq", "257"],
        &["--seq 257", "max_seq_len = 256"],
    );
    fails_with(&["model", "info", "--seq", "x"], &["--seq"]);
    fails_with(&["model", "info", "--preset", "huge"], &["huge", "tiny"]);
    fails_with(
        &["model", "info", "--config", "/nonexistent/m.toml"],
        &["/nonexistent/m.toml"],
    );
    fails_with(&["model", "config", "--preset", "huge"], &["huge", "tiny"]);
}

#[test]
fn model_config_prints_a_complete_config_and_train_pattern_replaces_the_layers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for preset in ["tiny", "25m"] {
        let (ok, stdout, stderr) = simplex(&["model", "config", "--preset", preset]);
        assert!(ok, "{stderr}");
        for key in [
            "vocab_size = 257",
            "d_model = ",
            "pattern = \"DDDS",
            "heads_q = ",
            "heads_kv = ",
            "head_dim = ",
            "window = ",
            "mlp_hidden = ",
            "rope_theta = ",
            "tie_embeddings = ",
            "norm_eps = ",
            "max_seq_len = ",
            "bidirectional = false",
            "rope = true",
            "[simplicial]",
            "w1 = ",
            "w2 = ",
            "variant = \"trilinear\"",
            "rotate = false",
        ] {
            assert!(stdout.contains(key), "{preset}: no {key:?} in\n{stdout}");
        }
        // it reads back as a config file
        let path = tmp.path().join(format!("{preset}.toml"));
        std::fs::write(&path, &stdout).expect("write");
        let p = path.to_str().expect("utf-8");
        let (ok, info, stderr) = simplex(&["model", "info", "--config", p]);
        assert!(ok, "{stderr}");
        assert!(
            info.contains("pattern DDDS") && info.contains("vocab 257"),
            "{info}"
        );
        // and it round-trips through `model config --config`
        let (ok, again, stderr) = simplex(&["model", "config", "--config", p]);
        assert!(ok, "{stderr}");
        let body = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(body(&again), body(&stdout));
    }
    // train from that file with another pattern
    let cfg = tmp.path().join("tiny.toml");
    let run = tmp.path().join("run");
    let corpus = corpus();
    let (cfg_s, run_s, corpus_s) = (
        cfg.to_str().expect("utf-8"),
        run.to_str().expect("utf-8"),
        corpus.to_str().expect("utf-8"),
    );
    let base = |steps: &'static str| {
        vec![
            "train",
            "--data",
            corpus_s,
            "--out",
            run_s,
            "--steps",
            steps,
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--eval-every",
            "0",
        ]
    };
    for (source, bad, parts) in [
        (
            ["--config", cfg_s],
            "DXS",
            &["--pattern", "`X`", "position 1"][..],
        ),
        (
            ["--config", cfg_s],
            "",
            &["--pattern", "at least one layer"],
        ),
        (["--preset", "tiny"], "dds", &["--pattern", "`d`"]),
    ] {
        let mut args = base("2");
        args.extend(source);
        args.extend(["--pattern", bad]);
        fails_with(&args, parts);
        assert!(
            !run.join("config.toml").exists(),
            "{bad}: a run was started"
        );
    }
    let mut args = base("2");
    args.extend(["--config", cfg_s, "--pattern", "DLS"]);
    let (ok, stdout, stderr) = simplex(&args);
    assert!(ok, "{stdout}\n{stderr}");
    let saved = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    assert!(saved.contains("pattern = \"DLS\""), "{saved}");
    // a resume keeps its model: another pattern is refused, the same one accepted
    let mut args = base("3");
    args.extend(["--resume", "--pattern", "DDS"]);
    fails_with(&args, &["pattern", "keeps its model"]);
    let mut args = base("3");
    args.extend(["--resume", "--pattern", "DLS"]);
    let (ok, stdout, stderr) = simplex(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("step 3"), "{stdout}");
}

#[test]
fn negative_numbers_reach_their_checks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let corpus = corpus();
    let corpus = corpus.to_str().expect("utf-8");
    for (flag, value, parts) in [
        ("--lr", "-1", &["lr = -1"][..]),
        ("--lr", "-1e-3", &["lr = -0.001"]),
        ("--grad-clip", "-2", &["grad_clip = -2"]),
        ("--val-frac", "-0.5", &["val_frac = -0.5"]),
        ("--weight-decay", "-0.1", &["weight_decay = -0.1"]),
        ("--steps", "-5", &["--steps", "-5"]),
    ] {
        let out = tmp.path().join(format!("run{flag}{value}"));
        let stderr = fails_with(
            &[
                "train",
                "--data",
                corpus,
                "--out",
                out.to_str().expect("utf-8"),
                flag,
                value,
            ],
            parts,
        );
        assert!(
            !stderr.contains("unexpected argument"),
            "{flag} {value}: {stderr}"
        );
    }
    let out = tmp.path().join("cmp");
    let out = out.to_str().expect("utf-8");
    for lr in ["-1e-3", "-2", "3e-3,dot=-1"] {
        let stderr = fails_with(&["compare", "--out", out, "--lr", lr], &["--lr"]);
        assert!(
            !stderr.contains("unexpected argument"),
            "--lr {lr}: {stderr}"
        );
    }
    // a negative number is still no flag: `-x` after a flag that takes a value is an error
    fails_with(
        &["model", "info", "--preset", "-x"],
        &["unexpected argument '-x'"],
    );
}

#[test]
fn old_and_new_flag_spellings_both_parse() {
    for flag in ["--batch-size", "--batch"] {
        fails_with(
            &["bench", "train", "--preset", "tiny", flag, "0"],
            &["--batch-size", "at least 1"],
        );
        let out = tempfile::tempdir().expect("tempdir");
        let out = out.path().join("cmp");
        fails_with(
            &["compare", "--out", out.to_str().expect("utf-8"), flag, "0"],
            &["--batch-size", "at least 1"],
        );
    }
    for flag in ["--seq-len", "--seq"] {
        fails_with(
            &["bench", "train", "--preset", "tiny", flag, "300"],
            &["seq_len = 300", "max_seq_len = 256"],
        );
    }
    // the help shows the new names only
    for args in [&["bench", "train", "--help"][..], &["compare", "--help"]] {
        let (ok, stdout, _) = simplex(args);
        assert!(ok && stdout.contains("--batch-size"), "{stdout}");
        assert!(!stdout.contains("--batch <"), "{stdout}");
    }
    let (_, help, _) = simplex(&["bench", "train", "--help"]);
    assert!(
        help.contains("--seq-len") && !help.contains("--seq <"),
        "{help}"
    );
}

#[test]
fn nan_weights_are_refused_by_generate_and_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let run_s = run.to_str().expect("utf-8");
    let corpus = corpus();
    let (ok, stdout, stderr) = simplex(&[
        "train",
        "--data",
        corpus.to_str().expect("utf-8"),
        "--out",
        run_s,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-every",
        "0",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    // NaN into one value of a saved weight
    let weights = run.join("checkpoint/model.safetensors");
    let dev = candle_core::Device::Cpu;
    let mut t = candle_core::safetensors::load(&weights, &dev).expect("load");
    let name = "layers.1.mlp.down.weight";
    let w = t
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", t.keys()));
    let mut v = w
        .flatten_all()
        .and_then(|x| x.to_vec1::<f32>())
        .expect("f32");
    v[7] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(v, w.dims(), &dev).expect("tensor");
    t.insert(name.into(), bad);
    candle_core::safetensors::save(&t, &weights).expect("save");
    let train_toml = std::fs::read(run.join("train.toml")).expect("train.toml");
    let parts = ["model.safetensors", name, "NaN"];
    fails_with(
        &[
            "generate",
            "--checkpoint",
            run_s,
            "--prompt",
            "a",
            "--max-tokens",
            "2",
        ],
        &parts,
    );
    fails_with(
        &[
            "train",
            "--out",
            run_s,
            "--resume",
            "--steps",
            "4",
            "--log-every",
            "1",
        ],
        &parts,
    );
    assert_eq!(
        std::fs::read(run.join("train.toml")).expect("train.toml"),
        train_toml,
        "a failed resume rewrote train.toml"
    );
}
