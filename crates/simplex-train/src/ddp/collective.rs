//! What the trainer needs from the ranks of a data-parallel job: sums and maxima over ranks,
//! rank 0's values everywhere, a barrier. Every operation works in place on a contiguous f32
//! tensor (or a contiguous view) on the collective's device, and every rank must call the same
//! operations in the same order with tensors of the same length.
//!
//! Implementations: [`Solo`] (one rank: nothing to do), [`super::LocalComm`] (ranks as threads
//! of one process, for tests), [`super::TcpComm`] (ranks as processes over TCP, CPU tensors:
//! the CPU test and debug path), and `NcclComm` (feature `nccl`: CUDA tensors over NCCL).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

use crate::error::{Result, TrainError};

/// How values of the ranks combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise maximum.
    Max,
}

/// Collective operations over the ranks of a job (see the module doc).
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// The device the operations' tensors live on.
    fn device(&self) -> Device;
    /// Combines `t` over the ranks with `op`, leaving the result in every rank's `t`.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()>;
    /// Overwrites every rank's `t` with rank 0's.
    fn broadcast(&self, t: &Tensor) -> Result<()>;
    /// Returns once every rank has called it (and everything enqueued before is done).
    fn barrier(&self) -> Result<()> {
        let t = Tensor::zeros(1, DType::F32, &self.device())?;
        self.all_reduce(&t, ReduceOp::Max)?;
        t.to_vec1::<f32>()?;
        Ok(())
    }
    /// The caller made progress (a watchdog that ends a stuck job counts from here).
    fn progress(&self) {}
    /// A short name of the implementation (`solo`, `local`, `tcp`, `nccl`).
    fn backend(&self) -> &'static str;
}

/// A job of one rank: every operation leaves its tensor as it is.
#[derive(Debug, Clone)]
pub struct Solo {
    device: Device,
}

impl Solo {
    /// One rank on `device`.
    pub fn new(device: Device) -> Self {
        Solo { device }
    }
}

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn all_reduce(&self, _: &Tensor, _: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &Tensor) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "solo"
    }
}

/// Whether `flag` is set on any rank (one tiny all-reduce, read on the host).
pub fn any(comm: &dyn Collective, flag: bool) -> Result<bool> {
    if comm.world() == 1 {
        return Ok(flag);
    }
    let t = Tensor::new(&[f32::from(u8::from(flag))], &comm.device())?;
    comm.all_reduce(&t, ReduceOp::Max)?;
    Ok(t.to_vec1::<f32>()?[0] > 0.0)
}

/// Checks that every rank holds rank 0's `values` (named by `names`); on any difference every
/// rank returns an error, the differing one naming the value and both numbers. u64s travel
/// exactly, as four 16-bit pieces per value in f32.
pub fn check_same(comm: &dyn Collective, names: &[&str], values: &[u64]) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let pieces: Vec<f32> = values
        .iter()
        .flat_map(|v| (0..4).map(move |k| ((v >> (16 * k)) & 0xffff) as f32))
        .collect();
    let t = Tensor::from_vec(pieces, values.len() * 4, &comm.device())?;
    comm.broadcast(&t)?;
    let got = t.to_vec1::<f32>()?;
    let theirs: Vec<u64> = got
        .chunks(4)
        .map(|c| (0..4).fold(0u64, |acc, k| acc | ((c[k] as u64) << (16 * k))))
        .collect();
    let mine = values
        .iter()
        .zip(&theirs)
        .zip(names)
        .find(|((a, b), _)| a != b);
    let bad = any(comm, mine.is_some())?;
    match mine {
        Some(((a, b), name)) => Err(TrainError::distributed(
            comm.rank(),
            format!("{name} is {a} here but {b} on rank 0: the ranks did not start from the same state (a run folder every rank shares? the same checkpoint?)"),
        )),
        None if bad => Err(TrainError::distributed(
            comm.rank(),
            "another rank does not hold rank 0's state (its error names the value)",
        )),
        None => Ok(()),
    }
}

/// `acc op= x`, elementwise.
pub(crate) fn combine(acc: &mut [f32], x: &[f32], op: ReduceOp) {
    match op {
        ReduceOp::Sum => acc.iter_mut().zip(x).for_each(|(a, b)| *a += b),
        ReduceOp::Max => acc.iter_mut().zip(x).for_each(|(a, b)| *a = a.max(*b)),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor (or view), in place: how the host
/// collectives ([`super::LocalComm`], [`super::TcpComm`]) reach a tensor's memory. An error
/// of `f` comes back as it was.
pub(crate) fn on_host(
    t: &Tensor,
    backend: &str,
    rank: usize,
    f: impl FnMut(&mut [f32]) -> Result<()>,
) -> Result<()> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Err(TrainError::distributed(
            rank,
            format!(
                "the {backend} collective takes f32 tensors on the CPU, got {:?} on {:?} (CUDA ranks need the NCCL build: --features cuda,nccl)",
                t.dtype(),
                t.device().location()
            ),
        ));
    }
    let op = HostOp {
        f: RefCell::new(f),
        err: RefCell::new(None),
    };
    let r = t.inplace_op1(&op);
    if let Some(e) = op.err.into_inner() {
        return Err(e);
    }
    Ok(r?)
}

struct HostOp<F> {
    f: RefCell<F>,
    err: RefCell<Option<TrainError>>,
}

impl<F: FnMut(&mut [f32]) -> Result<()>> InplaceOp1 for HostOp<F> {
    fn name(&self) -> &'static str {
        "ddp-host-collective"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("collective: the tensor is not contiguous")
        };
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("collective: the tensor is not f32")
        };
        match (self.f.borrow_mut())(&mut v[a..b]) {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = e.to_string();
                *self.err.borrow_mut() = Some(e);
                Err(candle_core::Error::Msg(msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_leaves_tensors_alone_and_host_ops_reach_views() -> Result<()> {
        let solo = Solo::new(Device::Cpu);
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        solo.all_reduce(&t, ReduceOp::Sum)?;
        solo.broadcast(&t)?;
        solo.barrier()?;
        assert_eq!(t.to_vec1::<f32>()?, vec![1.0, 2.0, 3.0]);
        assert!(any(&solo, true)? && !any(&solo, false)?);
        // a view: only its elements change
        let v = t.narrow(0, 1, 2)?;
        on_host(&v, "test", 0, |d| {
            d.iter_mut().for_each(|x| *x *= 10.0);
            Ok(())
        })?;
        assert_eq!(t.to_vec1::<f32>()?, vec![1.0, 20.0, 30.0]);
        // an error of the closure comes back as it was
        let e = on_host(&t, "test", 3, |_| Err(TrainError::distributed(3, "boom")))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "rank 3: boom");
        let e = on_host(&t.to_dtype(DType::F64)?, "tcp", 1, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32 tensors on the CPU"), "{e}");
        let mut a = [1f32, 5.0];
        combine(&mut a, &[2.0, 3.0], ReduceOp::Max);
        assert_eq!(a, [2.0, 5.0]);
        combine(&mut a, &[2.0, 3.0], ReduceOp::Sum);
        assert_eq!(a, [4.0, 8.0]);
        Ok(())
    }
}
