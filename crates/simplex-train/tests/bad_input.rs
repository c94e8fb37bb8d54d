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
