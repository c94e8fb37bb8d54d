//! The dot-product rows of `simplex bench attn`: shapes, the FLOP convention, timing.
//!
//! FLOP convention (FlashAttention's): a forward is `2 * (D + Dv) * pairs * Hq * B` FLOPs
//! (`4 * pairs * D * Hq * B` for D = Dv), two matrix products per (query, key) pair, with the
//! pairs under the causal mask or window counted exactly; backward = 2.5x forward, so
//! forward+backward = 3.5x. Timings are wall-clock medians of whole op calls through candle,
//! after one warm-up call (`crate::bench::time_it`), and the backward starts from a given
//! output gradient (`crate::bench::backward_from`), as for the 2-simplicial rows.

use candle_core::{DType, Device, Tensor, Var};

use super::{dot_attn, dot_attn_slow, DotAttnCall, DotSpec};
use crate::bench::{backward_from, time_if, time_it, Timing};
use crate::AttnError;

/// Which implementation a row times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotImpl {
    /// The fused op [`super::dot_attn`] (the CUDA kernels on a GPU: for bf16 D = Dv in
    /// {64, 128} the wgmma backward, and the wgmma forward at D = 128).
    Fused,
    /// The slow twin [`dot_attn_slow`] (materialized `[B, Hq, Nq, Nk]` scores).
    Slow,
}

/// One dot-product benchmark configuration (self-attention: Nq = Nk = n).
#[derive(Debug, Clone)]
pub struct DotBenchShape {
    /// Short label for the report.
    pub name: String,
    /// Batch.
    pub b: usize,
    /// Sequence length.
    pub n: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head dim (q, k, v).
    pub d: usize,
    /// Causality, window, scale.
    pub spec: DotSpec,
    /// Input dtype.
    pub dtype: DType,
    /// The implementation timed.
    pub imp: DotImpl,
}

impl DotBenchShape {
    /// The CUDA kernels [`crate::kernels::dispatch::dot`] picks for this row (aligned inputs,
    /// as the benchmark's are) on a device with `limits`: `fwd <symbol> bwd <dq>+<dk/dv>`.
    pub fn kernels(&self, limits: &crate::kernels::DeviceLimits) -> Result<String, AttnError> {
        use crate::kernels::dispatch::dot;
        let (q, kv) = (
            [self.b, self.n, self.hq, self.d],
            [self.b, self.n, self.hkv, self.d],
        );
        let dims = self.spec.dims(&q, &kv, &kv)?;
        let k = self.spec.kernels;
        if self.imp == DotImpl::Slow {
            return Ok("candle ops (the slow twin)".into());
        }
        let fwd = dot::forward(&dims, self.dtype, true, &k, limits)?;
        let bwd = dot::backward(&dims, self.dtype, true, &k, limits)?;
        let bwd: Vec<&str> = bwd.launches().iter().map(|l| l.symbol()).collect();
        Ok(format!("fwd {} bwd {}", fwd.symbol(), bwd.join("+")))
    }

    /// Forward FLOPs under the convention of the module doc.
    pub fn forward_flops(&self) -> f64 {
        let dims = self
            .spec
            .dims(
                &[self.b, self.n, self.hq, self.d],
                &[self.b, self.n, self.hkv, self.d],
                &[self.b, self.n, self.hkv, self.d],
            )
            .expect("benchmark shapes are valid");
        let pairs = self.spec.keys(&dims).pairs() as f64;
        4.0 * self.d as f64 * pairs * (self.hq * self.b) as f64
    }

    /// One line describing the configuration.
    pub fn describe(&self) -> String {
        format!(
            "dot b={} n={} hq={} hkv={} d={} window={} {} {:?} {}",
            self.b,
            self.n,
            self.hq,
            self.hkv,
            self.d,
            self.spec
                .window
                .map_or("all".to_string(), |w| w.to_string()),
            if self.spec.causal {
                "causal"
            } else {
                "bidirectional"
            },
            self.dtype,
            match self.imp {
                DotImpl::Fused => "fused",
                DotImpl::Slow => "slow twin",
            }
        )
    }
}

fn shape(
    name: &str,
    (b, n, hq, hkv, d): (usize, usize, usize, usize, usize),
    spec: DotSpec,
    imp: DotImpl,
) -> DotBenchShape {
    DotBenchShape {
        name: name.to_string(),
        b,
        n,
        hq,
        hkv,
        d,
        spec,
        dtype: DType::BF16,
        imp,
    }
}

/// The CUDA rows: the LM layer of issue 5 (B 32, N 1024, 8 heads, D 64, causal) through the
/// fused kernels and through the slow twin the model used before, and a D = 128 GQA shape.
pub fn cuda_shapes() -> Vec<DotBenchShape> {
    let lm = (32, 1024, 8, 8, 64);
    let gqa = (4, 4096, 32, 8, 128);
    let c = DotSpec::causal();
    vec![
        shape("dot-lm-layer", lm, c, DotImpl::Fused),
        shape("dot-lm-layer-slow", lm, c, DotImpl::Slow),
        shape("dot-d128-gqa4", gqa, c, DotImpl::Fused),
    ]
}

/// Timings of one row: median seconds of the forward and of forward+backward (NaN when not
/// measured), and the number of timed forward calls.
#[derive(Debug, Clone)]
pub struct DotBenchResult {
    /// The configuration.
    pub shape: DotBenchShape,
    /// Median forward time, seconds.
    pub forward_s: f64,
    /// Median forward+backward time, seconds (NaN when not measured).
    pub forward_backward_s: f64,
    /// Median forward+backward time outside autograd, seconds: [`DotAttnCall`]'s forward and
    /// backward, the path a layer with a written-out backward takes (no gradient accumulation by
    /// candle). NaN when not measured and for the composed (slow) rows.
    pub forward_backward_direct_s: f64,
    /// Timed repetitions of the forward.
    pub reps: usize,
}

impl DotBenchResult {
    /// Forward rate in FLOP/s.
    pub fn forward_rate(&self) -> f64 {
        self.shape.forward_flops() / self.forward_s
    }
    /// Forward+backward rate in FLOP/s (3.5x forward FLOPs).
    pub fn forward_backward_rate(&self) -> f64 {
        crate::bench::FORWARD_BACKWARD_FLOPS * self.shape.forward_flops() / self.forward_backward_s
    }
}

/// Runs one row on `device`: forward alone, then (unless `forward_only`) forward+backward of
/// `sum(o * dout)` through autograd (the elementwise product and the sum included).
pub fn run_shape(
    s: &DotBenchShape,
    device: &Device,
    timing: &Timing,
    forward_only: bool,
) -> Result<DotBenchResult, AttnError> {
    let rand = |h: usize| -> Result<Var, AttnError> {
        let t = Tensor::randn(0f32, 1.0, (s.b, s.n, h, s.d), device)?.to_dtype(s.dtype)?;
        Ok(Var::from_tensor(&t)?)
    };
    let (q, k, v) = (rand(s.hq)?, rand(s.hkv)?, rand(s.hkv)?);
    let dout = Tensor::randn(0f32, 1.0, (s.b, s.n, s.hq, s.d), device)?.to_dtype(s.dtype)?;
    let attend = || -> Result<Tensor, AttnError> {
        Ok(match s.imp {
            DotImpl::Fused => dot_attn(&q, &k, &v, &s.spec)?.o,
            DotImpl::Slow => dot_attn_slow(&q, &k, &v, &s.spec)?.0,
        })
    };
    let (forward_s, reps) = time_it(timing, device, || attend().map(|_| ()))?;
    let forward_backward_s = time_if(!forward_only, timing, device, || {
        backward_from(&attend()?, &dout)?;
        Ok(())
    })?;
    let outside = !forward_only && s.imp == DotImpl::Fused;
    let forward_backward_direct_s = time_if(outside, timing, device, || {
        DotAttnCall::forward(&q, &k, &v, &s.spec)?.backward(&dout)?;
        Ok(())
    })?;
    Ok(DotBenchResult {
        shape: s.clone(),
        forward_s,
        forward_backward_s,
        forward_backward_direct_s,
        reps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_flops_count_the_pairs_under_the_mask() {
        let s = shape("t", (2, 4, 3, 1, 8), DotSpec::causal(), DotImpl::Fused);
        // pairs 1 + 2 + 3 + 4 = 10 per head
        assert_eq!(s.forward_flops(), 4.0 * 8.0 * 10.0 * 3.0 * 2.0);
        let lm = &cuda_shapes()[0];
        assert_eq!(
            lm.forward_flops(),
            4.0 * 64.0 * (1024.0 * 1025.0 / 2.0) * 8.0 * 32.0
        );
    }
}
