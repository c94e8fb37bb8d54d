//! Benchmark harness behind `simplex bench attn`: shapes, the FLOP convention, timing.
//!
//! FLOP convention (spec section 4, Meta's count): the forward does two matrix products per
//! query head and (j, k) pair, `2 * D` FLOPs for the logits and `2 * Dv` for `P @ V2`, so a
//! forward is `2 * (D + Dv) * pairs * heads_q * batch` FLOPs = `4 n w1 w2 d` per head when
//! D = Dv and no causal ramp. Pairs are counted exactly (the ramp at the sequence start is not
//! rounded up). The determinant variant counts the lifted head dim 2D it really computes.
//! Backward = 2.5x forward (FlashAttention's convention), so forward+backward = 3.5x.
//! Timings are medians of whole op calls through candle (the concatenation of K and V and the
//! dtype conversions included), after one warm-up call, on a [`Clock`]: the host's wall clock
//! to a device synchronize after each call (the default), or on CUDA the device time between
//! events recorded around it. Forward+backward is the forward, then candle's backward from a
//! given output gradient `dout` handed to `o` directly (as torch's `o.backward(dout)`; no loss
//! reduction is timed), with candle's gradient accumulation for the op's inputs included.

mod timing;

use candle_core::DType;

pub(crate) use timing::{backward_from, time_if};
pub use timing::{
    candle_matmul_rate, cpu_gemm_rate, median, run_shape, time_it, BenchResult, Clock, Timing,
    FORWARD_BACKWARD_FLOPS,
};

use crate::{AttnError, AttnSpec, Dims, Variant};

/// One benchmark configuration.
#[derive(Debug, Clone)]
pub struct BenchShape {
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
    /// Windows, variant, direction.
    pub spec: AttnSpec,
    /// Input dtype.
    pub dtype: DType,
}

impl BenchShape {
    /// The CUDA kernels [`crate::kernels::dispatch`] picks for this shape on a device with
    /// `limits` under the shape's [`crate::Kernels`]: `fwd <symbol> bwd <q side>+<k side>`
    /// (the CUDA-core backward: `<dq>+<dk/dv>`), so that a report names what it timed.
    pub fn kernels(&self, limits: &crate::kernels::DeviceLimits) -> Result<String, AttnError> {
        use crate::kernels::dispatch::simplicial::{self, Backward};
        let q = [self.b, self.n, self.hq, self.d];
        let kv = [self.b, self.n, self.hkv, self.d];
        let mut dims = self.spec.dims(&q, &kv, &kv, &kv, &kv)?;
        if self.spec.variant == Variant::Determinant {
            dims = dims.with_d(2 * self.d);
        }
        let k = &self.spec.kernels;
        // as the op pads a call whose head dims differ for the tensor cores, and the backward
        // its values where they are narrower than the keys
        if let Some((d, dv)) = simplicial::padded_head_dims(&dims, self.dtype, k) {
            dims = Dims { d, dv, ..dims };
        }
        let win = self.spec.windows(self.n);
        let fwd = simplicial::forward(&dims, &win, self.dtype, k, limits)?;
        if let Some(dv) = simplicial::backward_value_dim(&dims, self.dtype, k) {
            dims = Dims { dv, ..dims };
        }
        let bwd = match simplicial::backward(&dims, &win, self.dtype, k, limits)? {
            Backward::Core { dq, dkv, .. } => format!("{}+{}", dq.symbol(), dkv.symbol()),
            Backward::TensorCore { q, k, .. } => format!("{}+{}", q.symbol(), k.symbol()),
        };
        Ok(format!("fwd {} bwd {bwd}", fwd.symbol()))
    }

    /// Forward FLOPs under the convention of the module doc.
    pub fn forward_flops(&self) -> f64 {
        let d_kernel = match self.spec.variant {
            Variant::Trilinear => self.d,
            Variant::Determinant => 2 * self.d,
        };
        let pairs = self.spec.windows(self.n).pairs() as f64;
        2.0 * (d_kernel + self.d) as f64 * pairs * (self.hq * self.b) as f64
    }

    /// One line describing the configuration.
    pub fn describe(&self) -> String {
        let w = |w: Option<usize>| w.map_or("all".to_string(), |w| w.to_string());
        format!(
            "b={} n={} hq={} hkv={} d={} (w1,w2)=({},{}) {} {} {:?}",
            self.b,
            self.n,
            self.hq,
            self.hkv,
            self.d,
            w(self.spec.w1),
            w(self.spec.w2),
            if self.spec.causal {
                "causal"
            } else {
                "bidirectional"
            },
            self.spec.variant,
            self.dtype
        )
    }
}

impl BenchShape {
    /// A shape from `b=2,n=8192,hq=64,hkv=1,d=128,w1=32,w2=512` (every key required; `w1`,
    /// `w2` a width or `all`), optionally with `causal=false`, `variant=det` (determinant) and
    /// `dtype=f32` (default bf16); named `name`. Errors name the key or value that is wrong.
    pub fn parse(name: &str, text: &str) -> Result<BenchShape, AttnError> {
        let err = |m: String| AttnError::Config(format!("--shape {text:?}: {m}"));
        let mut kv = std::collections::BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .filter(|(_, v)| !v.contains(['=', ' ']))
                .ok_or_else(|| {
                    err(format!(
                        "{part:?} is not key=value (pairs are separated by commas)"
                    ))
                })?;
            if kv.insert(k.trim(), v.trim()).is_some() {
                return Err(err(format!("{k} given twice")));
            }
        }
        let known = [
            "b", "n", "hq", "hkv", "d", "w1", "w2", "causal", "variant", "dtype",
        ];
        if let Some(k) = kv.keys().find(|k| !known.contains(k)) {
            return Err(err(format!(
                "unknown key {k:?} (keys: {})",
                known.join(", ")
            )));
        }
        let size = |k: &str| -> Result<usize, AttnError> {
            let v = kv.get(k).ok_or_else(|| err(format!("missing {k}=")))?;
            match v.parse::<usize>() {
                Ok(x) if x > 0 => Ok(x),
                _ => Err(err(format!("{k}={v} is not a positive integer"))),
            }
        };
        let window = |k: &str| -> Result<Option<usize>, AttnError> {
            match kv.get(k) {
                Some(&"all") => Ok(None),
                Some(_) => size(k).map(Some),
                None => Err(err(format!("missing {k}= (a width or all)"))),
            }
        };
        let causal = match kv.get("causal").copied() {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(err(format!("causal={v}: true or false"))),
        };
        let variant = match kv.get("variant").copied() {
            None | Some("trilinear") => Variant::Trilinear,
            Some("det") | Some("determinant") => Variant::Determinant,
            Some(v) => return Err(err(format!("variant={v}: trilinear or det"))),
        };
        let dtype = match kv.get("dtype").copied() {
            None | Some("bf16") => DType::BF16,
            Some("f32") => DType::F32,
            Some(v) => return Err(err(format!("dtype={v}: bf16 or f32"))),
        };
        let (hq, hkv) = (size("hq")?, size("hkv")?);
        if hq % hkv != 0 {
            return Err(err(format!("hq={hq} is not a multiple of hkv={hkv}")));
        }
        let base = if causal {
            AttnSpec::causal(1, 1)
        } else {
            AttnSpec::bidirectional()
        };
        let spec = base
            .with_windows(window("w1")?, window("w2")?)
            .with_variant(variant);
        Ok(shape(
            name,
            (size("b")?, size("n")?, hq, hkv, size("d")?),
            spec,
            dtype,
        ))
    }
}

fn shape(
    name: &str,
    (b, n, hq, hkv, d): (usize, usize, usize, usize, usize),
    spec: AttnSpec,
    dtype: DType,
) -> BenchShape {
    BenchShape {
        name: name.to_string(),
        b,
        n,
        hq,
        hkv,
        d,
        spec,
        dtype,
    }
}

/// The CPU shapes of `simplex bench attn --device cpu`; the first is the target.
pub fn cpu_shapes() -> Vec<BenchShape> {
    let f32 = DType::F32;
    vec![
        shape("target", (1, 2048, 8, 1, 64), AttnSpec::causal(64, 32), f32),
        shape(
            "swapped",
            (1, 2048, 8, 1, 64),
            AttnSpec::causal(32, 64),
            f32,
        ),
        shape("mha", (1, 1024, 8, 8, 64), AttnSpec::causal(32, 32), f32),
        shape(
            "long-w2",
            (1, 1024, 8, 1, 64),
            AttnSpec::causal(16, 256),
            f32,
        ),
        shape(
            "det",
            (1, 1024, 8, 1, 48),
            AttnSpec::causal(64, 32).with_variant(Variant::Determinant),
            f32,
        ),
        shape("bidir", (8, 64, 4, 4, 32), AttnSpec::bidirectional(), f32),
        shape(
            "bf16",
            (1, 2048, 8, 1, 64),
            AttnSpec::causal(64, 32),
            DType::BF16,
        ),
    ]
}

/// The CUDA shapes of `simplex bench attn --device cuda` (the anchors of spec section 6 and the
/// small LM layer of issue 5).
pub fn cuda_shapes() -> Vec<BenchShape> {
    let bf = DType::BF16;
    vec![
        shape(
            "anchor-64-32x512",
            (2, 8192, 64, 1, 128),
            AttnSpec::causal(32, 512),
            bf,
        ),
        shape(
            "anchor-64-512x32",
            (2, 8192, 64, 1, 128),
            AttnSpec::causal(512, 32),
            bf,
        ),
        shape(
            "anchor-128-32x512",
            (2, 8192, 128, 1, 128),
            AttnSpec::causal(32, 512),
            bf,
        ),
        shape(
            "anchor-128-512x32",
            (2, 8192, 128, 1, 128),
            AttnSpec::causal(512, 32),
            bf,
        ),
        shape(
            "b4-d64-512x32",
            (4, 4096, 64, 1, 64),
            AttnSpec::causal(512, 32),
            bf,
        ),
        shape(
            "lm-layer",
            (32, 1024, 8, 8, 64),
            AttnSpec::causal(512, 32),
            bf,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_the_kernels_the_dispatch_picks() {
        let limits = crate::kernels::DeviceLimits::HOPPER;
        let anchor = &cuda_shapes()[0];
        let auto = anchor.kernels(&limits).unwrap();
        assert!(auto.starts_with("fwd simplicial_fwd_producer"), "{auto}");
        assert!(auto.contains(" bwd simplicial_bwd_"), "{auto}");
        let forced = BenchShape {
            spec: anchor.spec.with_kernels("forward=tj2".parse().unwrap()),
            ..anchor.clone()
        };
        let tj2 = forced.kernels(&limits).unwrap();
        assert!(
            tj2.starts_with("fwd simplicial_fwd_wgmma_tj2_bf16_d128 "),
            "{tj2}"
        );
        let f32 = BenchShape {
            dtype: DType::F32,
            ..anchor.clone()
        };
        let core = f32.kernels(&limits).unwrap();
        assert!(
            !core.contains("wgmma") && !core.contains("producer"),
            "{core}"
        );
    }

    #[test]
    fn a_shape_parses_with_defaults_and_options() {
        let s = BenchShape::parse("x", "b=2,n=8192,hq=64,hkv=1,d=128,w1=32,w2=512").unwrap();
        assert_eq!((s.b, s.n, s.hq, s.hkv, s.d), (2, 8192, 64, 1, 128));
        assert_eq!((s.spec.w1, s.spec.w2), (Some(32), Some(512)));
        assert!(s.spec.causal);
        assert_eq!((s.spec.variant, s.dtype), (Variant::Trilinear, DType::BF16));
        // the anchor's FLOPs as the table in BENCHMARKS.md counts them
        assert_eq!(s.forward_flops(), cuda_shapes()[0].forward_flops());
        let s = BenchShape::parse(
            "y",
            " b=1, n=100 ,hq=6,hkv=3,d=16,w1=all,w2=7,causal=false,variant=det,dtype=f32",
        )
        .unwrap();
        assert_eq!(
            (s.spec.w1, s.spec.w2, s.spec.causal),
            (None, Some(7), false)
        );
        assert_eq!(
            (s.spec.variant, s.dtype),
            (Variant::Determinant, DType::F32)
        );
    }

    #[test]
    fn a_bad_shape_names_what_is_wrong() {
        let bad = [
            ("b=2,n=8,hq=4,hkv=1,d=8,w1=2", "missing w2"),
            (
                "b=2,n=8,hq=4,hkv=1,d=8,w1=2,w2=x",
                "w2=x is not a positive integer",
            ),
            ("b=0,n=8,hq=4,hkv=1,d=8,w1=2,w2=2", "b=0"),
            (
                "b=2,n=8,hq=4,hkv=3,d=8,w1=2,w2=2",
                "not a multiple of hkv=3",
            ),
            (
                "b=2,n=8,hq=4,hkv=1,d=8,w1=2,w2=2,heads=3",
                "unknown key \"heads\"",
            ),
            ("b=2,n=8,hq=4,hkv=1,d=8,w1=2,w2=2,b=3", "b given twice"),
            ("b=2,n=8,hq=4,hkv=1,d=8,w1=2,w2=2,dtype=f16", "dtype=f16"),
            ("b=2 n=8", "not key=value"),
        ];
        for (text, want) in bad {
            let e = BenchShape::parse("x", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
