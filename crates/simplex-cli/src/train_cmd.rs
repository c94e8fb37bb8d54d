//! `simplex train`: flags -> `simplex_train::RunOptions`, a progress bar, a closing summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use simplex_train::{
    ModelChoice, Observer, Precision, Record, RunOptions, StartInfo, Summary, TrainOverrides,
};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Text files or folders (recursive), or one dataset folder written by `simplex prepare`
    /// (used as is); optional with --resume (the stored shards are used).
    #[arg(long, num_args = 1.., required_unless_present = "resume")]
    pub data: Vec<PathBuf>,
    #[command(flatten)]
    pub files: crate::data_args::FileFilterArgs,
    /// The run folder: config.toml, train.toml, data/, metrics.jsonl|csv, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    /// A model preset: tiny (default), small, 25m, 100m, 300m, tiny-moe, 25m-moe, 25m-moe-dot.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A model config TOML file (`simplex model config --preset NAME` prints one to start from).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Layer pattern replacing the preset's or config's, one letter per layer, bottom to top:
    /// D (dot-product), L (sliding window), S (2-simplicial), e.g. DDLS.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Continue the run in --out from its checkpoint (same losses as an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// cpu or cuda[:N] [default: cpu; with --gpus, cuda: rank r on cuda:r].
    #[arg(long)]
    pub device: Option<String>,
    /// Data-parallel training on N GPUs of this node: starts N ranks (this command again, one
    /// per GPU, cuda:0..N-1) that split every global batch of batch_size x grad_accum x N
    /// sequences and sum their gradients over NCCL (a build with --features cuda,nccl);
    /// --device cpu runs the ranks on the CPU over TCP (tests). Multi-node: NNODES, NODE_RANK,
    /// MASTER_ADDR, MASTER_PORT; an external launcher sets RANK, WORLD_SIZE, LOCAL_RANK
    /// instead (then leave --gpus out). See docs/multi-gpu.md.
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Gradient bucket size of data-parallel runs, in MiB of f32 gradients.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// Seconds a rank of a data-parallel run waits for the others before it ends the job with
    /// an error (a rank that died or hangs); must exceed the longest eval plus checkpoint.
    #[arg(long, default_value_t = 600)]
    pub ddp_timeout: u64,
    /// Total optimizer updates [default: 1000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop (with a checkpoint) after this step; --resume continues the same schedule.
    #[arg(long)]
    pub until: Option<usize>,
    /// Sequences per micro-batch [default: 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per sequence [default: the model's max_seq_len].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Micro-batches per update [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [default: 4e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cosine floor as a fraction of the peak [default: 0.01].
    #[arg(long)]
    pub min_lr_frac: Option<f64>,
    /// Linear warmup updates [default: 5% of --steps].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay [default: 0.0125].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: off) [default: 1.0].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Seed of weight init and data order [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Held-out eval every N updates and at the end (0: only at the end) [default: 100].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Batches of held-out windows per eval [default: 8].
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Checkpoint every N updates and at the end (0: only at the end) [default: 100].
    #[arg(long)]
    pub ckpt_every: Option<usize>,
    /// Also keep the newest N checkpoints as RUN_DIR/checkpoints/step-NNNNNNNN/ (0: only the
    /// latest, RUN_DIR/checkpoint/).
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    /// Also keep the checkpoint of the lowest held-out loss as RUN_DIR/checkpoint-best/
    /// (written at every eval that improves it).
    #[arg(long)]
    pub keep_best: bool,
    /// A metrics row every N updates [default: 10].
    #[arg(long)]
    pub log_every: Option<usize>,
    /// f32 or bf16 compute (master weights stay f32) [default: bf16 on CUDA, f32 on CPU].
    #[arg(long)]
    pub precision: Option<String>,
    /// bytes, bpe:VOCAB (trained on the training documents) or a tokenizers JSON file [default: bytes].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Splits files into documents; "" makes each file one document [default: <|endoftext|>].
    #[arg(long)]
    pub doc_sep: Option<String>,
    /// Fraction of documents held out for eval [default: 0.01].
    #[arg(long)]
    pub val_frac: Option<f64>,
    /// Seed of the held-out draw [default: 0].
    #[arg(long)]
    pub split_seed: Option<u64>,
    /// Eval sets scored at every held-out eval, recorded as eval/<name>_nll in metrics.jsonl:
    /// mmlu, humaneval, gsm, heldout or .jsonl paths; repeat or separate by commas.
    #[arg(long = "eval-set", value_delimiter = ',')]
    pub eval_sets: Vec<String>,
    /// Folder of the prepared eval sets [default: evals].
    #[arg(long)]
    pub eval_dir: Option<PathBuf>,
    /// Peak TFLOP/s for MFU [default: 989.4 on CUDA (H100/H200 dense bf16); none on CPU].
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Also write every metrics row (train/loss, train/lr, train/grad_norm,
    /// train/tokens_per_s, val/loss, val/bpb, eval/NAME_nll, ...) as TensorBoard events in this
    /// folder (a new events.out.tfevents.* file per session; `tensorboard --logdir DIR`).
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// Which CUDA attention kernels run: `auto`, or `key=value` pairs such as
    /// `deterministic=on` (bitwise repeatable 2-simplicial gradients; keys: docs/kernels.md).
    /// Not stored in the run: pass it again when resuming.
    #[arg(long, default_value = "auto", value_parser = crate::attn_cmd::parse_kernels)]
    pub kernels: simplex_attn::Kernels,
    /// How the gradients are computed: `auto` (the model's written-out backward where it has
    /// one: dot-product or trilinear 2-simplicial layers, dense or MoE) or `autograd`
    /// (candle's autograd always). Not stored in the run.
    #[arg(long, default_value = "auto")]
    pub backward: simplex_train::step::Backward,
}

/// A progress bar on stderr with one line per eval; when stderr is not a terminal (a log
/// file, CI), no bar but one line per metrics row instead.
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
}

impl Observer for Progress {
    fn start(&mut self, i: &StartInfo) {
        self.bar.set_length(i.end_step);
        self.bar.set_position(i.start_step);
        self.bar.reset_eta();
        let line = format!(
            "training {}: {:.2}M parameters ({:.2}M non-embedding), {} tokens per update, {} train / {} held-out tokens, steps {} -> {} of {}",
            i.run_dir.display(),
            i.params_total as f64 / 1e6,
            i.params_non_embedding as f64 / 1e6,
            i.tokens_per_step,
            i.train_tokens,
            i.val_tokens,
            i.start_step,
            i.end_step,
            i.steps
        );
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
    fn step(&mut self, step: u64, _lr: f64) {
        self.bar.set_position(step);
    }
    fn record(&mut self, r: &Record) {
        self.bar
            .set_message(format!("loss {:.4} lr {:.2e}", r.train_loss, r.lr));
        let val = match (r.val_loss, r.val_bpb) {
            (Some(vl), Some(vb)) => format!("  val_loss {vl:.4}  val_bpb {vb:.4}"),
            _ if self.tty => return,
            _ => String::new(),
        };
        let sets: String = r
            .evals
            .iter()
            .map(|(k, v)| format!("  {} {v:.4}", k.trim_start_matches("eval/")))
            .collect();
        let mfu = r
            .mfu
            .map_or(String::new(), |m| format!("  MFU {:.1}%", 100.0 * m));
        let line = format!(
            "step {:>6}: train_loss {:.4}{val}{sets}  lr {:.2e}  {:.0} tokens/s{mfu}",
            r.step, r.train_loss, r.lr, r.tokens_per_s
        );
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
    fn checkpoint(&mut self, _step: u64, _dir: &Path) {}
}

pub fn run(a: TrainArgs) -> Result<()> {
    use crate::train_ranks::{self, Role};
    match train_ranks::role(a.gpus, a.device.as_deref())? {
        Role::Single(device) => {
            let opts = options(&a, crate::device::parse(&device)?)?;
            let mut progress = Progress::new()?;
            let summary = simplex_train::train(&opts, &mut progress)?;
            progress.finish();
            report(&summary);
            Ok(())
        }
        Role::Launcher { gpus, device } => train_ranks::launch(gpus, &device, a.ddp_timeout),
        Role::Rank { topo, device } => train_ranks::run_rank(&a, topo, &device),
    }
}

/// The run's options from the flags, on `device` (with a stop flag set by Ctrl-C/SIGTERM).
pub fn options(a: &TrainArgs, device: candle_core::Device) -> Result<RunOptions> {
    let model = match (&a.preset, &a.config) {
        (Some(p), _) => Some(ModelChoice::Preset(p.clone())),
        (None, Some(c)) => Some(ModelChoice::File(c.clone())),
        (None, None) => None,
    };
    let precision = a
        .precision
        .as_deref()
        .map(str::parse::<Precision>)
        .transpose()?;
    let overrides = TrainOverrides {
        steps: a.steps,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        grad_accum: a.grad_accum,
        lr: a.lr,
        min_lr_frac: a.min_lr_frac,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        ckpt_every: a.ckpt_every,
        log_every: a.log_every,
        precision,
        tokenizer: a.tokenizer.clone(),
        doc_sep: a.doc_sep.clone(),
        val_frac: a.val_frac,
        split_seed: a.split_seed,
        eval_sets: (!a.eval_sets.is_empty()).then(|| a.eval_sets.clone()),
        eval_dir: a.eval_dir.clone(),
    };
    let mut opts = RunOptions::new(a.out.clone(), a.data.clone(), device);
    opts.model = model;
    opts.pattern = a.pattern.clone();
    opts.overrides = overrides;
    opts.resume = a.resume;
    opts.until = a.until;
    opts.peak_flops = a.peak_tflops.map(|t| t * 1e12);
    opts.filter = a.files.clone().filter();
    opts.keep = simplex_train::KeepCheckpoints {
        last: a.keep_last,
        best: a.keep_best,
    };
    opts.tensorboard = a.tensorboard.clone();
    opts.kernels = a.kernels;
    opts.backward = a.backward;
    opts.stop = Some(crate::interrupt::stop_on_signal()?);
    Ok(opts)
}

impl Progress {
    /// A bar on a terminal; one line per metrics row otherwise.
    pub fn new() -> Result<Progress> {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )?);
        Ok(Progress { bar, tty })
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The closing lines of a run; a run stopped on a signal ends the process with status 130.
pub fn report(summary: &Summary) {
    if summary.stopped {
        eprintln!(
            "{}: stopped at step {} on a signal; checkpoint {}; continue with --resume",
            summary.run_dir.display(),
            summary.step,
            summary
                .checkpoint
                .as_deref()
                .map_or("(none)".into(), |p| p.display().to_string())
        );
        std::process::exit(crate::interrupt::INTERRUPTED_EXIT);
    }
    match &summary.last {
        Some(r) => println!(
            "{}: step {}, train_loss {:.4}{}, {:.0} tokens/s; checkpoint {}",
            summary.run_dir.display(),
            summary.step,
            r.train_loss,
            r.val_loss
                .map_or(String::new(), |v| format!(", val_loss {v:.4}")),
            r.tokens_per_s,
            summary
                .checkpoint
                .as_deref()
                .map_or("(none)".into(), |p| p.display().to_string())
        ),
        None => println!(
            "{}: already at step {}; nothing to do",
            summary.run_dir.display(),
            summary.step
        ),
    }
}
