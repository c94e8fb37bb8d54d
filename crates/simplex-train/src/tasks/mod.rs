//! Synthetic reasoning tasks for comparing attention variants (issue 4): sequences of tokens
//! with one label per token, generated on the fly from a seed (no downloads).
//!
//! * [`Match3`] (spec section 8) and [`Match2`] (its pair control): modular sums over triples /
//!   pairs of positions.
//! * [`Compose`]: function composition `f(g(x))` from two tables given in the sequence.
//! * [`Relation`]: binary relation composition `(a, c) in R∘R` (the Strassen-attention task).
//!
//! Every task is **position-free**: a label depends on the multiset of tokens only, so any
//! permutation of the positions (carrying the labels along) is again a valid example. That is the
//! permutation augmentation ([`augment`]); the **base sequence** of an example is therefore its
//! sorted tokens ([`Example::canonical`]), and [`generate_splits`] makes train / validation / test
//! disjoint by base sequence (no sorted token list is in two splits, nor twice in one), so no
//! augmentation of a training example can be a validation or test example.
//!
//! Binary tasks (`match3`, `match2`, `relation`) are balanced by the fraction of positive labels
//! among the labeled tokens: 4 bins of 25% (`[0, .25)`, `[.25, .5)`, `[.5, .75)`, `[.75, 1]`), an
//! example of bin `b` drawn by rejection sampling ([`sample`]); a split of `k` examples holds
//! `k / 4` (+1 for the first `k % 4` bins) of each bin, in shuffled order.
//!
//! Token 0 is [`PAD`] in every task and never occurs in an example; unlabeled positions carry the
//! label [`IGNORE`]. [`metrics`] has per-token accuracy and sequence exact match.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use crate::rng::SplitMix64;
use crate::{Result, TrainError};

pub mod compose;
pub mod matching;
pub mod metrics;
pub mod relation;

pub use compose::Compose;
pub use matching::{Match2, Match3, MatchSum};
pub use metrics::{exact_match, token_accuracy, Score};
pub use relation::Relation;

/// The padding token: id 0 in every task, never part of a generated example.
pub const PAD: u32 = 0;
/// The label of a position that is not scored (table entries, relation edges, padding); the
/// same value as [`simplex_model::IGNORE`], which the classification loss skips.
pub const IGNORE: u32 = simplex_model::IGNORE;
/// Draws [`sample`] makes for one example before it gives up on a bin (an unreachable bin).
pub const MAX_TRIES: usize = 100_000;
/// The names [`by_name`] knows.
pub const NAMES: [&str; 4] = ["match3", "match2", "compose", "relation"];

/// One sequence: `tokens[i]` in `1..vocab_size`, `labels[i]` in `0..num_classes` or [`IGNORE`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// The input tokens.
    pub tokens: Vec<u32>,
    /// One label per token ([`IGNORE`] where not scored).
    pub labels: Vec<u32>,
}

impl Example {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens (never for a generated example).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Fraction of the labeled positions whose label is 1 (0 when none is labeled).
    pub fn positive_fraction(&self) -> f64 {
        let labeled = self.labels.iter().filter(|&&l| l != IGNORE).count();
        if labeled == 0 {
            return 0.0;
        }
        self.labels.iter().filter(|&&l| l == 1).count() as f64 / labeled as f64
    }

    /// The base sequence: the sorted tokens (labels follow from them, positions do not matter).
    pub fn canonical(&self) -> Vec<u32> {
        let mut t = self.tokens.clone();
        t.sort_unstable();
        t
    }
}

/// A task: a proposal distribution over examples, a labeler, and (binary tasks) balance bins.
pub trait Task: Send + Sync {
    /// Short name (`match3`, ...).
    fn name(&self) -> &'static str;
    /// Token ids are in `0..vocab_size` (0 = [`PAD`], unused by examples).
    fn vocab_size(&self) -> usize;
    /// Labels are in `0..num_classes` (or [`IGNORE`]).
    fn num_classes(&self) -> usize;
    /// The lengths an example can have.
    fn seq_len_range(&self) -> RangeInclusive<usize>;
    /// The labels of a token sequence (the task's definition; [`IGNORE`] where not scored).
    fn label(&self, tokens: &[u32]) -> Vec<u32>;
    /// One draw from the proposal distribution (not balanced), labeled.
    fn draw(&self, rng: &mut SplitMix64) -> Example;
    /// Number of balance bins (1: no balancing).
    fn bins(&self) -> usize {
        1
    }
    /// The balance bin of an example, in `0..bins()`.
    fn bin_of(&self, _example: &Example) -> usize {
        0
    }
    /// One example of balance bin `bin`, by rejection sampling from [`Task::draw`].
    fn example(&self, bin: usize, rng: &mut SplitMix64) -> Result<Example> {
        sample(self, bin, rng)
    }
}

/// The bin of a positive fraction among 4 bins of 25% (`[0,.25) [.25,.5) [.5,.75) [.75,1]`).
pub fn quarter_bin(example: &Example) -> usize {
    ((example.positive_fraction() * 4.0).floor() as usize).min(3)
}

/// Draws from `task` until an example falls in `bin` ([`MAX_TRIES`] at most, then an error).
pub fn sample<T: Task + ?Sized>(task: &T, bin: usize, rng: &mut SplitMix64) -> Result<Example> {
    if bin >= task.bins() {
        return Err(bad(
            "bin",
            bin,
            format!("{} has {} balance bin(s)", task.name(), task.bins()),
        ));
    }
    for _ in 0..MAX_TRIES {
        let ex = task.draw(rng);
        if task.bin_of(&ex) == bin {
            return Ok(ex);
        }
    }
    Err(bad(
        "bin",
        bin,
        format!(
            "{}: no example in balance bin {bin} of {} after {MAX_TRIES} draws; \
             these parameters cannot produce it (change the sizes)",
            task.name(),
            task.bins()
        ),
    ))
}

/// The permutation augmentation: the positions shuffled, each label moved with its token.
pub fn augment(example: &Example, rng: &mut SplitMix64) -> Example {
    let mut order: Vec<usize> = (0..example.len()).collect();
    rng.shuffle(&mut order);
    Example {
        tokens: order.iter().map(|&i| example.tokens[i]).collect(),
        labels: order.iter().map(|&i| example.labels[i]).collect(),
    }
}

/// Which split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training examples.
    Train,
    /// Model selection / curves.
    Validation,
    /// Final numbers.
    Test,
}

/// How many examples each split gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSizes {
    /// Training examples.
    pub train: usize,
    /// Validation examples.
    pub validation: usize,
    /// Test examples.
    pub test: usize,
}

/// Three splits, disjoint by base sequence ([`Example::canonical`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub validation: Vec<Example>,
    /// Test examples.
    pub test: Vec<Example>,
}

impl Splits {
    /// The examples of one split.
    pub fn get(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// Generates the three splits of `task` from `seed` (the same seed gives the same splits).
///
/// Test is drawn first, then validation, then train, each from its own stream of `seed`; an
/// example whose base sequence was already drawn (in any split) is redrawn, so the splits are
/// disjoint by base sequence and hold no duplicates. Each split is balanced over the task's bins
/// (example `i` of a split is drawn for bin `i % bins`) and then shuffled.
pub fn generate_splits<T: Task + ?Sized>(task: &T, seed: u64, sizes: SplitSizes) -> Result<Splits> {
    let mut seen: HashSet<Vec<u32>> = HashSet::new();
    let mut one = |stream: u64, n: usize| -> Result<Vec<Example>> {
        let mut rng = SplitMix64::derived(seed, stream);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let bin = i % task.bins();
            let mut tries = 0;
            loop {
                let ex = task.example(bin, &mut rng)?;
                if seen.insert(ex.canonical()) {
                    out.push(ex);
                    break;
                }
                tries += 1;
                if tries >= MAX_TRIES {
                    return Err(bad(
                        "examples",
                        sizes.train + sizes.validation + sizes.test,
                        format!(
                            "{}: only {} distinct base sequences found; ask for fewer examples",
                            task.name(),
                            seen.len()
                        ),
                    ));
                }
            }
        }
        rng.shuffle(&mut out);
        Ok(out)
    };
    let test = one(3, sizes.test)?;
    let validation = one(2, sizes.validation)?;
    let train = one(1, sizes.train)?;
    Ok(Splits {
        train,
        validation,
        test,
    })
}

/// Fresh training examples without end (an alternative to a fixed `train` split): balanced
/// round-robin over the bins, seeded, and never one whose base sequence is in `held_out`
/// (pass the validation and test splits).
pub struct TrainStream<'a, T: Task + ?Sized> {
    task: &'a T,
    rng: SplitMix64,
    held_out: HashSet<Vec<u32>>,
    drawn: usize,
}

impl<'a, T: Task + ?Sized> TrainStream<'a, T> {
    /// A stream of `task` from `seed`, excluding the base sequences of `held_out`.
    pub fn new(task: &'a T, seed: u64, held_out: &[&[Example]]) -> Self {
        TrainStream {
            task,
            rng: SplitMix64::derived(seed, 4),
            held_out: held_out
                .iter()
                .flat_map(|s| s.iter().map(Example::canonical))
                .collect(),
            drawn: 0,
        }
    }

    /// The next example (an error only when the task's bins cannot be filled).
    pub fn next_example(&mut self) -> Result<Example> {
        let bin = self.drawn % self.task.bins();
        for _ in 0..MAX_TRIES {
            let ex = self.task.example(bin, &mut self.rng)?;
            if !self.held_out.contains(&ex.canonical()) {
                self.drawn += 1;
                return Ok(ex);
            }
        }
        Err(bad(
            "held_out",
            self.held_out.len(),
            format!(
                "{}: every draw is a held-out base sequence; hold out fewer examples",
                self.task.name()
            ),
        ))
    }
}

/// The task `name` (one of [`NAMES`]) with its default parameters.
pub fn by_name(name: &str) -> Result<Box<dyn Task>> {
    Ok(match name {
        "match3" => Box::new(Match3::default()),
        "match2" => Box::new(Match2::default()),
        "compose" => Box::new(Compose::default()),
        "relation" => Box::new(Relation::default()),
        _ => {
            return Err(bad(
                "task",
                name,
                format!("unknown task; known: {}", NAMES.join(", ")),
            ))
        }
    })
}

/// A parameter error naming the parameter.
pub(crate) fn bad(key: &'static str, value: impl std::fmt::Display, reason: String) -> TrainError {
    TrainError::Setting {
        key,
        value: value.to_string(),
        reason,
    }
}

/// Checks a length range: non-empty and starting at `min` or more.
pub(crate) fn check_range(
    key: &'static str,
    range: &RangeInclusive<usize>,
    min: usize,
) -> Result<()> {
    let shown = format!("{}..={}", range.start(), range.end());
    if range.is_empty() {
        return Err(bad(key, shown, "empty range (start > end)".into()));
    }
    if *range.start() < min {
        return Err(bad(key, shown, format!("must start at {min} or more")));
    }
    Ok(())
}

/// Uniform in `range` (non-empty).
pub(crate) fn uniform_in(rng: &mut SplitMix64, range: &RangeInclusive<usize>) -> usize {
    range.start() + rng.below((range.end() - range.start() + 1) as u64) as usize
}

/// The match tasks' proposal: `n` uniform in `len`, a support `A` of `s` distinct values drawn
/// uniformly from `1..=m-1` with `s` uniform in `1..=m-1`, then each `x_i` uniform on `A`.
/// With `s = m - 1` this is the spec's plain uniform draw.
pub(crate) fn draw_values(rng: &mut SplitMix64, m: u32, len: &RangeInclusive<usize>) -> Vec<u32> {
    let n = uniform_in(rng, len);
    let mut values: Vec<u32> = (1..m).collect();
    let s = 1 + rng.below(values.len() as u64) as usize;
    for i in 0..s {
        let j = i + rng.below((values.len() - i) as u64) as usize;
        values.swap(i, j);
    }
    (0..n)
        .map(|_| values[rng.below(s as u64) as usize])
        .collect()
}
