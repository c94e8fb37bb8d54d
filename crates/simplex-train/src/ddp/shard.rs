//! Sharded data: every rank reads its own part of each global batch, and a resume on another
//! number of ranks keeps the global batch.
//!
//! ```text
//! global order:  the windows of the one seeded Batcher (data/batches.rs), epoch by epoch
//! update:        the next B x A x W windows, B = batch_size, A = grad_accum, W = world_size
//! micro-step k of rank r:   windows [(k W + r) B, (k W + r + 1) B) of the update
//! ```
//! Every rank draws the same order and skips the other ranks' windows, so the ranks' windows
//! of an update are disjoint and together are exactly the windows one rank would take with
//! `grad_accum = A x W` (the same micro-batches, in fact: rank r's micro-step k is that rank's
//! micro-step k W + r). No window is read twice in an epoch, every rank's order is a function
//! of the seed, and the data position after an update (what a checkpoint stores) is the same
//! on every rank: a global position, which a resume on any number of ranks continues from.

use super::super::data::{Batcher, DataPosition};
use crate::config::{TrainConfig, TrainOverrides};
use crate::error::{Result, TrainError};

/// One rank's view of the global window order.
pub struct RankBatcher<'a> {
    inner: Batcher<'a>,
    rank: usize,
    world: usize,
}

impl<'a> RankBatcher<'a> {
    /// Rank `rank` of `world` drawing from `inner`'s order (world 1: `inner` as it is).
    pub fn new(inner: Batcher<'a>, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(TrainError::setting(
                "world_size",
                world,
                format!("rank {rank} is not in 0..{world}"),
            ));
        }
        Ok(RankBatcher { inner, rank, world })
    }

    /// This rank's next micro-batch of `b` windows (`(inputs, targets)`, row-major `[b, seq]`):
    /// the group of `world` micro-batches is drawn, this rank's is kept.
    pub fn next_batch(&mut self, b: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        self.inner.skip(self.rank * b)?;
        let out = self.inner.next_batch(b)?;
        self.inner.skip((self.world - 1 - self.rank) * b)?;
        Ok(out)
    }

    /// The global position (the same on every rank after each update).
    pub fn position(&self) -> DataPosition {
        self.inner.position()
    }

    /// Windows in the current epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.inner.windows_per_epoch()
    }
}

/// The settings of a run saved with `saved.world_size` ranks, resumed on `world` ranks: the
/// same global batch (`batch_size x grad_accum x world_size` sequences per update) split over
/// `world`, and the overrides without the batch flags they now agree with. Given
/// `--batch-size`/`--grad-accum` are kept when they multiply to the per-rank share; without
/// them the micro-batch stays (so does the memory a rank needs) and `grad_accum` changes, or,
/// when the micro-batch does not divide the share, the fewest micro-batches no larger than it.
/// The same world size returns everything unchanged.
pub fn rebatch(
    saved: &TrainConfig,
    o: &TrainOverrides,
    world: usize,
) -> Result<(TrainConfig, TrainOverrides)> {
    if world == saved.world_size {
        return Ok((saved.clone(), o.clone()));
    }
    let (b, a, w) = (saved.batch_size, saved.grad_accum, saved.world_size);
    let total = b * a * w;
    let was =
        format!("batch_size {b} x grad_accum {a} x {w} rank(s) = {total} sequences per update");
    if world == 0 || !total.is_multiple_of(world) {
        return Err(TrainError::setting(
            "world_size",
            world,
            format!("the run's global batch ({was}) does not split over {world} ranks: resume on a number of ranks that divides {total}"),
        ));
    }
    let share = total / world;
    let bad = |key: &'static str, v: usize| {
        TrainError::setting(
            key,
            v,
            format!("on {world} ranks each rank takes {share} sequences per update to keep the run's global batch ({was}): batch_size x grad_accum must be {share}"),
        )
    };
    let (nb, na) = match (o.batch_size, o.grad_accum) {
        (Some(nb), Some(na)) if nb * na == share => (nb, na),
        (Some(nb), Some(_)) => return Err(bad("batch_size", nb)),
        (Some(nb), None) if nb > 0 && share.is_multiple_of(nb) => (nb, share / nb),
        (Some(nb), None) => return Err(bad("batch_size", nb)),
        (None, Some(na)) if na > 0 && share.is_multiple_of(na) => (share / na, na),
        (None, Some(na)) => return Err(bad("grad_accum", na)),
        (None, None) if share.is_multiple_of(b) => (b, share / b),
        (None, None) => {
            let na = (1..=share)
                .find(|&na| share.is_multiple_of(na) && share / na <= b)
                .unwrap_or(share);
            (share / na, na)
        }
    };
    tracing::info!(
        "resuming on {world} rank(s): batch_size {b} -> {nb}, grad_accum {a} -> {na} keeps the global batch of {total} sequences"
    );
    let mut cfg = saved.clone();
    (cfg.batch_size, cfg.grad_accum, cfg.world_size) = (nb, na, world);
    let mut o = o.clone();
    (o.batch_size, o.grad_accum) = (None, None);
    Ok((cfg, o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ShardWriter, TokenStream};
    use std::collections::BTreeSet;

    /// A stream of tokens 0..n (each window is named by its first token).
    fn counting_stream(dir: &std::path::Path, n: u32) -> Result<TokenStream> {
        let mut w = ShardWriter::new(dir, "train", 4, 97);
        w.push_doc(&(0..n).collect::<Vec<_>>(), n as usize)?;
        let info = w.finish()?;
        TokenStream::open(dir, &info, 4)
    }

    /// For 1 to 4 ranks: the ranks' windows of every update are disjoint and together the
    /// single process's global batch; no window twice in an epoch; the same on a second run;
    /// every rank ends each update at the single process's position.
    #[test]
    fn ranks_split_each_global_batch_exactly() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tempdir", e))?;
        let stream = counting_stream(dir.path(), 1000)?;
        let (seq, seed, b, a) = (8usize, 5u64, 3usize, 2usize);
        for world in 1..=4usize {
            let draw = || -> Result<Vec<Vec<BTreeSet<u32>>>> {
                let mut ranks: Vec<RankBatcher> = (0..world)
                    .map(|r| {
                        RankBatcher::new(
                            Batcher::new(&stream, seq, seed, DataPosition::default())?,
                            r,
                            world,
                        )
                    })
                    .collect::<Result<_>>()?;
                let mut single = Batcher::new(&stream, seq, seed, DataPosition::default())?;
                let mut updates = Vec::new();
                // 30 updates: past the end of the first epoch (about 124 windows) for every world
                for _ in 0..30 {
                    let (x, _) = single.next_batch(b * a * world)?;
                    let want: BTreeSet<u32> = x.chunks(seq).map(|w| w[0]).collect();
                    assert_eq!(
                        want.len(),
                        b * a * world,
                        "the global batch has no window twice"
                    );
                    let mut per_rank = Vec::new();
                    let mut union = BTreeSet::new();
                    for rb in ranks.iter_mut() {
                        let mut mine = BTreeSet::new();
                        for _ in 0..a {
                            let (x, y) = rb.next_batch(b)?;
                            assert_eq!(x.len(), b * seq);
                            for (xw, yw) in x.chunks(seq).zip(y.chunks(seq)) {
                                assert_eq!(xw[1..], yw[..seq - 1], "targets are inputs shifted");
                            }
                            for w in x.chunks(seq) {
                                assert!(mine.insert(w[0]));
                                assert!(
                                    union.insert(w[0]),
                                    "world {world}: window {} on two ranks",
                                    w[0]
                                );
                            }
                        }
                        assert_eq!(rb.position(), single.position(), "world {world}");
                        per_rank.push(mine);
                    }
                    assert_eq!(
                        union, want,
                        "world {world}: the ranks' union is the global batch"
                    );
                    updates.push(per_rank);
                }
                Ok(updates)
            };
            let first = draw()?;
            assert_eq!(first, draw()?, "world {world}: deterministic");
        }
        // two whole epochs, one window per micro-batch (so each window's epoch is the
        // position's after drawing it): within an epoch no window twice over all ranks, and
        // together the ranks read every window of the epoch
        for world in 1..=4usize {
            let mut single = Batcher::new(&stream, seq, seed, DataPosition::default())?;
            let mut epochs: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 2];
            while single.position().epoch < 2 {
                let (x, _) = single.next_batch(1)?;
                if let Some(e) = epochs.get_mut(single.position().epoch as usize) {
                    e.insert(x[0]);
                }
            }
            let mut got: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 2];
            // the exact bookkeeping: rank r's k-th window is the single order's window k W + r
            let mut ranks: Vec<RankBatcher> = (0..world)
                .map(|r| {
                    RankBatcher::new(
                        Batcher::new(&stream, seq, seed, DataPosition::default())?,
                        r,
                        world,
                    )
                })
                .collect::<Result<_>>()?;
            let mut single = Batcher::new(&stream, seq, seed, DataPosition::default())?;
            'outer: loop {
                for rb in ranks.iter_mut() {
                    let (x, _) = single.next_batch(1)?;
                    let epoch = single.position().epoch as usize;
                    let (mine, _) = rb.next_batch(1)?;
                    assert_eq!(mine[0], x[0], "world {world}: rank order = single order");
                    if epoch >= 2 {
                        break 'outer;
                    }
                    assert!(
                        got[epoch].insert(mine[0]),
                        "world {world}: window {} twice in epoch {epoch}",
                        mine[0]
                    );
                }
            }
            assert_eq!(
                got, epochs,
                "world {world}: every window of each epoch, once"
            );
        }
        Ok(())
    }

    fn cfg(b: usize, a: usize, w: usize) -> TrainConfig {
        let mut c = TrainConfig::resolve(&TrainOverrides::default(), 64, false).unwrap();
        (c.batch_size, c.grad_accum, c.world_size) = (b, a, w);
        c
    }

    #[test]
    fn resuming_on_other_world_sizes_keeps_the_global_batch() -> Result<()> {
        let none = TrainOverrides::default();
        let got = |c: &TrainConfig| (c.batch_size, c.grad_accum, c.world_size);
        // 2 ranks x batch 16 -> 1 rank: grad_accum 2
        assert_eq!(got(&rebatch(&cfg(16, 1, 2), &none, 1)?.0), (16, 2, 1));
        // 1 rank x grad_accum 4 -> 4 ranks: grad_accum 1
        assert_eq!(got(&rebatch(&cfg(8, 4, 1), &none, 4)?.0), (8, 1, 4));
        // 1 rank x batch 16 -> 4 ranks: the micro-batch shrinks to the share
        assert_eq!(got(&rebatch(&cfg(16, 1, 1), &none, 4)?.0), (4, 1, 4));
        // batch 6 x 2 ranks = 12 -> 3 ranks: share 4, 6 does not divide it: 1 x 4
        assert_eq!(got(&rebatch(&cfg(6, 1, 2), &none, 3)?.0), (4, 1, 3));
        // explicit flags that fit are taken, and cleared from the overrides
        let o = TrainOverrides {
            batch_size: Some(4),
            ..Default::default()
        };
        let (c, o2) = rebatch(&cfg(16, 1, 2), &o, 1)?;
        assert_eq!(
            (got(&c), o2.batch_size, o2.grad_accum),
            ((4, 8, 1), None, None)
        );
        // same world size: unchanged, flags left to resume_with
        let (c, o2) = rebatch(&cfg(16, 1, 2), &o, 2)?;
        assert_eq!((got(&c), o2.batch_size), ((16, 1, 2), Some(4)));
        // errors name the setting and the global batch
        let e = rebatch(&cfg(3, 1, 1), &none, 2).unwrap_err().to_string();
        assert!(
            e.contains("world_size = 2") && e.contains("3 sequences per update"),
            "{e}"
        );
        let o = TrainOverrides {
            batch_size: Some(5),
            ..Default::default()
        };
        let e = rebatch(&cfg(16, 1, 2), &o, 1).unwrap_err().to_string();
        assert!(
            e.contains("batch_size = 5") && e.contains("must be 32"),
            "{e}"
        );
        Ok(())
    }
}
