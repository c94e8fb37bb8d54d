//! `--device cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Sets up a CUDA device for simplex's work:
/// - freed device memory stays in the stream-ordered pool instead of going back at every
///   synchronization (`simplex_attn::cuda::retain_pool_memory`);
/// - cudarc's tracking of buffer uses across streams is off for the buffers created from here
///   on. candle runs a device on one stream of its own, which puts cudarc in its multi-stream
///   mode: every buffer then creates two CUDA events when allocated and every kernel argument
///   records one and waits on another, host work before each launch that orders nothing when
///   all work runs on that one stream.
#[cfg(feature = "cuda")]
fn configure(dev: &Device) -> Result<()> {
    if let Device::Cuda(d) = dev {
        simplex_attn::cuda::retain_pool_memory(d).context("configuring the CUDA memory pool")?;
        // SAFETY: everything simplex runs on this device (candle's kernels, ours, the NCCL
        // collectives of `train --gpus`, host copies) is issued on candle's one stream of the
        // device, so no buffer is used on a second stream and stream order alone orders uses.
        unsafe { d.disable_event_tracking() };
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn configure(_: &Device) -> Result<()> {
    Ok(())
}

/// Parses a device name into a candle device (on CUDA, set up by [`configure`]).
pub fn parse(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, o)) => (
            k,
            o.parse::<usize>()
                .with_context(|| format!("device `{name}`: bad ordinal"))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => {
            let dev = Device::new_cuda(ordinal)
                .with_context(|| format!("opening CUDA device {ordinal}"))?;
            configure(&dev)?;
            Ok(dev)
        }
        "cuda" => bail!("device `{name}`: this simplex was built without the `cuda` feature (cargo build --release --features cuda)"),
        other => bail!("device `{other}`: expected `cpu` or `cuda[:N]`"),
    }
}
