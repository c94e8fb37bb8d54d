//! Where a process stands in a job, from the environment variables every launcher sets
//! (`simplex train --gpus N`, torchrun, Slurm scripts):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `RANK` | this process, `0..WORLD_SIZE` | (none: not a multi-process job) |
//! | `WORLD_SIZE` | processes in the job | required with `RANK` |
//! | `LOCAL_RANK` | this process on its node: its GPU | `RANK` |
//! | `MASTER_ADDR` | rank 0's host | `127.0.0.1` |
//! | `MASTER_PORT` | rank 0's rendezvous port | 29500 |
//! | `SIMPLEX_DDP_PORT` | replaces `MASTER_PORT` (torchrun's agent holds that port) | |

use crate::error::{Result, TrainError};

/// The default rendezvous port (PyTorch's).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// This process, `0..world`.
    pub rank: usize,
    /// Processes in the job.
    pub world: usize,
    /// This process on its node (its GPU is `cuda:local_rank`).
    pub local_rank: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's rendezvous port.
    pub master_port: u16,
}

impl Topology {
    /// A job of one process.
    pub fn single() -> Self {
        Topology {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
        }
    }

    /// The topology the environment describes (`None` when `RANK` and `WORLD_SIZE` are unset:
    /// a single process).
    pub fn from_env() -> Result<Option<Topology>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Topology::from_env`], reading variables through `get`; errors name the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Topology>> {
        let num = |key: &'static str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    TrainError::setting(key, format!("{v:?}"), "expected a whole number")
                }),
            }
        };
        let (rank, world) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (None, None) => return Ok(None),
            (Some(r), Some(w)) => (r, w),
            (Some(r), None) => {
                return Err(TrainError::setting(
                    "RANK",
                    r,
                    "set without WORLD_SIZE: a launcher sets both",
                ))
            }
            (None, Some(w)) => {
                return Err(TrainError::setting(
                    "WORLD_SIZE",
                    w,
                    "set without RANK: a launcher sets both",
                ))
            }
        };
        if world == 0 {
            return Err(TrainError::setting("WORLD_SIZE", 0, "must be at least 1"));
        }
        if rank >= world {
            return Err(TrainError::setting(
                "RANK",
                rank,
                format!("must be below WORLD_SIZE = {world}"),
            ));
        }
        let local_rank = num("LOCAL_RANK")?.unwrap_or(rank);
        let port_key = if get("SIMPLEX_DDP_PORT").is_some() {
            "SIMPLEX_DDP_PORT"
        } else {
            "MASTER_PORT"
        };
        let master_port = match num(port_key)? {
            None => DEFAULT_PORT,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(TrainError::setting(
                    port_key,
                    p,
                    "not a TCP port (1..65535)",
                ))
            }
        };
        let master_addr = get("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        Ok(Some(Topology {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Topology>> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Topology::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn environment_variables_and_their_errors() -> Result<()> {
        assert_eq!(parse(&[])?, None);
        let t = parse(&[("RANK", "3"), ("WORLD_SIZE", "4")])?.unwrap();
        assert_eq!((t.rank, t.world, t.local_rank), (3, 4, 3));
        assert_eq!(
            (t.master_addr.as_str(), t.master_port),
            ("127.0.0.1", 29500)
        );
        let t = parse(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node-a"),
            ("MASTER_PORT", "1234"),
        ])?
        .unwrap();
        assert_eq!(
            t,
            Topology {
                rank: 5,
                world: 8,
                local_rank: 1,
                master_addr: "node-a".into(),
                master_port: 1234
            }
        );
        let t = parse(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "1"),
            ("SIMPLEX_DDP_PORT", "2"),
        ])?;
        assert_eq!(t.unwrap().master_port, 2);
        for (vars, needle) in [
            (vec![("RANK", "0")], "RANK = 0: set without WORLD_SIZE"),
            (
                vec![("WORLD_SIZE", "2")],
                "WORLD_SIZE = 2: set without RANK",
            ),
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2")],
                "RANK = 2: must be below WORLD_SIZE = 2",
            ),
            (
                vec![("RANK", "x"), ("WORLD_SIZE", "2")],
                "RANK = \"x\": expected a whole number",
            ),
            (vec![("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE = 0"),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT = 70000: not a TCP port",
            ),
        ] {
            let e = parse(&vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        Ok(())
    }
}
