//! A `train`, `prepare` or `sweep` that fails its checks leaves no output folder behind (nor
//! the parents it would have made), and an existing empty `--out` stays empty.

mod common;

use std::path::{Path, PathBuf};

use common::simplex;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `simplex ARGS`, which must fail with an error mentioning each of `needles`.
fn fails<S: AsRef<str>>(args: &[S], needles: &[&str]) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let (ok, out, err) = simplex(&args);
    assert!(!ok, "{args:?} succeeded:\n{out}\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in {err}");
    }
}

#[test]
fn a_train_that_fails_its_setup_leaves_no_run_folder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let top = tmp.path().join("new");
    let out = top.join("deeper/run");
    let (corpus, out_s) = (corpus(), out.to_str().expect("path").to_string());
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--data",
            p(&corpus),
            "--out",
            &out_s,
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let small_vocab = tmp.path().join("vocab100.toml");
    std::fs::write(
        &small_vocab,
        "vocab_size = 100\nd_model = 16\npattern = \"DS\"\nheads_q = 2\nmlp_hidden = 32\n\
         max_seq_len = 64\n[simplicial]\nw1 = 8\nw2 = 4\n",
    )
    .expect("write config");
    let tiny = tmp.path().join("tiny-data");
    std::fs::create_dir(&tiny).expect("mkdir");
    std::fs::write(tiny.join("a.txt"), "one short document").expect("write");
    std::fs::write(tiny.join("b.txt"), "and another").expect("write");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // flags checked before anything is written
        (train(&["--lr", "-1"]), vec!["lr"]),
        (train(&["--preset", "nope"]), vec!["nope"]),
        // an eval set that does not exist
        (
            train(&["--eval-set", "/no/such/set.jsonl"]),
            vec!["/no/such/set.jsonl"],
        ),
        // found once the data is tokenized: the model's vocabulary is too small
        (
            train(&["--config", p(&small_vocab)]),
            vec!["vocab_size = 100"],
        ),
        // found by the trainer after the run's files are written: too little data
        (
            [
                "train",
                "--data",
                p(&tiny),
                "--out",
                &out_s,
                "--seq-len",
                "64",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            vec!["seq_len"],
        ),
    ];
    for (args, needles) in &cases {
        fails(args, needles);
        assert!(!top.exists(), "{args:?} left {}", top.display());
    }
    // an existing empty folder stays, empty
    std::fs::create_dir_all(&out).expect("mkdir");
    for (args, needles) in &cases[3..] {
        fails(args, needles);
        let left: Vec<_> = std::fs::read_dir(&out)
            .expect("the folder stays")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    // and the same run with good settings trains there
    let args = train(&[]);
    let (ok, _, err) = simplex(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert!(out.join("checkpoint/state.json").is_file());
}

#[test]
fn a_prepare_or_sweep_that_fails_leaves_no_folder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let top = tmp.path().join("new");
    let data = top.join("deeper/data");
    fails(
        &[
            "prepare",
            "--data",
            p(&corpus()),
            "--out",
            p(&data),
            "--tokenizer",
            "/no/such/tokenizer.json",
        ],
        &["/no/such/tokenizer.json"],
    );
    assert!(!top.exists(), "prepare left {}", top.display());

    // a prepared dataset too short for the sweep's seq_len
    let tiny = tmp.path().join("tiny.txt");
    std::fs::write(&tiny, "a<|endoftext|>b<|endoftext|>c").expect("write");
    let prepared = tmp.path().join("prepared");
    let (ok, _, err) = simplex(&["prepare", "--data", p(&tiny), "--out", p(&prepared)]);
    assert!(ok, "{err}");
    let spec = tmp.path().join("sweep.toml");
    std::fs::write(
        &spec,
        format!(
            "data = \"{}\"\ntokens_per_param = 0.02\nseq_len = 32\nbatch_size = 2\nlr = 3e-3\n\
             eval_sets = [\"heldout\"]\n[kinds.dot]\npattern = \"D\"\n[[sizes]]\nname = \"a\"\n\
             d_model = 16\nlayers = 1\nheads = 2\n",
            prepared.display()
        ),
    )
    .expect("write sweep");
    let out = top.join("sweep");
    fails(&["sweep", p(&spec), "--out", p(&out)], &["seq_len", "only"]);
    assert!(!top.exists(), "sweep left {}", top.display());
}
