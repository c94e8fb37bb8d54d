//! Each kind of set against a direct computation: the model run on one sequence alone,
//! log-softmax by hand in f64, summed over the scored positions.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use simplex_model::{fused_params, Config, Model, SimplicialConfig};

use super::*;
use crate::data::{self, DataOptions, Tokenizer};
use crate::error::Result;
use crate::init::{named_vars, SeededInit};

/// A small D + S model on bytes with seeded weights scaled up (so the logits are far from
/// uniform and an off-by-one position shows).
fn model(max_seq_len: usize) -> Result<Model> {
    let cfg = Config {
        vocab_size: 257,
        d_model: 32,
        pattern: "DS".into(),
        heads_q: 2,
        heads_kv: None,
        head_dim: None,
        window: 16,
        simplicial: SimplicialConfig {
            w1: 16,
            w2: 4,
            ..SimplicialConfig::default()
        },
        mlp_hidden: 64,
        rope_theta: 10_000.0,
        tie_embeddings: true,
        norm_eps: 1e-5,
        max_seq_len,
        bidirectional: false,
        rope: true,
        moe: None,
    };
    let (vars, vb) = SeededInit::builder(7, &Device::Cpu, &fused_params(&cfg));
    let m = Model::new(&cfg, vb)?;
    for (_, v) in named_vars(&vars).expect("lock") {
        v.set(&(v.as_tensor() * 5.0)?)?;
    }
    Ok(m)
}

/// Nats of `tokens[from..]` given what precedes each, the model run on this sequence alone.
fn direct(m: &Model, tokens: &[u32], from: usize) -> Result<f64> {
    let x = Tensor::new(&tokens[..tokens.len() - 1], &Device::Cpu)?.unsqueeze(0)?;
    let logits = m.forward(&x)?.squeeze(0)?.to_dtype(DType::F64)?;
    let rows = logits.to_vec2::<f64>()?;
    let mut nats = 0.0;
    for p in from - 1..tokens.len() - 1 {
        let row = &rows[p];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        nats += lse - row[tokens[p + 1] as usize];
    }
    Ok(nats)
}

/// `[EOT] + bytes(context)` and `bytes(continuation)`.
fn byte_seq(it: &EvalItem) -> (Vec<u32>, Vec<u32>) {
    let mut p = vec![256];
    p.extend(it.context.bytes().map(u32::from));
    (p, it.continuation.bytes().map(u32::from).collect())
}

fn item(id: &str, context: &str, continuation: &str) -> EvalItem {
    EvalItem {
        id: id.into(),
        context: context.into(),
        continuation: continuation.into(),
    }
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

/// Per item and in total, `score` against `direct` on untruncated items.
fn check_against_direct(m: &Model, set: &EvalSet, batch: usize) -> Result<()> {
    let opts = ScoreOptions {
        batch_size: batch,
        ..ScoreOptions::default()
    };
    let per = score_items(m, &Tokenizer::Bytes, set, &opts)?;
    let (mut nats, mut tokens) = (0.0, 0usize);
    for (it, s) in set.items.iter().zip(&per) {
        let (p, c) = byte_seq(it);
        assert!(p.len() + c.len() <= m.config().max_seq_len + 1, "fits");
        let from = p.len();
        let d = direct(m, &[p, c.clone()].concat(), from)?;
        assert_eq!(
            (s.tokens, s.bytes, s.truncated),
            (c.len(), c.len() as u64, false)
        );
        close(s.nats / s.tokens as f64, d / c.len() as f64, 1e-4, &it.id);
        nats += d;
        tokens += c.len();
    }
    let total = score(m, &Tokenizer::Bytes, set, &opts)?;
    assert_eq!((total.items, total.tokens), (set.items.len(), tokens));
    close(total.nll, nats / tokens as f64, 1e-4, "nll");
    close(
        total.bpb,
        nats / tokens as f64 / std::f64::consts::LN_2,
        1e-4,
        "bpb",
    );
    assert!(total.nll > 0.5, "not a uniform model: {}", total.nll);
    Ok(())
}

#[test]
fn jsonl_set_nll_is_the_direct_computation() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
    let path = dir.path().join("mine.jsonl");
    let set = EvalSet {
        name: "mine".into(),
        items: vec![
            item("a", "Question: 2 + 2?\nA. 3\nB. 4\nAnswer:", " B. 4"),
            item("b", "", "The whole document is scored."),
            item("c", "def f(x):\n", "    return x * 2\n"),
            item("d", "Grüße, 世界", " 🐈 ok"),
            item("e", "x", "y"),
        ],
    };
    set.save_jsonl(&path)?;
    let EvalSource::Set(loaded) = resolve_one(path.to_str().expect("utf-8"), Path::new("."))?
    else {
        panic!("a set")
    };
    assert_eq!(loaded, set);
    check_against_direct(&model(64)?, &loaded, 3)
}

#[test]
fn gsm_nll_is_the_direct_computation() -> Result<()> {
    let set = gsm::generate(5, 11);
    check_against_direct(&model(400)?, &set, 2)
}

#[test]
fn batches_with_padding_give_the_items_alone() -> Result<()> {
    let m = model(64)?;
    let set = EvalSet {
        name: "pad".into(),
        items: (0..7)
            .map(|i| {
                item(
                    &i.to_string(),
                    &"ctx ".repeat(i * 2),
                    &"cont".repeat(1 + i % 3),
                )
            })
            .collect(),
    };
    let one = |b| {
        let o = ScoreOptions {
            batch_size: b,
            ..ScoreOptions::default()
        };
        score_items(&m, &Tokenizer::Bytes, &set, &o)
    };
    let (alone, batched) = (one(1)?, one(4)?);
    for (a, b) in alone.iter().zip(&batched) {
        assert_eq!((&a.id, a.tokens), (&b.id, b.tokens));
        close(a.nats, b.nats, 1e-4, &a.id);
    }
    Ok(())
}

#[test]
fn long_items_lose_context_from_the_left_then_continuation_from_the_right() -> Result<()> {
    let m = model(16)?;
    let (ctx, short, long) = ("0123456789abcdefghijklmnopqrst", "ABCDE", "x".repeat(40));
    let set = EvalSet {
        name: "cut".into(),
        items: vec![item("short", ctx, short), item("long", ctx, &long)],
    };
    let s = score_items(&m, &Tokenizer::Bytes, &set, &ScoreOptions::default())?;
    // 17 tokens at most: the last 12 of [EOT] + context, then the 5 continuation tokens
    let (p, c) = byte_seq(&set.items[0]);
    let d = direct(&m, &[&p[p.len() - 12..], &c[..]].concat(), 12)?;
    assert_eq!((s[0].tokens, s[0].truncated), (5, true));
    close(s[0].nats, d, 1e-4, "short");
    // the continuation alone is too long: the last context token, then 16 continuation tokens
    let (p, c) = byte_seq(&set.items[1]);
    let d = direct(&m, &[&p[p.len() - 1..], &c[..16]].concat(), 1)?;
    assert_eq!((s[1].tokens, s[1].bytes, s[1].truncated), (16, 16, true));
    close(s[1].nats, d, 1e-4, "long");
    let total = score(&m, &Tokenizer::Bytes, &set, &ScoreOptions::default())?;
    assert_eq!((total.truncated, total.tokens), (2, 21));
    // a cap below the model's: the same rule at that length
    let o = ScoreOptions {
        max_len: Some(8),
        ..ScoreOptions::default()
    };
    let s8 = score_items(&m, &Tokenizer::Bytes, &set, &o)?;
    let (p, c) = byte_seq(&set.items[0]);
    let d = direct(&m, &[&p[p.len() - 4..], &c[..]].concat(), 4)?;
    close(s8[0].nats, d, 1e-4, "short at 8");
    Ok(())
}

/// Windows of `max_len + 1` tokens at stride `max_len`, each run alone.
fn direct_stream(m: &Model, stream: &[u32], max_len: usize) -> Result<(f64, usize, u64)> {
    let (mut nats, mut tokens, mut bytes) = (0.0, 0, 0);
    let mut s = 0;
    while s + 1 < stream.len() {
        let w = &stream[s..(s + max_len + 1).min(stream.len())];
        nats += direct(m, w, 1)?;
        tokens += w.len() - 1;
        bytes += w[1..].iter().filter(|&&t| t < 256).count() as u64;
        s += max_len;
    }
    Ok((nats, tokens, bytes))
}

#[test]
fn text_nll_and_bpb_are_the_direct_computation() -> Result<()> {
    let m = model(24)?;
    let dir = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
    let docs = [
        "The first story.\n",
        "A second one, longer: it goes on for a while.",
        "3rd",
    ];
    std::fs::write(dir.path().join("a.txt"), docs[..2].join("<|endoftext|>"))
        .map_err(|e| crate::TrainError::io("a.txt", e))?;
    std::fs::write(dir.path().join("b.txt"), docs[2])
        .map_err(|e| crate::TrainError::io("b.txt", e))?;
    let mut stream = Vec::new();
    for d in docs {
        stream.push(256);
        stream.extend(d.bytes().map(u32::from));
    }
    let (nats, tokens, bytes) = direct_stream(&m, &stream, 24)?;
    let opts = ScoreOptions {
        batch_size: 2,
        ..ScoreOptions::default()
    };
    let s = score_text(
        &m,
        &Tokenizer::Bytes,
        &[dir.path().to_path_buf()],
        "<|endoftext|>",
        &opts,
    )?;
    assert_eq!(
        (s.tokens, s.bytes, s.items),
        (tokens, bytes, stream.len().div_ceil(24))
    );
    assert_eq!(bytes as usize, docs.concat().len());
    close(s.nll, nats / tokens as f64, 1e-4, "nll");
    close(
        s.bpb,
        nats / bytes as f64 / std::f64::consts::LN_2,
        1e-4,
        "bpb",
    );
    close(s.ppl(), (nats / tokens as f64).exp(), 1e-3 * s.ppl(), "ppl");
    Ok(())
}

#[test]
fn heldout_nll_is_the_direct_computation() -> Result<()> {
    let m = model(32)?;
    let dir = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
    let text: Vec<String> = (0..40)
        .map(|i| format!("document {i} says {}", "la ".repeat(i % 7)))
        .collect();
    let src = dir.path().join("corpus.txt");
    std::fs::write(&src, text.join("<|endoftext|>")).map_err(|e| crate::TrainError::io(&src, e))?;
    let mut opts = DataOptions::new(vec![src]);
    opts.val_frac = 0.25;
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).map_err(|e| crate::TrainError::io(&run, e))?;
    let data = data::prepare(&opts, &run.join("data"))?;
    let train = crate::TrainConfig::resolve(
        &crate::TrainOverrides {
            seq_len: Some(20),
            batch_size: Some(3),
            eval_batches: Some(2),
            ..Default::default()
        },
        32,
        false,
    )?;
    let s = score_heldout(&m, &run, &train)?;
    let (mut nats, mut bytes, mut w) = (0.0, 0, Vec::new());
    for k in 0..6u64 {
        w.clear();
        data.val.read(k * 20, 21, &mut w);
        nats += direct(&m, &w, 1)?;
        bytes += w[1..].iter().filter(|&&t| t < 256).count() as u64;
    }
    assert_eq!((s.items, s.tokens, s.bytes), (6, 120, bytes));
    close(s.nll, nats / 120.0, 1e-4, "heldout nll");
    let e = score_heldout(&m, dir.path(), &train).unwrap_err();
    assert!(e.to_string().contains("data/meta.json"), "{e}");
    Ok(())
}

#[test]
fn bad_files_and_names_say_what_is_wrong() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
    let p = dir.path().join("bad.jsonl");
    let write = |text: &str| std::fs::write(&p, text).map_err(|e| crate::TrainError::io(&p, e));
    write("{\"id\":\"a\",\"context\":\"x\",\"continuation\":\"y\"}\n\n{\"id\": 3}\n")?;
    let e = EvalSet::load_jsonl("bad", &p).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
    write("{\"id\":\"a\",\"context\":\"x\",\"continuation\":\"\"}\n")?;
    let e = EvalSet::load_jsonl("bad", &p).unwrap_err().to_string();
    assert!(
        e.contains("line 1") && e.contains("empty continuation"),
        "{e}"
    );
    write("\n")?;
    let e = EvalSet::load_jsonl("bad", &p).unwrap_err().to_string();
    assert!(e.contains("no eval items"), "{e}");
    let e = resolve(&["mmlu".into()], dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mmlu.jsonl") && e.contains("scripts/prepare-evals.py"),
        "{e}"
    );
    let e = resolve(&["nope".into()], dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nope") && e.contains("humaneval, gsm, heldout"),
        "{e}"
    );
    let e = resolve(&["missing/x.jsonl".into()], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/x.jsonl"), "{e}");
    // a prepared name in eval_dir, gsm, heldout; duplicates dropped
    let mine = EvalSet {
        name: "mine".into(),
        items: vec![item("1", "c", "d")],
    };
    mine.save_jsonl(&dir.path().join("mine.jsonl"))?;
    let names: Vec<String> = ["mine", "gsm", "heldout", "gsm"].map(String::from).to_vec();
    let got = resolve(&names, dir.path())?;
    let got: Vec<&str> = got.iter().map(|s| s.name()).collect();
    assert_eq!(got, ["mine", "gsm", "heldout"]);
    let e = score(
        &model(16)?,
        &Tokenizer::Bytes,
        &mine,
        &ScoreOptions {
            max_items: Some(0),
            ..Default::default()
        },
    );
    assert!(e.unwrap_err().to_string().contains("max_items"));
    Ok(())
}

#[test]
fn records_append_to_a_json_list() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
    let p = dir.path().join("evals.json");
    let rec = |step| EvalRecord {
        step,
        checkpoint: "run/checkpoint".into(),
        unix_time: 1,
        scores: vec![EvalScore::new("gsm", 2, 10.0, 5, 5)],
    };
    append_record(&p, &rec(1))?;
    append_record(&p, &rec(2))?;
    let all = read_records(&p)?;
    assert_eq!(all, vec![rec(1), rec(2)]);
    assert_eq!(all[0].scores[0].nll, 2.0);
    assert!(!dir.path().join("evals.json.tmp").exists());
    std::fs::write(&p, "not json").map_err(|e| crate::TrainError::io(&p, e))?;
    let e = append_record(&p, &rec(3)).unwrap_err().to_string();
    assert!(e.contains("evals.json"), "{e}");
    Ok(())
}
