//! The dot-product backward on CUDA (shapes of [`crate::dot::DotSpec`]), as
//! [`crate::kernels::dispatch::dot::backward`] plans it:
//!
//! ```text
//! delta [B,Nq,Hq]    = rowsum(o * dout)         dot_attn_simple.cu   (in the wgmma dq kernel
//!                                                for the wgmma kernels, written with lse as
//!                                                pairs [B,Hkv,rows,2] for their dk/dv)
//! dq    [B,Nq,Hq,D]  per block of queries       dot_attn_bwd_wgmma.cu (or dot_attn_simple.cu)
//! dk, dv [B,Nk,Hkv,*] per block of keys, summed  dot_attn_bwd_wgmma.cu (or dot_attn_simple.cu)
//!                     over the G heads of a group
//! ```
//! Deterministic: no atomics; every block owns the gradient rows it writes, so two runs give the
//! same bits. The fused wgmma backward (`Kernels::dot_backward`, D = 128) instead runs a
//! pre-pass writing the pairs, one kernel computing dk, dv and adding dq's partial sums into a
//! zeroed f32 buffer (TMA bulk adds: their order, so dq's last bits, vary run to run), and a
//! pass rounding dq.

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{Layout, Result, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{aligned, kv_maps, DotCall, DotKernelShape};
use crate::cuda::launch::{self, Planned};
use crate::cuda::tma::{self as cuda_tma, TensorMap};
use crate::cuda::{cuda_storages, output_poisoned, typed_views, wrap_tensor, Element};
use crate::kernels::dispatch::dot::{self as plan, DotBackward};
use crate::kernels::{tma, Elem, Kernel};

/// Which backward the plan runs: the CUDA-core kernels, the split wgmma kernels or the fused
/// wgmma kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Simple,
    Split,
    Fused,
}

/// The backward on CUDA: (dq like q, dk like k, dv like v) in the input dtype, from
/// `[q, k, v, o, dout, lse]`.
pub(crate) fn backward(call: &DotCall, ts: [&Tensor; 6]) -> Result<(Tensor, Tensor, Tensor)> {
    let ts = ts.map(|t| t.contiguous());
    let [q, k, v, o, dout, lse] = ts;
    let ts = [q?, k?, v?, o?, dout?, lse?];
    let dtype = ts[0].dtype();
    let names = ["q", "k", "v", "o", "dout", "lse"];
    let guards = ts.each_ref().map(|t| t.storage_and_layout());
    let st = cuda_storages("dot attention", names, &guards)?;
    let (_, dev, limits) = launch::target(st[0].0)?;
    // q, k, v and dout feed cp.async and the TMA in the tensor-core kernels; o only the delta
    // pre-pass
    let all_aligned = [0, 1, 2, 4].iter().all(|&t| aligned(st[t].1, dtype));
    let plan = plan::backward(&call.dims, dtype, all_aligned, &call.kernels, &limits)?;
    let [dq, dk, dv] = match Elem::of(dtype, "dot attention")? {
        Elem::Bf16 => backward_typed::<half::bf16>(call, dev, &plan, st, &ts)?,
        Elem::F32 => backward_typed::<f32>(call, dev, &plan, st, &ts)?,
    };
    Ok((dq, dk, dv))
}

fn backward_typed<T: Element>(
    call: &DotCall,
    dev: &CudaDevice,
    plan: &DotBackward,
    st: [(&CudaStorage, &Layout); 6],
    ts: &[Tensor; 6],
) -> Result<[Tensor; 3]> {
    let d = call.dims;
    let poison = call.kernels.poison_outputs;
    let shape = DotKernelShape::new(call)?;
    let [nqd, nkd, nkv, nqv] = d.lens();
    let rows = d.batch * d.seq_q * d.heads_q;
    let op = "dot attention";
    let [qv, kv, vv, ov, dov] = typed_views::<T, 5>(
        op,
        [st[0], st[1], st[2], st[3], st[4]],
        ["q", "k", "v", "o", "dout"],
        [nqd, nkd, nkv, nqv, nqv],
    )?;
    let [lsev] = typed_views::<f32, 1>(op, [st[5]], ["lse"], [rows])?;
    let stream = dev.cuda_stream();
    let out = |len, name| output_poisoned::<T>(&stream, len, name, poison);

    let mode = match plan.dkv.kernel.kernel {
        Kernel::DotBwdFused { .. } => Mode::Fused,
        Kernel::DotDkvWgmma { .. } => Mode::Split,
        _ => Mode::Simple,
    };

    // delta = rowsum(o * dout): for the CUDA-core kernels a pre-pass into [B,Nq,Hq]; for the
    // wgmma kernels written with lse log2 e as the pairs of the row space ([B,Hkv,rows,2],
    // `tma::pairs_rows` rows) that their dk/dv kernel reads, by the split dq kernel or the fused
    // backward's pre-pass
    let stats_len = match mode {
        Mode::Simple => rows,
        Mode::Split | Mode::Fused => d.batch * d.heads_kv * tma::pairs_rows(d.seq_q, d.group()) * 2,
    };
    let mut delta: CudaSlice<f32> = output_poisoned(&stream, stats_len, "delta", poison)?;
    // the fused backward's f32 sums of dq: zeroed by its pre-pass, added into by the fused
    // kernel, rounded into dq by the last pass (poisoned first where asked: the pre-pass must
    // zero every one)
    let mut dq_sums = match mode {
        Mode::Fused => Some(output_poisoned::<f32>(
            &stream,
            4 * plan::fused_dq_float4s(&d),
            "dq sums",
            poison,
        )?),
        _ => None,
    };
    if let Some(pre) = &plan.delta {
        let planned = Planned::new(dev, pre)?;
        // SAFETY: (const T* o, const T* dout, float* delta, DotShape) as the CUDA-core pre-pass
        // declares, (o, dout, lse, pairs, dq sums, DotShape) as the fused one does; o and dout
        // hold B*Nq*Hq*Dv elements, lse B*Nq*Hq, delta as sized above, the sums
        // `fused_dq_float4s` float4s (D floats per padded row); the CUDA-core pre-pass runs a
        // warp per row of every row, the fused one D / 8 threads per row of every padded row.
        unsafe {
            planned.run(&stream, |a| {
                a.arg(&ov).arg(&dov);
                if mode == Mode::Fused {
                    a.arg(&lsev);
                }
                a.arg(&mut delta);
                if let Some(sums) = dq_sums.as_mut() {
                    a.arg(sums);
                }
                a.arg(&shape);
            })
        }?;
    }

    // dq
    let mut dq = out(nqd, "dq")?;
    if let Some(dq_launch) = &plan.dq {
        let planned = Planned::new(dev, dq_launch)?;
        let maps = kv_maps(
            dev,
            &d,
            tma::kv_map_rows(dq_launch.kernel.kernel),
            [&kv, &vv],
        )?;
        // SAFETY: (q, k, v, dout, lse, delta, dq, DotShape) as the kernel declares, and for the
        // wgmma kernel (q, k, v, dout, o, lse, pairs (written: every row's), dq, DotShape, K's
        // and V's tensor maps of its box); every view holds the counts it indexes (checked by
        // `typed_views`; pairs sized above), and the grid covers all B * Nq * Hq rows of dq and
        // delta (the persistent wgmma CTAs between them).
        unsafe {
            planned.run(&stream, |a| {
                a.arg(&qv).arg(&kv).arg(&vv).arg(&dov);
                if mode == Mode::Split {
                    a.arg(&ov).arg(&lsev).arg(&mut delta);
                } else {
                    a.arg(&lsev).arg(&delta);
                }
                a.arg(&mut dq).arg(&shape);
                for m in &maps {
                    a.arg(m);
                }
            })
        }?;
    }

    // dk, dv
    let planned = Planned::new(dev, &plan.dkv)?;
    let mut dk = out(nkd, "dk")?;
    let mut dvs = out(nkv, "dv")?;
    let row_maps = match tma::dkv_row_box(plan.dkv.kernel.kernel, d.group()) {
        Some(b) => [
            cuda_tma::bf16_rows(&stream, &qv, [d.batch, d.seq_q, d.heads_q, d.d], b)?,
            cuda_tma::bf16_rows(&stream, &dov, [d.batch, d.seq_q, d.heads_q, d.dv], b)?,
            cuda_tma::f32_pairs(
                &stream,
                &delta.as_view(),
                [d.batch, d.heads_kv, d.seq_q, d.group()],
            )?,
        ],
        None => [(); 3].map(|_| TensorMap::unused()),
    };
    // SAFETY: (q, k, v, dout, lse, delta, dk, dv, DotShape) as the CUDA-core kernel declares;
    // for the wgmma kernels (q, k, v, dout, pairs, dk, dv, [the fused one: dq's f32 sums,
    // zeroed, `fused_dq_float4s` float4s], DotShape, q's, dout's and the pairs' tensor maps,
    // which they read where `dkv_row_box` gives a box: the kernel makes the same test; the
    // fused kernel runs only where it does); every view holds the counts it indexes, and the
    // grid covers all B * Nk * Hkv key rows of dk and dv (the persistent wgmma CTAs between
    // them).
    unsafe {
        planned.run(&stream, |a| {
            a.arg(&qv).arg(&kv).arg(&vv).arg(&dov);
            if mode == Mode::Simple {
                a.arg(&lsev);
            }
            a.arg(&delta).arg(&mut dk).arg(&mut dvs);
            if let Some(sums) = dq_sums.as_mut() {
                a.arg(sums);
            }
            a.arg(&shape);
            if mode != Mode::Simple {
                for m in &row_maps {
                    a.arg(m);
                }
            }
        })
    }?;

    // the fused backward's dq: scale * its f32 sums, rounded
    if let (Some(round), Some(sums)) = (&plan.dq_round, &dq_sums) {
        let planned = Planned::new(dev, round)?;
        // SAFETY: (const float* sums, T* dq, DotShape) as the kernel declares (T = bf16: the
        // fused backward runs only for bf16); sums holds `fused_dq_float4s` float4s, one thread
        // per four, and every row of dq is some thread's.
        unsafe {
            planned.run(&stream, |a| {
                a.arg(sums).arg(&mut dq).arg(&shape);
            })
        }?;
    }

    let wrap = |s, i: usize| wrap_tensor(s, dev, ts[i].shape());
    Ok([wrap(dq, 0), wrap(dk, 1), wrap(dvs, 2)])
}
