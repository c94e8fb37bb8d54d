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

/// How a benchmark times one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Host wall clock from the call's start until a device synchronize after it returns: the
    /// first kernel's launch latency and the synchronize's wake-up are inside every sample.
    #[default]
    Host,
    /// On CUDA, the device time between two events recorded on the device's stream before and
    /// after the call (what `scripts/torch_attention.py` and Triton's `do_bench` measure): the
    /// gaps between the call's kernels are inside, the host's wait for the result is not. On
    /// the CPU, the host clock.
    Events,
}

impl std::str::FromStr for Clock {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "host" => Ok(Clock::Host),
            "events" => Ok(Clock::Events),
            _ => Err(format!("unknown clock {text:?}: expected host or events")),
        }
    }
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Clock::Host => "host",
            Clock::Events => "events",
        })
    }
}

/// How long a measurement runs and how each call is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Timed calls at least (after one warm-up call); at most 1000.
    pub min_reps: usize,
    /// Seconds of timed calls at least.
    pub min_seconds: f64,
    /// The clock of one call.
    pub clock: Clock,
}

impl Timing {
    /// `min_reps` calls and `min_seconds` at least, on the host clock.
    pub fn host(min_reps: usize, min_seconds: f64) -> Self {
        Timing {
            min_reps,
            min_seconds,
            clock: Clock::Host,
        }
    }

    /// Seconds of one call of `f` on `device` by this timing's clock.
    fn one_call(
        &self,
        device: &Device,
        f: &mut impl FnMut() -> Result<(), AttnError>,
    ) -> Result<f64, AttnError> {
        #[cfg(feature = "cuda")]
        if let (Clock::Events, Device::Cuda(dev)) = (self.clock, device) {
            let stream = dev.cuda_stream();
            let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = stream
                .record_event(timed)
                .map_err(candle_core::Error::wrap)?;
            f()?;
            let end = stream
                .record_event(timed)
                .map_err(candle_core::Error::wrap)?;
            let ms = start.elapsed_ms(&end).map_err(candle_core::Error::wrap)?;
            return Ok(f64::from(ms) / 1e3);
        }
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Times `f` on `device` (after one warm-up call) until `timing.min_reps` calls and
/// `timing.min_seconds` have passed, each call on `timing.clock` (the device synchronized after
/// each); returns the median and the count.
pub fn time_it(
    timing: &Timing,
    device: &Device,
    mut f: impl FnMut() -> Result<(), AttnError>,
) -> Result<(f64, usize), AttnError> {
    f()?;
    device.synchronize()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < timing.min_reps || start.elapsed().as_secs_f64() < timing.min_seconds {
        samples.push(timing.one_call(device, &mut f)?);
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
    timing: &Timing,
    device: &Device,
    f: impl FnMut() -> Result<(), AttnError>,
) -> Result<f64, AttnError> {
    if on {
        Ok(time_it(timing, device, f)?.0)
    } else {
        Ok(f64::NAN)
    }
}

/// Runs one shape on `device`: forward alone, then (unless `forward_only`) forward+backward
/// through autograd and outside it.
pub fn run_shape(
    s: &BenchShape,
    device: &Device,
    timing: &Timing,
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
    let (forward_s, reps) = time_it(timing, device, || {
        simplicial_attn(&q, &k1, &k2, &v1, &v2, &s.spec).map(|_| ())
    })?;
    let forward_backward_s = time_if(!forward_only, timing, device, || {
        let o = simplicial_attn(&q, &k1, &k2, &v1, &v2, &s.spec)?.o;
        backward_from(&o, &dout)?;
        Ok(())
    })?;
    let direct = |q: &Tensor| SimplicialAttnCall::forward(q, &k1, &k2, &v1, &v2, &s.spec);
    let outside = !forward_only && direct(&q)?.is_some();
    let forward_backward_direct_s = time_if(outside, timing, device, || {
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
    let (s, _) = time_it(&Timing::host(3, min_seconds), &Device::Cpu, || {
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
    })?;
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
    let (s, _) = time_it(&Timing::host(5, min_seconds), device, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttnSpec;

    #[test]
    fn clocks_parse_from_their_names_and_print_them() {
        for c in [Clock::Host, Clock::Events] {
            assert_eq!(c.to_string().parse::<Clock>(), Ok(c));
        }
        let err = "wall".parse::<Clock>().unwrap_err();
        assert!(
            err.contains("wall") && err.contains("host or events"),
            "{err}"
        );
        assert_eq!(Clock::default(), Clock::Host);
    }

    #[test]
    fn time_it_takes_the_reps_asked_for_on_either_clock() -> Result<(), AttnError> {
        for clock in [Clock::Host, Clock::Events] {
            let mut calls = 0;
            let timing = Timing {
                min_reps: 4,
                min_seconds: 0.0,
                clock,
            };
            let (s, n) = time_it(&timing, &Device::Cpu, || {
                calls += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })?;
            // one warm-up call besides the timed ones; each sample covers the 2 ms sleep
            assert_eq!((n, calls), (4, 5), "{clock}");
            assert!((0.002..1.0).contains(&s), "{clock}: median {s} s");
        }
        Ok(())
    }

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
