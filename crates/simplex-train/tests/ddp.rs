//! Data-parallel training on the CPU, ranks as threads of this process (ddp::local_group):
//! 2 ranks give the 1-rank run's losses and weights for the same global batch (f32, up to the
//! order of additions), a run resumes on another number of ranks, and a rank that fails or
//! hangs ends the others' runs with errors naming it, never a hang.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::tiny_run;
use simplex_train::ddp::{local_group, Collective, Distributed, LocalComm, ReduceOp};
use simplex_train::{train, train_ranked, Quiet, RunOptions, Summary, TrainConfig};

/// Runs `opts` on `world` ranks (threads); rank r's options are `tweak(r)` of `opts`.
fn run_ranks(
    world: usize,
    opts: &RunOptions,
    tweak: impl Fn(usize, &mut RunOptions) + Sync,
) -> Vec<simplex_train::Result<Summary>> {
    let comms = local_group(world, Duration::from_secs(120));
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let mut o = opts.clone();
                tweak(c.rank(), &mut o);
                s.spawn(move || train_ranked(&o, &mut Quiet, &Distributed::new(&c)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

fn weights(run: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        run.join("checkpoint/model.safetensors"),
        &Device::Cpu,
    )?)
}

fn assert_close_losses(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64) {
    assert_eq!(a.len(), b.len());
    for ((s1, l1), (s2, l2)) in a.iter().zip(b) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= tol * l1.abs(),
            "step {s1}: loss {l1} vs {l2}"
        );
    }
}

fn assert_close_weights(a: &Path, b: &Path, tol: f32) -> anyhow::Result<()> {
    let (wa, wb) = (weights(a)?, weights(b)?);
    assert_eq!(wa.len(), wb.len());
    for (n, t) in &wa {
        let d = (t - &wb[n])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d <= tol, "{n}: weights differ by {d}");
    }
    Ok(())
}

fn train_toml(run: &Path) -> anyhow::Result<TrainConfig> {
    let p = run.join("train.toml");
    Ok(TrainConfig::from_toml(&std::fs::read_to_string(&p)?, &p)?)
}

/// One rank with batch 4 x grad_accum 2, two ranks with batch 4 (and with batch 2 x
/// grad_accum 2): the same 8 sequences per update, the same losses and weights.
#[test]
fn two_ranks_match_one_rank_with_the_same_global_batch() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let one = tmp.path().join("one");
    let mut o = tiny_run(&one, 6);
    o.overrides.grad_accum = Some(2);
    let single = train(&o, &mut Quiet)?;
    assert_eq!(single.losses.len(), 6);
    for (name, batch, accum) in [("two", 4, 1), ("two-accum", 2, 2)] {
        let dir = tmp.path().join(name);
        let mut o = tiny_run(&dir, 6);
        o.overrides.batch_size = Some(batch);
        o.overrides.grad_accum = Some(accum);
        let out = run_ranks(2, &o, |_, _| {});
        let sums: Vec<Summary> = out.into_iter().collect::<Result<_, _>>()?;
        // every rank logs the ranks' mean loss; only rank 0 wrote a checkpoint
        assert_eq!(sums[0].losses, sums[1].losses);
        assert!(sums[0].checkpoint.is_some() && sums[1].checkpoint.is_none());
        assert_close_losses(&single.losses, &sums[0].losses, 1e-5);
        assert_close_weights(&one, &dir, 1e-5)?;
        let c = train_toml(&dir)?;
        assert_eq!(
            (c.batch_size, c.grad_accum, c.world_size),
            (batch, accum, 2)
        );
        let last = sums[0].last.as_ref().expect("a metrics row");
        assert_eq!(last.tokens_seen, 6 * 8 * 32);
        // the gradient norms too (AdamW would hide a gradient off by a constant factor)
        let (ra, rb) = (
            simplex_train::metrics::read_jsonl(&one.join("metrics.jsonl"))?,
            simplex_train::metrics::read_jsonl(&dir.join("metrics.jsonl"))?,
        );
        assert_eq!(rb.len(), 6);
        for (x, y) in ra.iter().zip(&rb) {
            assert!(
                (x.grad_norm - y.grad_norm).abs() <= 1e-4 * x.grad_norm,
                "step {}: grad_norm {} vs {}",
                x.step,
                x.grad_norm,
                y.grad_norm
            );
        }
    }
    Ok(())
}

/// 2 ranks to step 4, then 1 rank to step 8 (grad_accum doubles by itself), and 1 rank then 2:
/// both follow the straight 1-rank run; train.toml records the new split.
#[test]
fn resumes_on_another_number_of_ranks() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let straight = tmp.path().join("straight");
    let mut o = tiny_run(&straight, 8);
    o.overrides.grad_accum = Some(2);
    let full = train(&o, &mut Quiet)?;

    // 2 ranks, then 1
    let a = tmp.path().join("two-then-one");
    let mut first = tiny_run(&a, 8);
    first.until = Some(4);
    let head = run_ranks(2, &first, |_, _| {}).remove(0)?;
    assert_eq!(head.step, 4);
    let mut second = tiny_run(&a, 8);
    second.resume = true;
    second.data.clear();
    second.overrides.batch_size = None;
    let tail = train(&second, &mut Quiet)?;
    assert_eq!(tail.step, 8);
    let joined: Vec<(u64, f64)> = head.losses.iter().chain(&tail.losses).copied().collect();
    assert_close_losses(&full.losses, &joined, 1e-5);
    assert_close_weights(&straight, &a, 1e-5)?;
    let c = train_toml(&a)?;
    assert_eq!((c.batch_size, c.grad_accum, c.world_size), (4, 2, 1));

    // 1 rank (grad_accum 2), then 2 ranks (grad_accum 1 each)
    let b = tmp.path().join("one-then-two");
    let mut first = tiny_run(&b, 8);
    first.overrides.grad_accum = Some(2);
    first.until = Some(4);
    let head = train(&first, &mut Quiet)?;
    let mut second = tiny_run(&b, 8);
    second.resume = true;
    second.data.clear();
    second.overrides.batch_size = None;
    let tail = run_ranks(2, &second, |_, _| {}).remove(0)?;
    let joined: Vec<(u64, f64)> = head.losses.iter().chain(&tail.losses).copied().collect();
    assert_close_losses(&full.losses, &joined, 1e-5);
    assert_close_weights(&straight, &b, 1e-5)?;
    let c = train_toml(&b)?;
    assert_eq!((c.batch_size, c.grad_accum, c.world_size), (4, 1, 2));

    // 3 ranks cannot split 8 sequences: an error naming the global batch, on every rank
    let mut third = tiny_run(&b, 10);
    third.resume = true;
    third.data.clear();
    third.overrides.batch_size = None;
    for r in run_ranks(3, &third, |_, _| {}) {
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("8 sequences per update") || e.contains("rank 0 could not set up"),
            "{e}"
        );
    }
    Ok(())
}

/// A rank whose collective fails after `calls` operations (as a crashed rank would stop
/// answering); dropping it tells the others it left.
struct Dying {
    inner: LocalComm,
    calls: Cell<usize>,
}

impl Dying {
    fn tick(&self) -> simplex_train::Result<()> {
        match self.calls.get() {
            0 => Err(simplex_train::TrainError::distributed(
                self.inner.rank(),
                "injected crash",
            )),
            n => {
                self.calls.set(n - 1);
                Ok(())
            }
        }
    }
}

impl Collective for Dying {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> simplex_train::Result<()> {
        self.tick()?;
        self.inner.all_reduce(t, op)
    }
    fn broadcast(&self, t: &Tensor) -> simplex_train::Result<()> {
        self.tick()?;
        self.inner.broadcast(t)
    }
    fn backend(&self) -> &'static str {
        "dying"
    }
}

/// Rank 1 fails at step 5 (a checkpoint every 2 steps): rank 0 stops with an error naming
/// rank 1 at once, and the run resumes from step 4 on one rank.
#[test]
fn a_dead_rank_ends_the_others_and_the_run_resumes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("run");
    let mut o = tiny_run(&dir, 8);
    o.overrides.ckpt_every = Some(2);
    let mut comms = local_group(2, Duration::from_secs(60));
    let c1 = comms.pop().expect("rank 1");
    let c0 = comms.pop().expect("rank 0");
    // setup: 2 broadcasts + 1 max; then per update 1 sum (one bucket) and at each row
    // (log_every 1) one max (stop) and one sum (losses): 3 per step -> dies in step 5
    let dying = Dying {
        inner: c1,
        calls: Cell::new(3 + 3 * 4 + 1),
    };
    let t0 = Instant::now();
    let (r0, r1) = std::thread::scope(|s| {
        let o0 = o.clone();
        let h0 = s.spawn(move || train_ranked(&o0, &mut Quiet, &Distributed::new(&c0)));
        let o1 = o.clone();
        let h1 = s.spawn(move || {
            let r = train_ranked(&o1, &mut Quiet, &Distributed::new(&dying));
            drop(dying);
            r
        });
        (h0.join().expect("rank 0"), h1.join().expect("rank 1"))
    });
    assert!(
        t0.elapsed() < Duration::from_secs(50),
        "no waiting for the timeout"
    );
    let e1 = r1.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e1.contains("injected crash"), "{e1}");
    let e0 = r0.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e0.contains("rank 0: rank 1 left the group"), "{e0}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint/state.json"))?)?;
    assert_eq!(state["step"], 4);
    let mut again = tiny_run(&dir, 8);
    again.overrides.ckpt_every = Some(2);
    again.resume = true;
    again.data.clear();
    again.overrides.batch_size = None;
    let s = train(&again, &mut Quiet)?;
    assert_eq!(s.losses.first().map(|l| l.0), Some(5));
    assert_eq!(s.step, 8);

    // rank 0 cannot set up (no such data): rank 1 fails too, saying so
    let bad = tiny_run(&tmp.path().join("bad"), 2);
    let mut bad = bad;
    bad.data = vec![tmp.path().join("no-such-folder")];
    let out = run_ranks(2, &bad, |_, _| {});
    let e1 = out[1]
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e1.contains("rank 1: rank 0 could not set up the run folder"),
        "{e1}"
    );
    assert!(out[0].is_err());
    Ok(())
}
