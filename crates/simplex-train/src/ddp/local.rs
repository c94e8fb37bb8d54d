//! Ranks as threads of one process sharing memory: the collective of the CPU tests (a 2-rank
//! run on two threads against a 1-rank run, a rank that fails or hangs).
//!
//! Each operation is a round: every rank deposits its values, the last to arrive combines them
//! in rank order (so the result is the same on every run), and every rank copies the result
//! out. A rank whose [`LocalComm`] is dropped (its thread returned, or failed) has left: the
//! others' waiting operations end with an error naming it, as do operations that wait longer
//! than the timeout.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::collective::{combine, on_host, Collective, ReduceOp};
use crate::error::{Result, TrainError};

/// What an operation is, so that ranks calling different ones fail instead of mixing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reduce(ReduceOp),
    Broadcast,
}

struct State {
    /// Rounds completed.
    round: u64,
    /// Each rank's deposit of the current round.
    slots: Vec<Option<(Kind, Vec<f32>)>>,
    /// The last completed round's result (or why it failed).
    result: std::result::Result<Arc<Vec<f32>>, String>,
    /// Ranks whose handle was dropped.
    left: Vec<bool>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a rank that panicked while holding the lock leaves consistent data: keep going
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One rank's handle of an in-process group ([`local_group`]).
pub struct LocalComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// `world` handles of one in-process group, rank `i` at index `i`; an operation that waits more
/// than `timeout` for the other ranks fails.
pub fn local_group(world: usize, timeout: Duration) -> Vec<LocalComm> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            round: 0,
            slots: vec![None; world],
            result: Ok(Arc::new(Vec::new())),
            left: vec![false; world],
        }),
        ready: Condvar::new(),
    });
    (0..world)
        .map(|rank| LocalComm {
            rank,
            world,
            timeout,
            shared: shared.clone(),
        })
        .collect()
}

impl LocalComm {
    fn run(&self, kind: Kind, data: &mut [f32]) -> Result<()> {
        let err = |m: String| TrainError::distributed(self.rank, m);
        let mut st = self.shared.lock();
        let round = st.round;
        st.slots[self.rank] = Some((kind, data.to_vec()));
        if st.slots.iter().all(Option::is_some) {
            let slots: Vec<(Kind, Vec<f32>)> =
                st.slots.iter_mut().filter_map(Option::take).collect();
            st.result = finish(&slots);
            st.round += 1;
            self.shared.ready.notify_all();
        }
        let deadline = Instant::now() + self.timeout;
        while st.round == round {
            if let Some(r) = (0..self.world).find(|&r| st.left[r] && st.slots[r].is_none()) {
                st.slots[self.rank] = None;
                return Err(err(format!(
                    "rank {r} left the group (it stopped or failed) while this rank waited in a collective"
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> =
                    (0..self.world).filter(|&r| st.slots[r].is_none()).collect();
                st.slots[self.rank] = None;
                return Err(err(format!(
                    "no progress for {} s: rank(s) {missing:?} never joined the collective (hung, or too slow for the timeout)",
                    self.timeout.as_secs_f64()
                )));
            }
            st = self
                .shared
                .ready
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match &st.result {
            Ok(v) => {
                data.copy_from_slice(v);
                Ok(())
            }
            Err(m) => Err(err(m.clone())),
        }
    }
}

/// The result of a round from every rank's deposit (rank order), or why the ranks disagree.
fn finish(slots: &[(Kind, Vec<f32>)]) -> std::result::Result<Arc<Vec<f32>>, String> {
    let (kind, first) = &slots[0];
    if let Some((r, (k, v))) = slots
        .iter()
        .enumerate()
        .find(|(_, (k, v))| k != kind || v.len() != first.len())
    {
        return Err(format!(
            "the ranks called different collectives: rank 0 {kind:?} of {} values, rank {r} {k:?} of {}",
            first.len(),
            v.len()
        ));
    }
    let mut acc = first.clone();
    if let Kind::Reduce(op) = kind {
        for (_, v) in &slots[1..] {
            combine(&mut acc, v, *op);
        }
    }
    Ok(Arc::new(acc))
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.left[self.rank] = true;
        self.shared.ready.notify_all();
    }
}

impl Collective for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        on_host(t, "local", self.rank, |d| self.run(Kind::Reduce(op), d))
    }
    fn broadcast(&self, t: &Tensor) -> Result<()> {
        on_host(t, "local", self.rank, |d| self.run(Kind::Broadcast, d))
    }
    fn backend(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddp::collective::any;

    /// What a rank thread of the test returns: sums and broadcast, maxima, the flag.
    type Seen = (Vec<f32>, Vec<f32>, bool);

    /// Sums in rank order, maxima, broadcasts, the barrier; a rank that leaves or never comes
    /// ends the others' waits with errors naming it.
    #[test]
    fn threads_reduce_broadcast_and_fail_cleanly() -> Result<()> {
        let comms = local_group(3, Duration::from_secs(20));
        let out: Vec<Result<Seen>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    s.spawn(move || -> Result<Seen> {
                        let r = c.rank() as f32;
                        let t = Tensor::new(&[r, 10.0 * r, 1.0], &Device::Cpu)?;
                        c.all_reduce(&t, ReduceOp::Sum)?;
                        let m = Tensor::new(&[r, -r], &Device::Cpu)?;
                        c.all_reduce(&m, ReduceOp::Max)?;
                        let b = Tensor::new(&[r + 7.0], &Device::Cpu)?;
                        c.broadcast(&b)?;
                        c.barrier()?;
                        let flag = any(&c, c.rank() == 2)?;
                        let mut v = t.to_vec1::<f32>()?;
                        v.extend(b.to_vec1::<f32>()?);
                        Ok((v, m.to_vec1::<f32>()?, flag))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in out {
            let (v, m, flag) = o?;
            assert_eq!(v, vec![3.0, 30.0, 3.0, 7.0]);
            assert_eq!(m, vec![2.0, 0.0]);
            assert!(flag);
        }

        // rank 1 leaves (its thread ends) while rank 0 waits
        let mut comms = local_group(2, Duration::from_secs(20));
        let c1 = comms.pop().unwrap();
        let c0 = comms.pop().unwrap();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(c1);
        });
        let e = c0
            .all_reduce(&Tensor::new(&[1f32], &Device::Cpu)?, ReduceOp::Sum)
            .unwrap_err()
            .to_string();
        h.join().unwrap();
        assert!(e.contains("rank 0:") && e.contains("rank 1 left"), "{e}");

        // rank 1 never comes: the timeout names it
        let comms = local_group(2, Duration::from_millis(100));
        let t0 = Instant::now();
        let e = comms[0].barrier().unwrap_err().to_string();
        assert!(e.contains("no progress") && e.contains("[1]"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));

        // different operations on the ranks: both fail
        let comms = local_group(2, Duration::from_secs(20));
        let errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
                        let r = if c.rank() == 0 {
                            c.all_reduce(&t, ReduceOp::Sum)
                        } else {
                            c.broadcast(&t)
                        };
                        r.unwrap_err().to_string()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for e in errs {
            assert!(e.contains("different collectives"), "{e}");
        }
        Ok(())
    }
}
