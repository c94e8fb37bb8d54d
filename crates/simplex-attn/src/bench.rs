//! Benchmark harness behind `simplex bench attn`: shapes, the FLOP convention, timing.
//!
//! FLOP convention (spec section 4, Meta's count): the forward does two matrix products per
//! query head and (j, k) pair, `2 * D` FLOPs for the logits and `2 * Dv` for `P @ V2`, so a
//! forward is `2 * (D + Dv) * pairs * heads_q * batch` FLOPs = `4 n w1 w2 d` per head when
//! D = Dv and no causal ramp. Pairs are counted exactly (the ramp at the sequence start is not
//! rounded up). The determinant variant counts the lifted head dim 2D it really computes.
//! Backward = 2.5x forward (FlashAttention's convention), so forward+backward = 3.5x.
//! Timings are wall-clock medians of whole op calls through candle (the concatenation of K and
//! V and the dtype conversions included), after one warm-up call. Forward+backward is the
//! forward, then candle's backward from a given output gradient `dout` handed to `o` directly
//! (as torch's `o.backward(dout)`; no loss reduction is timed), with candle's gradient
//! accumulation for the op's inputs included.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

use crate::{simplicial_attn, AttnError, AttnSpec, Variant};

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

/// Forward+backward FLOPs per forward FLOP (FlashAttention's convention: backward = 2.5x).
pub const FORWARD_BACKWARD_FLOPS: f64 = 3.5;

/// Timings of one shape.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// The configuration.
    pub shape: BenchShape,
    /// Median forward time, seconds.
    pub forward_s: f64,
    /// Median forward+backward time, seconds (NaN when not measured).
    pub forward_backward_s: f64,
    /// Timed repetitions of each.
    pub reps: usize,
}

impl BenchResult {
    /// Forward rate in FLOP/s.
    pub fn forward_rate(&self) -> f64 {
        self.shape.forward_flops() / self.forward_s
    }
    /// Forward+backward rate in FLOP/s (3.5x forward FLOPs).
    pub fn forward_backward_rate(&self) -> f64 {
        FORWARD_BACKWARD_FLOPS * self.shape.forward_flops() / self.forward_backward_s
    }
}

/// Median of the samples.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Times `f` (after one warm-up call) until `min_reps` calls and `min_seconds` have passed;
/// returns the median and the count. `sync` is called after each call (device synchronize).
pub fn time_it(
    min_reps: usize,
    min_seconds: f64,
    mut f: impl FnMut() -> Result<(), AttnError>,
    sync: &dyn Fn() -> Result<(), AttnError>,
) -> Result<(f64, usize), AttnError> {
    f()?;
    sync()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_reps || start.elapsed().as_secs_f64() < min_seconds {
        let t = Instant::now();
        f()?;
        sync()?;
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 1000 {
            break;
        }
    }
    let n = samples.len();
    Ok((median(samples), n))
}

/// Runs one shape on `device`: forward alone, then (unless `forward_only`) forward+backward
/// through autograd.
pub fn run_shape(
    s: &BenchShape,
    device: &Device,
    min_reps: usize,
    min_seconds: f64,
    forward_only: bool,
) -> Result<BenchResult, AttnError> {
    let rand = |h: usize, scale: f64| -> Result<Var, AttnError> {
        let t = Tensor::randn(0f32, scale as f32, (s.b, s.n, h, s.d), device)?.to_dtype(s.dtype)?;
        Ok(Var::from_tensor(&t)?)
    };
    let amp = (1.0 / s.d as f64).powf(1.0 / 6.0);
    let (q, k1, k2) = (rand(s.hq, amp)?, rand(s.hkv, amp)?, rand(s.hkv, amp)?);
    let (v1, v2) = (rand(s.hkv, 1.0)?, rand(s.hkv, 1.0)?);
    let dout = Tensor::randn(0f32, 1.0, (s.b, s.n, s.hq, s.d), device)?.to_dtype(s.dtype)?;
    let sync = || -> Result<(), AttnError> { Ok(device.synchronize()?) };
    let (forward_s, reps) = time_it(
        min_reps,
        min_seconds,
        || simplicial_attn(&q, &k1, &k2, &v1, &v2, &s.spec).map(|_| ()),
        &sync,
    )?;
    if forward_only {
        return Ok(BenchResult {
            shape: s.clone(),
            forward_s,
            forward_backward_s: f64::NAN,
            reps,
        });
    }
    let (forward_backward_s, _) = time_it(
        min_reps,
        min_seconds,
        || {
            let o = simplicial_attn(&q, &k1, &k2, &v1, &v2, &s.spec)?.o;
            backward_from(&o, &dout)?;
            Ok(())
        },
        &sync,
    )?;
    Ok(BenchResult {
        shape: s.clone(),
        forward_s,
        forward_backward_s,
        reps,
    })
}

/// candle's backward of `o` with `dout` as its gradient (torch's `o.backward(dout)`): the
/// gradients of every variable `o` depends on, without a loss reduction to time.
pub(crate) fn backward_from(o: &Tensor, dout: &Tensor) -> candle_core::Result<GradStore> {
    o.apply_op1(SeedGradient(dout.clone()))?.backward()
}

/// The root of a timed backward: a one-element f32 zero whose backward hands the tensor it
/// holds to its input as that input's gradient (torch's `o.backward(dout)` in candle).
struct SeedGradient(Tensor);

impl CustomOp1 for SeedGradient {
    fn name(&self) -> &'static str {
        "seed-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(crate::inputs::marker_cpu())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::inputs::marker_cuda(storage)
    }

    fn bwd(&self, arg: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if arg.shape() != self.0.shape() || arg.dtype() != self.0.dtype() {
            candle_core::bail!(
                "seed gradient {:?} {:?} does not match its input {:?} {:?}",
                self.0.shape(),
                self.0.dtype(),
                arg.shape(),
                arg.dtype()
            )
        }
        Ok(Some(self.0.clone()))
    }
}

/// FLOP/s of an `n x n x n` f32 matrix product on the CPU through `gemm` (the library the
/// kernels use), with `threads` threads (1: single core).
pub fn cpu_gemm_rate(n: usize, threads: usize, min_seconds: f64) -> Result<f64, AttnError> {
    let a: Vec<f32> = (0..n * n)
        .map(|t| ((t * 7 % 13) as f32 - 6.0) * 0.1)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|t| ((t * 5 % 11) as f32 - 5.0) * 0.1)
        .collect();
    let mut c = vec![0f32; n * n];
    let par = if threads <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let (s, _) = time_it(
        3,
        min_seconds,
        || {
            // SAFETY: a, b, c are n*n row-major matrices (column stride 1, row stride n), so every
            // index gemm reaches is inside them; c does not alias a or b.
            unsafe {
                gemm::gemm(
                    n,
                    n,
                    n,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    n as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                );
            }
            Ok(())
        },
        &|| Ok(()),
    )?;
    Ok(2.0 * (n as f64).powi(3) / s)
}

/// FLOP/s of an `n x n x n` matrix product through candle on `device` (cuBLAS on CUDA): the
/// ceiling the CUDA report compares against. Random inputs (zeros run faster on some GPUs).
pub fn candle_matmul_rate(
    device: &Device,
    dtype: DType,
    n: usize,
    min_seconds: f64,
) -> Result<f64, AttnError> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let sync = || -> Result<(), AttnError> { Ok(device.synchronize()?) };
    let (s, _) = time_it(
        5,
        min_seconds,
        || {
            a.matmul(&b)?;
            Ok(())
        },
        &sync,
    )?;
    Ok(2.0 * (n as f64).powi(3) / s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_gradient_gives_the_gradients_of_the_dot_with_dout() -> Result<(), AttnError> {
        let dev = Device::Cpu;
        let spec = AttnSpec::causal(3, 4);
        let rand = |h: usize| -> Result<Var, AttnError> {
            Ok(Var::from_tensor(&Tensor::randn(
                0f32,
                1.0,
                (2, 7, h, 8),
                &dev,
            )?)?)
        };
        let x = [rand(4)?, rand(2)?, rand(2)?, rand(2)?, rand(2)?];
        let dout = Tensor::randn(0f32, 1.0, (2, 7, 4, 8), &dev)?;
        let o = || simplicial_attn(&x[0], &x[1], &x[2], &x[3], &x[4], &spec).map(|r| r.o);
        let seeded = backward_from(&o()?, &dout)?;
        let summed = (o()? * &dout)?.sum_all()?.backward()?;
        for v in &x {
            let (a, b) = (seeded.get(v).unwrap(), summed.get(v).unwrap());
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let size = b.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(size > 0.0 && diff <= 1e-6 * size, "{diff} vs {size}");
        }
        // a seed of the wrong shape is an error, not a wrong gradient
        let bad = o()?
            .apply_op1(SeedGradient(dout.narrow(1, 0, 3)?))?
            .backward();
        assert!(bad.is_err_and(|e| e.to_string().contains("does not match")));
        Ok(())
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
