//! `simplex eval` end to end: a short run, then its checkpoint scored on the generated,
//! shipped and user-given sets and on text; results appended to evals.json; bad input names
//! what is wrong.

mod common;

use common::simplex;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("evals.json");
    serde_json::from_str::<Vec<serde_json::Value>>(&text).expect("a JSON list")
}

#[test]
fn eval_scores_and_records_sets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let run_s = run.to_str().expect("utf-8 path");
    let corpus = repo().join("crates/simplex-train/corpus");
    let (ok, out, err) = simplex(&[
        "train",
        "--data",
        corpus.to_str().expect("path"),
        "--out",
        run_s,
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-every",
        "2",
        "--eval-set",
        "gsm",
    ]);
    assert!(ok, "train failed:\n{out}\n{err}");
    let row = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    assert!(row.contains("\"eval/gsm_nll\""), "{row}");

    // the shipped sets and the generated one
    let evals = repo().join("evals");
    let (ok, out, err) = simplex(&[
        "eval",
        "--checkpoint",
        run_s,
        "--eval-set",
        "gsm,mmlu",
        "--eval-set",
        "humaneval",
        "--eval-dir",
        evals.to_str().expect("path"),
        "--max-items",
        "6",
    ]);
    assert!(ok, "eval failed:\n{out}\n{err}");
    for name in ["gsm", "mmlu", "humaneval"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name}: {out}");
    }
    let recs = records(&run.join("evals.json"));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["step"], 4);
    let scores = recs[0]["scores"].as_array().expect("scores");
    assert_eq!(scores.len(), 3);
    for s in scores {
        assert_eq!(s["items"], 6);
        let nll = s["nll"].as_f64().expect("nll");
        assert!(nll.is_finite() && nll > 0.0, "{s}");
    }

    // a user's .jsonl, text, the held-out split; --json; another record file
    let mine = tmp.path().join("mine.jsonl");
    std::fs::write(
        &mine,
        "{\"id\": \"1\", \"context\": \"Once upon a time\", \"continuation\": \" there was a fox.\"}\n",
    )
    .expect("write");
    let other = tmp.path().join("other.json");
    let (ok, out, err) = simplex(&[
        "eval",
        "--checkpoint",
        &format!("{run_s}/checkpoint"),
        "--eval-set",
        mine.to_str().expect("path"),
        "--eval-set",
        "heldout",
        "--data",
        corpus.join("stories-0.txt").to_str().expect("path"),
        "--max-items",
        "3",
        "--json",
        "--out",
        other.to_str().expect("path"),
    ]);
    assert!(ok, "eval failed:\n{out}\n{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let names: Vec<&str> = rec["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["mine", "heldout", "stories-0"]);
    assert_eq!(rec["scores"][0]["tokens"], " there was a fox.".len());
    assert_eq!(rec["scores"][2]["items"], 3);
    assert_eq!(records(&other).len(), 1);
    assert_eq!(
        records(&run.join("evals.json")).len(),
        1,
        "not appended there"
    );

    // appended, not replaced
    let (ok, _, err) = simplex(&[
        "eval",
        "--checkpoint",
        run_s,
        "--eval-set",
        "gsm",
        "--max-items",
        "2",
    ]);
    assert!(ok, "{err}");
    assert_eq!(records(&run.join("evals.json")).len(), 2);

    // bad input: an error naming the problem, no panic
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"a\",\"context\":\"x\",\"continuation\":\"y\"}\nnot json\n",
    )
    .expect("write");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--eval-set", "mmlu", "--eval-dir", "/nonexistent-evals"],
            vec!["/nonexistent-evals/mmlu.jsonl", "scripts/prepare-evals.py"],
        ),
        (
            vec!["--eval-set", bad.to_str().expect("path")],
            vec!["bad.jsonl", "line 2"],
        ),
        (
            vec!["--eval-set", "mystery"],
            vec!["mystery", "mmlu, mmlu-full, humaneval, gsm, heldout"],
        ),
        (
            vec!["--data", "/nonexistent-text"],
            vec!["/nonexistent-text"],
        ),
        (
            vec!["--eval-set", "gsm", "--batch-size", "0"],
            vec!["--batch-size"],
        ),
    ];
    for (extra, parts) in cases {
        let mut args = vec!["eval", "--checkpoint", run_s];
        args.extend(&extra);
        let (ok, _, err) = simplex(&args);
        assert!(!ok, "{extra:?} should fail");
        assert!(!err.contains("panicked"), "{err}");
        for p in parts {
            assert!(err.contains(p), "{extra:?}: no {p:?} in {err}");
        }
    }
    let (ok, _, err) = simplex(&[
        "eval",
        "--checkpoint",
        "/nonexistent-run",
        "--eval-set",
        "gsm",
    ]);
    assert!(
        !ok && err.contains("/nonexistent-run") && !err.contains("panicked"),
        "{err}"
    );
}
