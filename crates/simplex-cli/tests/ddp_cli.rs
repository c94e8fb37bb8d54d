//! `simplex train --gpus N` end to end through the binary, with CPU ranks (`--device cpu`:
//! processes over TCP, the same launcher, rendezvous and rank code as CUDA ranks, whose NCCL
//! path needs a multi-GPU machine: scripts/gpu-ddp.sh): 2 ranks follow 1 process with the
//! same global batch, a run resumes on another number of ranks, a killed rank ends the job
//! with an error naming it (with the launcher, and without it) and the run resumes from its
//! checkpoint, Ctrl-C stops every rank after the same update with a checkpoint.

mod common;

use common::simplex;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus")
}

fn losses(run: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object per line");
            (
                v["step"].as_u64().expect("step"),
                v["train_loss"].as_f64().expect("train_loss"),
                v["grad_norm"].as_f64().expect("grad_norm"),
            )
        })
        .collect()
}

/// `train` arguments of a small run (tiny preset, seq 32, a row every step).
fn args(out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--data",
        corpus().to_str().expect("path"),
        "--out",
        out.to_str().expect("path"),
        "--steps",
        &steps.to_string(),
        "--seq-len",
        "32",
        "--warmup",
        "2",
        "--log-every",
        "1",
        "--eval-every",
        "0",
        "--eval-batches",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(args: &[String]) -> (bool, String, String) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    simplex(&a)
}

fn spawn(args: &[String], env: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_simplex"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simplex")
}

/// Waits for `child` at most `limit`; kills it (and fails) past that.
fn wait_at_most(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn wait_for_checkpoint(run: &Path) -> u64 {
    let t0 = Instant::now();
    let state = run.join("checkpoint/state.json");
    while !state.is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).expect("state.json")).expect("json");
    v["step"].as_u64().expect("step")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn cpu_ranks_follow_one_process_and_resume_on_another_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let one = tmp.path().join("one");
    let (ok, _, err) = run(&args(&one, 4, &["--batch-size", "4", "--grad-accum", "2"]));
    assert!(ok, "{err}");
    let two = tmp.path().join("two");
    let a = args(
        &two,
        4,
        &["--batch-size", "4", "--gpus", "2", "--device", "cpu"],
    );
    let (ok, out, err) = run(&a);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("step 4"), "rank 0 reports: {out}");
    for ((s1, l1, g1), (s2, l2, g2)) in losses(&one).iter().zip(&losses(&two)) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() < 1e-4 * l1, "step {s1}: loss {l1} vs {l2}");
        assert!(
            (g1 - g2).abs() < 1e-3 * g1,
            "step {s1}: grad_norm {g1} vs {g2}"
        );
    }
    let toml = std::fs::read_to_string(two.join("train.toml")).expect("train.toml");
    assert!(toml.contains("world_size = 2"), "{toml}");
    // on one process: grad_accum 2 keeps the 8 sequences per update
    let (ok, _, err) = run(&[
        "train",
        "--out",
        two.to_str().unwrap(),
        "--resume",
        "--steps",
        "6",
    ]
    .map(String::from));
    assert!(ok, "{err}");
    let toml = std::fs::read_to_string(two.join("train.toml")).expect("train.toml");
    assert!(
        toml.contains("grad_accum = 2") && !toml.contains("world_size"),
        "{toml}"
    );
    assert_eq!(losses(&two).len(), 6);
}

#[test]
fn cuda_ranks_need_the_nccl_build() {
    if cfg!(feature = "nccl") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = run(&args(&tmp.path().join("x"), 2, &["--gpus", "2"]));
    assert!(!ok && err.contains("--features cuda,nccl"), "{err}");
    assert!(!tmp.path().join("x").exists(), "nothing started");
    let (ok, _, err) = run(&args(
        &tmp.path().join("y"),
        2,
        &["--gpus", "2", "--device", "cuda:1"],
    ));
    assert!(!ok && err.contains("--device cuda"), "{err}");
}

/// The pids of `parent`'s children whose environment has `RANK=rank`.
#[cfg(target_os = "linux")]
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(1)?
            .parse()
            .ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = env.split(|b| *b == 0).any(|v| v == want.as_bytes());
        (ppid == parent && has).then_some(pid)
    })
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let extra = [
        "--batch-size",
        "2",
        "--ckpt-every",
        "3",
        "--gpus",
        "2",
        "--device",
        "cpu",
    ];
    let launcher = spawn(&args(&dir, 5000, &extra), &[]);
    let saved = wait_for_checkpoint(&dir);
    let pid = rank_pid(launcher.id(), 1).expect("rank 1's process");
    let pid0 = rank_pid(launcher.id(), 0).expect("rank 0's process");
    // SAFETY: kill(2) on a process this test found
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    let out = wait_at_most(launcher, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "rank 1 (pid {pid}) was killed by signal 9 (SIGKILL)"
        )),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(
        !Path::new(&format!("/proc/{pid0}")).exists(),
        "rank 0 was stopped with the job"
    );
    let saved = saved.max(wait_for_checkpoint(&dir));
    // resume (on the same 2 ranks) for two more steps
    let until = (saved + 2).to_string();
    let a: Vec<String> = [
        "train",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
        "--until",
        &until,
        "--gpus",
        "2",
        "--device",
        "cpu",
    ]
    .map(String::from)
    .to_vec();
    let (ok, stdout, err) = run(&a);
    assert!(ok, "{stdout}\n{err}");
    let steps: Vec<u64> = losses(&dir).iter().map(|r| r.0).collect();
    assert_eq!(steps.last(), Some(&(saved + 2)), "{steps:?}");
}

/// Ranks started by hand (an external launcher's environment): rank 0 notices that rank 1
/// died and ends with an error naming it, at once.
#[test]
fn a_rank_notices_a_dead_peer_without_the_launcher() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let port = free_port().to_string();
    let extra = ["--batch-size", "2", "--ckpt-every", "3", "--device", "cpu"];
    let env = |r: usize| {
        vec![
            ("RANK", r.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_PORT", port.clone()),
            ("RAYON_NUM_THREADS", "1".to_string()),
        ]
    };
    let r0 = spawn(&args(&dir, 5000, &extra), &env(0));
    let mut r1 = spawn(&args(&dir, 5000, &extra), &env(1));
    wait_for_checkpoint(&dir);
    r1.kill().expect("kill rank 1");
    r1.wait().expect("reap rank 1");
    let t0 = Instant::now();
    let out = wait_at_most(r0, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rank 0: rank 1 closed its connection"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
}

/// Two ranks on the CPU, batch 2 each, a checkpoint every 2 updates.
#[cfg(unix)]
const TWO_CPU_RANKS_CKPT_2: [&str; 8] = [
    "--batch-size",
    "2",
    "--ckpt-every",
    "2",
    "--gpus",
    "2",
    "--device",
    "cpu",
];

/// Ctrl-C to the launcher: every rank stops after the same update, rank 0 writes a
/// checkpoint of it, the job ends with status 130.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_every_rank_with_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let extra = TWO_CPU_RANKS_CKPT_2;
    let launcher = spawn(&args(&dir, 5000, &extra), &[]);
    wait_for_checkpoint(&dir);
    // SAFETY: kill(2) on our child
    unsafe { libc::kill(launcher.id() as i32, libc::SIGINT) };
    let out = wait_at_most(launcher, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped at step"), "{err}");
    let rows = losses(&dir);
    let last = rows.last().expect("rows").0;
    assert_eq!(
        wait_for_checkpoint(&dir),
        last,
        "the checkpoint is of the last update"
    );
}

/// A launcher that dies (SIGKILL) takes its ranks with it: they get SIGTERM, stop after the
/// same update and rank 0 writes a checkpoint of it.
#[cfg(target_os = "linux")]
#[test]
fn ranks_of_a_dead_launcher_stop_with_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let extra = TWO_CPU_RANKS_CKPT_2;
    let mut launcher = spawn(&args(&dir, 1_000_000, &extra), &[]);
    wait_for_checkpoint(&dir);
    let ranks: Vec<u32> = (0..2)
        .map(|r| rank_pid(launcher.id(), r).expect("a rank"))
        .collect();
    launcher.kill().expect("kill the launcher");
    launcher.wait().expect("reap it");
    let gone = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s[s.rfind(')').unwrap_or(0) + 2..].starts_with('Z')
        })
    };
    let t0 = Instant::now();
    while !ranks.iter().all(gone) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ranks still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = losses(&dir).last().expect("rows").0;
    assert_eq!(
        wait_for_checkpoint(&dir),
        last,
        "a checkpoint of the last update"
    );
}
