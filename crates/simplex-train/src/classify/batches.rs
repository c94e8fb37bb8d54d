//! Batches of task examples without padding: every batch holds examples of one length.
//!
//! The attention ops have no key mask, and a padding token would be a key like any other (it
//! would change what a bidirectional layer computes), so a batch never mixes lengths. Training
//! ([`TrainBatches`]): each epoch shuffles every length's examples (seeded), cuts them into full
//! batches (a length's last partial batch waits for a later epoch's shuffle: `drop_last`) and
//! shuffles the order of the batches. Evaluation ([`eval_batches`]): every example once, in
//! batches of at most `batch` per length, partial ones included.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};
use crate::rng::SplitMix64;
use crate::tasks::Example;

/// The indices of `examples` grouped by length (lengths ascending, indices in order).
fn by_length(examples: &[Example]) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, ex) in examples.iter().enumerate() {
        groups.entry(ex.len()).or_default().push(i);
    }
    groups.into_values().collect()
}

/// Seeded epochs of same-length training batches (indices into the training examples).
pub struct TrainBatches {
    groups: Vec<Vec<usize>>,
    batch: usize,
    seed: u64,
    epoch: u64,
    queue: Vec<Vec<usize>>,
}

impl TrainBatches {
    /// Batches of `batch` examples of `examples` in an order fixed by `seed`; an error when no
    /// length has `batch` examples (the error names `--batch-size`).
    pub fn new(examples: &[Example], batch: usize, seed: u64) -> Result<Self> {
        let groups = by_length(examples);
        let largest = groups.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || largest < batch {
            return Err(TrainError::setting(
                "--batch-size",
                batch,
                format!(
                    "batches hold examples of one length and the largest length group of the \
                     {} training examples has {largest}; use a batch in 1..={largest} or more \
                     training examples",
                    examples.len()
                ),
            ));
        }
        Ok(TrainBatches {
            groups,
            batch,
            seed,
            epoch: 0,
            queue: Vec::new(),
        })
    }

    fn refill(&mut self) {
        let mut rng = SplitMix64::derived(self.seed, 1000 + self.epoch);
        let mut batches = Vec::new();
        for g in &self.groups {
            let mut g = g.clone();
            rng.shuffle(&mut g);
            batches.extend(g.chunks_exact(self.batch).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches.reverse(); // popped from the back
        self.queue = batches;
        self.epoch += 1;
    }

    /// The next batch (a new epoch starts when the current one is used up).
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.queue.is_empty() {
            self.refill();
        }
        self.queue.pop().unwrap_or_default()
    }

    /// Epochs started so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Every example once, in batches of at most `batch` examples of one length (order: length
/// ascending, then as given).
pub fn eval_batches(examples: &[Example], batch: usize) -> Vec<Vec<usize>> {
    by_length(examples)
        .into_iter()
        .flat_map(|g| {
            g.chunks(batch.max(1))
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `tokens [B, N]` and `labels [B, N]` (u32) of the examples `idx` (all of one length `N`).
pub fn to_tensors(
    examples: &[Example],
    idx: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = idx.first().map_or(0, |&i| examples[i].len());
    if let Some(&i) = idx.iter().find(|&&i| examples[i].len() != n) {
        return Err(TrainError::setting(
            "batch",
            format!("{} examples", idx.len()),
            format!(
                "example {i} has length {}, the batch {n}",
                examples[i].len()
            ),
        ));
    }
    let tokens: Vec<u32> = idx
        .iter()
        .flat_map(|&i| examples[i].tokens.clone())
        .collect();
    let labels: Vec<u32> = idx
        .iter()
        .flat_map(|&i| examples[i].labels.clone())
        .collect();
    Ok((
        Tensor::from_vec(tokens, (idx.len(), n), device)?,
        Tensor::from_vec(labels, (idx.len(), n), device)?,
    ))
}
