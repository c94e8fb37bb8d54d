//! CUDA kernels for 2-simplicial attention (feature `cuda`): launch code and dispatch.
//!
//! Shapes as in [`crate::spec`]: `q [B,N,Hq,D]`, `k1, k2 [B,N,Hkv,D]`, `v1, v2 [B,N,Hkv,Dv]`,
//! `o [B,N,Hq,Dv]`, `lse [B,N,Hq]` (f32, natural log).
//!
//! * [`forward`](forward::forward): `kernels/simplicial_fwd.cu`, o and lse.
//! * [`backward`](backward::backward): `kernels/simplicial_bwd_dq.cu` (delta, dq) and
//!   `kernels/simplicial_bwd_dkv.cu` (dk, dv of one key/value set, launched for each set);
//!   for bf16 with D = Dv in {32, 64, 96, 128} the tensor-core kernels of
//!   `kernels/simplicial_bwd_mma.cu` (`backward_mma.rs`).
//!
//! * [`dot_forward`](dot::dot_forward), [`dot_backward`](dot_backward::dot_backward): dot-product
//!   attention (`kernels/dot_attn_*.cu`; shapes of [`crate::dot::DotSpec`]).
//!
//! The kernels take bf16 or f32 inputs and accumulate in f32; D and Dv up to 256. Which compiled
//! variant runs is chosen in one place, [`variant`]. Kernels are sm_90a cubins (Hopper), loaded
//! by [`module`]. Every CUDA call's error becomes a candle error naming the kernel.

mod backward;
mod backward_mma;
mod dot;
mod dot_backward;
mod forward;
mod forward_wgmma;
pub(crate) mod module;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use candle_core::cuda_backend::CudaStorage;
use candle_core::{DType, Layout, Result, Storage};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtrMut, DeviceRepr, LaunchConfig};

pub(crate) use backward::backward;
pub(crate) use dot::dot_forward;
pub(crate) use dot_backward::dot_backward;
pub(crate) use forward::forward;

use crate::spec::{Dims, Windows};

/// Loads kernel `$name` of `$family` on `$dev` and launches it with `$cfg` and the given
/// arguments (device addresses and values, in the kernel's parameter order); checks the
/// dynamic shared memory against the function's limit first. Used by the fused ops and the MoE
/// launchers; each call site passes the parameters in order with buffers sized for its shape.
#[macro_export]
#[doc(hidden)]
macro_rules! launch_in_family {
    ($family:expr, $dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let name: &str = &$name;
        let cfg: cudarc::driver::LaunchConfig = $cfg;
        let k = $crate::cuda::module::kernel($dev, $family, name)?;
        if cfg.shared_mem_bytes as usize > k.max_smem {
            candle_core::bail!(
                "{name}: needs {} bytes of shared memory, the device allows {}",
                cfg.shared_mem_bytes,
                k.max_smem
            )
        }
        let stream = $dev.cuda_stream();
        let mut b = stream.launch_builder(&k.func);
        $( b.arg($arg); )*
        // SAFETY: every call site passes the kernel's parameters in order, with buffers sized
        // for the shape it passes (checked from the tensors' layouts).
        unsafe { b.launch(cfg) }.map_err(|e| $crate::cuda::cuda_err(name, e))?;
    }};
}

/// The largest head dim (D of q/k, Dv of v) the kernels are compiled for.
pub const MAX_HEAD_DIM: usize = 256;

static POISON: AtomicBool = AtomicBool::new(cfg!(debug_assertions));

/// Fill every output buffer with NaN before the kernel that writes it runs (on by default in
/// debug builds), so a test sees any element a kernel leaves unwritten. Costs one memset per
/// output.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

static TENSOR_CORES: AtomicBool = AtomicBool::new(true);

/// Use the tensor-core (wgmma) kernels where they cover the call (the default). Off: every
/// call runs the CUDA-core kernels (tests compare the two). `SIMPLEX_TENSOR_CORES=0` in the
/// environment also turns them off.
pub fn set_tensor_core_kernels(on: bool) {
    TENSOR_CORES.store(on, Ordering::Relaxed);
}

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);

/// Run the deterministic backward (the CUDA-core kernels, no atomics, bitwise-equal results run
/// to run) even where the tensor-core backward covers the call; off by default. The tensor-core
/// backward adds dk1 and dv1 (the small window's set) with f32 atomics, so their last bits may
/// differ between runs. `SIMPLEX_DETERMINISTIC=1` in the environment also turns this on.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}

pub use crate::backward_plan::{OffsetsBackward, WgmmaBackward};
pub use forward_wgmma::{set_forward_variant, ForwardVariant};

static WGMMA_BACKWARD: Mutex<WgmmaBackward> = Mutex::new(WgmmaBackward::Auto);

/// Which tensor-core backward kernels run on wgmma (bf16, D = Dv in {64, 128}) rather than
/// mma.sync; [`WgmmaBackward::Auto`] (the default) picks the faster per kernel as measured. For
/// side-by-side comparisons and tests. `SIMPLEX_BWD_WGMMA` in the environment overrides it
/// (`0`, `q`, `k`, `1`; see [`WgmmaBackward::parse`]).
pub fn set_wgmma_backward(choice: WgmmaBackward) {
    if let Ok(mut c) = WGMMA_BACKWARD.lock() {
        *c = choice;
    }
}

pub(crate) fn wgmma_backward() -> WgmmaBackward {
    match std::env::var("SIMPLEX_BWD_WGMMA") {
        Ok(v) => WgmmaBackward::parse(&v),
        Err(_) => WGMMA_BACKWARD.lock().map_or(WgmmaBackward::Auto, |c| *c),
    }
}

static OFFSETS_BACKWARD: Mutex<OffsetsBackward> = Mutex::new(OffsetsBackward::Auto);

/// Which parts of the backward run the offset walk (`kernels/simplicial_bwd_offsets.cu`, bf16,
/// D = 64): [`OffsetsBackward::Auto`] (the default) as measured (the qk1 and k2 passes for
/// G <= 16), or forced per side where it covers the call. For comparisons and tests.
/// `SIMPLEX_BWD_OFFSETS=0|q|k|1` in the environment overrides it ([`OffsetsBackward::parse`]).
pub fn set_offsets_backward(choice: OffsetsBackward) {
    if let Ok(mut c) = OFFSETS_BACKWARD.lock() {
        *c = choice;
    }
}

pub(crate) fn offsets_backward() -> OffsetsBackward {
    match std::env::var("SIMPLEX_BWD_OFFSETS") {
        Ok(v) => OffsetsBackward::parse(&v),
        Err(_) => OFFSETS_BACKWARD
            .lock()
            .map_or(OffsetsBackward::Auto, |c| *c),
    }
}

pub(crate) fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
        || std::env::var("SIMPLEX_DETERMINISTIC").is_ok_and(|v| v == "1")
}

pub(crate) fn tensor_core_kernels() -> bool {
    TENSOR_CORES.load(Ordering::Relaxed)
        && std::env::var("SIMPLEX_TENSOR_CORES").map_or(true, |v| v != "0")
}

/// Makes the device's stream-ordered memory pool keep the memory it has handed out once it is
/// freed (release threshold: unlimited), as PyTorch's caching allocator does. By default the
/// pool returns free memory to the driver at every synchronization, so the next allocations map
/// it again: measured on an H100, dot-product attention at a small LM layer took 0.424 ms
/// forward and 1.834 ms forward+backward with the default, 0.197 and 1.157 with this
/// (kernels/NOTES.md). Process-wide for the device; the CLI calls it when it opens one.
pub fn retain_pool_memory(dev: &candle_core::cuda_backend::CudaDevice) -> Result<()> {
    use cudarc::driver::{result, sys};
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| cuda_err("binding the context", e))?;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut threshold = u64::MAX;
    // SAFETY: the pool is the live device's current pool; the attribute is a u64 (cuuint64_t)
    // as the driver API documents, read from a live local.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())
            .map_err(|e| cuda_err("reading the memory pool", e))?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| cuda_err("setting the memory pool's release threshold", e))?;
    }
    Ok(())
}

/// The element types the kernels are compiled for.
pub(crate) trait Element:
    candle_core::cuda_backend::CudaDType + DeviceRepr + candle_core::WithDType
{
    /// The dtype part of kernel symbols (`simplicial_fwd_bf16_dv128`).
    const NAME: &'static str;
}

impl Element for half::bf16 {
    const NAME: &'static str = "bf16";
}

impl Element for f32 {
    const NAME: &'static str = "f32";
}

/// The input dtypes the kernels take; anything else is a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    Bf16,
    F32,
}

impl Elem {
    pub(crate) fn of(dtype: DType) -> Result<Elem> {
        match dtype {
            DType::BF16 => Ok(Elem::Bf16),
            DType::F32 => Ok(Elem::F32),
            other => candle_core::bail!(
                "simplicial attention on CUDA: inputs are {other:?}, but the CUDA kernels take \
                 bf16 or f32 (convert with .to_dtype(DType::BF16) or DType::F32)"
            ),
        }
    }
}

/// The compiled width class for a head dim: kernels keep `width / 32` columns per lane in
/// registers, so each is compiled for 32, 64, 128 and 256.
pub(crate) fn width(dim: usize, what: &str) -> Result<usize> {
    match dim {
        0 => candle_core::bail!("simplicial attention on CUDA: {what} = 0"),
        1..=32 => Ok(32),
        33..=64 => Ok(64),
        65..=128 => Ok(128),
        129..=MAX_HEAD_DIM => Ok(256),
        _ => candle_core::bail!(
            "simplicial attention on CUDA: {what} = {dim}, but the CUDA kernels take head dims up \
             to {MAX_HEAD_DIM}"
        ),
    }
}

/// The kernel symbol for a family prefix, dtype and width (the one place variants are chosen):
/// `variant("simplicial_fwd", "bf16", "dv", 128)` is `simplicial_fwd_bf16_dv128`.
pub(crate) fn variant(prefix: &str, dtype: &str, dim_tag: &str, width: usize) -> String {
    format!("{prefix}_{dtype}_{dim_tag}{width}")
}

/// The launch shape every kernel takes by value; mirrors `struct Shape` in
/// `kernels/common.cuh` field by field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelShape {
    batch: i32,
    seq: i32,
    heads_q: i32,
    heads_kv: i32,
    d: i32,
    dv: i32,
    causal: i32,
    w1: i32,
    w2: i32,
    scale: f32,
}

// SAFETY: a #[repr(C)] struct of 4-byte plain values, the layout of `Shape` in common.cuh.
unsafe impl DeviceRepr for KernelShape {}

impl KernelShape {
    pub(crate) fn new(dims: &Dims, win: &Windows, scale: f64) -> Result<KernelShape> {
        let Dims {
            batch,
            seq,
            heads_q,
            heads_kv,
            d,
            dv,
        } = *dims;
        // The kernels index rows (b * N + i) * Hq + h in 32-bit ints and elements in 64-bit.
        if batch
            .checked_mul(seq)
            .and_then(|x| x.checked_mul(heads_q))
            .is_none_or(|x| x > i32::MAX as usize)
        {
            candle_core::bail!(
                "simplicial attention on CUDA: B * N * Hq = {batch} * {seq} * {heads_q} is over 2^31"
            );
        }
        if batch > 65535 || heads_kv > 65535 {
            candle_core::bail!(
                "simplicial attention on CUDA: batch {batch} and heads_kv {heads_kv} must be at most 65535"
            );
        }
        let i = |x: usize| x as i32; // in range: all are at most B * N * Hq or 256
        Ok(KernelShape {
            batch: i(batch),
            seq: i(seq),
            heads_q: i(heads_q),
            heads_kv: i(heads_kv),
            d: i(d),
            dv: i(dv),
            causal: i32::from(win.causal),
            w1: i(win.w1),
            w2: i(win.w2),
            scale: scale as f32,
        })
    }

    /// The shape in the kernels' orientation: windows exchanged when `exchange` (see
    /// [`exchange_sets`]).
    pub(crate) fn oriented(self, exchange: bool) -> KernelShape {
        if exchange {
            self.swapped()
        } else {
            self
        }
    }

    /// The same shape with the two key/value sets' windows exchanged.
    pub(crate) fn swapped(self) -> KernelShape {
        KernelShape {
            w1: self.w2,
            w2: self.w1,
            ..self
        }
    }
}

/// Whether the kernels get the two key/value sets exchanged. The forwards, the dq kernel and the
/// tensor-core backward walk their window 1 one position at a time and tile window 2, so they
/// want the smaller window first; the layer is symmetric in the two sets.
pub(crate) fn exchange_sets(win: &Windows) -> bool {
    win.w1 > win.w2
}

/// The two key (or value) sets in the kernels' order: (first, second) = (set 1, set 2), or
/// exchanged when `exchange` (see [`exchange_sets`]).
pub(crate) fn oriented<X>(exchange: bool, set1: X, set2: X) -> (X, X) {
    if exchange {
        (set2, set1)
    } else {
        (set1, set2)
    }
}

/// Views of k1, k2 (`nk` elements each) and v1, v2 (`nv` each) in the kernels' order
/// ([`oriented`] by `exchange`): `[first k, second k, first v, second v]`.
pub(crate) fn key_value_views<'a, T: Element>(
    exchange: bool,
    [(k1, lk1), (k2, lk2), (v1, lv1), (v2, lv2)]: [(&'a CudaStorage, &'a Layout); 4],
    nk: usize,
    nv: usize,
) -> Result<[CudaView<'a, T>; 4]> {
    let (ka, kb) = oriented(
        exchange,
        view::<T>(k1, lk1, "k1", nk)?,
        view::<T>(k2, lk2, "k2", nk)?,
    );
    let (va, vb) = oriented(
        exchange,
        view::<T>(v1, lv1, "v1", nv)?,
        view::<T>(v2, lv2, "v2", nv)?,
    );
    Ok([ka, kb, va, vb])
}

/// A candle error for a failed CUDA call, naming what was being done.
pub(crate) fn cuda_err(
    what: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> candle_core::Error {
    candle_core::Error::Msg(format!("simplicial attention CUDA: {what}: {e}"))
}

/// The contiguous data of a CUDA storage as a typed view of `len` elements.
pub(crate) fn view<'a, T: Element>(
    s: &'a CudaStorage,
    l: &Layout,
    name: &str,
    len: usize,
) -> Result<CudaView<'a, T>> {
    typed_view("simplicial attention", s, l, name, len)
}

/// The contiguous data of a CUDA storage as a typed view of `len` elements; `op` (which
/// attention) and `name` go into the errors.
pub(crate) fn typed_view<'a, T: Element>(
    op: &str,
    s: &'a CudaStorage,
    l: &Layout,
    name: &str,
    len: usize,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} on CUDA: {name} {:?} must be contiguous", l.shape())
    };
    if end - start != len {
        candle_core::bail!(
            "{op} on CUDA: {name} has {} elements, expected {len}",
            end - start
        );
    }
    s.as_cuda_slice::<T>()?
        .try_slice(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: {name} is out of its buffer")))
}

/// The CUDA storages and layouts behind `guards` (from `Tensor::storage_and_layout`); an error
/// naming the tensor (`op` backward: `name` ...) where one is not on the CUDA device.
pub(crate) fn cuda_storages<'a, G: Deref<Target = Storage>, const N: usize>(
    op: &str,
    names: [&str; N],
    guards: &'a [(G, &'a Layout); N],
) -> Result<[(&'a CudaStorage, &'a Layout); N]> {
    let mut st = Vec::with_capacity(N);
    for ((g, l), name) in guards.iter().zip(names) {
        match &**g {
            Storage::Cuda(s) => st.push((s, *l)),
            _ => candle_core::bail!("{op}: {name} is not on the CUDA device"),
        }
    }
    match st.try_into() {
        Ok(st) => Ok(st),
        Err(_) => unreachable!("one storage per guard"),
    }
}

/// A launch of `threads` threads per block with `smem` dynamic shared-memory bytes (checked
/// against the device's limit by the caller: `check_smem`, `dot::load`).
pub(crate) fn launch_config(grid: (u32, u32, u32), threads: u32, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// A fresh device buffer for an output; NaN-filled when poisoning is on.
pub(crate) fn output<T: Element>(
    stream: &Arc<CudaStream>,
    len: usize,
    name: &str,
) -> Result<CudaSlice<T>> {
    // SAFETY: the kernels write every element of their outputs (the grids cover all rows and
    // keys); with poisoning on, the tests check that no NaN fill survives.
    let mut s =
        unsafe { stream.alloc::<T>(len) }.map_err(|e| cuda_err(format!("allocating {name}"), e))?;
    if POISON.load(Ordering::Relaxed) && len > 0 {
        let bytes = s.num_bytes();
        let (ptr, _sync) = s.device_ptr_mut(stream);
        // SAFETY: ptr is the start of this allocation of exactly `bytes` bytes; 0xFF bytes are a
        // NaN in f32 and bf16.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }
            .map_err(|e| cuda_err(format!("poisoning {name}"), e))?;
    }
    Ok(s)
}

/// Runs a forward kernel of signature `(const T* q, k1, k2, v1, v2, T* o, float* lse, Shape)`
/// (both forwards have it), saves `lse [B,N,Hq]` (f32) in the op for the backward and returns
/// `o [B,N,Hq,Dv]` as candle storage. `kv` is (k1, k2, v1, v2) in the kernel's orientation (see
/// [`oriented`]), `shape` oriented the same way.
///
/// # Safety
/// `func` has that signature with element type `T`, every view holds the element count the
/// kernel indexes for `op.dims`, and `cfg`'s grid covers all N * G rows of every (batch, K/V
/// head), so that o and lse are fully written.
pub(crate) unsafe fn launch_forward<T: Element>(
    op: &crate::op::SimplicialOp,
    dev: &candle_core::cuda_backend::CudaDevice,
    (func, name): (&cudarc::driver::CudaFunction, &str),
    cfg: LaunchConfig,
    q: &CudaView<'_, T>,
    [k1, k2, v1, v2]: [&CudaView<'_, T>; 4],
    shape: &KernelShape,
) -> Result<(CudaStorage, candle_core::Shape)> {
    use cudarc::driver::PushKernelArg;
    let Dims {
        batch,
        seq,
        heads_q,
        dv,
        ..
    } = op.dims;
    let stream = dev.cuda_stream();
    let mut o = output::<T>(&stream, batch * seq * heads_q * dv, "o")?;
    let mut lse = output::<f32>(&stream, batch * seq * heads_q, "lse")?;
    let mut launch = stream.launch_builder(func);
    launch.arg(q).arg(k1).arg(k2).arg(v1).arg(v2);
    launch.arg(&mut o).arg(&mut lse).arg(shape);
    // SAFETY: the arguments are the kernel's (o and lse sized here for op.dims); the rest is this
    // function's own safety contract.
    unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(name, e))?;
    let lse = candle_core::Tensor::from_storage(
        candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, dev.clone())),
        (batch, seq, heads_q),
        candle_core::op::BackpropOp::none(),
        false,
    );
    op.save_lse(lse)?;
    Ok((
        CudaStorage::wrap_cuda_slice(o, dev.clone()),
        candle_core::Shape::from((batch, seq, heads_q, dv)),
    ))
}

/// A device buffer as a (non-differentiable) candle tensor of `shape`: the gradients the
/// backward hands to autograd.
pub(crate) fn wrap_tensor<T: Element>(
    s: CudaSlice<T>,
    dev: &candle_core::cuda_backend::CudaDevice,
    shape: &candle_core::Shape,
) -> candle_core::Tensor {
    candle_core::Tensor::from_storage(
        candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice::<T>(s, dev.clone())),
        shape.clone(),
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// Grid size along one axis: ceil(n / per).
pub(crate) fn blocks(n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per)).map_err(|_| {
        candle_core::Error::Msg(format!(
            "simplicial attention on CUDA: {n} rows need too many blocks"
        ))
    })
}

/// An error when a kernel would need more shared memory than the device gives one block.
pub(crate) fn check_smem(name: &str, smem: usize, max: usize, d: usize, dv: usize) -> Result<()> {
    if smem > max {
        candle_core::bail!(
            "{name}: D = {d}, Dv = {dv} need {smem} bytes of shared memory, the device allows {max}"
        );
    }
    Ok(())
}
