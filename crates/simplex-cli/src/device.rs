//! `--device cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Keeps freed device memory in the stream-ordered pool instead of returning it at every
/// synchronization (`simplex_attn::cuda::retain_pool_memory`).
#[cfg(feature = "cuda")]
fn retain(dev: &Device) -> Result<()> {
    if let Device::Cuda(d) = dev {
        simplex_attn::cuda::retain_pool_memory(d).context("configuring the CUDA memory pool")?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn retain(_: &Device) -> Result<()> {
    Ok(())
}

/// Parses a device name into a candle device (on CUDA, with a memory pool that keeps what it
/// has allocated: see [`retain`]).
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
            retain(&dev)?;
            Ok(dev)
        }
        "cuda" => bail!("device `{name}`: this simplex was built without the `cuda` feature (cargo build --release --features cuda)"),
        other => bail!("device `{other}`: expected `cpu` or `cuda[:N]`"),
    }
}
