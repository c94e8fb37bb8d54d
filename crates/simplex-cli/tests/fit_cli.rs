//! `simplex fit` end to end through the binary: the Markdown tables, `--json`, `--out` files, and
//! a bad file as a non-zero exit with an error naming the line and column (never a panic).

mod common;

use common::simplex;

/// Two kinds, 4 sizes, 2 seeds, on one eval set: L = 1 + c N^-0.3 with a little spread.
fn results_csv() -> String {
    let mut s = String::from("kind,eval_set,seed,params,loss\n");
    for (kind, c) in [("dot", 12.0), ("trilinear", 10.0)] {
        for n in [1e5f64, 1e6, 1e7, 1e8] {
            for (seed, wiggle) in [(0, 1.01), (1, 0.99)] {
                let loss = (1.0 + c * n.powf(-0.3)) * wiggle;
                s += &format!("{kind},val,{seed},{n},{loss}\n");
            }
        }
    }
    s
}

#[test]
fn fit_prints_tables_json_and_writes_files() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let csv = tmp.path().join("results.csv");
    std::fs::write(&csv, results_csv()).expect("write");
    let csv = csv.to_str().expect("utf-8 path");

    let (ok, stdout, stderr) = simplex(&["fit", csv, "--bootstrap", "50"]);
    assert!(ok, "fit failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("| alpha vs dot |"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| trilinear |") && l.ends_with("% |")),
        "{stdout}"
    );
    assert!(stdout.contains("alpha_sat"), "{stdout}");

    let out = tmp.path().join("fit");
    let out_s = out.to_str().expect("utf-8 path");
    let (ok, stdout, stderr) = simplex(&[
        "fit",
        csv,
        "--json",
        "--bootstrap",
        "50",
        "--baseline",
        "trilinear",
        "--out",
        out_s,
    ]);
    assert!(ok, "fit --json failed:\n{stdout}\n{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON alone");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    for key in [
        "kind",
        "eval_set",
        "alpha",
        "beta",
        "r2",
        "E",
        "A",
        "alpha_sat",
    ] {
        assert!(rows[0].get(key).is_some(), "no {key}: {}", rows[0]);
    }
    assert_eq!(rows[0]["baseline"], "trilinear");
    for f in ["fit.md", "fit.json", "fit-val.png", "fit-val.svg"] {
        assert!(out.join(f).metadata().map_or(0, |m| m.len()) > 0, "{f}");
    }
}

#[test]
fn bad_results_file_is_an_error_naming_line_and_column() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let csv = tmp.path().join("results.csv");
    // a first data row (line 2) whose loss is not a number
    let text = results_csv().replacen("\n", "\ndot,val,0,1e5,oops\n", 1);
    std::fs::write(&csv, text).expect("write");
    let (ok, stdout, stderr) = simplex(&["fit", csv.to_str().expect("path")]);
    assert!(!ok, "accepted a bad file:\n{stdout}");
    assert!(
        stderr.contains("line 2") && stderr.contains("column loss"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (ok, _, stderr) = simplex(&["fit", "no-such-results.csv"]);
    assert!(!ok);
    assert!(stderr.contains("no-such-results.csv"), "{stderr}");
    // the OS's reason once, not again as the error's source
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
}
