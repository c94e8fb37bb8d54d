//! Timing one shape: whole op calls through candle, forward alone and forward+backward from a
//! given output gradient (the convention of [`super`]'s doc), and the matrix-product rates the
//! report compares against.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

use super::BenchShape;
use crate::{simplicial_attn, AttnError, SimplicialAttnCall};

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
    /// Median forward+backward time outside autograd, seconds: [`SimplicialAttnCall`]'s
    /// forward and backward, the path a layer with a written-out backward takes (no gradient
    /// accumulation by candle). NaN when not measured or when the call needs autograd (the
    /// determinant lift, biases, padded head dims).
    pub forward_backward_direct_s: f64,
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

/// [`time_it`]'s median of `f` when `on`, else NaN (a measurement not taken).
pub(crate) fn time_if(
    on: bool,
    min_reps: usize,
    min_seconds: f64,
    sync: &dyn Fn() -> Result<(), AttnError>,
    f: impl FnMut() -> Result<(), AttnError>,
) -> Result<f64, AttnError> {
    if on {
        Ok(time_it(min_reps, min_seconds, f, sync)?.0)
    } else {
        Ok(f64::NAN)
    }
}

/// Runs one shape on `device`: forward alone, then (unless `forward_only`) forward+backward
/// through autograd and outside it.
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
    let forward_backward_s = time_if(!forward_only, min_reps, min_seconds, &sync, || {
        let o = simplicial_attn(&q, &k1, &k2, &v1, &v2, &s.spec)?.o;
        backward_from(&o, &dout)?;
        Ok(())
    })?;
    let direct = |q: &Tensor| SimplicialAttnCall::forward(q, &k1, &k2, &v1, &v2, &s.spec);
    let outside = !forward_only && direct(&q)?.is_some();
    let forward_backward_direct_s = time_if(outside, min_reps, min_seconds, &sync, || {
        if let Some(call) = direct(&q)? {
            call.backward(&dout)?;
        }
        Ok(())
    })?;
    Ok(BenchResult {
        shape: s.clone(),
        forward_s,
        forward_backward_s,
        forward_backward_direct_s,
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
    use crate::AttnSpec;

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
}
