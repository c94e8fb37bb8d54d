//! The fits on synthetic tables with known answers (seeded noise), exact data, the report's
//! JSON keys and files, and the bad-file errors.

use std::path::PathBuf;

use simplex_scaling::rng::SplitMix64;
use simplex_scaling::{fit_file, FitError, FitOptions, Report};

/// Writes `text` as `results.csv` in a fresh temp dir (kept alive by the returned guard).
fn csv_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("results.csv");
    std::fs::write(&path, text).expect("write csv");
    (dir, path)
}

/// A table of `seeds` points per size for each kind: `loss(kind_index, n) * exp(sigma * z)`.
fn table(
    kinds: &[&str],
    sizes: &[f64],
    seeds: usize,
    sigma: f64,
    loss: impl Fn(usize, f64) -> f64,
) -> String {
    let mut rng = SplitMix64::new(42);
    let mut s = String::from("kind,eval_set,seed,params,loss\n");
    for (k, kind) in kinds.iter().enumerate() {
        for &n in sizes {
            for seed in 0..seeds {
                let l = loss(k, n) * (sigma * rng.normal()).exp();
                s += &format!("{kind},val,{seed},{n},{l}\n");
            }
        }
    }
    s
}

fn fit(text: &str, opts: &FitOptions) -> Result<Report, FitError> {
    let (_dir, path) = csv_file(text);
    fit_file(&path, opts)
}

fn sizes(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let r = (hi / lo).ln() / (count - 1) as f64;
    (0..count)
        .map(|i| (lo * (r * i as f64).exp()).round())
        .collect()
}

#[test]
fn power_law_is_recovered_from_noisy_points() {
    // -ln L = alpha ln N + beta with alpha 0.06 (dot) and 0.075 (simplicial), 1% noise on L
    let truth = [(0.06, -1.0), (0.075, -1.2)];
    let text = table(
        &["dot", "simplicial"],
        &sizes(1e6, 1e9, 7),
        3,
        0.01,
        |k, n| (-(truth[k].0 * n.ln() + truth[k].1)).exp(),
    );
    let r = fit(&text, &FitOptions::default()).expect("fit");
    assert_eq!(r.fits.len(), 2);
    for (f, (alpha, beta)) in r.fits.iter().zip(truth) {
        let p = &f.power_law;
        assert_eq!(
            (f.n_points, f.n_sizes),
            (21, 7),
            "repeated sizes are separate points"
        );
        assert!((p.alpha - alpha).abs() < 0.003, "{}: {p:?}", f.kind);
        assert!(
            (p.alpha - alpha).abs() < 3.0 * p.alpha_se,
            "{}: {p:?}",
            f.kind
        );
        assert!(p.alpha_se > 0.0 && p.alpha_se < 0.003, "{p:?}");
        assert!((p.beta - beta).abs() < 0.06, "{}: {p:?}", f.kind);
        assert!(p.r2 > 0.95 && p.r2 < 1.0, "{p:?}");
    }
    // the change of alpha against the first kind: (0.075 - 0.06) / 0.06 = +25%
    assert_eq!(r.baseline, "dot");
    let change = r.fits[1].alpha_change_pct.expect("change");
    assert!((change - 25.0).abs() < 7.0, "{change}");
    assert!(r.fits[0].alpha_change_pct.expect("baseline").abs() < 1e-12);
}

#[test]
fn saturating_law_is_recovered_with_intervals_holding_the_truth() {
    let (e, a, alpha) = (1.7, 400.0, 0.34);
    let text = table(&["dot"], &sizes(1e6, 1e10, 9), 3, 0.003, |_, n| {
        e + a * n.powf(-alpha)
    });
    let r = fit(&text, &FitOptions::default()).expect("fit");
    let f = &r.fits[0];
    let s = &f.saturating;
    assert!((s.alpha_sat - alpha).abs() < 0.03, "{s:?}");
    assert!((s.e - e).abs() < 0.05, "{s:?}");
    assert!((s.a / a).ln().abs() < 0.3, "{s:?}");
    assert!(s.r2_sat > 0.999, "{s:?}");
    assert_eq!(f.bootstrap_resamples + f.bootstrap_skipped, 1000);
    for (name, truth, ci) in [
        ("E", e, f.e_ci),
        ("A", a, f.a_ci),
        ("alpha_sat", alpha, f.alpha_sat_ci),
    ] {
        let [lo, hi] = ci.expect("interval");
        assert!(
            lo <= truth && truth <= hi,
            "{name}: {truth} not in [{lo}, {hi}]"
        );
        assert!(lo < hi, "{name}: empty interval [{lo}, {hi}]");
    }
    // a tight data set gives a tight interval: the exponent is known to within +-0.1
    let [lo, hi] = f.alpha_sat_ci.expect("interval");
    assert!(hi - lo < 0.2, "[{lo}, {hi}]");
}

#[test]
fn exact_data_gives_r2_one_and_exact_parameters() {
    let pl = table(&["dot"], &[1e5, 1e6, 1e7, 1e8], 1, 0.0, |_, n| {
        (-(0.05 * n.ln() - 0.8)).exp()
    });
    let r = fit(&pl, &FitOptions::default()).expect("fit");
    let p = &r.fits[0].power_law;
    assert!((p.r2 - 1.0).abs() < 1e-12, "{p:?}");
    assert!((p.alpha - 0.05).abs() < 1e-12, "{p:?}");
    assert!((p.beta + 0.8).abs() < 1e-10, "{p:?}");

    let sat = table(&["dot"], &sizes(1e5, 1e9, 6), 1, 0.0, |_, n| {
        2.0 + 50.0 * n.powf(-0.25)
    });
    let r = fit(&sat, &FitOptions::default()).expect("fit");
    let f = &r.fits[0];
    let s = &f.saturating;
    assert!((s.e - 2.0).abs() < 1e-6, "{s:?}");
    assert!((s.a - 50.0).abs() < 1e-3, "{s:?}");
    assert!((s.alpha_sat - 0.25).abs() < 1e-6, "{s:?}");
    // every resample of exact data gives the same fit: a point interval
    let [lo, hi] = f.alpha_sat_ci.expect("interval");
    assert!(
        (lo - 0.25).abs() < 1e-5 && (hi - 0.25).abs() < 1e-5,
        "[{lo}, {hi}]"
    );
}

#[test]
fn json_has_the_contract_keys_and_the_seed_decides_the_intervals() {
    let text = table(&["dot", "tri"], &sizes(1e5, 1e8, 5), 2, 0.02, |k, n| {
        1.0 + (10.0 + k as f64) * n.powf(-0.3)
    });
    let opts = FitOptions {
        bootstrap: 100,
        ..FitOptions::default()
    };
    let r = fit(&text, &opts).expect("fit");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("JSON");
    let rows = json.as_array().expect("array");
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
        "n_points",
        "n_sizes",
        "alpha_se",
        "E_ci",
        "A_ci",
        "alpha_sat_ci",
        "alpha_change_pct",
    ] {
        assert!(rows[0].get(key).is_some(), "no key {key}: {}", rows[0]);
    }
    assert_eq!(rows[1]["kind"], "tri");
    assert_eq!(rows[0]["n_points"], 10);
    assert_eq!(rows[0]["alpha_sat_ci"].as_array().map(Vec::len), Some(2));

    assert_eq!(r.to_json(), fit(&text, &opts).expect("again").to_json());
    let other = fit(
        &text,
        &FitOptions {
            seed: 1,
            ..opts.clone()
        },
    )
    .expect("seed 1");
    assert_ne!(r.fits[0].alpha_sat_ci, other.fits[0].alpha_sat_ci);
    assert_eq!(r.fits[0].saturating, other.fits[0].saturating);
}

#[test]
fn report_tables_and_files() {
    let mut text = table(&["dot", "tri"], &sizes(1e5, 1e8, 4), 2, 0.02, |k, n| {
        1.0 + (10.0 - k as f64) * n.powf(-0.3)
    });
    // a second eval set under another name, with a character that is not kept in file names
    text += &table(&["dot", "tri"], &sizes(1e5, 1e8, 4), 1, 0.02, |_, n| {
        1.2 + 9.0 * n.powf(-0.3)
    })
    .replace(",val,", ",held out,")
    .replacen("kind,eval_set,seed,params,loss\n", "", 1);
    let opts = FitOptions {
        bootstrap: 50,
        baseline: Some("tri".into()),
        ..FitOptions::default()
    };
    let r = fit(&text, &opts).expect("fit");
    assert_eq!(r.eval_sets, ["val", "held out"]);
    let md = r.markdown();
    for needle in [
        "## -log L = alpha * log N + beta (N = params)",
        "### val",
        "### held out",
        "| alpha vs tri |",
        "| baseline |",
        "## L = E + A * N^-alpha_sat [95% bootstrap interval, 50 resamples]",
    ] {
        assert!(md.contains(needle), "{needle:?} not in\n{md}");
    }
    assert!(
        md.lines()
            .any(|l| l.starts_with("| dot |") && l.ends_with("% |")),
        "{md}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("fit-out");
    let written = r.write(&out).expect("write");
    assert_eq!(written.len(), 6);
    for f in [
        "fit.md",
        "fit.json",
        "fit-val.png",
        "fit-val.svg",
        "fit-held_out.png",
        "fit-held_out.svg",
    ] {
        let p = out.join(f);
        assert!(p.metadata().map_or(0, |m| m.len()) > 0, "{f}");
    }
    let svg = std::fs::read_to_string(out.join("fit-val.svg")).expect("svg");
    assert!(
        svg.contains("alpha_sat") && svg.contains("<polygon"),
        "no legend or band"
    );
}

/// The error for `text` read with `opts`, as text.
fn error_of(text: &str, opts: &FitOptions) -> String {
    match fit(text, opts) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

#[test]
fn bad_files_are_errors_naming_the_problem() {
    let d = FitOptions::default();
    let head = "kind,eval_set,params,loss\n";
    let ok_rows = "dot,val,1e6,3.0\ndot,val,1e7,2.8\ndot,val,1e8,2.6\n";

    let missing = std::env::temp_dir().join("simplex-fit-no-such-dir/results.csv");
    let msg = fit_file(&missing, &d)
        .expect_err("missing file")
        .to_string();
    assert_names(&msg, &["simplex-fit-no-such-dir/results.csv"]);

    assert_names(&error_of("", &d), &["results.csv", "empty file"]);
    assert_names(&error_of(head, &d), &["results.csv", "no data rows"]);
    assert_names(
        &error_of("kind,params,val\ndot,1,2\n", &d),
        &[
            "missing columns eval_set, loss",
            "the header has: kind, params, val",
        ],
    );
    let alt = FitOptions {
        params_column: "params_active".into(),
        ..d.clone()
    };
    assert_names(
        &error_of(&format!("{head}{ok_rows}"), &alt),
        &["missing column params_active"],
    );
    assert_names(
        &error_of(&format!("{head}{ok_rows}dot,val,1e9,abc\n"), &d),
        &["line 5", "column loss", "\"abc\"", "not a number"],
    );
    assert_names(
        &error_of(&format!("{head}dot,val,-5,3.0\n{ok_rows}"), &d),
        &["line 2", "column params", "\"-5\"", "positive"],
    );
    assert_names(
        &error_of(&format!("{head}{ok_rows}dot,val,1e9,0\n"), &d),
        &["line 5", "column loss", "positive"],
    );
    assert_names(
        &error_of(&format!("{head}{ok_rows}dot,val,1e9,inf\n"), &d),
        &["line 5", "column loss", "finite"],
    );
    assert_names(
        &error_of(&format!("{head}{ok_rows}dot,val,1e9\n"), &d),
        &["results.csv: line 5", "3 fields, the header has 4"],
    );
    assert_names(
        &error_of(&format!("{head}{ok_rows},val,1e9,2.0\n"), &d),
        &["line 5", "column kind", "empty"],
    );
    assert_names(
        &error_of(
            &format!("{head}{ok_rows}tri,val,1e6,3.0\ntri,val,1e6,3.1\ntri,val,1e7,2.9\n"),
            &d,
        ),
        &[
            "kind=tri eval_set=val",
            "2 distinct values of params",
            "at least 3",
        ],
    );
    let base = FitOptions {
        baseline: Some("simplicial".into()),
        ..d.clone()
    };
    assert_names(
        &error_of(&format!("{head}{ok_rows}"), &base),
        &["--baseline simplicial", "no such kind", "kinds: dot"],
    );
}

#[test]
fn other_size_column_and_extra_columns_in_any_order() {
    let text = "loss,params_active,note,eval_set,kind,params\n\
                3.0,1e6,a,val,dot,5\n2.8,1e7,b,val,dot,5\n2.6,1e8,c,val,dot,5\n";
    // `params` has a single size: an error; `params_active` has three
    let msg = error_of(text, &FitOptions::default());
    assert_names(&msg, &["1 distinct value of params"]);
    let opts = FitOptions {
        params_column: "params_active".into(),
        bootstrap: 0,
        ..FitOptions::default()
    };
    let r = fit(text, &opts).expect("fit");
    assert_eq!(r.fits[0].n_sizes, 3);
    assert_eq!(r.fits[0].params_column, "params_active");
    assert!(r.fits[0].alpha_sat_ci.is_none());
    assert!(r.markdown().contains("(no bootstrap)"));
}
