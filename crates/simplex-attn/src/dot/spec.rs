//! What a dot-product attention call computes, validated once.
//!
//! Shapes (named once for the whole `dot` module):
//!
//! ```text
//! q      [B, Nq, Hq,  D]      B batch, Nq queries, Hq query heads, D head dim of q/k
//! k      [B, Nk, Hkv, D]      Nk keys (Nk >= Nq), Hkv key/value heads, Hq = G * Hkv
//! v      [B, Nk, Hkv, Dv]     Dv value head dim
//! o      [B, Nq, Hq,  Dv]
//! lse    [B, Nq, Hq]          natural-log log-sum-exp of the scaled logits
//! ```
//!
//! Query `i` sits at position `p = i + Nk - Nq` (the queries are the last `Nq` positions, so a
//! KV-cache step passes the cached keys in front of the new ones; `Nk = Nq` is the usual case).
//! Query head `h` reads key/value head `h / G`. Causal: keys `p - w < j <= p`; bidirectional:
//! `|p - j| < w`. A window of `None` is unbounded.

use crate::error::AttnError;
use crate::kernels::Kernels;

/// The options of one dot-product attention call (everything but the tensors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DotSpec {
    /// Causal (keys at or before the query's position) or bidirectional.
    pub causal: bool,
    /// Sliding window `w`; `None` is unbounded.
    pub window: Option<usize>,
    /// Softmax scale; `None` means `1/sqrt(D)`.
    pub scale: Option<f64>,
    /// Which compiled CUDA kernels run the call (default: chosen per shape; CPU calls ignore
    /// it).
    pub kernels: Kernels,
}

impl Default for DotSpec {
    fn default() -> Self {
        DotSpec::causal()
    }
}

impl DotSpec {
    /// Causal attention over the whole prefix.
    pub fn causal() -> Self {
        DotSpec {
            causal: true,
            window: None,
            scale: None,
            kernels: Kernels::default(),
        }
    }

    /// Causal attention over a sliding window of `w` positions (the query's own included).
    pub fn sliding(w: usize) -> Self {
        DotSpec {
            window: Some(w),
            ..DotSpec::causal()
        }
    }

    /// Bidirectional attention over the whole sequence.
    pub fn bidirectional() -> Self {
        DotSpec {
            causal: false,
            ..DotSpec::causal()
        }
    }

    /// Replaces the window (`None`: unbounded).
    pub fn with_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// Sets the softmax scale (default `1/sqrt(D)`).
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets the kernel choice of CUDA calls (default [`Kernels::default`]: chosen per shape).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// The scale used for head dim `d`.
    pub fn scale_for(&self, d: usize) -> f64 {
        crate::spec::scale_for(self.scale, d)
    }

    /// Checks the options alone (window, scale), independent of shapes.
    pub fn validate(&self) -> Result<(), AttnError> {
        if self.window == Some(0) {
            return Err(AttnError::Config(
                "window = 0: a window must be at least 1".into(),
            ));
        }
        crate::spec::check_scale(self.scale)?;
        Ok(())
    }

    /// Validates the options against the three input shapes and returns the dimensions.
    pub fn dims(&self, q: &[usize], k: &[usize], v: &[usize]) -> Result<DotDims, AttnError> {
        self.validate()?;
        for (name, s) in [("q", q), ("k", k), ("v", v)] {
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
        if k[0] != q[0] || v[0] != q[0] {
            return Err(AttnError::Shape(format!(
                "q {q:?}, k {k:?}, v {v:?}: batch sizes differ"
            )));
        }
        if v[1] != k[1] {
            return Err(AttnError::Shape(format!(
                "v {v:?} vs k {k:?}: numbers of key positions differ"
            )));
        }
        if k[1] < q[1] {
            return Err(AttnError::Shape(format!(
                "k {k:?} vs q {q:?}: fewer keys than queries (the queries are the last positions \
                 of the key sequence)"
            )));
        }
        if k[3] != q[3] {
            return Err(AttnError::Shape(format!(
                "k {k:?} vs q {q:?}: head dims of q and k differ"
            )));
        }
        if v[2] != k[2] {
            return Err(AttnError::Shape(format!(
                "v {v:?} vs k {k:?}: numbers of key/value heads differ"
            )));
        }
        if !q[2].is_multiple_of(k[2]) {
            return Err(AttnError::Shape(format!(
                "heads_q = {} is not a multiple of heads_kv = {} (q {q:?}, k {k:?})",
                q[2], k[2]
            )));
        }
        Ok(DotDims {
            batch: q[0],
            seq_q: q[1],
            seq_k: k[1],
            heads_q: q[2],
            heads_kv: k[2],
            d: q[3],
            dv: v[3],
        })
    }

    /// The per-query key ranges of this spec for the given dims.
    pub fn keys(&self, dims: &DotDims) -> KeyRanges {
        let nk = dims.seq_k;
        KeyRanges {
            seq_q: dims.seq_q,
            seq_k: nk,
            causal: self.causal,
            w: self.window.unwrap_or(nk).clamp(1, nk.max(1)),
        }
    }
}

/// Validated dimensions of one call (names in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DotDims {
    /// B
    pub batch: usize,
    /// Nq
    pub seq_q: usize,
    /// Nk
    pub seq_k: usize,
    /// Hq
    pub heads_q: usize,
    /// Hkv
    pub heads_kv: usize,
    /// D
    pub d: usize,
    /// Dv
    pub dv: usize,
}

impl DotDims {
    /// G = Hq / Hkv.
    pub fn group(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// Elements of q (`B*Nq*Hq*D`), k (`B*Nk*Hkv*D`), v (`B*Nk*Hkv*Dv`) and o (`B*Nq*Hq*Dv`).
    pub fn lens(&self) -> [usize; 4] {
        let (q, kv) = (
            self.batch * self.seq_q * self.heads_q,
            self.batch * self.seq_k * self.heads_kv,
        );
        [q * self.d, kv * self.d, kv * self.dv, q * self.dv]
    }
}

/// One call as the kernels see it: what the op hands its CUDA launch code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DotCall {
    /// Dimensions.
    pub(crate) dims: DotDims,
    /// Key range per query.
    pub(crate) keys: KeyRanges,
    /// Softmax scale.
    pub(crate) scale: f64,
    /// The kernel choice.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) kernels: Kernels,
}

impl DotSpec {
    /// The call of this spec for validated `dims`.
    pub(crate) fn call(&self, dims: DotDims) -> DotCall {
        DotCall {
            dims,
            keys: self.keys(&dims),
            scale: self.scale_for(dims.d),
            kernels: self.kernels,
        }
    }
}

/// Key range per query: `range(i)` (half-open); both ends are non-decreasing in `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRanges {
    /// Nq
    pub seq_q: usize,
    /// Nk
    pub seq_k: usize,
    /// Causal or bidirectional.
    pub causal: bool,
    /// Window, clamped to `[1, Nk]`.
    pub w: usize,
}

impl KeyRanges {
    /// Keys `j` of query `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        let p = i + self.seq_k - self.seq_q;
        if self.causal {
            (p + 1).saturating_sub(self.w)..p + 1
        } else {
            p.saturating_sub(self.w - 1)..(p + self.w).min(self.seq_k)
        }
    }

    /// Queries whose ranges meet the keys `keys` (half-open; empty if none).
    pub fn queries_seeing(&self, keys: std::ops::Range<usize>) -> std::ops::Range<usize> {
        // first query whose range ends after keys.start, first whose range starts at/after keys.end
        let lo = first_true(self.seq_q, |i| self.range(i).end > keys.start);
        let hi = first_true(self.seq_q, |i| self.range(i).start >= keys.end);
        lo..hi.max(lo)
    }

    /// Number of (query, key) pairs of one head: the count the FLOP convention multiplies.
    pub fn pairs(&self) -> u64 {
        (0..self.seq_q).map(|i| self.range(i).len() as u64).sum()
    }
}

/// The least `i` in `0..n` with `pred(i)` (`n` if none), for `pred` monotone false-then-true.
fn first_true(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(spec: DotSpec, nq: usize, nk: usize) -> KeyRanges {
        spec.keys(
            &spec
                .dims(&[1, nq, 1, 4], &[1, nk, 1, 4], &[1, nk, 1, 4])
                .expect("valid"),
        )
    }

    #[test]
    fn causal_window_clips_at_the_start() {
        let r = ranges(DotSpec::sliding(3), 10, 10);
        assert_eq!(r.range(0), 0..1);
        assert_eq!(r.range(5), 3..6);
        assert_eq!(r.pairs(), 1 + 2 + 8 * 3);
    }

    #[test]
    fn queries_are_the_last_positions_when_keys_are_longer() {
        let r = ranges(DotSpec::causal(), 2, 7);
        assert_eq!(r.range(0), 0..6);
        assert_eq!(r.range(1), 0..7);
        let r = ranges(DotSpec::sliding(2), 1, 7);
        assert_eq!(r.range(0), 5..7);
    }

    #[test]
    fn bidirectional_window_is_symmetric() {
        let r = ranges(DotSpec::bidirectional().with_window(Some(2)), 5, 5);
        assert_eq!(r.range(0), 0..2);
        assert_eq!(r.range(2), 1..4);
        assert_eq!(r.range(4), 3..5);
    }

    #[test]
    fn queries_seeing_is_the_inverse_of_range() {
        for spec in [
            DotSpec::sliding(3),
            DotSpec::causal(),
            DotSpec::bidirectional().with_window(Some(2)),
        ] {
            let r = ranges(spec, 9, 11);
            for a in 0..11 {
                for b in a + 1..=11 {
                    let want: Vec<usize> = (0..9)
                        .filter(|&i| {
                            let k = r.range(i);
                            k.start < b && a < k.end
                        })
                        .collect();
                    let got: Vec<usize> = r.queries_seeing(a..b).collect();
                    assert_eq!(got, want, "{spec:?} keys {a}..{b}");
                }
            }
        }
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = DotSpec::sliding(0).validate().unwrap_err().to_string();
        assert!(e.contains("window = 0"), "{e}");
        let e = DotSpec::causal()
            .dims(&[1, 4, 3, 8], &[1, 4, 2, 8], &[1, 4, 2, 8])
            .unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        let e = DotSpec::causal()
            .dims(&[1, 5, 2, 8], &[1, 4, 2, 8], &[1, 4, 2, 8])
            .unwrap_err();
        assert!(e.to_string().contains("fewer keys"), "{e}");
        let e = DotSpec::causal()
            .dims(&[1, 4, 2, 8], &[1, 4, 2, 6], &[1, 4, 2, 8])
            .unwrap_err();
        assert!(e.to_string().contains("head dims"), "{e}");
        let e = DotSpec::causal()
            .dims(&[1, 4, 2, 8], &[1, 4, 2, 8], &[1, 3, 2, 8])
            .unwrap_err();
        assert!(e.to_string().contains("key positions"), "{e}");
    }
}
