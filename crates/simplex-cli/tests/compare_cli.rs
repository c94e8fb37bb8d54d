//! `simplex compare` and `simplex eval-task` end to end through the binary: a tiny comparison
//! writes its files, eval-task on a saved run prints the same test scores, bad input gives a
//! non-zero exit with an error naming the flag (never a panic).

mod common;

use common::simplex;
use std::path::Path;

/// A comparison small enough for a test: match2, 2 kinds x 2 seeds, 12 steps.
const TINY: [&str; 20] = [
    "compare",
    "--task",
    "match2",
    "--kinds",
    "dot,trilinear",
    "--seeds",
    "2",
    "--steps",
    "12",
    "--d-model",
    "12",
    "--heads",
    "2",
    "--train-examples",
    "400",
    "--val-examples",
    "40",
    "--test-examples",
    "60",
    "--batch=8",
];

#[test]
fn compare_writes_results_and_eval_task_reproduces_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("cmp");
    let out_s = out.to_str().expect("utf-8 path");
    let mut args = TINY.to_vec();
    args.extend(["--out", out_s, "--eval-every", "4", "--jobs", "2"]);
    let (ok, stdout, stderr) = simplex(&args);
    assert!(ok, "compare failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test token acc"), "{stdout}");
    for kind in ["dot ", "trilinear "] {
        assert!(
            stdout.lines().any(|l| l.starts_with(kind)),
            "no row for {kind}: {stdout}"
        );
    }
    for f in [
        "results.json",
        "results.csv",
        "curves.csv",
        "table.md",
        "val_accuracy.png",
        "val_accuracy.svg",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && p.metadata().map_or(0, |m| m.len()) > 0,
            "{f}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("JSON");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4);
    // curves: step 0, 4, 8, 12
    assert_eq!(runs[0]["curve"].as_array().map(Vec::len), Some(4));
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 5, "{csv}");

    // eval-task on a saved run prints the test scores the comparison recorded
    let run = &runs[3];
    assert_eq!(run["kind"], "trilinear");
    let dir = out.join("runs/trilinear-seed1");
    let (ok, stdout, stderr) = simplex(&["eval-task", "--checkpoint", dir.to_str().expect("path")]);
    assert!(ok, "eval-task failed:\n{stdout}\n{stderr}");
    let acc = run["test"]["token_accuracy"].as_f64().expect("accuracy");
    let exact = run["test"]["exact_match"].as_f64().expect("exact");
    let want = format!(
        "token accuracy {:.2}%  exact match {:.2}%",
        100.0 * acc,
        100.0 * exact
    );
    assert!(stdout.contains(&want), "expected `{want}` in:\n{stdout}");
    assert!(stdout.contains("60 examples"), "{stdout}");

    // the same comparison one run at a time gives the same numbers
    let out1 = tmp.path().join("cmp1");
    let mut args = TINY.to_vec();
    args.extend([
        "--out",
        out1.to_str().expect("path"),
        "--eval-every",
        "4",
        "--jobs",
        "1",
    ]);
    let (ok, _, stderr) = simplex(&args);
    assert!(ok, "{stderr}");
    let again: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out1.join("results.json")).expect("results.json"),
    )
    .expect("JSON");
    for (a, b) in runs.iter().zip(again["runs"].as_array().expect("runs")) {
        assert_eq!(a["test"], b["test"], "jobs 2 vs jobs 1");
        assert_eq!(
            a["curve"]
                .as_array()
                .map(|c| c.iter().map(|p| p["val_loss"].clone()).collect::<Vec<_>>()),
            b["curve"]
                .as_array()
                .map(|c| c.iter().map(|p| p["val_loss"].clone()).collect::<Vec<_>>())
        );
    }

    // eval-task: other splits and bad input
    let (ok, stdout, _) = simplex(&[
        "eval-task",
        "--checkpoint",
        dir.to_str().expect("path"),
        "--split",
        "validation",
        "--examples",
        "5",
    ]);
    assert!(ok && stdout.contains("5 examples"), "{stdout}");
    for (args, needle) in [
        (vec!["--split", "dev"], "--split"),
        (vec!["--examples", "0"], "--examples"),
    ] {
        let mut a = vec!["eval-task", "--checkpoint", dir.to_str().expect("path")];
        a.extend(args);
        let (ok, _, stderr) = simplex(&a);
        assert!(!ok && stderr.contains(needle), "{a:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = tmp.path().join("nothing");
    let (ok, _, stderr) = simplex(&["eval-task", "--checkpoint", missing.to_str().expect("p")]);
    assert!(!ok && stderr.contains("nothing"), "{stderr}");
}

#[test]
fn bad_compare_input_names_the_flag() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("never");
    let out_s = out.to_str().expect("utf-8 path");
    for (extra, flag) in [
        (vec!["--task", "match4"], "--task"),
        (vec!["--kinds", "dot,quadratic"], "--kinds"),
        (vec!["--kinds", ","], "--kinds"),
        (vec!["--seeds", "0"], "--seeds"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--steps=-5"], "--steps"),
        (vec!["--d-model", "50"], "--d-model"),
        (vec!["--d-model", "0"], "--d-model"),
        (vec!["--heads", "0"], "--heads"),
        (vec!["--layers", "0"], "--layers"),
        (vec!["--d-model", "32"], "--d-model"),
        (vec!["--batch", "0"], "--batch"),
        (vec!["--lr", "0"], "--lr"),
        (vec!["--equal", "flops"], "--equal"),
        (vec!["--jobs", "0"], "--jobs"),
        (vec!["--device", "tpu"], "tpu"),
    ] {
        let mut args = vec!["compare", "--out", out_s];
        args.extend(&extra);
        let (ok, stdout, stderr) = simplex(&args);
        assert!(!ok, "{extra:?} succeeded:\n{stdout}");
        assert!(
            stderr.contains(flag),
            "{extra:?}: expected {flag} in `{stderr}`"
        );
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    assert!(!Path::new(&out).join("results.json").exists());
}
