//! Eval sets during training: `eval_sets = ["gsm", "heldout"]` adds `eval/<name>_nll` to the
//! eval rows of metrics.jsonl; files and configs written before the field still read.

mod common;

use std::path::Path;

use simplex_train::evalsets::{self, EvalRun, EvalSource};
use simplex_train::metrics::{eval_key, read_jsonl, Record};
use simplex_train::{train, Quiet, TrainConfig};

#[test]
fn training_records_eval_set_nlls() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("run");
    let mut opts = common::tiny_run(&out, 6);
    opts.overrides.eval_sets = Some(vec!["gsm".into(), "heldout".into()]);
    let summary = train(&opts, &mut Quiet)?;
    assert_eq!(summary.step, 6);
    let rows = read_jsonl(&out.join("metrics.jsonl"))?;
    let (gsm, held) = (eval_key("gsm"), eval_key("heldout"));
    for r in &rows {
        let evaluated = r.val_loss.is_some();
        assert_eq!(r.evals.contains_key(&gsm), evaluated, "step {}", r.step);
        if let Some(v) = r.val_loss {
            assert_eq!(r.evals[&held], v);
            let g = r.evals[&gsm];
            assert!(g.is_finite() && g > 0.0 && g < 10.0, "{g}");
        }
    }
    assert_eq!(rows.iter().filter(|r| r.val_loss.is_some()).count(), 2);
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    assert!(text.contains("\"eval/gsm_nll\":"), "{text}");
    let saved = std::fs::read_to_string(out.join("train.toml"))?;
    assert!(
        saved.contains("eval_sets = [\"gsm\", \"heldout\"]"),
        "{saved}"
    );

    // the checkpoint scored afterwards gives the last row's numbers (f32 on the CPU)
    let run = EvalRun::load(&out, &candle_core::Device::Cpu)?;
    let opts = run.options(4, None);
    let last = rows.last().expect("rows");
    for src in evalsets::resolve(&["gsm".into(), "heldout".into()], Path::new("evals"))? {
        let s = run.score(&src, &opts)?;
        let want = last.evals[&eval_key(src.name())];
        assert!(
            (s.nll - want).abs() < 1e-4,
            "{}: {} vs {want}",
            s.name,
            s.nll
        );
        if let EvalSource::Heldout = src {
            assert!((s.bpb - last.val_bpb.expect("bpb")).abs() < 1e-4);
        }
    }

    // a resume may change the sets; unknown names stop the run before it trains
    let mut again = common::tiny_run(&out, 8);
    again.resume = true;
    again.overrides.eval_sets = Some(vec!["no-such-set".into()]);
    let e = train(&again, &mut Quiet).unwrap_err().to_string();
    assert!(e.contains("no-such-set") && e.contains("gsm"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("train.toml"))?, saved);
    Ok(())
}

#[test]
fn files_written_before_eval_sets_still_read() -> anyhow::Result<()> {
    let row = r#"{"step":3,"train_loss":5.5,"lr":0.001,"grad_norm":1.0,"tokens_per_s":10.0,"tokens_seen":96,"elapsed_s":0.5,"val_loss":5.25,"val_bpb":7.5}"#;
    let r: Record = serde_json::from_str(row)?;
    assert!(r.evals.is_empty());
    assert_eq!(serde_json::to_string(&r)?, row);
    let with: Record = serde_json::from_str(&row.replace('}', r#","eval/gsm_nll":2.5}"#))?;
    assert_eq!(with.evals[&eval_key("gsm")], 2.5);
    let mut cfg = TrainConfig::resolve(&Default::default(), 256, false)?;
    let toml = cfg.to_toml()?;
    assert!(
        !toml.contains("eval_sets") && !toml.contains("eval_dir"),
        "{toml}"
    );
    assert_eq!(TrainConfig::from_toml(&toml, Path::new("train.toml"))?, cfg);
    cfg.eval_sets = vec!["mmlu".into()];
    cfg.eval_dir = Some("elsewhere".into());
    let back = TrainConfig::from_toml(&cfg.to_toml()?, Path::new("train.toml"))?;
    assert_eq!(back, cfg);
    assert_eq!(back.eval_sets_dir(), Path::new("elsewhere"));
    Ok(())
}
