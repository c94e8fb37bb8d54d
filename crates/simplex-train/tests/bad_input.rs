//! Bad settings and configs through the library entry point: each error names the key, flag
//! or file, and nothing is left half made.

mod common;

use common::{assert_mentions, tiny_run};
use simplex_train::{train, ModelChoice, Quiet};

#[test]
fn model_config_files_name_the_file_and_key() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let good = "vocab_size = 300\nd_model = 32\npattern = \"DS\"\nheads_q = 2\nmlp_hidden = 64\nmax_seq_len = 64\n[simplicial]\nw1 = 8\nw2 = 4\n";
    let cases = [
        (
            "unknown.toml",
            good.replace("heads_q = 2", "heads_q = 2\nlayers = 4"),
            vec!["unknown.toml", "unknown field `layers`"],
        ),
        (
            "letters.toml",
            good.replace("\"DS\"", "\"DX\""),
            vec!["letters.toml", "pattern", "`X`"],
        ),
        (
            "heads.toml",
            good.replace("heads_q = 2", "heads_q = 3"),
            vec!["heads.toml", "d_model", "heads_q = 3"],
        ),
        (
            "window.toml",
            good.replace("w1 = 8", "w1 = 0"),
            vec!["window.toml", "simplicial.w1"],
        ),
        (
            "vocab.toml",
            good.replace("vocab_size = 300", "vocab_size = 100"),
            vec!["vocab.toml", "vocab_size = 100", "257"],
        ),
    ];
    for (i, (name, text, parts)) in cases.iter().enumerate() {
        let path = tmp.path().join(name);
        std::fs::write(&path, text)?;
        let mut o = tiny_run(&tmp.path().join(format!("run{i}")), 2);
        o.model = Some(ModelChoice::File(path));
        match train(&o, &mut Quiet) {
            Ok(_) => anyhow::bail!("{name}: trained; expected an error"),
            Err(e) => assert_mentions(&e, parts),
        }
    }
    // the good one trains (vocab 300 >= the byte tokenizer's 257)
    let path = tmp.path().join("good.toml");
    std::fs::write(&path, good)?;
    let mut o = tiny_run(&tmp.path().join("good"), 2);
    o.model = Some(ModelChoice::File(path.clone()));
    assert_eq!(train(&o, &mut Quiet)?.step, 2);
    let missing = tmp.path().join("nope.toml");
    o.out = tmp.path().join("good2");
    o.model = Some(ModelChoice::File(missing));
    assert_mentions(
        &train(&o, &mut Quiet)
            .err()
            .ok_or_else(|| anyhow::anyhow!("no error"))?,
        &["nope.toml", "no such file"],
    );
    Ok(())
}

#[test]
fn settings_and_run_folders_are_checked() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let expect = |o: &simplex_train::RunOptions, parts: &[&str]| match train(o, &mut Quiet) {
        Ok(_) => panic!("expected an error mentioning {parts:?}"),
        Err(e) => assert_mentions(&e, parts),
    };
    let mut o = tiny_run(&run, 2);
    o.overrides.seq_len = Some(1000);
    expect(&o, &["seq_len = 1000", "max_seq_len = 256"]);
    let mut o = tiny_run(&tmp.path().join("r2"), 2);
    o.overrides.lr = Some(-1.0);
    expect(&o, &["lr = -1"]);
    let mut o = tiny_run(&tmp.path().join("r3"), 2);
    o.overrides.warmup = Some(5);
    expect(&o, &["warmup = 5", "steps = 2"]);
    let mut o = tiny_run(&tmp.path().join("r4"), 2);
    o.model = Some(ModelChoice::Preset("huge".into()));
    expect(&o, &["huge", "tiny"]);
    // nothing to resume; then a real run, which a second start without --resume refuses
    let mut o = tiny_run(&tmp.path().join("r5"), 2);
    o.resume = true;
    expect(&o, &["r5", "nothing to resume"]);
    let o = tiny_run(&tmp.path().join("r6"), 2);
    train(&o, &mut Quiet)?;
    expect(&o, &["r6", "already holds a run", "--resume"]);
    // a resume that changes a setting that shapes the math
    let mut o2 = o.clone();
    o2.resume = true;
    o2.overrides.lr = Some(1e-3);
    expect(&o2, &["lr = 0.001", "keeps its settings"]);
    let mut o3 = o.clone();
    o3.resume = true;
    o3.model = Some(ModelChoice::Preset("small".into()));
    expect(&o3, &["config.toml", "d_model", "keeps its model"]);
    // someone's own data/ folder in --out is never deleted
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(theirs.join("data"))?;
    std::fs::write(theirs.join("data/notes.txt"), "mine")?;
    expect(
        &tiny_run(&theirs, 2),
        &["theirs", "data/ folder that simplex did not write"],
    );
    assert!(theirs.join("data/notes.txt").is_file());
    // resuming with more steps extends the run
    let mut o4 = o.clone();
    o4.resume = true;
    o4.overrides.steps = Some(3);
    o4.overrides.warmup = None;
    let s = train(&o4, &mut Quiet)?;
    assert_eq!((s.losses.len(), s.step), (1, 3));
    Ok(())
}

/// Overwrites the first value of tensor `name` in the safetensors file `path` with `value`.
fn poison(path: &std::path::Path, name: &str, value: f32) -> anyhow::Result<()> {
    let dev = candle_core::Device::Cpu;
    let mut t = candle_core::safetensors::load(path, &dev)?;
    let w = &t[name];
    let mut v = w.flatten_all()?.to_vec1::<f32>()?;
    v[0] = value;
    let bad = candle_core::Tensor::from_vec(v, w.dims(), &dev)?;
    t.insert(name.to_string(), bad);
    candle_core::safetensors::save(&t, path)?;
    Ok(())
}

#[test]
fn a_failed_or_idle_resume_leaves_train_toml_alone() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let o = tiny_run(&run, 2);
    train(&o, &mut Quiet)?;
    let train_toml = run.join("train.toml");
    let before = std::fs::read(&train_toml)?;
    let unchanged = || -> anyhow::Result<()> {
        assert_eq!(std::fs::read(&train_toml)?, before, "train.toml rewritten");
        Ok(())
    };
    // an eval set that does not exist: the error comes after the settings were merged
    let mut r = o.clone();
    r.resume = true;
    r.overrides.steps = Some(4);
    r.overrides.eval_every = Some(1);
    r.overrides.eval_sets = Some(vec![tmp.path().join("nope.jsonl").display().to_string()]);
    assert_mentions(
        &train(&r, &mut Quiet)
            .err()
            .ok_or_else(|| anyhow::anyhow!("no error"))?,
        &["nope.jsonl"],
    );
    unchanged()?;
    // a bad flag value
    let mut r = o.clone();
    r.resume = true;
    r.overrides.steps = Some(4);
    r.overrides.eval_batches = Some(0);
    assert!(train(&r, &mut Quiet).is_err());
    unchanged()?;
    // nothing to do: the run is past --until
    let mut r = o.clone();
    r.resume = true;
    r.until = Some(1);
    r.overrides.log_every = Some(2);
    assert_eq!(train(&r, &mut Quiet)?.losses.len(), 0);
    unchanged()?;
    // a checkpoint whose weights are NaN: an error naming the file and the tensor
    let weights = run.join("checkpoint/model.safetensors");
    let good = std::fs::read(&weights)?;
    poison(&weights, "embed.weight", f32::NAN)?;
    let mut r = o.clone();
    r.resume = true;
    r.overrides.steps = Some(4);
    let e = train(&r, &mut Quiet)
        .err()
        .ok_or_else(|| anyhow::anyhow!("resumed from NaN weights"))?;
    assert_mentions(&e, &["model.safetensors", "`embed.weight`", "NaN"]);
    unchanged()?;
    match simplex_train::Generator::load(&run, &candle_core::Device::Cpu) {
        Ok(_) => anyhow::bail!("loaded NaN weights"),
        Err(e) => assert_mentions(&e, &["model.safetensors", "`embed.weight`", "NaN"]),
    }
    // and infinity too; a sound resume then records its new settings
    poison(&weights, "embed.weight", f32::INFINITY)?;
    assert_mentions(
        &train(&r, &mut Quiet)
            .err()
            .ok_or_else(|| anyhow::anyhow!("resumed from infinite weights"))?,
        &["`embed.weight`", "infinite"],
    );
    unchanged()?;
    std::fs::write(&weights, good)?;
    assert_eq!(train(&r, &mut Quiet)?.step, 4);
    let after = std::fs::read_to_string(&train_toml)?;
    assert!(after.contains("steps = 4"), "{after}");
    Ok(())
}
