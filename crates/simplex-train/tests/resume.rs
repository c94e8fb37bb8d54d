//! `--resume` continues exactly: N steps + resume + N steps gives the same losses, held-out
//! losses and final weights, bit for bit, as 2N steps in one go (CPU: every kernel reduces in a
//! fixed order, and all randomness is a function of the seed and the saved data position).

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::tiny_run;
use simplex_train::metrics::read_jsonl;
use simplex_train::{train, Precision, Quiet, RunOptions};

fn weights(run: &std::path::Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        run.join("checkpoint/model.safetensors"),
        &Device::Cpu,
    )?)
}

fn resume_matches(tweak: impl Fn(&mut RunOptions)) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let mut straight = tiny_run(&a, 8);
    tweak(&mut straight);
    let full = train(&straight, &mut Quiet)?;

    let mut first = tiny_run(&b, 8);
    tweak(&mut first);
    first.until = Some(4);
    let head = train(&first, &mut Quiet)?;
    assert_eq!(head.step, 4);
    let mut second = tiny_run(&b, 8);
    tweak(&mut second);
    second.resume = true;
    second.data.clear(); // the stored shards are used
    let tail = train(&second, &mut Quiet)?;
    assert_eq!(tail.step, 8);

    let joined: Vec<(u64, f64)> = head.losses.iter().chain(&tail.losses).copied().collect();
    assert_eq!(full.losses.len(), 8);
    for ((s1, l1), (s2, l2)) in full.losses.iter().zip(&joined) {
        assert_eq!(s1, s2);
        assert_eq!(
            l1.to_bits(),
            l2.to_bits(),
            "step {s1}: loss {l1} straight vs {l2} resumed"
        );
    }
    // the metrics files hold the same rows (log_every 1), held-out losses included
    let (ra, rb) = (
        read_jsonl(&a.join("metrics.jsonl"))?,
        read_jsonl(&b.join("metrics.jsonl"))?,
    );
    assert_eq!(ra.len(), 8);
    assert_eq!(rb.len(), 8, "each step once after the resume");
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (x.step, x.train_loss.to_bits(), x.lr.to_bits()),
            (y.step, y.train_loss.to_bits(), y.lr.to_bits())
        );
        assert_eq!(
            x.val_loss.map(f64::to_bits),
            y.val_loss.map(f64::to_bits),
            "step {}",
            x.step
        );
        assert_eq!(x.tokens_seen, y.tokens_seen);
    }
    assert!(ra[2].val_loss.is_some() && ra[7].val_loss.is_some());
    // and the same digits: the rows kept across the resume are not re-serialized
    let field = |line: &str, key: &str| -> String {
        let rest = line.split(&format!("\"{key}\":")).nth(1).unwrap_or("");
        rest.split([',', '}']).next().unwrap_or("").to_string()
    };
    let (ta, tb) = (
        std::fs::read_to_string(a.join("metrics.jsonl"))?,
        std::fs::read_to_string(b.join("metrics.jsonl"))?,
    );
    for (la, lb) in ta.lines().zip(tb.lines()) {
        for key in [
            "step",
            "train_loss",
            "lr",
            "grad_norm",
            "tokens_seen",
            "val_loss",
            "val_bpb",
        ] {
            assert_eq!(field(la, key), field(lb, key), "{key}: {la} vs {lb}");
        }
    }
    let (wa, wb) = (weights(&a)?, weights(&b)?);
    assert_eq!(wa.len(), wb.len());
    for (name, t) in &wa {
        let diff = (t - &wb[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "weight {name} differs by {diff}");
    }
    Ok(())
}

#[test]
fn resume_equals_uninterrupted_f32() -> anyhow::Result<()> {
    resume_matches(|_| {})
}

#[test]
fn resume_equals_uninterrupted_bf16_with_grad_accum() -> anyhow::Result<()> {
    resume_matches(|o| {
        o.overrides.precision = Some(Precision::Bf16);
        o.overrides.grad_accum = Some(2);
        o.overrides.batch_size = Some(2);
    })
}

#[test]
fn loss_decreases_and_seeds_reproduce() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut o = tiny_run(&tmp.path().join("a"), 30);
    o.overrides.eval_every = Some(15);
    let s = train(&o, &mut Quiet)?;
    let l: Vec<f64> = s.losses.iter().map(|x| x.1).collect();
    let head = l[..3].iter().sum::<f64>() / 3.0;
    let tail = l[27..].iter().sum::<f64>() / 3.0;
    // uniform over 257 ids is ln 257 = 5.55; 30 steps learn the byte frequencies at least
    assert!((l[0] - 257f64.ln()).abs() < 0.3, "first loss {}", l[0]);
    assert!(tail < head - 1.5, "loss {head} -> {tail}");
    let recs = read_jsonl(&tmp.path().join("a/metrics.jsonl"))?;
    let vals: Vec<f64> = recs.iter().filter_map(|r| r.val_loss).collect();
    assert_eq!(vals.len(), 2);
    assert!(vals[1] < vals[0], "held-out loss {vals:?}");
    let bpb = recs.last().and_then(|r| r.val_bpb).unwrap_or(f64::NAN);
    // bytes tokenizer: bits per byte = nats per token / ln 2, plus the end-of-text tokens
    assert!(bpb > vals[1] / std::f64::consts::LN_2 * 0.99, "bpb {bpb}");
    // same seed, same first losses; another seed, other ones
    let mut o2 = tiny_run(&tmp.path().join("b"), 30);
    o2.until = Some(2);
    let s2 = train(&o2, &mut Quiet)?;
    assert_eq!(s2.losses[1].1.to_bits(), s.losses[1].1.to_bits());
    let mut o3 = tiny_run(&tmp.path().join("c"), 30);
    o3.until = Some(2);
    o3.overrides.seed = Some(7);
    let s3 = train(&o3, &mut Quiet)?;
    assert_ne!(s3.losses[1].1.to_bits(), s.losses[1].1.to_bits());
    Ok(())
}

/// Accumulating 2 micro-batches of 2 sequences is one batch of 4 (the batcher draws the same
/// windows in the same order), up to float summation order.
#[test]
fn grad_accum_equals_the_bigger_batch() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let big = train(&tiny_run(&tmp.path().join("big"), 5), &mut Quiet)?;
    let mut o = tiny_run(&tmp.path().join("acc"), 5);
    o.overrides.batch_size = Some(2);
    o.overrides.grad_accum = Some(2);
    let acc = train(&o, &mut Quiet)?;
    for ((s, a), (_, b)) in big.losses.iter().zip(&acc.losses) {
        assert!(
            (a - b).abs() < 1e-4 * a.abs(),
            "step {s}: batch 4 loss {a}, 2 x 2 accumulated {b}"
        );
    }
    Ok(())
}

/// Sets the stop flag when `at` is reached, as a signal handler would in the middle of a run.
struct StopAt {
    at: u64,
    flag: simplex_train::StopFlag,
}

impl simplex_train::Observer for StopAt {
    fn step(&mut self, step: u64, _lr: f64) {
        if step == self.at {
            self.flag.set();
        }
    }
}

#[test]
fn a_stop_request_checkpoints_and_the_resume_matches() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("stopped"));
    let full = train(&tiny_run(&a, 8), &mut Quiet)?;
    assert!(!full.stopped);
    let flag = simplex_train::StopFlag::new();
    let mut first = tiny_run(&b, 8);
    first.stop = Some(flag.clone());
    let head = train(
        &first,
        &mut StopAt {
            at: 3,
            flag: flag.clone(),
        },
    )?;
    assert!(head.stopped);
    assert_eq!(head.step, 3, "stops after the update going when asked");
    assert!(head.checkpoint.is_some(), "and writes a checkpoint first");
    let mut second = tiny_run(&b, 8);
    second.resume = true;
    let tail = train(&second, &mut Quiet)?;
    assert_eq!(tail.step, 8);
    let joined: Vec<u64> = head
        .losses
        .iter()
        .chain(&tail.losses)
        .map(|(_, l)| l.to_bits())
        .collect();
    let straight: Vec<u64> = full.losses.iter().map(|(_, l)| l.to_bits()).collect();
    assert_eq!(joined, straight, "stopped + resumed = uninterrupted");
    Ok(())
}

#[test]
fn a_prepared_dataset_trains_like_the_text_it_came_from() -> anyhow::Result<()> {
    use simplex_train::data::{prepare, DataOptions};
    let tmp = tempfile::tempdir()?;
    let from_text = train(&tiny_run(&tmp.path().join("text"), 4), &mut Quiet)?;
    let data = tmp.path().join("prepared");
    prepare(&DataOptions::new(vec![common::corpus()]), &data)?;
    let mut o = tiny_run(&tmp.path().join("runs/a"), 4);
    o.data = vec![data.clone()];
    let from_prepared = train(&o, &mut Quiet)?;
    assert_eq!(from_text.losses, from_prepared.losses);
    assert!(tmp.path().join("runs/a/data").is_symlink());
    // resuming with the same folder is fine; a tokenizer other than the data's is an error
    let mut r = tiny_run(&tmp.path().join("runs/a"), 6);
    r.data = vec![data.clone()];
    r.resume = true;
    assert_eq!(train(&r, &mut Quiet)?.step, 6);
    let mut bad = tiny_run(&tmp.path().join("runs/b"), 4);
    bad.data = vec![data];
    bad.overrides.tokenizer = Some("bpe:300".into());
    let Err(err) = train(&bad, &mut Quiet) else {
        panic!("a tokenizer clash must be an error");
    };
    common::assert_mentions(&err, &["tokenizer", "bpe:300", "prepared"]);
    Ok(())
}
