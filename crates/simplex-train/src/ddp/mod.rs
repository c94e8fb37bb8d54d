//! Data-parallel training: one process (rank) per GPU, each with the whole model, each taking
//! its own part of every global batch; the gradients are summed over the ranks before every
//! update, so every rank takes the same update and the weights stay the same everywhere.
//!
//! ```text
//! setup     rank 0 prepares the run folder (data, config, checkpoint) while the others wait,
//!           then they open it as rank 0 left it; every rank loads the same checkpoint and
//!           checks it holds rank 0's step, data position and weights (check_same)
//! update    micro-batches of this rank's windows (shard.rs) -> loss / (grad_accum x world)
//!           -> backward -> buckets (buckets.rs) -> all-reduce sum -> clip + AdamW, identical
//!           on every rank
//! logging   the ranks' losses averaged at each metrics row; rank 0 evaluates, writes
//!           metrics.jsonl and checkpoints (atomically, as one rank does); a stop request on
//!           any rank (Ctrl-C) is agreed at least every 10 updates, so every rank stops after
//!           the same update
//! ```
//! * [`Collective`]: sums, maxima, broadcasts and barriers over ranks; [`Solo`] (one rank),
//!   [`LocalComm`] (threads of one process: the tests), [`TcpComm`] (processes over TCP: the
//!   rendezvous of every job, and the collective of CPU ranks), `nccl::NcclComm` (feature
//!   `nccl`: CUDA tensors over NCCL, with a watchdog that ends a stuck rank).
//! * [`Topology`]: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`.
//! * [`BucketPlan`], [`GradReducer`]: the gradients in buckets, summed over ranks.
//! * [`RankBatcher`], [`rebatch`]: each rank's windows; a resume on another number of ranks.
//! * [`Distributed`] is what [`crate::trainer::train_ranked`] takes; [`crate::train`] is
//!   `train_ranked` with [`Solo`].
//!
//! See docs/multi-gpu.md for the command line (`simplex train --gpus N`).

pub mod buckets;
pub mod collective;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod shard;
pub mod tcp;
pub mod topology;

use candle_core::{DType, Tensor};

pub use buckets::{BucketPlan, GradReducer, DEFAULT_BUCKET_BYTES};
pub use collective::{any, check_same, Collective, ReduceOp, Solo};
pub use local::{local_group, LocalComm};
pub use shard::{rebatch, RankBatcher};
pub use tcp::TcpComm;
pub use topology::Topology;

use crate::error::{Result, TrainError};
use crate::run::{self, Prepared, RunOptions};

/// The ranks a training run spans, and how it talks to them.
pub struct Distributed<'a> {
    /// The collective of this rank.
    pub comm: &'a dyn Collective,
    /// Gradient bucket size in bytes (f32).
    pub bucket_bytes: usize,
}

impl<'a> Distributed<'a> {
    /// `comm` with the default bucket size.
    pub fn new(comm: &'a dyn Collective) -> Self {
        Distributed {
            comm,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }
}

/// Sets up the run folder on every rank: rank 0 prepares it ([`run::prepare_for`]) while the
/// others wait, then tells them whether that worked; the others then open it as rank 0 left
/// it, writing nothing. A rank 0 that fails makes every rank fail.
pub fn prepare_ranks(opts: &RunOptions, comm: &dyn Collective) -> Result<Prepared> {
    let world = comm.world();
    if world == 1 {
        return run::prepare_for(opts, 1, false);
    }
    if comm.rank() == 0 {
        let prepared = run::prepare_for(opts, world, false);
        let ok = f32::from(u8::from(prepared.is_ok()));
        comm.broadcast(&Tensor::new(&[ok], &comm.device())?)?;
        prepared
    } else {
        let flag = Tensor::zeros(1, DType::F32, &comm.device())?;
        comm.broadcast(&flag)?;
        if flag.to_vec1::<f32>()?[0] == 0.0 {
            return Err(TrainError::distributed(
                comm.rank(),
                "rank 0 could not set up the run folder (its error says why)",
            ));
        }
        run::prepare_for(opts, world, true)
    }
}
