//! Launches of the tensor-core backward for bf16 with D = Dv in {32, 64, 96, 128}:
//! `kernels/simplicial_bwd_wgmma.cu` (wgmma) for D in {64, 128}, `kernels/simplicial_bwd_mma.cu`
//! (mma.sync) for the others or when `set_wgmma_backward(false)`; both have the same kernel
//! signatures and outputs. Other calls run the CUDA-core kernels of `backward.rs`.
//!
//! ```text
//! delta [B,N,Hq]          pre-pass (backward.rs)
//! q kernel:  dq (bf16), dk1 and dv1 added into zeroed f32 buffers (atomics), then rounded
//! k kernel:  dk2, dv2 (bf16), each block owning 64 keys (rows in steps of 64, or 32 if G < 64)
//! ```
//! For G a multiple of 64 (the anchors), dk2 and dv2 come from `kernels/simplicial_bwd_producer.cu`
//! instead (a producer warpgroup and two consumers owning 64 keys each, 128 keys per block;
//! `backward_plan::plan`).
//! For few query heads per K/V head (D = 64) the offset walk of
//! `kernels/simplicial_bwd_offsets.cu` can replace the q kernel (the qk1 pass: dq, and dk1, dv1
//! into the same f32 buffers) and the k kernel (a k2 pass), as chosen by
//! `backward_plan::offsets_q_plan` / `offsets_k2_plan`.
//! As for the forward, the kernels want the small window as their window 1: when `w1 > w2` the
//! key/value sets are exchanged here and the gradients land in the exchanged slots.
//! dq, dk2 and dv2 are deterministic; dk1 and dv1 are sums of f32 atomics (their last bits may
//! change run to run). `SIMPLEX_DETERMINISTIC=1` selects the deterministic CUDA-core backward.

use candle_core::backend::BackendStorage;

use candle_core::{DType, Result, Tensor};
use cudarc::driver::{CudaSlice, CudaView, LaunchArgs, PushKernelArg};

use super::module::{self, Family};
use super::{
    blocks, check_smem, cuda_err, cuda_storages, exchange_sets, key_value_views, launch_config,
    oriented, output, view, wrap_tensor, KernelShape,
};
use crate::op::SimplicialOp;

use crate::backward_plan::{
    offsets_k2_plan, offsets_q_plan, plan, KernelFile, Window1, BLOCK, OFFSETS_BLOCK,
    PRODUCER_KEYS, QK1_BLOCK,
};

fn family(file: KernelFile) -> Family {
    match file {
        KernelFile::Mma => Family::BackwardMma,
        KernelFile::Wgmma => Family::BackwardWgmma,
        KernelFile::Offsets => Family::BackwardOffsets,
        KernelFile::Producer => Family::BackwardProducer,
    }
}

/// Whether the tensor-core backward covers this call.
pub(crate) fn covers(op: &SimplicialOp, dtype: DType) -> bool {
    dtype == DType::BF16
        && op.dims.d == op.dims.dv
        && matches!(op.dims.d, 32 | 64 | 96 | 128)
        && super::tensor_core_kernels()
        && !super::deterministic()
}

/// The backward on tensor cores from `[q, k1, k2, v1, v2, o, dout, lse]`: `[dq, dk1, dk2, dv1,
/// dv2]`, bf16.
pub(crate) fn backward(op: &SimplicialOp, tensors: [&Tensor; 8]) -> Result<[Tensor; 5]> {
    type T = half::bf16;
    let dims = op.dims;
    let (b, n, hq, hkv, d) = (dims.batch, dims.seq, dims.heads_q, dims.heads_kv, dims.d);
    let ex = exchange_sets(&op.win);
    let shape = KernelShape::new(&dims, &op.win, op.scale)?;
    let kshape = shape.oriented(ex);

    let names = ["q", "k1", "k2", "v1", "v2", "o", "dout", "lse"];
    let guards = tensors.map(|t| t.storage_and_layout());
    let st = cuda_storages("simplicial attention backward", names, &guards)?;
    let (nq, nk) = (b * n * hq * d, b * n * hkv * d);
    let qv = view::<T>(st[0].0, st[0].1, "q", nq)?;
    // (first, second) in the kernels' orientation: first = the small window
    let [k1, k2, v1, v2] = key_value_views::<T>(ex, [st[1], st[2], st[3], st[4]], nk, nk)?;
    let ov = view::<T>(st[5].0, st[5].1, "o", nq)?;
    let dov = view::<T>(st[6].0, st[6].1, "dout", nq)?;
    let lsev = view::<f32>(st[7].0, st[7].1, "lse", b * n * hq)?;

    let dev = st[0].0.device().clone();
    let stream = dev.cuda_stream();
    let mut clock = KernelClock::new(&stream)?;
    let delta = super::backward::delta::<T>(&dev, &shape, &ov, &dov, b * n * hq)?;
    clock.lap("delta")?;

    // the inputs every kernel below takes first
    let inputs = [&qv, &k1, &k2, &v1, &v2, &dov];
    let (q_launch, k_launch) = plan(d, hq / hkv, super::wgmma_backward());
    let mut dk1 = stream
        .alloc_zeros::<f32>(nk)
        .map_err(|e| cuda_err("allocating the dk1 accumulator", e))?;
    let mut dv1 = stream
        .alloc_zeros::<f32>(nk)
        .map_err(|e| cuda_err("allocating the dv1 accumulator", e))?;
    let win1 = Window1 {
        seq: n,
        w1: kshape.w1 as usize,
        causal: op.win.causal,
    };
    // the shared-memory limit of the device (the same for every kernel of a module)
    let max_smem =
        module::kernel(&dev, Family::BackwardMma, "simplicial_bwd_f32_to_bf16")?.max_smem;
    let mut dq = output::<T>(&stream, nq, "dq")?;
    let offsets = super::offsets_backward();
    // q kernel (or the offset walk's qk1 pass): dq, and dk1 / dv1 into the zeroed f32 buffers
    let (q_launch, rows_per_block) = match offsets_q_plan(d, hq / hkv, win1, offsets, max_smem) {
        Some(qk1) => (qk1, QK1_BLOCK),
        None => (q_launch, BLOCK),
    };
    {
        let name = &q_launch.name;
        let kernel = module::kernel(&dev, family(q_launch.file), name)?;
        let smem = q_launch.smem;
        check_smem(name, smem, kernel.max_smem, d, d)?;
        let cfg = launch_config(
            (
                blocks(n * (hq / hkv), rows_per_block)?,
                hkv as u32,
                b as u32,
            ),
            q_launch.threads,
            smem,
        );
        let mut launch = stream.launch_builder(&kernel.func);
        push_inputs(&mut launch, inputs, &lsev, &delta);
        launch.arg(&mut dq).arg(&mut dk1).arg(&mut dv1);
        launch.arg(&kshape);
        // SAFETY: the arguments follow the kernels' signature (six const bf16*, two const
        // float*, bf16* dq, float* dk1, float* dv1, Shape); every view holds the count the
        // kernel indexes (checked by `view`), the grid covers all N * G rows of every
        // (batch, K/V head), rows_per_block per block.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(name, e))?;
        clock.lap(name)?;
    }

    // k kernel (or the offset walk's k2 pass): dk2, dv2 straight into their slots of dK, dV
    let (k_launch, keys_per_block) = match offsets_k2_plan(d, hq / hkv, win1, offsets, max_smem) {
        Some(k2_pass) => (k2_pass, OFFSETS_BLOCK),
        None if k_launch.file == KernelFile::Producer => (k_launch, PRODUCER_KEYS),
        None => (k_launch, BLOCK),
    };
    let name = &k_launch.name;
    let kernel = module::kernel(&dev, family(k_launch.file), name)?;
    let smem = k_launch.smem;
    check_smem(name, smem, kernel.max_smem, d, d)?;
    let mut dk2 = output::<T>(&stream, nk, "dk2")?;
    let mut dv2 = output::<T>(&stream, nk, "dv2")?;
    {
        let cfg = launch_config(
            (blocks(n, keys_per_block)?, hkv as u32, b as u32),
            k_launch.threads,
            smem,
        );
        let mut launch = stream.launch_builder(&kernel.func);
        push_inputs(&mut launch, inputs, &lsev, &delta);
        launch.arg(&mut dk2).arg(&mut dv2);
        launch.arg(&kshape);
        // SAFETY: the arguments follow the kernels' signature (six const bf16*, two const
        // float*, bf16* dk2, bf16* dv2, Shape); dk2 and dv2 hold B*N*Hkv*D elements and the
        // grid covers all N keys of every (batch, K/V head), keys_per_block per block.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(name, e))?;
        clock.lap(name)?;
    }

    // dk1, dv1: f32 accumulators to bf16
    let name = "simplicial_bwd_f32_to_bf16";
    let kernel = module::kernel(&dev, Family::BackwardMma, name)?;
    let mut first = [
        output::<T>(&stream, nk, "dk1")?,
        output::<T>(&stream, nk, "dv1")?,
    ];
    for (src, dst) in [&dk1, &dv1].into_iter().zip(first.iter_mut()) {
        let cfg = launch_config((blocks(nk, 4 * 256)?.min(65535), 1, 1), 256, 0);
        let count = nk as i64;
        let mut launch = stream.launch_builder(&kernel.func);
        launch.arg(src).arg(dst).arg(&count);
        // SAFETY: (const float* x, bf16* y, long long n): both hold n = B*N*Hkv*D elements; the
        // kernel strides over all of them.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(name, e))?;
    }
    clock.lap("dk1, dv1 to bf16")?;

    // the kernels' (first, second) sets back in the caller's order
    let [dk_first, dv_first] = first;
    let (dk1, dk2) = oriented(ex, dk_first, dk2);
    let (dv1, dv2) = oriented(ex, dv_first, dv2);
    let wrap = |s, i: usize| wrap_tensor(s, &dev, tensors[i].shape());
    Ok([
        wrap(dq, 0),
        wrap(dk1, 1),
        wrap(dk2, 2),
        wrap(dv1, 3),
        wrap(dv2, 4),
    ])
}

/// Pushes the arguments every backward kernel takes first: q, k1, k2, v1, v2, dout (bf16), lse,
/// delta (f32).
fn push_inputs<'a, 'c: 'a>(
    launch: &mut LaunchArgs<'a>,
    bf16_inputs: [&'a CudaView<'c, half::bf16>; 6],
    lse: &'a CudaView<'c, f32>,
    delta: &'a CudaSlice<f32>,
) {
    for x in bf16_inputs {
        launch.arg(x);
    }
    launch.arg(lse).arg(delta);
}

/// With `SIMPLEX_BWD_TIMING=1`, prints the time of each launch to stderr (the stream is
/// synchronized around each, so use it for breakdowns, not for totals); otherwise does nothing.
struct KernelClock<'a> {
    stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    last: Option<std::time::Instant>,
}

impl<'a> KernelClock<'a> {
    fn new(stream: &'a std::sync::Arc<cudarc::driver::CudaStream>) -> Result<Self> {
        let on = std::env::var("SIMPLEX_BWD_TIMING").is_ok_and(|v| v == "1");
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
            .map_err(|e| cuda_err("synchronizing for SIMPLEX_BWD_TIMING", e))
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
