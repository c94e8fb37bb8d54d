//! `simplex sweep`: planning, bad sweep files, and a sweep stopped mid-run that resumes
//! without redoing finished runs.

mod common;

use std::path::Path;

use candle_core::Device;
use common::assert_mentions;
use simplex_train::data::{prepare, DataOptions};
use simplex_train::sweep::{run_sweep, SweepObserver, SweepOptions, SweepSpec};
use simplex_train::{Observer, StopFlag};

fn sweep_file(dir: &Path, data: &Path, extra: &str) -> anyhow::Result<std::path::PathBuf> {
    let text = format!(
        r#"
data = "{}"
tokens_per_param = 0.02
seq_len = 32
batch_size = 4
lr = 3e-3
eval_sets = ["heldout", "gsm"]
eval_items = 4
eval_batches = 1
{extra}
[kinds.dot]
pattern = "D"
[kinds.simplicial]
pattern = "DS"
simplicial = {{ w1 = 8, w2 = 4 }}

[[sizes]]
name = "a"
d_model = 32
layers = 2
heads = 2

[[sizes]]
name = "b"
d_model = 48
layers = 2
heads = 2
"#,
        data.display()
    );
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

#[test]
fn the_plan_follows_the_budget() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = SweepSpec::read(&sweep_file(
        tmp.path(),
        Path::new("data"),
        "seeds = [0, 1]",
    )?)?;
    let runs = spec.plan(257)?;
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a-dot-s0",
            "a-dot-s1",
            "a-simplicial-s0",
            "a-simplicial-s1",
            "b-dot-s0",
            "b-dot-s1",
            "b-simplicial-s0",
            "b-simplicial-s1"
        ]
    );
    for r in &runs {
        let want = (0.02 * r.info.params_non_embedding as f64 / 128.0).ceil() as usize;
        assert_eq!(r.steps, want.max(1), "{}", r.name);
        assert_eq!(r.tokens, (r.steps * 128) as u64);
        assert_eq!(r.budget_params, r.info.params_non_embedding);
        assert_eq!(r.model.pattern, if r.kind == "dot" { "DD" } else { "DS" });
        assert!((r.flops - 3.0 * r.info.flops_per_token * r.tokens as f64).abs() < 1.0);
    }
    assert!(
        runs[4].steps > runs[0].steps,
        "a bigger model gets more tokens"
    );
    Ok(())
}

#[test]
fn bad_sweep_files_say_what_is_wrong() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let read_err = |text: &str| -> String {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        match SweepSpec::read(&p) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => e.to_string(),
        }
    };
    let base = std::fs::read_to_string(sweep_file(tmp.path(), Path::new("d"), "")?)?;
    let e = read_err(&base.replace("tokens_per_param = 0.02", "tokens_per_param = -1"));
    assert!(
        e.contains("tokens_per_param") && e.contains("bad.toml"),
        "{e}"
    );
    let e = read_err(&base.replace(
        "layers = 2\nheads = 2\n\n[[sizes]]",
        "layers = 3\nheads = 2\n\n[[sizes]]",
    ));
    assert!(
        e.contains("size a") && e.contains("does not divide layers = 3"),
        "{e}"
    );
    let e = read_err(&base.replace("lr = 3e-3", "lr = 3e-3\nlearning_rate = 1"));
    assert!(e.contains("learning_rate"), "unknown keys are named: {e}");
    let e = read_err(&base.replace("seq_len = 32\n", ""));
    assert!(e.contains("seq_len"), "missing keys are named: {e}");
    let e = read_err(&base.replace("name = \"b\"", "name = \"a\""));
    assert!(e.contains("given twice"), "{e}");
    // several problems at once
    let e = read_err(
        &base
            .replace("lr = 3e-3", "lr = 0")
            .replace("batch_size = 4", "batch_size = 0"),
    );
    assert!(e.contains("lr = 0") && e.contains("batch_size"), "{e}");
    Ok(())
}

/// Stops the sweep at its second run's second update.
struct StopInSecondRun {
    flag: StopFlag,
    runs_started: usize,
}

impl Observer for StopInSecondRun {
    fn step(&mut self, step: u64, _lr: f64) {
        if self.runs_started == 2 && step == 2 {
            self.flag.set();
        }
    }
}

impl SweepObserver for StopInSecondRun {
    fn run_start(&mut self, _i: usize, _r: &simplex_train::sweep::PlannedRun) {
        self.runs_started += 1;
    }
}

struct Count(usize);
impl Observer for Count {}
impl SweepObserver for Count {
    fn run_start(&mut self, _i: usize, _r: &simplex_train::sweep::PlannedRun) {
        self.0 += 1;
    }
}

#[test]
fn a_stopped_sweep_resumes_without_redoing_finished_runs() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    prepare(&DataOptions::new(vec![common::corpus()]), &data)?;
    let spec = SweepSpec::read(&sweep_file(tmp.path(), &data, "")?)?;
    let out = tmp.path().join("out");
    let flag = StopFlag::new();
    let opts = SweepOptions {
        out: out.clone(),
        device: Device::Cpu,
        stop: flag.clone(),
        deadline: None,
        peak_flops: None,
    };
    let first = run_sweep(
        &spec,
        &opts,
        &mut StopInSecondRun {
            flag: flag.clone(),
            runs_started: 0,
        },
    )?;
    assert!(first.stopped);
    assert_eq!((first.done, first.trained, first.planned), (1, 1, 4));
    let done0 = out.join("runs/a-dot-s0/result.json");
    let stamp = std::fs::metadata(&done0)?.modified()?;
    assert!(
        out.join("runs/a-simplicial-s0/checkpoint").is_dir(),
        "the stopped run checkpointed"
    );
    assert!(!out.join("runs/a-simplicial-s0/result.json").exists());

    let mut count = Count(0);
    let opts = SweepOptions {
        stop: StopFlag::new(),
        ..opts
    };
    let second = run_sweep(&spec, &opts, &mut count)?;
    assert!(!second.stopped);
    assert_eq!((second.done, second.trained), (4, 3));
    assert_eq!(count.0, 3, "the finished run is not started again");
    assert_eq!(
        std::fs::metadata(&done0)?.modified()?,
        stamp,
        "nor rewritten"
    );

    // one results row per run and eval set, in the columns `simplex fit` reads
    let csv = std::fs::read_to_string(out.join("results.csv"))?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    for col in [
        "kind", "eval_set", "params", "loss", "seed", "tokens", "flops",
    ] {
        assert!(header.contains(&col), "{col} in {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 8);
    let loss_col = header.iter().position(|c| *c == "loss").unwrap_or(0);
    for r in &rows {
        let loss: f64 = r[loss_col].parse()?;
        assert!(loss.is_finite() && loss > 0.0, "{r:?}");
    }
    let runs = std::fs::read_to_string(out.join("runs.csv"))?;
    assert_eq!(runs.lines().count(), 5);
    assert!(runs
        .lines()
        .next()
        .unwrap_or("")
        .ends_with("heldout_nll,gsm_nll"));

    // a sweep file changed under a finished run is an error naming it
    let changed = std::fs::read_to_string(tmp.path().join("sweep.toml"))?
        .replace("d_model = 32", "d_model = 40");
    std::fs::write(tmp.path().join("sweep.toml"), changed)?;
    let spec2 = SweepSpec::read(&tmp.path().join("sweep.toml"))?;
    let Err(err) = run_sweep(&spec2, &opts, &mut Count(0)) else {
        panic!("a changed plan must be an error");
    };
    assert_mentions(&err, &["a-dot-s0", "another model"]);
    Ok(())
}
