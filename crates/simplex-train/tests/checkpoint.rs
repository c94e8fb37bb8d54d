//! Checkpoints: a crash mid-write leaves the previous checkpoint loadable, and a corrupted or
//! mismatched checkpoint is an error that names the file.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{assert_mentions, tiny_run};
use simplex_train::checkpoint::{locate, Checkpoint};
use simplex_train::{train, Quiet, RunOptions};

/// A run of 2 steps with its checkpoint, and the options that resume it to step 4.
fn two_steps(dir: &Path) -> anyhow::Result<RunOptions> {
    let mut o = tiny_run(dir, 4);
    o.until = Some(2);
    train(&o, &mut Quiet)?;
    o.until = None;
    o.resume = true;
    Ok(o)
}

fn step_of(dir: &Path) -> anyhow::Result<u64> {
    let ck = locate(dir).ok_or_else(|| anyhow::anyhow!("no checkpoint in {}", dir.display()))?;
    Ok(Checkpoint::read(&ck, &Device::Cpu)?.state.step)
}

#[test]
fn crash_while_writing_keeps_the_previous_checkpoint() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let resume = two_steps(&run)?;
    // a save that died half way: garbage in the temporary folder
    let partial = run.join("checkpoint.tmp");
    std::fs::create_dir_all(&partial)?;
    std::fs::write(partial.join("model.safetensors"), b"\x10\x00\x00garbage")?;
    std::fs::write(partial.join("state.json"), b"{\"step\": 99")?;
    assert_eq!(locate(&run), Some(run.join("checkpoint")));
    assert_eq!(step_of(&run)?, 2);
    let s = train(&resume, &mut Quiet)?;
    assert_eq!((s.losses.first().map(|l| l.0), s.step), (Some(3), 4));
    assert!(!partial.exists(), "the next save clears the leftover");
    assert_eq!(step_of(&run)?, 4);
    Ok(())
}

#[test]
fn crash_between_the_renames_falls_back_to_the_old_checkpoint() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let resume = two_steps(&run)?;
    std::fs::rename(run.join("checkpoint"), run.join("checkpoint.old"))?;
    assert_eq!(locate(&run), Some(run.join("checkpoint.old")));
    let s = train(&resume, &mut Quiet)?;
    assert_eq!(s.losses.first().map(|l| l.0), Some(3));
    assert!(run.join("checkpoint").is_dir() && !run.join("checkpoint.old").exists());
    Ok(())
}

#[test]
fn corrupted_or_mismatched_checkpoints_name_the_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let resume = two_steps(&run)?;
    let ck = run.join("checkpoint");
    let backup = tmp.path().join("backup");
    std::fs::create_dir_all(&backup)?;
    for f in std::fs::read_dir(&ck)? {
        let f = f?;
        std::fs::copy(f.path(), backup.join(f.file_name()))?;
    }
    let restore = || -> anyhow::Result<()> {
        for f in std::fs::read_dir(&backup)? {
            let f = f?;
            std::fs::copy(f.path(), ck.join(f.file_name()))?;
        }
        Ok(())
    };
    let fails = |parts: &[&str]| -> anyhow::Result<()> {
        match train(&resume, &mut Quiet) {
            Ok(_) => anyhow::bail!("resume succeeded; expected an error mentioning {parts:?}"),
            Err(e) => {
                assert_mentions(&e, parts);
                Ok(())
            }
        }
    };

    // truncated weights
    let w = std::fs::read(ck.join("model.safetensors"))?;
    std::fs::write(ck.join("model.safetensors"), &w[..w.len() / 2])?;
    fails(&["checkpoint/model.safetensors", "corrupted or truncated"])?;
    restore()?;

    // a tensor missing
    let mut t = candle_core::safetensors::load(ck.join("model.safetensors"), &Device::Cpu)?;
    t.remove("norm.weight");
    candle_core::safetensors::save(&t, ck.join("model.safetensors"))?;
    fails(&["checkpoint/model.safetensors", "no tensor `norm.weight`"])?;
    restore()?;

    // optimizer state gone
    std::fs::remove_file(ck.join("optimizer.safetensors"))?;
    fails(&["checkpoint/optimizer.safetensors", "missing"])?;
    restore()?;

    // another model's config
    let cfg = std::fs::read_to_string(ck.join("config.toml"))?;
    std::fs::write(
        ck.join("config.toml"),
        cfg.replace("d_model = 128", "d_model = 64"),
    )?;
    fails(&["checkpoint/config.toml", "d_model = 64", "another model"])?;
    restore()?;

    // state.json unreadable
    std::fs::write(ck.join("state.json"), "{ not json")?;
    fails(&["checkpoint/state.json", "not a readable state"])?;
    restore()?;

    // after all that, the restored checkpoint still resumes
    let s = train(&resume, &mut Quiet)?;
    assert_eq!(s.step, 4);
    Ok(())
}

#[test]
fn a_cut_last_metrics_line_is_dropped_on_resume() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let resume = two_steps(&run)?;
    let path = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str("{\"step\":3,\"train_lo");
    std::fs::write(&path, text)?;
    train(&resume, &mut Quiet)?;
    let steps: Vec<u64> = simplex_train::metrics::read_jsonl(&path)?
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    Ok(())
}

#[test]
fn keep_last_and_best_checkpoints() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    // lr 3e-2 makes the held-out loss of this tiny run go up after its first eval (step 2)
    let mut o = common::tiny_run(&run, 8);
    o.overrides.lr = Some(3e-2);
    o.overrides.ckpt_every = Some(3);
    o.overrides.eval_every = Some(2);
    o.keep = simplex_train::KeepCheckpoints {
        last: 2,
        best: true,
    };
    simplex_train::train(&o, &mut simplex_train::Quiet)?;
    // checkpoints at steps 3, 6, 8 (the end) and at the improving eval (2); the newest two stay
    let mut kept: Vec<String> = std::fs::read_dir(run.join("checkpoints"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    kept.sort();
    assert_eq!(kept, ["step-00000006", "step-00000008"]);
    let step_of = |dir: &std::path::Path| -> anyhow::Result<u64> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
        v["step"].as_u64().ok_or_else(|| anyhow::anyhow!("no step"))
    };
    assert_eq!(step_of(&run.join("checkpoints/step-00000006"))?, 6);
    // the best checkpoint is the eval step with the lowest held-out loss
    let rows = simplex_train::metrics::read_jsonl(&run.join("metrics.jsonl"))?;
    let best = rows
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (v, r.step)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s)
        .ok_or_else(|| anyhow::anyhow!("no eval rows"))?;
    assert_eq!(
        best, 2,
        "the case this test is for: the best eval is not the last"
    );
    assert_eq!(step_of(&run.join("checkpoint-best"))?, best);
    // and it loads like any checkpoint
    let g =
        simplex_train::Generator::load(&run.join("checkpoint-best"), &candle_core::Device::Cpu)?;
    assert_eq!(g.step, best);
    Ok(())
}
