//! Scores of predictions against labels: per-token accuracy and sequence exact match, over the
//! labeled positions only ([`super::IGNORE`] positions are skipped whatever is predicted).

use super::IGNORE;

/// Correct and labeled positions of one sequence.
///
/// # Panics
/// If `predictions` and `labels` differ in length.
fn count(predictions: &[u32], labels: &[u32]) -> (usize, usize) {
    assert_eq!(
        predictions.len(),
        labels.len(),
        "one prediction per label: {} predictions for {} labels",
        predictions.len(),
        labels.len()
    );
    let mut correct = 0;
    let mut labeled = 0;
    for (&p, &l) in predictions.iter().zip(labels) {
        if l != IGNORE {
            labeled += 1;
            correct += (p == l) as usize;
        }
    }
    (correct, labeled)
}

/// Fraction of labeled positions predicted right; `None` when no position is labeled.
///
/// # Panics
/// If `predictions` and `labels` differ in length.
pub fn token_accuracy(predictions: &[u32], labels: &[u32]) -> Option<f64> {
    let (c, l) = count(predictions, labels);
    (l > 0).then(|| c as f64 / l as f64)
}

/// Whether every labeled position is predicted right (true when none is labeled).
///
/// # Panics
/// If `predictions` and `labels` differ in length.
pub fn exact_match(predictions: &[u32], labels: &[u32]) -> bool {
    let (c, l) = count(predictions, labels);
    c == l
}

/// Running totals over many sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    /// Labeled positions predicted right.
    pub correct_tokens: usize,
    /// Labeled positions.
    pub labeled_tokens: usize,
    /// Sequences with every labeled position right.
    pub exact_sequences: usize,
    /// Sequences scored.
    pub sequences: usize,
}

impl Score {
    /// Adds one sequence.
    ///
    /// # Panics
    /// If `predictions` and `labels` differ in length.
    pub fn add(&mut self, predictions: &[u32], labels: &[u32]) {
        let (c, l) = count(predictions, labels);
        self.correct_tokens += c;
        self.labeled_tokens += l;
        self.exact_sequences += (c == l) as usize;
        self.sequences += 1;
    }

    /// Per-token accuracy over all labeled positions (0 when none).
    pub fn token_accuracy(&self) -> f64 {
        if self.labeled_tokens == 0 {
            0.0
        } else {
            self.correct_tokens as f64 / self.labeled_tokens as f64
        }
    }

    /// Fraction of sequences matched exactly (0 when none).
    pub fn exact_match(&self) -> f64 {
        if self.sequences == 0 {
            0.0
        } else {
            self.exact_sequences as f64 / self.sequences as f64
        }
    }
}
