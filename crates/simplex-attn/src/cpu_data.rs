//! Reading the data of candle CPU tensors inside custom ops (both attention ops use these).

use candle_core::{CpuStorage, Layout, Storage, Tensor, WithDType};

/// The contiguous data of a CPU storage as `&[T]`; `op` and `name` go into the error.
pub(crate) fn cpu_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    name: &str,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: {name} must be contiguous"),
    }
}

/// Calls `f` with the contiguous CPU data of `N` tensors (a backward's inputs, o, dout, lse),
/// holding their storage locks meanwhile; `names` go into the errors.
pub(crate) fn with_cpu_slices<T: WithDType, R, const N: usize>(
    op: &str,
    tensors: [&Tensor; N],
    names: [&str; N],
    f: impl FnOnce([&[T]; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[T]; N] = [&[]; N];
    for (((guard, layout), name), slot) in guards.iter().zip(names).zip(slices.iter_mut()) {
        match &**guard {
            Storage::Cpu(s) => *slot = cpu_slice::<T>(s, layout, op, name)?,
            _ => candle_core::bail!("{op}: {name} is not on the CPU"),
        }
    }
    f(slices)
}
