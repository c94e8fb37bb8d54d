//! A short training run on match2 (the pair task dot-product attention can solve) must beat
//! chance clearly: the whole path (splits, same-length batches, task model, masked loss,
//! AdamW, evaluation) learns.
//!
//! One test in its own binary, so it can ask candle for single-threaded matmuls before any
//! thread starts: for a model this small, splitting each product over threads costs more than
//! it gains, and much more on a busy machine (measured: ~5x slower per step under load).

mod common;

use candle_core::Device;
use common::match2_settings;
use simplex_train::classify::report::majority_baseline;
use simplex_train::classify::run::Silent;
use simplex_train::classify::{train_run, AttnKind};
use simplex_train::tasks::{by_name, generate_splits};

#[test]
fn a_short_match2_run_beats_chance_clearly() -> anyhow::Result<()> {
    // the only test of this binary: no other thread reads the environment
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let steps = 200;
    let s = match2_settings(AttnKind::Dot, steps, steps / 2);
    let task = by_name(&s.task)?;
    let splits = generate_splits(task.as_ref(), s.data.seed, s.data.sizes())?;
    let chance = majority_baseline(&splits.test, task.num_classes()).token_accuracy;
    let r = train_run(&s, task.as_ref(), &splits, &Device::Cpu, None, &mut Silent)?;
    let acc = r.test.token_accuracy;
    eprintln!(
        "match2, dot, {steps} steps: test token accuracy {acc:.3} (majority class {chance:.3}), \
         {:.1} s",
        r.wall_s
    );
    assert!(
        acc > chance + 0.3 && acc > 0.9,
        "match2 after {steps} steps: test token accuracy {acc:.3}, majority class {chance:.3}"
    );
    let steps_seen: Vec<usize> = r.curve.iter().map(|p| p.step).collect();
    assert_eq!(steps_seen, [0, steps / 2, steps]);
    let first = r.curve[0].val_token_accuracy;
    assert!(first < chance + 0.1, "before training: {first:.3}");
    Ok(())
}
