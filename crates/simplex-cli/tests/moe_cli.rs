//! Mixture of experts through the command line: `model info` and `model config` of an MoE
//! preset, a `tiny-moe` run whose metrics carry the expert loads and whose resume continues it,
//! and `bench moe` on the CPU.

mod common;

use common::{simplex, small_run};

#[test]
fn moe_presets_report_active_parameters_and_print_their_config() {
    let (ok, info, stderr) = simplex(&["model", "info", "--preset", "25m-moe"]);
    assert!(ok, "{stderr}");
    assert!(info.contains("active: 26.7"), "{info}");
    assert!(info.contains("MoE"), "{info}");
    let (ok, cfg, stderr) = simplex(&["model", "config", "--preset", "25m-moe"]);
    assert!(ok, "{stderr}");
    for key in [
        "[moe]",
        "experts = 8",
        "top_k = 2",
        "expert_hidden = 704",
        "router = \"softmax\"",
    ] {
        assert!(cfg.contains(key), "no {key:?} in\n{cfg}");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, cfg.replace("top_k = 2", "top_k = 9")).expect("write");
    let (ok, _, stderr) = simplex(&["model", "info", "--config", path.to_str().expect("utf-8")]);
    assert!(!ok && stderr.contains("moe.top_k"), "{stderr}");
}

#[test]
fn a_tiny_moe_run_logs_expert_loads_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let flags = ["--preset", "tiny-moe", "--ckpt-every", "2"];
    let (ok, stdout, stderr) = small_run(&run, 4, &flags);
    assert!(ok, "{stdout}\n{stderr}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let load = r["moe_load"].as_array().expect("moe_load");
        assert_eq!(load.len(), 4, "tiny-moe has 4 MoE layers: {r}");
        for l in load {
            let l: Vec<u64> = l
                .as_array()
                .expect("list")
                .iter()
                .map(|v| v.as_u64().expect("u64"))
                .collect();
            assert_eq!(l.len(), 4, "4 experts");
            assert_eq!(
                l.iter().sum::<u64>(),
                2 * 32 * 2,
                "every token's 2 choices counted"
            );
        }
        assert!(r["moe_balance_loss"].as_f64().expect("balance") >= 0.99);
        assert!(r["moe_max_load"].as_f64().expect("max load") >= 1.0);
        assert!(r["moe_z_loss"].as_f64().expect("z") > 0.0);
    }
    let (ok, stdout, stderr) = small_run(&run, 6, &[&flags[..], &["--resume"]].concat());
    assert!(ok, "{stdout}\n{stderr}");
    let n = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .count();
    assert_eq!(n, 3, "the resume added the row of step 6");
}

#[test]
fn bench_moe_runs_on_the_cpu_and_checks_its_flags() {
    let (ok, stdout, stderr) = simplex(&[
        "bench",
        "moe",
        "--tokens",
        "64",
        "--d-model",
        "16",
        "--expert-hidden",
        "24",
        "--experts",
        "4",
        "--seconds",
        "0",
        "--reps",
        "1",
    ]);
    assert!(ok, "{stderr}");
    for row in [
        "grouped fwd",
        "grouped dx + dw",
        "routing + row moves",
        "routed experts f+b",
    ] {
        assert!(stdout.contains(row), "{stdout}");
    }
    let (ok, _, stderr) = simplex(&["bench", "moe", "--experts", "2", "--top-k", "3"]);
    assert!(!ok && stderr.contains("--top-k"), "{stderr}");
    let (ok, _, stderr) = simplex(&["bench", "moe", "--experts", "0"]);
    assert!(
        !ok && stderr.contains("--experts must be at least 1"),
        "{stderr}"
    );
    let (ok, _, stderr) = simplex(&["bench", "moe", "--seconds", "-1"]);
    assert!(!ok && stderr.contains("--seconds"), "{stderr}");
}
