//! `simplex attn run`: the op on tensors from a safetensors file, so anyone can check our op
//! against their own implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use clap::{Args, Subcommand};
use simplex_attn::{simplicial_attn, AttnSpec, Kernels, Variant};

#[derive(Subcommand)]
pub enum AttnCommand {
    /// Read q, k1, k2, v1, v2 (and `do` with --backward) from a safetensors file; write o, lse
    /// (and dq, dk1, dk2, dv1, dv2).
    Run(RunArgs),
}

/// The op's options as flags.
#[derive(Args, Debug)]
pub struct SpecArgs {
    /// First window (k1, v1); omitted: unbounded.
    #[arg(long)]
    pub w1: Option<usize>,
    /// Second window (k2, v2); omitted: unbounded.
    #[arg(long)]
    pub w2: Option<usize>,
    /// Causal windows (the default).
    #[arg(long, conflicts_with = "bidirectional")]
    pub causal: bool,
    /// Bidirectional: |i - j| < w1, |i - k| < w2.
    #[arg(long)]
    pub bidirectional: bool,
    /// Logit form: trilinear or determinant.
    #[arg(long, default_value = "trilinear")]
    pub variant: Variant,
    /// Softmax scale (default 1/sqrt(D)).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Constant added to k2 (Meta's reference code uses 1/D).
    #[arg(long, default_value_t = 0.0)]
    pub k2_bias: f64,
    /// Constant added to v2 (Meta's reference code uses 1).
    #[arg(long, default_value_t = 0.0)]
    pub v2_bias: f64,
    /// Which CUDA kernels run the call: `auto` (chosen per shape), or `key=value` pairs such as
    /// `forward=pp,bwd-wgmma=0` or `deterministic=on` (keys: docs/kernels.md).
    #[arg(long, default_value = "auto", value_parser = parse_kernels)]
    pub kernels: Kernels,
}

/// `--kernels`: a bad key or value is an error naming it.
pub fn parse_kernels(text: &str) -> Result<Kernels, String> {
    text.parse()
        .map_err(|e: simplex_attn::AttnError| e.to_string())
}

impl SpecArgs {
    pub fn spec(&self) -> AttnSpec {
        AttnSpec {
            causal: !self.bidirectional,
            w1: self.w1,
            w2: self.w2,
            variant: self.variant,
            scale: self.scale,
            k2_bias: self.k2_bias,
            v2_bias: self.v2_bias,
            kernels: self.kernels,
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// safetensors file with q [B,N,Hq,D], k1, k2 [B,N,Hkv,D], v1, v2 [B,N,Hkv,Dv] (and `do` [B,N,Hq,Dv]).
    #[arg(long)]
    pub input: PathBuf,
    /// safetensors file to write (replaced atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Also compute the gradients of sum(do * o).
    #[arg(long)]
    pub backward: bool,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(cmd: AttnCommand) -> Result<()> {
    match cmd {
        AttnCommand::Run(a) => run_file(&a),
    }
}

fn take(tensors: &HashMap<String, Tensor>, name: &str, file: &Path) -> Result<Tensor> {
    match tensors.get(name) {
        Some(t) => Ok(t.clone()),
        None => {
            let mut have: Vec<&String> = tensors.keys().collect();
            have.sort();
            bail!(
                "{}: no tensor named `{name}` (the file has {have:?})",
                file.display()
            )
        }
    }
}

fn run_file(a: &RunArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    if !a.input.exists() {
        bail!("{}: no such file", a.input.display());
    }
    let tensors = candle_core::safetensors::load(&a.input, &device)
        .with_context(|| format!("{}: not a readable safetensors file", a.input.display()))?;
    let names = ["q", "k1", "k2", "v1", "v2"];
    let mut inputs = Vec::new();
    for name in names {
        let t = take(&tensors, name, &a.input)?;
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F64 | DType::BF16 | DType::F16
        ) {
            bail!(
                "{}: tensor `{name}` is {:?}; expected f32, f64, bf16 or f16",
                a.input.display(),
                t.dtype()
            );
        }
        inputs.push(Var::from_tensor(&t)?);
    }
    let spec = a.spec.spec();
    let [q, k1, k2, v1, v2] = [&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]];
    let out = simplicial_attn(q, k1, k2, v1, v2, &spec)
        .with_context(|| format!("{}", a.input.display()))?;
    let mut result: HashMap<String, Tensor> = HashMap::new();
    result.insert("o".into(), out.o.clone());
    result.insert("lse".into(), out.lse.clone());
    if a.backward {
        let dout = take(&tensors, "do", &a.input)?;
        if dout.dims() != out.o.dims() {
            bail!(
                "{}: `do` is {:?} but o is {:?}",
                a.input.display(),
                dout.dims(),
                out.o.dims()
            );
        }
        let dout = dout.to_dtype(out.o.dtype())?;
        let grads = (out.o * dout)?.sum_all()?.backward()?;
        for (name, v) in names.iter().zip(&inputs) {
            let g = grads
                .get(v)
                .with_context(|| format!("no gradient for {name}"))?;
            result.insert(format!("d{name}"), g.clone());
        }
    }
    write_atomic(&result, &a.output)?;
    let mut keys: Vec<_> = result.keys().cloned().collect();
    keys.sort();
    println!("wrote {} ({})", a.output.display(), keys.join(", "));
    Ok(())
}

/// Writes to a temporary file beside `path`, then renames it over `path`.
fn write_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    candle_core::safetensors::save(tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
