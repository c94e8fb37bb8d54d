//! `simplex bench attn`: forward and forward+backward rates of the op, beside the matrix-product
//! rate of the same machine measured in the same run.

use anyhow::Result;
use candle_core::DType;
use clap::{Args, Subcommand};
use simplex_attn::bench::{
    candle_matmul_rate, cpu_gemm_rate, cpu_shapes, cuda_shapes, run_shape, BenchShape, Clock,
    Timing, FORWARD_BACKWARD_FLOPS,
};
use simplex_attn::dot::bench as dot_bench;

mod moe;
mod train;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// 2-simplicial attention (and, on CUDA, dot-product attention rows named `dot-*`): forward
    /// and forward+backward time and FLOP rate.
    Attn(AttnBenchArgs),
    /// Training throughput (tokens/s, median update time) and peak device memory of a model
    /// on random tokens, through the trainer's update (no data files).
    Train(train::TrainBenchArgs),
    /// Mixture of experts: the grouped products and the routed expert path beside dense
    /// products of the same work (cuBLAS on CUDA).
    Moe(moe::MoeBenchArgs),
}

#[derive(Args, Debug)]
pub struct AttnBenchArgs {
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only the shapes whose name contains this (see the report for names).
    #[arg(long)]
    pub only: Option<String>,
    /// Minimum seconds of timing per measurement.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Minimum timed repetitions per measurement.
    #[arg(long, default_value_t = 3, value_parser = parse_reps)]
    pub reps: usize,
    /// Time the forward only.
    #[arg(long)]
    pub forward_only: bool,
    /// How one call is timed: `host` (wall clock to a device synchronize after each call: the
    /// launch of the first kernel and the synchronize's return included) or `events` (on CUDA,
    /// device time between events recorded around each call, as PyTorch's and Triton's
    /// benchmarks time; on the CPU the same as host).
    #[arg(long, default_value = "host")]
    pub clock: Clock,
    /// Also write the results as JSON lines to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Which CUDA kernels run every row: `auto` (chosen per shape), or `key=value` pairs such as
    /// `forward=pp` (one forward layout), `bwd-wgmma=0`, `timing=on` (the backward per kernel
    /// on stderr) or `moe=grouped` (keys: docs/kernels.md).
    #[arg(long, default_value = "auto", value_parser = crate::attn_cmd::parse_kernels)]
    pub kernels: simplex_attn::Kernels,
    /// Your own shape instead of the built-in ones (repeatable), e.g.
    /// `b=2,n=8192,hq=64,hkv=1,d=128,w1=32,w2=512`; optional `causal=false`, `variant=det`,
    /// `dtype=f32` (default bf16), windows may be `all`. Rows are named shape-1, shape-2, ...
    #[arg(long = "shape", value_name = "KEY=VALUE,...")]
    pub shapes: Vec<String>,
}

/// `--seconds`: a finite number of seconds, at least 0.
pub(crate) fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a finite number of seconds >= 0")),
    }
}

/// `--reps`: at least one timed repetition.
pub(crate) fn parse_reps(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a count of at least 1")),
    }
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Attn(a) => attn(&a),
        BenchCommand::Train(a) => train::run(&a),
        BenchCommand::Moe(a) => moe::run(&a),
    }
}

fn attn(a: &AttnBenchArgs) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let cuda = !device.is_cpu();
    let own = !a.shapes.is_empty();
    let shapes: Vec<BenchShape> = if own {
        a.shapes
            .iter()
            .enumerate()
            .map(|(i, t)| BenchShape::parse(&format!("shape-{}", i + 1), t))
            .collect::<Result<_, _>>()?
    } else if cuda {
        cuda_shapes()
    } else {
        cpu_shapes()
    }
    .into_iter()
    .filter(|s| a.only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
    .map(|mut s| {
        s.spec = s.spec.with_kernels(a.kernels);
        s
    })
    .collect();
    let (unit, div) = if cuda {
        ("TFLOP/s", 1e12)
    } else {
        ("GFLOP/s", 1e9)
    };
    println!(
        "# simplex bench attn --device {} --kernels {} --clock {}",
        a.device, a.kernels, a.clock
    );
    let timing = Timing {
        min_reps: a.reps,
        min_seconds: a.seconds,
        clock: a.clock,
    };
    println!("# FLOPs: forward = 2*(D+Dv)*pairs*Hq*B (Meta's 4*n*w1*w2*d per head, causal ramps counted exactly); fwd+bwd = 3.5x forward");
    let ceiling = if cuda {
        let r = candle_matmul_rate(&device, DType::BF16, 8192, a.seconds.min(2.0))?;
        println!(
            "# bf16 matmul 8192^3 through candle (cuBLAS): {:.1} TFLOP/s",
            r / 1e12
        );
        r
    } else {
        let threads = rayon::current_num_threads();
        let one = cpu_gemm_rate(1024, 1, a.seconds.min(2.0))?;
        let all = cpu_gemm_rate(1024, threads, a.seconds.min(2.0))?;
        println!("# f32 gemm 1024^3 through `gemm`: 1 thread {:.1} GFLOP/s, {threads} threads {:.1} GFLOP/s", one / 1e9, all / 1e9);
        all
    };
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}  config",
        "name", "fwd ms", unit, "f+b ms", unit, "fwd/mm", "f+b/mm"
    );
    let limits = simplex_attn::kernels::device_limits(&device)?;
    let mut json = Vec::new();
    for s in &shapes {
        let r = run_shape(s, &device, &timing, a.forward_only)?;
        let times = [
            r.forward_s,
            r.forward_backward_s,
            r.forward_backward_direct_s,
        ];
        let row = Row::new(&s.name, s.describe(), s.forward_flops(), times, r.reps);
        json.push(row.print(a, div, ceiling));
        if cuda {
            println!("#   kernels: {}", s.kernels(&limits)?);
        }
    }
    let dot_shapes: Vec<_> = if cuda && !own {
        dot_bench::cuda_shapes()
    } else {
        vec![]
    }
    .into_iter()
    .filter(|s| a.only.as_ref().is_none_or(|o| s.name.contains(o.as_str())))
    .map(|mut s| {
        s.spec = s.spec.with_kernels(a.kernels);
        s
    })
    .collect();
    if !dot_shapes.is_empty() {
        println!("# dot-*: dot-product attention, forward = 4*D*pairs*Hq*B (causal pairs counted exactly); fwd+bwd = 3.5x forward");
    }
    for s in &dot_shapes {
        let r = dot_bench::run_shape(s, &device, &timing, a.forward_only)?;
        let times = [
            r.forward_s,
            r.forward_backward_s,
            r.forward_backward_direct_s,
        ];
        let row = Row::new(&s.name, s.describe(), s.forward_flops(), times, r.reps);
        json.push(row.print(a, div, ceiling));
        println!("#   kernels: {}", s.kernels(&limits)?);
    }
    println!("# fwd/mm, f+b/mm: rate over the matrix-product rate measured above");
    if let Some(path) = &a.json {
        let text: String = json.iter().map(|j| format!("{j}\n")).collect();
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// One measured shape of either attention op: printed as a table row, returned as JSON.
struct Row<'a> {
    name: &'a str,
    config: String,
    forward_flops: f64,
    forward_s: f64,
    forward_backward_s: f64,
    /// Forward+backward outside autograd (NaN where not measured).
    forward_backward_direct_s: f64,
    reps: usize,
}

impl<'a> Row<'a> {
    /// A row from the forward, forward+backward and forward+backward-outside-autograd times.
    fn new(
        name: &'a str,
        config: String,
        forward_flops: f64,
        times: [f64; 3],
        reps: usize,
    ) -> Self {
        let [forward_s, forward_backward_s, forward_backward_direct_s] = times;
        Row {
            name,
            config,
            forward_flops,
            forward_s,
            forward_backward_s,
            forward_backward_direct_s,
            reps,
        }
    }

    /// Prints the row (rates divided by `div`, and as a share of the matrix-product rate
    /// `ceiling`) and returns its JSON record (with the run's device and clock).
    fn print(&self, a: &AttnBenchArgs, div: f64, ceiling: f64) -> serde_json::Value {
        let fr = self.forward_flops / self.forward_s;
        let fbr = FORWARD_BACKWARD_FLOPS * self.forward_flops / self.forward_backward_s;
        println!(
            "{:<18} {:>10.3} {:>10.2} {:>10.3} {:>10.2} {:>7.1}% {:>7.1}%  {}",
            self.name,
            self.forward_s * 1e3,
            fr / div,
            self.forward_backward_s * 1e3,
            fbr / div,
            100.0 * fr / ceiling,
            100.0 * fbr / ceiling,
            self.config
        );
        if self.forward_backward_direct_s.is_finite() {
            println!(
                "#   outside autograd (a layer with a written-out backward): f+b {:.3} ms, {:.2}",
                self.forward_backward_direct_s * 1e3,
                FORWARD_BACKWARD_FLOPS * self.forward_flops / self.forward_backward_direct_s / div
            );
        }
        let direct = Some(self.forward_backward_direct_s).filter(|t| t.is_finite());
        serde_json::json!({
            "name": self.name, "config": self.config, "device": a.device,
            "clock": a.clock.to_string(),
            "forward_s": self.forward_s, "forward_backward_s": self.forward_backward_s,
            "forward_backward_direct_s": direct,
            "forward_flops": self.forward_flops, "forward_rate": fr, "forward_backward_rate": fbr,
            "matmul_rate": ceiling, "reps": self.reps,
        })
    }
}
