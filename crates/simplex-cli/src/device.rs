//! `--device cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a device name into a candle device.
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
            Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
        }
        "cuda" => bail!("device `{name}`: this simplex was built without the `cuda` feature (cargo build --release --features cuda)"),
        other => bail!("device `{other}`: expected `cpu` or `cuda[:N]`"),
    }
}
