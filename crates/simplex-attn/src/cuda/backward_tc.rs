//! The tensor-core backward of 2-simplicial attention (bf16, D = Dv in {32, 64, 96, 128}), as
//! [`crate::kernels::dispatch::simplicial::backward`] plans it:
//!
//! ```text
//! delta [B,N,Hq]   pre-pass (backward.rs)
//! q side:  dq (bf16), dk1 and dv1 added into zeroed f32 buffers (atomics), then rounded
//!          (the q kernel of simplicial_bwd_wgmma.cu or simplicial_bwd_mma.cu, or the offset
//!          walk's qk1 pass of simplicial_bwd_offsets.cu)
//! k side:  dk2, dv2 (bf16), each block owning its keys (the k kernels of the same files, the
//!          offset walk's k2 pass, or simplicial_bwd_producer.cu)
//! ```
//! Every q-side kernel has the signature `(q, k1, k2, v1, v2, dout, lse, delta, dq, dk1, dv1,
//! Shape)`, every k-side one `(q, k1, k2, v1, v2, dout, lse, delta, dk2, dv2, Shape)`. The
//! kernels want the small window as their window 1: when `w1 > w2` the key/value sets are
//! exchanged here and the gradients land in the exchanged slots. dq, dk2 and dv2 are
//! deterministic; dk1 and dv1 are sums of f32 atomics (their last bits may change run to run;
//! [`crate::Kernels::deterministic`] selects the CUDA-core backward).

use std::sync::Arc;

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{Layout, Result};
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

use super::backward::{delta, Inputs};
use super::buffers::{cuda_err, output_poisoned};
use super::launch::Planned;
use super::shape::{oriented, KernelShape};
use crate::kernels::dispatch::simplicial::exchange_sets;
use crate::kernels::Launch;
use crate::spec::Call;

type T = half::bf16;

/// The tensor-core backward from the storages of `[q, k1, k2, v1, v2, o, dout, lse]`:
/// `[dq, dk1, dk2, dv1, dv2]` in bf16, in the caller's order.
pub(super) fn backward(
    call: &Call,
    dev: &CudaDevice,
    st: &[(&CudaStorage, &Layout); 8],
    [delta_launch, q_launch, k_launch, round]: [&Launch; 4],
) -> Result<[CudaSlice<T>; 5]> {
    let poison = call.kernels.poison_outputs;
    let ex = exchange_sets(&call.win);
    let shape = KernelShape::new(&call.dims, &call.win, call.scale)?;
    let kshape = shape.oriented(ex);
    let x = Inputs::<T>::new(call, st)?;
    // (first, second) in the kernels' orientation: first = the small window
    let (k1, k2) = oriented(ex, &x.k[0], &x.k[1]);
    let (v1, v2) = oriented(ex, &x.v[0], &x.v[1]);
    let nk = x.k[0].len();

    let stream = dev.cuda_stream();
    let mut clock = KernelClock::new(&stream, call.kernels.time_backward)?;
    let delta = delta::<T>(dev, delta_launch, &shape, &x, poison)?;
    clock.lap("delta")?;

    // q side: dq, and dk1 / dv1 into zeroed f32 buffers
    let zeros = |name| {
        stream
            .alloc_zeros::<f32>(nk)
            .map_err(|e| cuda_err(format!("allocating the {name} accumulator"), e))
    };
    let (mut dk1, mut dv1) = (zeros("dk1")?, zeros("dv1")?);
    let mut dq = output_poisoned::<T>(&stream, x.q.len(), "dq", poison)?;
    let planned = Planned::new(dev, q_launch)?;
    // SAFETY: every q-side kernel takes (six const bf16*, two const float*, bf16* dq, float*
    // dk1, float* dv1, Shape); every view holds the count the kernel indexes, the sets and the
    // shape are in the kernels' orientation, and the grid covers all N * G rows of every
    // (K/V head, batch).
    unsafe {
        planned.run(&stream, |a| {
            a.arg(&x.q).arg(k1).arg(k2).arg(v1).arg(v2).arg(&x.dout);
            a.arg(&x.lse)
                .arg(&delta)
                .arg(&mut dq)
                .arg(&mut dk1)
                .arg(&mut dv1);
            a.arg(&kshape);
        })
    }?;
    clock.lap(planned.symbol())?;

    // k side: dk2, dv2 straight into their slots
    let mut dk2 = output_poisoned::<T>(&stream, nk, "dk2", poison)?;
    let mut dv2 = output_poisoned::<T>(&stream, nk, "dv2", poison)?;
    let planned = Planned::new(dev, k_launch)?;
    // SAFETY: every k-side kernel takes (six const bf16*, two const float*, bf16* dk2, bf16*
    // dv2, Shape); dk2 and dv2 hold B*N*Hkv*D elements and the grid covers all N keys of every
    // (K/V head, batch).
    unsafe {
        planned.run(&stream, |a| {
            a.arg(&x.q).arg(k1).arg(k2).arg(v1).arg(v2).arg(&x.dout);
            a.arg(&x.lse).arg(&delta).arg(&mut dk2).arg(&mut dv2);
            a.arg(&kshape);
        })
    }?;
    clock.lap(planned.symbol())?;

    // dk1, dv1: f32 accumulators to bf16
    let planned = Planned::new(dev, round)?;
    let mut first = [
        output_poisoned::<T>(&stream, nk, "dk1", poison)?,
        output_poisoned::<T>(&stream, nk, "dv1", poison)?,
    ];
    let count = nk as i64;
    for (src, dst) in [&dk1, &dv1].into_iter().zip(first.iter_mut()) {
        // SAFETY: (const float* x, bf16* y, long long n): both hold n = B*N*Hkv*D elements; the
        // kernel strides over all of them.
        unsafe {
            planned.run(&stream, |a| {
                a.arg(src).arg(dst).arg(&count);
            })
        }?;
    }
    clock.lap("dk1, dv1 to bf16")?;

    // the kernels' (first, second) sets back in the caller's order
    let [dk_first, dv_first] = first;
    let (dk1, dk2) = oriented(ex, dk_first, dk2);
    let (dv1, dv2) = oriented(ex, dv_first, dv2);
    Ok([dq, dk1, dk2, dv1, dv2])
}

/// When on ([`crate::Kernels::time_backward`]), prints the time of each launch to stderr (the
/// stream is synchronized around each, so use it for breakdowns, not for totals); otherwise
/// does nothing.
struct KernelClock<'a> {
    stream: &'a Arc<CudaStream>,
    last: Option<std::time::Instant>,
}

impl<'a> KernelClock<'a> {
    fn new(stream: &'a Arc<CudaStream>, on: bool) -> Result<Self> {
        let mut clock = KernelClock { stream, last: None };
        if on {
            clock.sync()?;
            clock.last = Some(std::time::Instant::now());
        }
        Ok(clock)
    }

    fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronizing for the backward's timing", e))
    }

    fn lap(&mut self, what: &str) -> Result<()> {
        if let Some(t) = self.last {
            self.sync()?;
            eprintln!("backward {what}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
            self.last = Some(std::time::Instant::now());
        }
        Ok(())
    }
}
