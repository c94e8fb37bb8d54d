//! TensorBoard event files of the training metrics (`simplex train --tensorboard DIR`,
//! `simplex plot --tensorboard DIR`): `tensorboard --logdir DIR` shows them.
//!
//! Written by hand: the crate that exists for this (`tensorboard-rs`) has had no release
//! since 2022, and it pulls protobuf 2 and an image library; scalars need only this much:
//!
//! ```text
//! file     DIR/events.out.tfevents.SECONDS.simplex.PID.N    a sequence of records
//! record   u64 length (LE) | u32 masked CRC-32C of the 8 length bytes | data | u32 masked CRC-32C of data
//! masked   ((crc >> 15) | (crc << 17)) + 0xa282ead8 (wrapping), CRC-32C = Castagnoli, reflected
//! data     an Event protobuf (tensorflow/core/util/event.proto, summary.proto):
//!          Event      { double wall_time = 1; int64 step = 2; string file_version = 3;
//!                       Summary summary = 5; SessionLog session_log = 7; }
//!          Summary    { repeated Value value = 1; }
//!          Value      { string tag = 1; float simple_value = 2; }
//!          SessionLog { SessionStatus status = 1; }    START = 1
//! ```
//! The first event of a file carries `file_version = "brain.Event:2"`. A training session
//! starts with a `SessionLog START` event at its first step: TensorBoard then drops the points
//! of that step and later ones that earlier files of the folder hold, which is what a resume
//! from a checkpoint needs (metrics.jsonl drops the same rows).
//!
//! Tags: `train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_s`,
//! `train/tokens_seen`, `train/elapsed_s`, `train/mfu` (CUDA), `val/loss`, `val/bpb` (when
//! evaluated), `moe/balance_loss`, `moe/z_loss`, `moe/max_load` and
//! `moe/layer{L}/expert{E}_load` (MoE models; `moe_load[L][E]` of the row) and each eval set's
//! `eval/NAME_nll`: every number of a metrics.jsonl row, at its step.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};
use crate::metrics::Record;

/// The CRC-32C (Castagnoli) table, reflected polynomial 0x82F63B78.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `data` (`crc32c(b"123456789") == 0xE306_9283`).
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The masked CRC-32C of TFRecord framing.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Protobuf encoding of the few fields written here.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    pub fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
        varint(out, (field << 3) | wire);
    }
    pub fn double(out: &mut Vec<u8>, field: u64, v: f64) {
        key(out, field, 1);
        out.extend(v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u64, v: f32) {
        key(out, field, 5);
        out.extend(v.to_le_bytes());
    }
    pub fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }
    pub fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend(b);
    }
}

/// What an event carries besides its time and step.
enum What<'a> {
    FileVersion,
    Scalars(&'a [(String, f64)]),
    SessionStart,
}

fn event(wall_time: f64, step: u64, what: What) -> Vec<u8> {
    let mut e = Vec::new();
    pb::double(&mut e, 1, wall_time);
    pb::uint(&mut e, 2, step);
    match what {
        What::FileVersion => pb::bytes(&mut e, 3, b"brain.Event:2"),
        What::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                pb::bytes(&mut value, 1, tag.as_bytes());
                pb::float(&mut value, 2, *v as f32);
                pb::bytes(&mut summary, 1, &value);
            }
            pb::bytes(&mut e, 5, &summary);
        }
        What::SessionStart => {
            let mut log = Vec::new();
            pb::uint(&mut log, 1, 1);
            pb::bytes(&mut e, 7, &log);
        }
    }
    e
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one TensorBoard event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` (if needed) and a new event file in it, starting with its version event.
    pub fn create(dir: &Path) -> Result<Self> {
        static FILES: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir).at(dir)?;
        let secs = now() as u64;
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "events.out.tfevents.{secs:010}.simplex.{}.{n}",
            std::process::id()
        ));
        let file = File::create(&path).at(&path)?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        w.write_event(&event(now(), 0, What::FileVersion))?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend(len);
        rec.extend(masked_crc32c(&len).to_le_bytes());
        rec.extend(data);
        rec.extend(masked_crc32c(data).to_le_bytes());
        self.out.write_all(&rec).at(&self.path)?;
        self.out.flush().at(&self.path)
    }

    /// A session (re)starting at `step`: TensorBoard drops the points of `step` and later
    /// that earlier files of the folder hold.
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        self.write_event(&event(now(), step, What::SessionStart))
    }

    /// Scalars `(tag, value)` at `step`, as one event (flushed).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        self.write_event(&event(now(), step, What::Scalars(values)))
    }

    /// The scalars of a metrics row (see the module doc for the tags) at its step.
    pub fn record(&mut self, r: &Record) -> Result<()> {
        self.scalars(r.step, &record_scalars(r))
    }
}

/// The `(tag, value)` pairs of a metrics row: every number it holds but the step.
pub fn record_scalars(r: &Record) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = [
        ("train/loss", Some(r.train_loss)),
        ("train/lr", Some(r.lr)),
        ("train/grad_norm", Some(r.grad_norm)),
        ("train/tokens_per_s", Some(r.tokens_per_s)),
        ("train/tokens_seen", Some(r.tokens_seen as f64)),
        ("train/elapsed_s", Some(r.elapsed_s)),
        ("train/mfu", r.mfu),
        ("val/loss", r.val_loss),
        ("val/bpb", r.val_bpb),
        ("moe/balance_loss", r.moe_balance_loss),
        ("moe/z_loss", r.moe_z_loss),
        ("moe/max_load", r.moe_max_load),
    ]
    .into_iter()
    .filter_map(|(k, x)| x.map(|x| (k.to_string(), x)))
    .collect();
    for (l, layer) in r.moe_load.iter().flatten().enumerate() {
        for (e, &n) in layer.iter().enumerate() {
            v.push((format!("moe/layer{l}/expert{e}_load"), n as f64));
        }
    }
    v.extend(r.evals.iter().map(|(k, x)| (k.clone(), *x)));
    v
}

/// Writes the rows of a run's `metrics.jsonl` as a new event file in `dir` (a session
/// starting at the first row's step); returns its path.
pub fn export_run(run: &Path, dir: &Path) -> Result<PathBuf> {
    let rows = crate::metrics::read_jsonl(&run.join("metrics.jsonl"))?;
    let mut w = EventWriter::create(dir)?;
    w.session_start(rows.first().map_or(1, |r| r.step))?;
    for r in &rows {
        w.record(r)?;
    }
    Ok(w.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn varints_and_fields() {
        let mut v = Vec::new();
        pb::varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        pb::float(&mut v, 2, 1.5);
        assert_eq!(v, [0x15, 0, 0, 0xc0, 0x3f]);
        let mut v = Vec::new();
        pb::bytes(&mut v, 1, b"ab");
        assert_eq!(v, [0x0a, 2, b'a', b'b']);
    }
}
