//! `compose`: function composition, a two-hop (triple-wise) lookup.
//!
//! Domain `{0..N-1}` (default `N = 6`). Each example draws two functions `f, g: [N] -> [N]`
//! uniformly (every value independent) and `q` query arguments (default `q` uniform in `6..=10`).
//! The sequence holds, in a uniformly random order, one token per table entry and one per query:
//!
//! * query `x`: token `1 + x`, labeled `f(g(x))` (a class in `0..N`);
//! * entry `g(x) = y`: token `1 + N + x*N + y`, unlabeled ([`super::IGNORE`]);
//! * entry `f(x) = y`: token `1 + N + N*N + x*N + y`, unlabeled.
//!
//! Vocabulary `1 + N + 2 N^2` (0 = padding), length `2N + q`. The label of query `i` needs the
//! `g` entry `j` whose argument is `x_i` and the `f` entry `k` whose argument is `g`'s value in
//! `j`: a condition on the triple `(i, j, k)`. Not balanced (labels are near uniform over `N`).

use std::ops::RangeInclusive;

use super::{bad, check_range, uniform_in, Example, Task, IGNORE};
use crate::rng::SplitMix64;
use crate::Result;

/// The function-composition task.
#[derive(Debug, Clone)]
pub struct Compose {
    domain: u32,
    queries: RangeInclusive<usize>,
}

impl Compose {
    /// Composition over `{0..domain-1}` (`2..=64`) with `queries` queries per example.
    pub fn new(domain: u32, queries: RangeInclusive<usize>) -> Result<Self> {
        if !(2..=64).contains(&domain) {
            return Err(bad("domain", domain, "must be in 2..=64".into()));
        }
        check_range("queries", &queries, 1)?;
        Ok(Compose { domain, queries })
    }

    fn query_token(&self, x: u32) -> u32 {
        1 + x
    }
    fn g_token(&self, x: u32, y: u32) -> u32 {
        1 + self.domain + x * self.domain + y
    }
    fn f_token(&self, x: u32, y: u32) -> u32 {
        1 + self.domain + self.domain * self.domain + x * self.domain + y
    }
}

impl Default for Compose {
    /// `N = 6`, 6 to 10 queries (lengths 18..=22, vocabulary 79).
    fn default() -> Self {
        Compose {
            domain: 6,
            queries: 6..=10,
        }
    }
}

impl Task for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }
    fn vocab_size(&self) -> usize {
        let n = self.domain as usize;
        1 + n + 2 * n * n
    }
    fn num_classes(&self) -> usize {
        self.domain as usize
    }
    fn seq_len_range(&self) -> RangeInclusive<usize> {
        let t = 2 * self.domain as usize;
        t + self.queries.start()..=t + self.queries.end()
    }
    fn label(&self, tokens: &[u32]) -> Vec<u32> {
        let n = self.domain;
        let (mut f, mut g) = (vec![None; n as usize], vec![None; n as usize]);
        for &t in tokens {
            if t > n && t <= n + n * n {
                let e = t - 1 - n;
                g[(e / n) as usize] = Some(e % n);
            } else if t > n + n * n {
                let e = t - 1 - n - n * n;
                f[(e / n) as usize] = Some(e % n);
            }
        }
        tokens
            .iter()
            .map(|&t| {
                if (1..=n).contains(&t) {
                    g[(t - 1) as usize]
                        .and_then(|y| f[y as usize])
                        .unwrap_or(IGNORE)
                } else {
                    IGNORE
                }
            })
            .collect()
    }
    fn draw(&self, rng: &mut SplitMix64) -> Example {
        let n = self.domain;
        let mut tokens = Vec::new();
        for x in 0..n {
            tokens.push(self.g_token(x, rng.below(n as u64) as u32));
        }
        for x in 0..n {
            tokens.push(self.f_token(x, rng.below(n as u64) as u32));
        }
        for _ in 0..uniform_in(rng, &self.queries) {
            tokens.push(self.query_token(rng.below(n as u64) as u32));
        }
        rng.shuffle(&mut tokens);
        let labels = self.label(&tokens);
        Example { tokens, labels }
    }
}
