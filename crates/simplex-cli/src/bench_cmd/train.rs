//! `simplex bench train`: training throughput (tokens/s) and peak device memory of a model on
//! random tokens, through the trainer's own update (`simplex_train::step::Learner`: forward on
//! the bf16 working copies on CUDA, fused cross-entropy, backward, gradients gathered into the
//! flat buffer, global-norm clip and AdamW on the device), so the number is what
//! `simplex train` gets minus its data loading, metrics and checkpoints.
//!
//! ```text
//! random byte tokens -> one shard in a temporary folder -> Batcher (as in training)
//! warm-up updates, then timed updates, each between two device synchronizations
//! tokens/s = batch * seq * grad_accum / median(update seconds)
//! host time = median time until the update call returns (the work queued, before the wait)
//! then as many updates back to back (one synchronization at the end): tokens/s of a run
//! ```
//! Peak memory on CUDA: candle allocates through the device's default stream-ordered memory
//! pool (`cuMemAllocAsync`); the pool's high-water mark of used bytes
//! (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`) is the counterpart of PyTorch's
//! `torch.cuda.max_memory_allocated`, and its reserved high-water mark that of
//! `max_memory_reserved`. cuBLAS's own workspace is outside the pool.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use simplex_model::{Config, ModelInfo};
use simplex_train::config::{Precision, TrainConfig, TrainOverrides};
use simplex_train::data::{Batcher, DataPosition, ShardWriter, TokenStream};
use simplex_train::rng::SplitMix64;
use simplex_train::step::Learner;

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A model preset: tiny, small, 25m (default), 100m, 300m, tiny-moe, 25m-moe, 25m-moe-dot.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A model config TOML file (see `simplex model info`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replace the model's layer pattern (e.g. DDDDDDDD for the all-dot-product twin).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Sequences per micro-batch.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 32)]
    pub batch: usize,
    /// Tokens per sequence (default: the model's max_seq_len).
    #[arg(long = "seq-len", alias = "seq")]
    pub seq: Option<usize>,
    /// Micro-batches per update.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Timed updates.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed updates first.
    #[arg(long, default_value_t = 3)]
    pub warmup_steps: usize,
    /// Compute dtype: f32 or bf16 (default: bf16 on CUDA, f32 on the CPU, as `simplex train`).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Learning rate of every update (constant: no schedule).
    #[arg(long, default_value_t = 4e-3)]
    pub lr: f64,
    /// Seed of the weights and of the random tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Which CUDA attention kernels run (`auto`, or e.g. `deterministic=on`; keys:
    /// docs/kernels.md).
    #[arg(long, default_value = "auto", value_parser = crate::attn_cmd::parse_kernels)]
    pub kernels: simplex_attn::Kernels,
    /// How the gradients are computed: `auto` (the model's written-out backward where it has
    /// one: dot-product or trilinear 2-simplicial layers, dense or MoE) or `autograd`
    /// (candle's autograd always).
    #[arg(long, default_value = "auto")]
    pub backward: simplex_train::step::Backward,
}

/// Removes the temporary shard folder however the bench ends.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model_config(a: &TrainBenchArgs) -> Result<(Config, String)> {
    let (mut cfg, name) = match &a.config {
        Some(p) => (
            simplex_train::run::read_model_config(p)?,
            p.display().to_string(),
        ),
        None => {
            let name = a.preset.clone().unwrap_or_else(|| "25m".into());
            (Config::preset(&name)?, name)
        }
    };
    if let Some(p) = &a.pattern {
        cfg.pattern = p.clone();
        cfg.validate()
            .with_context(|| format!("--pattern {p} on {name}"))?;
    }
    Ok((cfg, name))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run(a: &TrainBenchArgs) -> Result<()> {
    if a.steps == 0 || a.batch == 0 || a.grad_accum == 0 {
        bail!("--steps, --batch-size and --grad-accum must be at least 1");
    }
    let device = crate::device::parse(&a.device)?;
    let (cfg, name) = model_config(a)?;
    let seq = a.seq.unwrap_or(cfg.max_seq_len);
    let overrides = TrainOverrides {
        steps: Some(a.warmup_steps + a.steps),
        batch_size: Some(a.batch),
        seq_len: Some(seq),
        grad_accum: Some(a.grad_accum),
        lr: Some(a.lr),
        warmup: Some(0),
        seed: Some(a.seed),
        precision: a.precision,
        ..TrainOverrides::default()
    };
    let train = TrainConfig::resolve(&overrides, cfg.max_seq_len, device.is_cuda())?;
    train.validate(cfg.max_seq_len)?;

    // random byte tokens: a few batches' worth, one shard (the batcher cycles through epochs)
    let dir = TempDir(std::env::temp_dir().join(format!(
        "simplex-bench-train-{}-{}",
        std::process::id(),
        a.seed
    )));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let width = simplex_train::data::shards::token_width(cfg.vocab_size);
    let mut writer = ShardWriter::new(&dir.0, "train", width, 1 << 30);
    let n_tokens = a.batch * seq * 4 + seq + 1;
    let mut rng = SplitMix64::derived(a.seed, 0xBE7C);
    let tokens: Vec<u32> = (0..n_tokens)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    writer.push_doc(&tokens, 0)?;
    let split = writer.finish()?;
    let stream = TokenStream::open(&dir.0, &split, width)?;
    let mut batcher = Batcher::new(&stream, seq, a.seed, DataPosition::default())?;

    let info = ModelInfo::new(&cfg, seq);
    let tokens_per_step = a.batch * seq * a.grad_accum;
    println!(
        "# simplex bench train --device {}: {name}, pattern {}, {:.2}M non-embedding parameters ({:.2}M total), batch {} x seq {seq} x grad_accum {} = {tokens_per_step} tokens per update, {}, backward {}",
        a.device,
        cfg.pattern,
        info.params_non_embedding as f64 / 1e6,
        info.params_total as f64 / 1e6,
        a.batch,
        a.grad_accum,
        train.precision,
        a.backward
    );
    let mut learner = Learner::new(&cfg, &train, &device)?
        .with_kernels(a.kernels)
        .with_backward(a.backward);
    let mut times = Vec::with_capacity(a.steps);
    let mut host_times = Vec::with_capacity(a.steps);
    let mut last_loss = f64::NAN;
    for step in 1..=(a.warmup_steps + a.steps) as u64 {
        device.synchronize()?;
        let t0 = Instant::now();
        let up = learner.update(&mut batcher, &train, a.lr)?;
        // the host's own time: queueing the update's work (and any wait inside it)
        let host = t0.elapsed().as_secs_f64();
        device.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        let (loss, _) = up.read()?;
        last_loss = loss;
        let timed = step as usize > a.warmup_steps;
        println!(
            "step {step:>4} {:>9.1} ms  loss {loss:.4}{}",
            dt * 1e3,
            if timed { "" } else { "  (warm-up)" }
        );
        if timed {
            times.push(dt);
            host_times.push(host);
        }
    }
    // the same number of updates back to back, one synchronization at the end (what a
    // training run sees: the host queues the next update while the device runs this one)
    device.synchronize()?;
    let t0 = Instant::now();
    let mut pending = Vec::with_capacity(a.steps);
    for _ in 0..a.steps {
        pending.push(learner.update(&mut batcher, &train, a.lr)?);
    }
    device.synchronize()?;
    let back_to_back = t0.elapsed().as_secs_f64() / a.steps.max(1) as f64;
    if let Some(up) = pending.last() {
        last_loss = up.read()?.0;
    }
    println!(
        "back to back: {:.1} ms per update, {:.0} tokens/s",
        back_to_back * 1e3,
        tokens_per_step as f64 / back_to_back
    );
    let med = median(&times);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mem = memory::peak(&device)?;
    let tps = tokens_per_step as f64 / med;
    println!(
        "tokens/s {tps:.0} (median of {} updates: {:.1} ms; mean {:.1} ms, {:.0} tokens/s)",
        times.len(),
        med * 1e3,
        mean * 1e3,
        tokens_per_step as f64 / mean
    );
    let host_med = median(&host_times);
    println!(
        "host: {:.1} ms per update until the call returns (median: the work queued, with any \
         wait for the device inside the update)",
        host_med * 1e3
    );
    if let Some(m) = &mem {
        println!("{}", m.describe());
    }
    let result = serde_json::json!({
        "framework": "simplex",
        "device": a.device,
        "model": name,
        "pattern": cfg.pattern,
        "params_non_embedding": info.params_non_embedding,
        "params_total": info.params_total,
        "batch": a.batch, "seq": seq, "grad_accum": a.grad_accum,
        "precision": train.precision.to_string(),
        "backward": a.backward.to_string(),
        "warmup_steps": a.warmup_steps, "steps": a.steps,
        "step_s_median": med, "step_s_mean": mean, "host_s_median": host_med,
        "tokens_per_s": tps, "tokens_per_s_mean": tokens_per_step as f64 / mean,
        "step_s_back_to_back": back_to_back,
        "tokens_per_s_back_to_back": tokens_per_step as f64 / back_to_back,
        "last_loss": last_loss,
        "peak_used_bytes": mem.as_ref().map(|m| m.used_high),
        "peak_reserved_bytes": mem.as_ref().map(|m| m.reserved_high),
        "memory_source": mem.as_ref().map(|m| m.source),
    });
    println!("RESULT {result}");
    if let Some(path) = &a.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{result}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

mod memory {
    use anyhow::Result;
    use candle_core::Device;

    /// High-water marks of device memory.
    pub struct Peak {
        /// Bytes in use at the peak (live allocations).
        pub used_high: u64,
        /// Bytes the allocator held at the peak.
        pub reserved_high: u64,
        /// Device memory in use (all processes, the CUDA context included) when read.
        pub device_used_now: u64,
        /// Where the numbers come from.
        pub source: &'static str,
    }

    impl Peak {
        pub fn describe(&self) -> String {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            format!(
                "peak memory: {:.2} GiB used, {:.2} GiB reserved ({}); device memory in use now {:.2} GiB",
                gib(self.used_high),
                gib(self.reserved_high),
                self.source,
                gib(self.device_used_now)
            )
        }
    }

    /// The peaks since the device was opened (`None` on the CPU).
    #[cfg(feature = "cuda")]
    pub fn peak(device: &Device) -> Result<Option<Peak>> {
        use candle_core::cuda_backend::cudarc::driver::{result, sys};
        let Device::Cuda(dev) = device else {
            return Ok(None);
        };
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()?;
        let (free, total) = ctx.mem_get_info()?;
        if !ctx.has_async_alloc() {
            return Ok(Some(Peak {
                used_high: 0,
                reserved_high: 0,
                device_used_now: (total - free) as u64,
                source: "no stream-ordered pool: peaks unknown",
            }));
        }
        // SAFETY: the device comes from the live context; each attribute is a u64
        // (cuuint64_t) as the driver API documents.
        let (used_high, reserved_high) = unsafe {
            let pool = result::device::get_mem_pool(ctx.cu_device())?;
            let get = |attr| -> Result<u64> {
                let mut v = 0u64;
                result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast())?;
                Ok(v)
            };
            (
                get(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
                get(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            )
        };
        Ok(Some(Peak {
            used_high,
            reserved_high,
            device_used_now: (total - free) as u64,
            source: "CUDA memory pool high-water marks",
        }))
    }

    /// The peaks since the device was opened (`None` on the CPU).
    #[cfg(not(feature = "cuda"))]
    pub fn peak(_device: &Device) -> Result<Option<Peak>> {
        Ok(None)
    }
}
