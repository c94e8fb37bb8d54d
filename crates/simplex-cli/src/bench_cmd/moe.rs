//! `simplex bench moe`: the grouped products of the MoE layer and its routed path, each beside
//! a dense product of the same work measured in the same run.

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use simplex_attn::moe::bench::{run as bench, MoeShape};

#[derive(Args, Debug)]
pub struct MoeBenchArgs {
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tokens per batch [default: 32768 on CUDA, 2048 on the CPU].
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Model width.
    #[arg(long, default_value_t = 512)]
    pub d_model: usize,
    /// Hidden width of one expert.
    #[arg(long, default_value_t = 704)]
    pub expert_hidden: usize,
    /// Experts.
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// bf16 or f32 [default: bf16 on CUDA, f32 on the CPU].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Minimum seconds of timing per measurement.
    #[arg(long, default_value_t = 1.0, value_parser = super::parse_seconds)]
    pub seconds: f64,
    /// Minimum timed repetitions per measurement.
    #[arg(long, default_value_t = 5, value_parser = super::parse_reps)]
    pub reps: usize,
    /// Also write the rows as JSON lines to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn run(a: &MoeBenchArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let cuda = !device.is_cpu();
    let dtype = match a.dtype.as_deref() {
        None if cuda => DType::BF16,
        None => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f32") => DType::F32,
        Some(other) => bail!("--dtype {other}: expected bf16 or f32"),
    };
    let shape = MoeShape {
        tokens: a.tokens.unwrap_or(if cuda { 32768 } else { 2048 }),
        d_model: a.d_model,
        hidden: a.expert_hidden,
        experts: a.experts,
        top_k: a.top_k,
    };
    for (flag, v) in [
        ("--experts", shape.experts),
        ("--tokens", shape.tokens),
        ("--d-model", shape.d_model),
        ("--expert-hidden", shape.hidden),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if shape.top_k == 0 || shape.top_k > shape.experts {
        bail!(
            "--top-k {} must be in 1..={} (--experts)",
            shape.top_k,
            shape.experts
        );
    }
    let (unit, div) = if cuda {
        ("TFLOP/s", 1e12)
    } else {
        ("GFLOP/s", 1e9)
    };
    println!(
        "# simplex bench moe --device {}: {} tokens, d_model {}, {} experts of hidden {}, top-{}, {dtype:?}; routing: top-k of random scores",
        a.device, shape.tokens, shape.d_model, shape.experts, shape.hidden, shape.top_k
    );
    println!("# FLOPs: 2 per multiply-add over the rows multiplied (tokens * top_k); fwd+bwd = 3x forward; dense: the same products on one matrix (cuBLAS on CUDA), or a dense SwiGLU MLP of hidden top_k * expert_hidden; routing + row moves: top-k, dispatch, permute, combine (no dense twin)");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "name", "ms", unit, "dense ms", unit, "ratio"
    );
    let rows = bench(shape, &device, dtype, a.reps, a.seconds)?;
    let mut json = String::new();
    for r in &rows {
        let (ours, dense) = (r.flops / r.seconds, r.flops / r.dense_seconds);
        if r.flops == 0.0 {
            println!(
                "{:<20} {:>10.3} {:>10} {:>10} {:>10} {:>8}",
                r.name,
                r.seconds * 1e3,
                "-",
                "-",
                "-",
                "-"
            );
        } else {
            println!(
                "{:<20} {:>10.3} {:>10.2} {:>10.3} {:>10.2} {:>7.2}x",
                r.name,
                r.seconds * 1e3,
                ours / div,
                r.dense_seconds * 1e3,
                dense / div,
                ours / dense
            );
        }
        json.push_str(&format!(
            "{}\n",
            serde_json::json!({
                "name": r.name, "device": a.device, "dtype": format!("{dtype:?}"),
                "tokens": shape.tokens, "d_model": shape.d_model, "expert_hidden": shape.hidden,
                "experts": shape.experts, "top_k": shape.top_k, "flops": r.flops,
                "seconds": r.seconds, "dense_seconds": r.dense_seconds,
            })
        ));
    }
    println!("# ratio: our rate over the dense rate (1.0: as fast as one dense product of the same work)");
    if let Some(p) = &a.json {
        std::fs::write(p, json)?;
    }
    Ok(())
}
