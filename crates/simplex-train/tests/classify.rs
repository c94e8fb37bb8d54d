//! Task models: a checkpoint scores the same after a reload, batches hold one length and cover
//! an epoch, bad settings name their flag (the match2 training run is in `match2_learns.rs`).

mod common;

use candle_core::Device;
use common::match2_settings;
use simplex_train::classify::batches::{eval_batches, TrainBatches};
use simplex_train::classify::compare::CompareSettings;
use simplex_train::classify::run::Silent;
use simplex_train::classify::{
    eval_checkpoint, load_task_model, train_run, AttnKind, DataSettings, Optimization, Size,
    TaskRunSettings,
};
use simplex_train::tasks::{by_name, generate_splits, Split};

/// A small model on match2 (see `common::match2_settings`), evaluated once at the end.
fn settings(kind: AttnKind, steps: usize) -> TaskRunSettings {
    match2_settings(kind, steps, steps)
}

#[test]
fn a_checkpoint_scores_the_same_after_reloading() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let s = settings(AttnKind::Determinant, 8);
    let task = by_name(&s.task)?;
    let splits = generate_splits(task.as_ref(), s.data.seed, s.data.sizes())?;
    let r = train_run(
        &s,
        task.as_ref(),
        &splits,
        &Device::Cpu,
        Some(dir.path()),
        &mut Silent,
    )?;
    let loaded = load_task_model(dir.path(), &Device::Cpu)?;
    assert_eq!(loaded.settings, s);
    assert_eq!(loaded.state.step, 8);
    let test = eval_checkpoint(&loaded, Split::Test, None)?;
    assert_eq!(
        test, r.test,
        "test split: after reload vs at the end of training"
    );
    let val = eval_checkpoint(&loaded, Split::Validation, None)?;
    let last = r.curve.last().ok_or_else(|| anyhow::anyhow!("no curve"))?;
    assert_eq!(val.token_accuracy, last.val_token_accuracy);
    assert_eq!(val.exact_match, last.val_exact_match);
    let few = eval_checkpoint(&loaded, Split::Test, Some(10))?;
    assert_eq!(few.examples, 10);
    // a language-model folder or an empty one is not a task checkpoint
    let empty = tempfile::tempdir()?;
    let e = load_task_model(empty.path(), &Device::Cpu)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("no checkpoint")),
        "{e:?}"
    );
    std::fs::remove_file(dir.path().join("checkpoint/task.toml"))?;
    let e = load_task_model(dir.path(), &Device::Cpu)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("task.toml")),
        "{e:?}"
    );
    Ok(())
}

#[test]
fn batches_hold_one_length_and_cover_each_example_once_per_epoch() -> anyhow::Result<()> {
    let task = by_name("match3")?;
    let s = settings(AttnKind::Dot, 1).data;
    let splits = generate_splits(task.as_ref(), s.seed, s.sizes())?;
    let ex = &splits.train;
    let mut b = TrainBatches::new(ex, 16, 7)?;
    let mut seen = vec![0usize; ex.len()];
    while b.epoch() <= 1 {
        let idx = b.next_batch();
        if b.epoch() > 1 {
            break;
        }
        assert_eq!(idx.len(), 16);
        assert!(idx.iter().all(|&i| ex[i].len() == ex[idx[0]].len()));
        for i in idx {
            seen[i] += 1;
        }
    }
    assert!(
        seen.iter().all(|&c| c <= 1),
        "an example twice in one epoch"
    );
    let unused = seen.iter().filter(|&&c| c == 0).count();
    assert!(
        unused < 16 * 6,
        "{unused} examples left out of the epoch (at most 15 per length)"
    );
    let all: Vec<usize> = eval_batches(ex, 100).into_iter().flatten().collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..ex.len()).collect::<Vec<_>>());
    let e = TrainBatches::new(&ex[..20], 16, 0)
        .err()
        .map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("--batch")), "{e:?}");
    Ok(())
}

#[test]
fn bad_settings_name_their_flag() {
    let base = CompareSettings {
        task: "match3".into(),
        kinds: AttnKind::ALL.to_vec(),
        seeds: vec![0, 1],
        size: settings(AttnKind::Dot, 1).size,
        data: settings(AttnKind::Dot, 1).data,
        optim: settings(AttnKind::Dot, 10).optim,
        lr_by_kind: Default::default(),
    };
    let ok = CompareSettings {
        size: Size {
            d_model: 48,
            heads: 4,
            ..base.size
        },
        ..base.clone()
    };
    ok.validate().expect("a valid comparison");
    let cases: Vec<(&str, CompareSettings)> = vec![
        (
            "--task",
            CompareSettings {
                task: "match4".into(),
                ..ok.clone()
            },
        ),
        (
            "--kinds",
            CompareSettings {
                kinds: vec![],
                ..ok.clone()
            },
        ),
        (
            "--seeds",
            CompareSettings {
                seeds: vec![],
                ..ok.clone()
            },
        ),
        (
            "--steps",
            CompareSettings {
                optim: Optimization {
                    steps: 0,
                    ..ok.optim
                },
                ..ok.clone()
            },
        ),
        (
            "--batch",
            CompareSettings {
                optim: Optimization {
                    batch: 0,
                    ..ok.optim
                },
                ..ok.clone()
            },
        ),
        (
            "--lr",
            CompareSettings {
                optim: Optimization {
                    lr: -1.0,
                    ..ok.optim
                },
                ..ok.clone()
            },
        ),
        (
            "--lr",
            CompareSettings {
                lr_by_kind: [(AttnKind::Trilinear, f64::NAN)].into(),
                ..ok.clone()
            },
        ),
        (
            "--d-model",
            CompareSettings {
                size: Size {
                    d_model: 50,
                    ..ok.size
                },
                ..ok.clone()
            },
        ),
        (
            "--heads",
            CompareSettings {
                size: Size {
                    heads: 0,
                    ..ok.size
                },
                ..ok.clone()
            },
        ),
        (
            "--layers",
            CompareSettings {
                size: Size {
                    layers: 0,
                    ..ok.size
                },
                ..ok.clone()
            },
        ),
        // head dim 8: not a multiple of 3 for the determinant kind
        (
            "--d-model",
            CompareSettings {
                size: Size {
                    d_model: 32,
                    ..ok.size
                },
                ..ok.clone()
            },
        ),
        // head dim 9: odd, so no dot model with as many parameters
        (
            "--d-model",
            CompareSettings {
                size: Size {
                    d_model: 36,
                    ..ok.size
                },
                ..ok.clone()
            },
        ),
        (
            "--test-examples",
            CompareSettings {
                data: DataSettings { test: 0, ..ok.data },
                ..ok.clone()
            },
        ),
    ];
    for (flag, s) in cases {
        let e = s
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with(flag),
            "expected an error naming {flag}, got `{e}`"
        );
    }
    let e = AttnKind::parse("quadratic")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--kinds") && e.contains("trilinear"), "{e}");
}
