//! `match2`: the pair control for [`super::Match3`], solvable by dot-product attention.
//!
//! Same tokens, lengths, proposal and balancing as `match3` (modulus `M`, default 37, `n` in
//! `30..=35`, `x_i` in `1..=M-1`, 4 bins of 25% positives). Label `y_i = 1` iff there exists a
//! position `j` (`j = i` allowed) with `(x_i + x_j) mod M == 0`, else 0.

use std::ops::RangeInclusive;

use super::match3::{check_modulus, present};
use super::{check_range, draw_values, quarter_bin, Example, Task};
use crate::rng::SplitMix64;
use crate::Result;

/// The Match2 task.
#[derive(Debug, Clone)]
pub struct Match2 {
    modulus: u32,
    len: RangeInclusive<usize>,
}

impl Match2 {
    /// Match2 with modulus `modulus` (>= 2) and lengths `len` (non-empty, from 1).
    pub fn new(modulus: u32, len: RangeInclusive<usize>) -> Result<Self> {
        check_modulus(modulus)?;
        check_range("length", &len, 1)?;
        Ok(Match2 { modulus, len })
    }

    /// The modulus `M`.
    pub fn modulus(&self) -> u32 {
        self.modulus
    }
}

impl Default for Match2 {
    /// `M = 37`, `n` in `30..=35`, as `match3`.
    fn default() -> Self {
        Match2 {
            modulus: 37,
            len: 30..=35,
        }
    }
}

impl Task for Match2 {
    fn name(&self) -> &'static str {
        "match2"
    }
    fn vocab_size(&self) -> usize {
        self.modulus as usize
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn seq_len_range(&self) -> RangeInclusive<usize> {
        self.len.clone()
    }
    fn label(&self, tokens: &[u32]) -> Vec<u32> {
        let m = self.modulus as usize;
        let p = present(tokens, self.modulus);
        tokens
            .iter()
            .map(|&x| p[(m - x as usize % m) % m] as u32)
            .collect()
    }
    fn draw(&self, rng: &mut SplitMix64) -> Example {
        let tokens = draw_values(rng, self.modulus, &self.len);
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
