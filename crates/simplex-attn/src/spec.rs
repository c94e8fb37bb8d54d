//! What a 2-simplicial attention call computes, validated once.
//!
//! Shapes (named once for the whole crate):
//!
//! ```text
//! q          [B, N, Hq,  D]      B batch, N sequence, Hq query heads, D head dim of q/k
//! k1, k2     [B, N, Hkv, D]      Hkv key/value heads, Hq = G * Hkv (G: the GQA ratio)
//! v1, v2     [B, N, Hkv, Dv]     Dv value head dim (Dv = D in the paper)
//! o          [B, N, Hq,  Dv]
//! lse        [B, N, Hq]          natural-log log-sum-exp of the scaled logits, f32
//! ```
//!
//! Query head `h` reads key/value head `h / G` (consecutive query heads share a K/V head).
//! Query `i` attends to every pair `(j, k)` with `j` in its first window and `k` in its second:
//! causal `i - w1 < j <= i`, `i - w2 < k <= i`; bidirectional `|i - j| < w1`, `|i - k| < w2`.
//! A window of `None` is unbounded (the whole causal prefix, or the whole sequence).

use crate::error::AttnError;
use crate::kernels::Kernels;

/// How the logit of a (query, key1, key2) triple is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// `A[i,j,k] = scale * sum_l q[i,l] k1[j,l] k2[k,l]`.
    #[default]
    Trilinear,
    /// `A[i,j,k] = scale * sum_c det[q_i^(c); k1_j^(c); k2_k^(c)]` over the D/3 chunks of three
    /// coordinates: invariant under a common rotation of every chunk. D must be a multiple of 3.
    Determinant,
}

impl std::str::FromStr for Variant {
    type Err = AttnError;
    fn from_str(s: &str) -> Result<Self, AttnError> {
        match s {
            "trilinear" => Ok(Variant::Trilinear),
            "determinant" => Ok(Variant::Determinant),
            other => Err(AttnError::Config(format!(
                "variant `{other}`: expected `trilinear` or `determinant`"
            ))),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Trilinear => "trilinear",
            Variant::Determinant => "determinant",
        })
    }
}

/// The options of one 2-simplicial attention call (everything but the tensors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnSpec {
    /// Causal (keys at or before the query) or bidirectional.
    pub causal: bool,
    /// First window (keys k1, values v1); `None` is unbounded.
    pub w1: Option<usize>,
    /// Second window (keys k2, values v2); `None` is unbounded.
    pub w2: Option<usize>,
    /// Trilinear or determinant logits.
    pub variant: Variant,
    /// Softmax scale; `None` means `1/sqrt(D)` (D the head dim of q as given).
    pub scale: Option<f64>,
    /// Constant added to every element of k2 before the logits (Meta's reference code: 1/D).
    pub k2_bias: f64,
    /// Constant added to every element of v2 before the values (Meta's reference code: 1).
    pub v2_bias: f64,
    /// Which compiled CUDA kernels run the call (default: chosen per shape; CPU calls ignore
    /// it).
    pub kernels: Kernels,
}

impl Default for AttnSpec {
    fn default() -> Self {
        AttnSpec::causal(512, 32)
    }
}

impl AttnSpec {
    /// Causal sliding windows `(w1, w2)`, trilinear logits, default scale, no biases.
    pub fn causal(w1: usize, w2: usize) -> Self {
        AttnSpec {
            causal: true,
            w1: Some(w1),
            w2: Some(w2),
            variant: Variant::Trilinear,
            scale: None,
            k2_bias: 0.0,
            v2_bias: 0.0,
            kernels: Kernels::default(),
        }
    }

    /// Bidirectional over all pairs of the sequence (no windows).
    pub fn bidirectional() -> Self {
        AttnSpec {
            causal: false,
            w1: None,
            w2: None,
            ..AttnSpec::causal(1, 1)
        }
    }

    /// Replaces the windows (`None`: unbounded).
    pub fn with_windows(mut self, w1: Option<usize>, w2: Option<usize>) -> Self {
        self.w1 = w1;
        self.w2 = w2;
        self
    }

    /// Replaces the logit variant.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// Sets the softmax scale (default `1/sqrt(D)`).
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets the constant biases added to k2 and v2.
    pub fn with_biases(mut self, k2_bias: f64, v2_bias: f64) -> Self {
        self.k2_bias = k2_bias;
        self.v2_bias = v2_bias;
        self
    }

    /// Sets the kernel choice of CUDA calls (default [`Kernels::default`]: chosen per shape).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// The scale used for head dim `d`.
    pub fn scale_for(&self, d: usize) -> f64 {
        scale_for(self.scale, d)
    }

    /// Checks the options alone (windows, scale), independent of shapes.
    pub fn validate(&self) -> Result<(), AttnError> {
        for (name, w) in [("w1", self.w1), ("w2", self.w2)] {
            if w == Some(0) {
                return Err(AttnError::Config(format!(
                    "{name} = 0: a window must be at least 1"
                )));
            }
        }
        check_scale(self.scale)?;
        for (name, b) in [("k2_bias", self.k2_bias), ("v2_bias", self.v2_bias)] {
            if !b.is_finite() {
                return Err(AttnError::Config(format!("{name} = {b}: must be finite")));
            }
        }
        Ok(())
    }

    /// Validates the options against the five input shapes and returns the dimensions.
    pub fn dims(
        &self,
        q: &[usize],
        k1: &[usize],
        k2: &[usize],
        v1: &[usize],
        v2: &[usize],
    ) -> Result<Dims, AttnError> {
        self.validate()?;
        for (name, s) in [("q", q), ("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2)] {
            if s.len() != 4 {
                return Err(AttnError::Shape(format!(
                    "{name} {s:?}: expected 4 dims [batch, seq, heads, head_dim]"
                )));
            }
            if s.contains(&0) {
                return Err(AttnError::Shape(format!(
                    "{name} {s:?}: empty tensor (every dim must be at least 1)"
                )));
            }
        }
        let (b, n, hq, d) = (q[0], q[1], q[2], q[3]);
        for (name, s) in [("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2)] {
            if s[0] != b {
                return Err(AttnError::Shape(format!(
                    "{name} {s:?} vs q {q:?}: batch sizes differ"
                )));
            }
            if s[1] != n {
                return Err(AttnError::Shape(format!(
                    "{name} {s:?} vs q {q:?}: sequence lengths differ"
                )));
            }
        }
        if k1 != k2 {
            return Err(AttnError::Shape(format!(
                "k2 {k2:?} vs k1 {k1:?}: k1 and k2 must have the same shape"
            )));
        }
        if v1 != v2 {
            return Err(AttnError::Shape(format!(
                "v2 {v2:?} vs v1 {v1:?}: v1 and v2 must have the same shape"
            )));
        }
        if k1[3] != d {
            return Err(AttnError::Shape(format!(
                "k1 {k1:?} vs q {q:?}: head dims of q and k differ"
            )));
        }
        let hkv = k1[2];
        if v1[2] != hkv {
            return Err(AttnError::Shape(format!(
                "v1 {v1:?} vs k1 {k1:?}: numbers of key/value heads differ"
            )));
        }
        if hq % hkv != 0 {
            return Err(AttnError::Shape(format!(
                "heads_q = {hq} is not a multiple of heads_kv = {hkv} (q {q:?}, k1 {k1:?})"
            )));
        }
        if self.variant == Variant::Determinant && d % 3 != 0 {
            return Err(AttnError::Shape(format!(
                "determinant logits need a head dim divisible by 3, q {q:?} has {d}"
            )));
        }
        Ok(Dims {
            batch: b,
            seq: n,
            heads_q: hq,
            heads_kv: hkv,
            d,
            dv: v1[3],
        })
    }

    /// The per-query key ranges of this spec for a sequence of length `n`.
    pub fn windows(&self, n: usize) -> Windows {
        Windows {
            n,
            causal: self.causal,
            w1: self.w1.unwrap_or(n).clamp(1, n.max(1)),
            w2: self.w2.unwrap_or(n).clamp(1, n.max(1)),
        }
    }
}

/// Validated dimensions of one call (see the module doc for the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// B
    pub batch: usize,
    /// N
    pub seq: usize,
    /// Hq
    pub heads_q: usize,
    /// Hkv
    pub heads_kv: usize,
    /// D, head dim of q, k1, k2
    pub d: usize,
    /// Dv, head dim of v1, v2 and o
    pub dv: usize,
}

impl Dims {
    /// G = Hq / Hkv, the number of query heads that share one key/value head.
    pub fn group(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// Elements of q (`B*N*Hq*D`), of k1 or k2 (`B*N*Hkv*D`), of v1 or v2 (`B*N*Hkv*Dv`) and
    /// of o (`B*N*Hq*Dv`).
    pub fn lens(&self) -> [usize; 4] {
        let (q, kv) = (
            self.batch * self.seq * self.heads_q,
            self.batch * self.seq * self.heads_kv,
        );
        [q * self.d, kv * self.d, kv * self.dv, q * self.dv]
    }

    /// The same dims with another q/k head dim (the determinant lift doubles it).
    pub fn with_d(self, d: usize) -> Dims {
        Dims { d, ..self }
    }
}

impl AttnSpec {
    /// The call of this spec as the kernels see it: `kernel_dims` (D lifted and padded where
    /// the op does so), the softmax scale of the layer's head dim `d`.
    pub(crate) fn call(&self, kernel_dims: Dims, d: usize) -> Call {
        Call {
            dims: kernel_dims,
            win: self.windows(kernel_dims.seq),
            scale: self.scale_for(d),
            kernels: self.kernels,
        }
    }
}

/// One call as the kernels see it: what the op hands its CUDA launch code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Call {
    /// Dimensions (D doubled by the determinant lift).
    pub(crate) dims: Dims,
    /// Key ranges per query.
    pub(crate) win: Windows,
    /// Softmax scale.
    pub(crate) scale: f64,
    /// The kernel choice.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) kernels: Kernels,
}

/// Key ranges per query: `j` in `range1(i)`, `k` in `range2(i)` (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Sequence length.
    pub n: usize,
    /// Causal or bidirectional.
    pub causal: bool,
    /// First window, clamped to `[1, n]`.
    pub w1: usize,
    /// Second window, clamped to `[1, n]`.
    pub w2: usize,
}

impl Windows {
    fn range(&self, i: usize, w: usize) -> std::ops::Range<usize> {
        if self.causal {
            (i + 1).saturating_sub(w)..i + 1
        } else {
            i.saturating_sub(w - 1)..(i + w).min(self.n)
        }
    }

    /// Positions `j` of the first window of query `i`.
    pub fn range1(&self, i: usize) -> std::ops::Range<usize> {
        self.range(i, self.w1)
    }

    /// Positions `k` of the second window of query `i`.
    pub fn range2(&self, i: usize) -> std::ops::Range<usize> {
        self.range(i, self.w2)
    }

    /// The same windows with the two roles exchanged.
    pub fn swapped(self) -> Windows {
        Windows {
            w1: self.w2,
            w2: self.w1,
            ..self
        }
    }

    /// Number of (j, k) pairs summed over all queries of one head: the exact count the
    /// FLOP convention multiplies (causal ramps included).
    pub fn pairs(&self) -> u64 {
        (0..self.n)
            .map(|i| (self.range1(i).len() * self.range2(i).len()) as u64)
            .sum()
    }
}

/// The softmax scale: `scale` when set, else `1/sqrt(d)` (both attention kinds' default).
pub(crate) fn scale_for(scale: Option<f64>, d: usize) -> f64 {
    scale.unwrap_or(1.0 / (d as f64).sqrt())
}

/// A set softmax scale must be finite and non-zero.
pub(crate) fn check_scale(scale: Option<f64>) -> Result<(), AttnError> {
    match scale {
        Some(s) if !s.is_finite() || s == 0.0 => Err(AttnError::Config(format!(
            "scale = {s}: the softmax scale must be finite and non-zero"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_windows_clip_at_the_start() {
        let w = AttnSpec::causal(3, 1).windows(10);
        assert_eq!(w.range1(0), 0..1);
        assert_eq!(w.range1(5), 3..6);
        assert_eq!(w.range2(5), 5..6);
    }

    #[test]
    fn windows_longer_than_the_sequence_are_the_prefix() {
        let w = AttnSpec::causal(100, 100).windows(4);
        assert_eq!(w.range1(3), 0..4);
        assert_eq!(w.pairs(), 1 + 4 + 9 + 16);
    }

    #[test]
    fn bidirectional_windows_are_symmetric() {
        let w = AttnSpec::bidirectional()
            .with_windows(Some(2), None)
            .windows(5);
        assert_eq!(w.range1(0), 0..2);
        assert_eq!(w.range1(2), 1..4);
        assert_eq!(w.range1(4), 3..5);
        assert_eq!(w.range2(2), 0..5);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = AttnSpec::causal(0, 3).validate().unwrap_err().to_string();
        assert!(e.contains("w1 = 0"), "{e}");
        let s = [1, 4, 6, 8];
        let kv = [1, 4, 4, 8];
        let e = AttnSpec::causal(2, 2)
            .dims(&s, &kv, &kv, &kv, &kv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let e = AttnSpec::causal(2, 2)
            .with_variant(Variant::Determinant)
            .dims(
                &s,
                &[1, 4, 2, 8],
                &[1, 4, 2, 8],
                &[1, 4, 2, 8],
                &[1, 4, 2, 8],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("divisible by 3"), "{e}");
        let e = AttnSpec::causal(2, 2)
            .dims(
                &s,
                &[1, 5, 2, 8],
                &[1, 4, 2, 8],
                &[1, 4, 2, 8],
                &[1, 4, 2, 8],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("sequence lengths differ"), "{e}");
        let e = AttnSpec::causal(2, 2)
            .dims(&[1, 0, 6, 8], &kv, &kv, &kv, &kv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
