//! `simplex train --tensorboard DIR` and `simplex plot --tensorboard DIR`: the event files are
//! decoded here from scratch (TFRecord framing with masked CRC-32C, the Event/Summary
//! protobuf) and must hold exactly the rows of metrics.jsonl: tags, values, steps; a resumed
//! session starts its own file with a restart marker at its first step.

mod common;

use std::path::{Path, PathBuf};

use common::{simplex, small_run};

/// CRC-32C bit by bit (independent of the table-driven one in simplex-train).
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// The records of a TFRecord file; every length and CRC is checked.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("event file");
    let (mut out, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        assert!(i + 12 <= bytes.len(), "a cut header at byte {i}");
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        assert_eq!(
            u32_at(&bytes, i + 8),
            masked(len_bytes),
            "length CRC at byte {i}"
        );
        let data = &bytes[i + 12..i + 12 + len];
        assert_eq!(
            u32_at(&bytes, i + 12 + len),
            masked(data),
            "data CRC at byte {i}"
        );
        out.push(data.to_vec());
        i += 16 + len;
    }
    assert_eq!(i, bytes.len());
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(Vec<u8>),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// A protobuf message as (field number, value) pairs in order.
fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                i += 8;
                Field::Fixed64(b[i - 8..i].try_into().expect("8 bytes"))
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                Field::Bytes(b[i - n..i].to_vec())
            }
            5 => {
                i += 4;
                Field::Fixed32(b[i - 4..i].try_into().expect("4 bytes"))
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, f));
    }
    out
}

/// One decoded Event.
#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: u64,
    file_version: Option<String>,
    scalars: Vec<(String, f32)>,
    session_status: Option<u64>,
}

fn event(data: &[u8]) -> Event {
    let mut e = Event::default();
    for (n, f) in fields(data) {
        match (n, f) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8(b).expect("utf-8")),
            (5, Field::Bytes(summary)) => {
                for (vn, value) in fields(&summary) {
                    let (1, Field::Bytes(value)) = (vn, value) else {
                        panic!("Summary field {vn}")
                    };
                    let (mut tag, mut x) = (None, None);
                    for (k, f) in fields(&value) {
                        match (k, f) {
                            (1, Field::Bytes(t)) => tag = Some(String::from_utf8(t).expect("tag")),
                            (2, Field::Fixed32(b)) => x = Some(f32::from_le_bytes(b)),
                            other => panic!("Summary.Value field {other:?}"),
                        }
                    }
                    e.scalars
                        .push((tag.expect("a tag"), x.expect("a simple_value")));
                }
            }
            (7, Field::Bytes(log)) => {
                let [(1, Field::Varint(s))] = fields(&log)[..] else {
                    panic!("SessionLog {log:?}")
                };
                e.session_status = Some(s);
            }
            other => panic!("Event field {other:?}"),
        }
    }
    e
}

fn events_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tensorboard folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    files.sort();
    files
}

fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object"))
        .collect()
}

/// The `(tag, value)` scalars a metrics.jsonl entry is written as.
fn tags(key: &str, v: &serde_json::Value) -> Vec<(String, f32)> {
    let num = |v: &serde_json::Value| v.as_f64().expect("a number") as f32;
    let one = |t: String| vec![(t, num(v))];
    match key {
        "train_loss" => one("train/loss".into()),
        "val_loss" => one("val/loss".into()),
        "val_bpb" => one("val/bpb".into()),
        "moe_load" => {
            let layers = v.as_array().expect("a list per layer");
            let mut out = Vec::new();
            for (l, layer) in layers.iter().enumerate() {
                for (e, n) in layer
                    .as_array()
                    .expect("a load per expert")
                    .iter()
                    .enumerate()
                {
                    out.push((format!("moe/layer{l}/expert{e}_load"), num(n)));
                }
            }
            out
        }
        k if k.starts_with("moe_") => one(format!("moe/{}", &k[4..])),
        k if k.starts_with("eval/") => one(k.into()),
        k => one(format!("train/{k}")),
    }
}

/// The file is a version event, a restart marker at `first_step`, then one event per row of
/// `rows` holding every number of the row but its step, under its tag, at its step.
fn check_file(path: &Path, rows: &[serde_json::Map<String, serde_json::Value>], first_step: u64) {
    let events: Vec<Event> = records(path).iter().map(|r| event(r)).collect();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!(
        (events[1].session_status, events[1].step),
        (Some(1), first_step)
    );
    assert_eq!(events.len(), 2 + rows.len(), "{}", path.display());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for (e, row) in events[2..].iter().zip(rows) {
        assert!(e.wall_time > now - 3600.0 && e.wall_time <= now + 1.0);
        assert_eq!(Some(e.step), row["step"].as_u64());
        let mut want: Vec<(String, f32)> = row
            .iter()
            .filter(|(k, _)| *k != "step")
            .flat_map(|(k, v)| tags(k, v))
            .collect();
        let mut got = e.scalars.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "step {}", e.step);
    }
}

#[test]
fn train_writes_the_metrics_rows_as_tensorboard_events() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (run, board) = (tmp.path().join("run"), tmp.path().join("tb"));
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--out",
            run.to_str().expect("path"),
            "--tensorboard",
            board.to_str().expect("path"),
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--log-every",
            "4",
            "--eval-every",
            "8",
            "--eval-batches",
            "1",
            "--eval-set",
            "heldout",
        ];
        args.extend(extra);
        let (ok, out, err) = simplex(&args);
        assert!(ok, "train failed:\n{out}\n{err}");
    };
    train(&["--data", corpus.to_str().expect("path"), "--steps", "12"]);
    let files = events_in(&board);
    assert_eq!(files.len(), 1);
    let first = rows(&run);
    assert_eq!(first.len(), 3, "rows at 4, 8, 12");
    assert!(first[1].contains_key("val_loss") && first[1].contains_key("eval/heldout_nll"));
    check_file(&files[0], &first, 1);

    // a resumed session writes its own file, marked as restarting after the checkpoint
    let old = files[0].clone();
    train(&["--resume", "--steps", "20"]);
    let files = events_in(&board);
    assert_eq!(files.len(), 2, "{files:?}");
    let all = rows(&run);
    assert_eq!(all.len(), 5);
    check_file(&old, &first, 1);
    let new = files.iter().find(|f| **f != old).expect("a new file");
    check_file(new, &all[3..], 13);

    // plot exports the whole metrics.jsonl into DIR/RUN_NAME/
    let export = tmp.path().join("export");
    let (ok, out, err) = simplex(&[
        "plot",
        run.to_str().expect("path"),
        "--tensorboard",
        export.to_str().expect("path"),
    ]);
    assert!(ok, "plot failed: {err}");
    let files = events_in(&export.join("run"));
    assert_eq!(files.len(), 1);
    assert!(out.contains(files[0].to_str().expect("path")), "{out}");
    check_file(&files[0], &all, 4);
}

#[test]
fn a_mixture_of_experts_run_writes_its_router_statistics() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (run, board) = (tmp.path().join("moe"), tmp.path().join("tb"));
    let board_s = board.to_str().expect("path");
    let (ok, out, err) = small_run(
        &run,
        4,
        &[
            "--preset",
            "tiny-moe",
            "--tensorboard",
            board_s,
            "--eval-batches",
            "1",
        ],
    );
    assert!(ok, "train failed:\n{out}\n{err}");
    let rows = rows(&run);
    assert!(rows[0].contains_key("moe_load"), "{:?}", rows[0]);
    let files = events_in(&board);
    assert_eq!(files.len(), 1);
    check_file(&files[0], &rows, 1);
    let first = event(&records(&files[0])[2]);
    assert!(
        first
            .scalars
            .iter()
            .any(|(t, _)| t == "moe/layer0/expert0_load"),
        "{:?}",
        first.scalars
    );
}
