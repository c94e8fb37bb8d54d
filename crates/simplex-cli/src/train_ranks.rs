//! What `simplex train` is in a data-parallel job: a single process, the launcher of `--gpus N`
//! ranks (launch.rs), or one rank (started by that launcher, or by another one that sets
//! `RANK`, `WORLD_SIZE`, ...: simplex_train::ddp::Topology).
//!
//! A rank joins the TCP rendezvous at `MASTER_ADDR:MASTER_PORT`; CUDA ranks then build an NCCL
//! communicator from rank 0's id (handed over that rendezvous), CPU ranks keep the TCP star as
//! their collective. Rank 0 shows the progress and writes the run; every rank prints its own
//! errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use simplex_train::ddp::{Collective, Distributed, TcpComm, Topology};
use simplex_train::Quiet;

use crate::train_cmd::{options, report, Progress, TrainArgs};

/// What this process does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Train alone on this device.
    Single(String),
    /// Start `gpus` ranks on `device` (`cuda` or `cpu`) and watch them.
    Launcher {
        /// Ranks on this node.
        gpus: usize,
        /// `cuda` (rank r on cuda:r) or `cpu`.
        device: String,
    },
    /// Train as one rank of a job.
    Rank {
        /// Where this rank stands.
        topo: Topology,
        /// Its device.
        device: String,
    },
}

/// The advice of an error where NCCL is missing from the build.
const NO_NCCL: &str = "data-parallel training on CUDA needs a simplex built with NCCL: `cargo build --release --features cuda,nccl -p simplex-cli` (NCCL itself, libnccl.so.2, is loaded when the ranks start; docs/multi-gpu.md); --device cpu runs the ranks on the CPU";

/// This process's role from `--gpus`, `--device` and the environment.
pub fn role(gpus: Option<usize>, device: Option<&str>) -> Result<Role> {
    role_from(gpus, device, |k| std::env::var(k).ok())
}

fn role_from(
    gpus: Option<usize>,
    device: Option<&str>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Role> {
    let topo = Topology::from_vars(&get)?;
    let launched = get("SIMPLEX_LAUNCHED").as_deref() == Some("1");
    match (topo, gpus) {
        (Some(_), Some(_)) if !launched => bail!(
            "--gpus starts its own ranks, but RANK and WORLD_SIZE are set (an external launcher?): leave out --gpus, or unset them"
        ),
        (Some(t), _) if t.world == 1 && gpus.is_none() => {
            Ok(Role::Single(device.unwrap_or("cpu").to_string()))
        }
        (Some(t), _) => {
            // `cuda` without an ordinal is this rank's GPU
            let device = match device.unwrap_or("cuda") {
                "cuda" => format!("cuda:{}", t.local_rank),
                d => d.to_string(),
            };
            if t.world == 1 {
                return Ok(Role::Single(device));
            }
            if device.starts_with("cuda") && !cfg!(feature = "nccl") {
                bail!("{NO_NCCL}");
            }
            Ok(Role::Rank { topo: t, device })
        }
        (None, None) => Ok(Role::Single(device.unwrap_or("cpu").to_string())),
        (None, Some(0)) => bail!("--gpus 0: give at least 1"),
        (None, Some(1)) => Ok(Role::Single(device.unwrap_or("cuda").to_string())),
        (None, Some(n)) => match device.unwrap_or("cuda") {
            "cuda" if !cfg!(feature = "nccl") => bail!("--gpus {n}: {NO_NCCL}"),
            d @ ("cuda" | "cpu") => Ok(Role::Launcher {
                gpus: n,
                device: d.to_string(),
            }),
            other => bail!(
                "--gpus {n} puts rank r on cuda:r: pass --device cuda (the default) or cpu (ranks on the CPU), not {other}"
            ),
        },
    }
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Starts `gpus` ranks of this command on this node and waits for them (launch.rs); a job
/// stopped on a signal ends this process with status 130.
pub fn launch(gpus: usize, device: &str, timeout_s: u64) -> Result<()> {
    let plan = crate::launch::Plan::new(gpus, |k| std::env::var(k).ok())?;
    ctrlc::set_handler(|| {
        SIGNALS.fetch_add(1, Ordering::SeqCst);
    })?;
    let exe = std::env::current_exe()?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // CPU ranks share the cores
    let threads = (device == "cpu" && std::env::var_os("RAYON_NUM_THREADS").is_none()).then(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / gpus).max(1)
    });
    eprintln!(
        "simplex: starting ranks {}..{} of {} on {device}, rendezvous at {}:{}",
        plan.first,
        plan.first + gpus - 1,
        plan.world,
        plan.master_addr,
        plan.master_port
    );
    let outcome = crate::launch::run_ranks(
        &plan,
        |_| {
            let mut c = std::process::Command::new(&exe);
            c.args(&args);
            if let Some(t) = threads {
                c.env("RAYON_NUM_THREADS", t.to_string());
            }
            c
        },
        Duration::from_secs(timeout_s.saturating_add(60)),
        &SIGNALS,
    )?;
    if outcome == crate::launch::Outcome::Stopped {
        std::process::exit(crate::interrupt::INTERRUPTED_EXIT);
    }
    Ok(())
}

/// Trains as rank `topo.rank` on `device`.
pub fn run_rank(a: &TrainArgs, topo: Topology, device: &str) -> Result<()> {
    if !(a.bucket_mb.is_finite() && a.bucket_mb > 0.0) {
        bail!("--bucket-mb {}: give a positive size", a.bucket_mb);
    }
    let timeout = Duration::from_secs(a.ddp_timeout.max(1));
    let token = std::env::var("SIMPLEX_DDP_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let dev = crate::device::parse(device)?;
    let tcp = TcpComm::connect(&topo, token, timeout)?;
    let comm: Box<dyn Collective> = if dev.is_cuda() {
        nccl_comm(tcp, &topo, &dev, timeout)?
    } else {
        Box::new(tcp)
    };
    let opts = options(a, dev)?;
    let dist = Distributed {
        comm: &*comm,
        bucket_bytes: (a.bucket_mb * (1u64 << 20) as f64).max(4.0) as usize,
    };
    let summary = if topo.rank == 0 {
        let mut progress = Progress::new()?;
        let s = simplex_train::train_ranked(&opts, &mut progress, &dist)?;
        progress.finish();
        s
    } else {
        simplex_train::train_ranked(&opts, &mut Quiet, &dist)?
    };
    // the job is over: let go of the communicator (and its watchdog) before anything else
    drop(comm);
    if topo.rank == 0 || summary.stopped {
        report(&summary);
    }
    Ok(())
}

/// The NCCL communicator of a CUDA rank: rank 0's id over the TCP rendezvous.
#[cfg(feature = "nccl")]
fn nccl_comm(
    tcp: TcpComm,
    topo: &Topology,
    dev: &candle_core::Device,
    timeout: Duration,
) -> Result<Box<dyn Collective>> {
    use simplex_train::ddp::nccl;
    let mut id = if topo.rank == 0 {
        tracing::info!("NCCL {}", nccl::version()?);
        nccl::unique_id()?
    } else {
        Vec::new()
    };
    tcp.broadcast_bytes(&mut id)?;
    Ok(Box::new(nccl::NcclComm::init(
        dev, topo.rank, topo.world, &id, timeout,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_comm(
    _: TcpComm,
    _: &Topology,
    _: &candle_core::Device,
    _: Duration,
) -> Result<Box<dyn Collective>> {
    bail!("{NO_NCCL}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role_with(gpus: Option<usize>, device: Option<&str>, vars: &[(&str, &str)]) -> Result<Role> {
        role_from(gpus, device, |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn roles_from_flags_and_environment() -> Result<()> {
        assert_eq!(role_with(None, None, &[])?, Role::Single("cpu".into()));
        assert_eq!(role_with(Some(1), None, &[])?, Role::Single("cuda".into()));
        assert_eq!(
            role_with(Some(2), Some("cpu"), &[])?,
            Role::Launcher {
                gpus: 2,
                device: "cpu".into()
            }
        );
        let e = role_with(Some(2), Some("cuda:1"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass --device cuda"), "{e}");
        assert!(role_with(Some(0), None, &[]).is_err());
        let cuda2 = role_with(Some(2), None, &[]);
        match cfg!(feature = "nccl") {
            true => assert!(matches!(cuda2?, Role::Launcher { .. })),
            false => {
                let e = cuda2.unwrap_err().to_string();
                assert!(e.contains("--features cuda,nccl"), "{e}");
            }
        }
        // a rank: `cuda` is its local GPU; `--gpus` only from our own launcher
        let env = [("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")];
        match role_with(None, Some("cpu"), &env)? {
            Role::Rank { topo, device } => assert_eq!((topo.rank, device.as_str()), (1, "cpu")),
            other => panic!("{other:?}"),
        }
        let e = role_with(Some(2), Some("cpu"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("leave out --gpus"), "{e}");
        let launched = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("SIMPLEX_LAUNCHED", "1"),
        ];
        assert!(matches!(
            role_with(Some(2), Some("cpu"), &launched)?,
            Role::Rank { .. }
        ));
        if cfg!(feature = "nccl") {
            match role_with(None, None, &env)? {
                Role::Rank { device, .. } => assert_eq!(device, "cuda:1"),
                other => panic!("{other:?}"),
            }
        }
        let one = [("RANK", "0"), ("WORLD_SIZE", "1")];
        assert_eq!(
            role_with(None, Some("cpu"), &one)?,
            Role::Single("cpu".into())
        );
        Ok(())
    }
}
