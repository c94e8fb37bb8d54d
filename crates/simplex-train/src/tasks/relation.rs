//! `relation`: binary relation composition (the Strassen-attention paper's task).
//!
//! Items `{0..n-1}` (default `n = 6`). Each example draws a relation `R`: a uniformly random set
//! of `e` distinct pairs `(a, b)` (`a = b` allowed), `e` uniform in a range (default `3..=14`),
//! and `q` queries `(a, c)` (default 8), each uniform over all `n^2` pairs (repeats allowed). The
//! sequence holds, in a uniformly random order:
//!
//! * edge `(a, b)` of `R`: token `1 + a*n + b`, unlabeled ([`super::IGNORE`]);
//! * query `(a, c)`: token `1 + n*n + a*n + c`, labeled 1 iff `(a, c)` is in `R∘R`, i.e. there is
//!   a `b` with `(a, b)` in `R` and `(b, c)` in `R` (two edges `j, k` matched with query `i`:
//!   triple-wise), else 0.
//!
//! Vocabulary `1 + 2 n^2` (0 = padding), length `e + q`. Balanced like `match3`: 4 bins of 25%
//! by the fraction of positive queries, rejection sampling per bin.

use std::ops::RangeInclusive;

use super::{bad, check_range, quarter_bin, uniform_in, Example, Task, IGNORE};
use crate::rng::SplitMix64;
use crate::Result;

/// The relation-composition task.
#[derive(Debug, Clone)]
pub struct Relation {
    items: u32,
    edges: RangeInclusive<usize>,
    queries: usize,
}

impl Relation {
    /// Composition of relations on `items` items (`2..=64`), `edges` edges (within
    /// `1..=items^2`), `queries` queries (>= 1).
    pub fn new(items: u32, edges: RangeInclusive<usize>, queries: usize) -> Result<Self> {
        if !(2..=64).contains(&items) {
            return Err(bad("items", items, "must be in 2..=64".into()));
        }
        check_range("edges", &edges, 1)?;
        let all = (items * items) as usize;
        if *edges.end() > all {
            return Err(bad(
                "edges",
                format!("{}..={}", edges.start(), edges.end()),
                format!("at most items^2 = {all} distinct pairs exist"),
            ));
        }
        if queries == 0 {
            return Err(bad("queries", queries, "must be at least 1".into()));
        }
        Ok(Relation {
            items,
            edges,
            queries,
        })
    }
}

impl Default for Relation {
    /// `n = 6`, 3 to 14 edges, 8 queries (lengths 11..=22, vocabulary 73).
    fn default() -> Self {
        Relation {
            items: 6,
            edges: 3..=14,
            queries: 8,
        }
    }
}

impl Task for Relation {
    fn name(&self) -> &'static str {
        "relation"
    }
    fn vocab_size(&self) -> usize {
        1 + 2 * (self.items * self.items) as usize
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn seq_len_range(&self) -> RangeInclusive<usize> {
        self.edges.start() + self.queries..=self.edges.end() + self.queries
    }
    fn label(&self, tokens: &[u32]) -> Vec<u32> {
        let n = self.items as usize;
        let mut r = vec![false; n * n];
        for &t in tokens {
            if t >= 1 && (t as usize) <= n * n {
                r[t as usize - 1] = true;
            }
        }
        // rr[a*n + c]: some b with (a, b) and (b, c) in R
        let mut rr = vec![false; n * n];
        for a in 0..n {
            for b in (0..n).filter(|&b| r[a * n + b]) {
                for c in (0..n).filter(|&c| r[b * n + c]) {
                    rr[a * n + c] = true;
                }
            }
        }
        tokens
            .iter()
            .map(|&t| {
                let t = t as usize;
                if t > n * n && t <= 2 * n * n {
                    rr[t - 1 - n * n] as u32
                } else {
                    IGNORE
                }
            })
            .collect()
    }
    fn draw(&self, rng: &mut SplitMix64) -> Example {
        let n = self.items;
        let mut pairs: Vec<u32> = (0..n * n).collect();
        let e = uniform_in(rng, &self.edges);
        for i in 0..e {
            let j = i + rng.below((pairs.len() - i) as u64) as usize;
            pairs.swap(i, j);
        }
        let mut tokens: Vec<u32> = pairs[..e].iter().map(|p| 1 + p).collect();
        for _ in 0..self.queries {
            tokens.push(1 + n * n + rng.below((n * n) as u64) as u32);
        }
        rng.shuffle(&mut tokens);
        let labels = self.label(&tokens);
        Example { tokens, labels }
    }
    fn bins(&self) -> usize {
        4
    }
    fn bin_of(&self, example: &Example) -> usize {
        quarter_bin(example)
    }
}
