//! `simplex train --gpus N`: starts N ranks on this node, each a copy of this `simplex` with
//! the same arguments and the variables of a data-parallel job in its environment, and
//! watches them:
//!
//! * a rank that fails (a status other than 0 or 130, or a signal) ends the job at once: the
//!   others are killed (they could only wait for it) and the error names the rank, its pid
//!   and how it ended; the checkpoint on disk is the last complete one;
//! * Ctrl-C / SIGTERM to the launcher is passed on to every rank as SIGINT (the ranks agree
//!   to stop after the same update and write a checkpoint; a second one ends them at once);
//!   the ranks run in their own process group, so a terminal's Ctrl-C reaches them once,
//!   through here;
//! * ranks still running long after another one ended are killed (a hang);
//! * (Linux) a rank gets SIGTERM when the launcher dies, and stops with a checkpoint.
//!
//! Multi-node: the launcher of node `NODE_RANK` of `NNODES` starts ranks
//! `NODE_RANK x N .. + N` of `NNODES x N`, rank 0's node at `MASTER_ADDR:MASTER_PORT`.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The status of a rank that stopped on request after writing a checkpoint.
const STOPPED: i32 = crate::interrupt::INTERRUPTED_EXIT;

/// Where the ranks of this node sit in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ranks on this node.
    pub local: usize,
    /// Ranks in the job.
    pub world: usize,
    /// The first rank of this node.
    pub first: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's rendezvous port.
    pub master_port: u16,
    /// Tells this job's ranks from another's on the same port.
    pub token: u64,
}

impl Plan {
    /// `local` ranks; `NNODES`, `NODE_RANK`, `MASTER_ADDR`, `MASTER_PORT` and
    /// `SIMPLEX_DDP_TOKEN` read through `get` (one node: a free port on 127.0.0.1 and a fresh
    /// token).
    pub fn new(local: usize, get: impl Fn(&str) -> Option<String>) -> Result<Plan> {
        let num = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .with_context(|| format!("{k}={v:?}: expected a whole number"))
                })
                .transpose()
        };
        let nodes = num("NNODES")?.unwrap_or(1) as usize;
        let node = num("NODE_RANK")?.unwrap_or(0) as usize;
        if nodes == 0 || node >= nodes {
            bail!("NODE_RANK={node} must be below NNODES={nodes}");
        }
        let (master_addr, master_port, token) = if nodes == 1 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free port for the rendezvous")?
                .port();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (
                "127.0.0.1".to_string(),
                port,
                nanos ^ u64::from(std::process::id()),
            )
        } else {
            let Some(addr) = get("MASTER_ADDR") else {
                bail!("NNODES={nodes}: set MASTER_ADDR (rank 0's node, reachable from every node) and MASTER_PORT on every node");
            };
            let port = num("MASTER_PORT")?.unwrap_or(29500);
            let port = u16::try_from(port).with_context(|| format!("MASTER_PORT={port}"))?;
            (addr, port, num("SIMPLEX_DDP_TOKEN")?.unwrap_or(0))
        };
        Ok(Plan {
            local,
            world: local * nodes,
            first: node * local,
            master_addr,
            master_port,
            token,
        })
    }

    /// The environment of local rank `i`.
    pub fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", (self.first + i).to_string()),
            ("WORLD_SIZE", self.world.to_string()),
            ("LOCAL_RANK", i.to_string()),
            ("LOCAL_WORLD_SIZE", self.local.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
            ("SIMPLEX_DDP_TOKEN", self.token.to_string()),
            ("SIMPLEX_LAUNCHED", "1".to_string()),
        ]
    }
}

/// How a job of ranks ended without a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every rank exited with status 0.
    Done,
    /// Some ranks stopped on request (status 130), none failed.
    Stopped,
}

/// How a rank ended, in words.
fn ended(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "ended".to_string(),
    }
}

fn send(child: &Child, sig: i32) {
    #[cfg(unix)]
    // SAFETY: kill(2) on the pid of a child we have not reaped yet
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
    #[cfg(not(unix))]
    let _ = (child, sig);
}

/// Puts a rank in its own process group and (Linux) asks for SIGTERM when the launcher dies.
fn detach(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
}

/// Starts local ranks `0..plan.local` (`make(i)`: the command of local rank `i`; the plan's
/// environment and stdin from /dev/null are added) and watches them until all have ended (see
/// the module doc). `signals` counts the signals the launcher received (each is passed on);
/// ranks still running `grace` after another one ended are killed.
pub fn run_ranks(
    plan: &Plan,
    mut make: impl FnMut(usize) -> Command,
    grace: Duration,
    signals: &AtomicUsize,
) -> Result<Outcome> {
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(plan.local);
    for i in 0..plan.local {
        let mut cmd = make(i);
        cmd.envs(plan.env(i)).stdin(Stdio::null());
        detach(&mut cmd);
        match cmd.spawn() {
            Ok(c) => children.push((plan.first + i, c)),
            Err(e) => {
                stop_all(&mut children);
                bail!("starting rank {}: {e}", plan.first + i);
            }
        }
    }
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut forwarded = 0;
    let mut first_end: Option<(usize, Instant)> = None;
    loop {
        let got = signals.load(Ordering::SeqCst);
        while forwarded < got {
            for (i, (_, c)) in children.iter().enumerate() {
                if status[i].is_none() {
                    send(c, libc_sigint());
                }
            }
            forwarded += 1;
        }
        // the ranks that ended since the last look; a failure stops the job
        let mut failed: Vec<(usize, u32, ExitStatus)> = Vec::new();
        for i in 0..children.len() {
            if status[i].is_some() {
                continue;
            }
            let (rank, child) = &mut children[i];
            let Some(st) = child.try_wait().context("waiting for a rank")? else {
                continue;
            };
            status[i] = Some(st);
            if !(st.success() || st.code() == Some(STOPPED)) {
                failed.push((*rank, child.id(), st));
            }
            first_end.get_or_insert((*rank, Instant::now()));
        }
        if !failed.is_empty() {
            let mut live: Vec<(usize, Child)> = children
                .drain(..)
                .enumerate()
                .filter(|(j, _)| status[*j].is_none())
                .map(|(_, c)| c)
                .collect();
            stop_all(&mut live);
            // a rank killed by a signal is the likelier cause of the others' failing (they
            // notice it at once and exit with an error): name it first
            failed.sort_by_key(|(rank, _, st)| (st.code().is_some(), *rank));
            let what: Vec<String> = failed
                .iter()
                .map(|(rank, pid, st)| format!("rank {rank} (pid {pid}) {}", ended(st)))
                .collect();
            bail!(
                "{}; stopped the other ranks (the last complete checkpoint is kept: --resume continues from it)",
                what.join("; ")
            );
        }
        if status.iter().all(Option::is_some) {
            let stopped = status.iter().flatten().any(|s| s.code() == Some(STOPPED));
            return Ok(if stopped {
                Outcome::Stopped
            } else {
                Outcome::Done
            });
        }
        if let Some((rank, t)) = first_end {
            if t.elapsed() > grace {
                let left: Vec<usize> = children
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| status[*j].is_none())
                    .map(|(_, (r, _))| *r)
                    .collect();
                let mut live: Vec<(usize, Child)> = children
                    .drain(..)
                    .enumerate()
                    .filter(|(j, _)| status[*j].is_none())
                    .map(|(_, c)| c)
                    .collect();
                stop_all(&mut live);
                bail!(
                    "rank(s) {left:?} still running {} s after rank {rank} ended: stopped them (hung?)",
                    grace.as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn libc_sigint() -> i32 {
    #[cfg(unix)]
    {
        libc::SIGINT
    }
    #[cfg(not(unix))]
    {
        2
    }
}

/// Kills the children and reaps them.
fn stop_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn plan(local: usize) -> Plan {
        Plan::new(local, |_| None).expect("plan")
    }

    #[test]
    fn plans_and_rank_environments() -> Result<()> {
        let p = plan(2);
        assert_eq!((p.local, p.world, p.first), (2, 2, 0));
        assert_eq!(p.master_addr, "127.0.0.1");
        let env = p.env(1);
        assert!(env.contains(&("RANK", "1".into())) && env.contains(&("LOCAL_RANK", "1".into())));
        let vars = |k: &str| match k {
            "NNODES" => Some("3".to_string()),
            "NODE_RANK" => Some("2".to_string()),
            "MASTER_ADDR" => Some("node-a".to_string()),
            _ => None,
        };
        let p = Plan::new(4, vars)?;
        assert_eq!(
            (p.world, p.first, p.master_port, p.token),
            (12, 8, 29500, 0)
        );
        assert_eq!(p.env(3)[0], ("RANK", "11".into()));
        let e = Plan::new(4, |k| (k == "NNODES").then(|| "2".to_string())).unwrap_err();
        assert!(e.to_string().contains("set MASTER_ADDR"), "{e}");
        // every rank sees its variables
        let signals = AtomicUsize::new(0);
        let out = run_ranks(
            &plan(3),
            |i| {
                sh(&format!("[ \"$RANK\" = {i} ] && [ \"$WORLD_SIZE\" = 3 ] && [ \"$SIMPLEX_LAUNCHED\" = 1 ]"))
            },
            Duration::from_secs(30),
            &signals,
        )?;
        assert_eq!(out, Outcome::Done);
        Ok(())
    }

    /// A rank that fails ends the job at once, naming it; the others are killed.
    #[test]
    fn a_failing_rank_stops_the_others() {
        let signals = AtomicUsize::new(0);
        for (script, needle) in [
            ("sleep 0.3; exit 3", "exited with status 3"),
            ("sleep 0.3; kill -9 $$", "killed by signal 9 (SIGKILL)"),
        ] {
            let t0 = Instant::now();
            let e = run_ranks(
                &plan(3),
                |i| if i == 1 { sh(script) } else { sh("sleep 30") },
                Duration::from_secs(60),
                &signals,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("rank 1 (pid") && e.contains(needle), "{e}");
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the sleepers were killed"
            );
        }
        let e = run_ranks(
            &plan(2),
            |i| {
                if i == 1 {
                    Command::new("/no/such/program")
                } else {
                    sh("sleep 30")
                }
            },
            Duration::from_secs(60),
            &signals,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("starting rank 1"), "{e}");
    }

    /// Signals reach every rank as SIGINT; ranks that stop with 130 make a stopped job; a rank
    /// left running long after another ended is killed.
    #[test]
    fn signals_are_passed_on_and_stragglers_are_stopped() {
        let signals = AtomicUsize::new(0);
        let script = "trap 'exit 130' INT; while true; do sleep 0.05; done";
        let out = std::thread::scope(|s| {
            let h =
                s.spawn(|| run_ranks(&plan(2), |_| sh(script), Duration::from_secs(60), &signals));
            std::thread::sleep(Duration::from_millis(500));
            signals.fetch_add(1, Ordering::SeqCst);
            h.join().expect("launcher thread")
        });
        assert_eq!(out.expect("stopped job"), Outcome::Stopped);
        let t0 = Instant::now();
        let e = run_ranks(
            &plan(2),
            |i| if i == 0 { sh("exit 0") } else { sh("sleep 30") },
            Duration::from_millis(500),
            &AtomicUsize::new(0),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[1] still running") && e.contains("after rank 0 ended"),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
