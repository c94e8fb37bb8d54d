//! The training loop:
//!
//! ```text
//! for t in start..end:
//!     lr = schedule(t)
//!     for each of grad_accum micro-batches [B, N]:
//!         loss_k = cross_entropy(model(x), y)          (f32 logits; bf16 compute on CUDA)
//!         g += grad(loss_k / grad_accum)
//!     g *= min(1, grad_clip / |g|)                     (global norm over all parameters)
//!     AdamW(g, lr)
//!     metrics row every log_every; eval every eval_every; checkpoint every ckpt_every
//! ```
//! Everything that decides the next update (weights, moments, step, data position) is in the
//! checkpoint, and nothing else is random, so a resumed run repeats the uninterrupted one: on
//! the CPU bit for bit (our attention kernels and candle's CPU matmuls reduce in a fixed
//! order for a given thread count).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use simplex_model::{Config, Model, ModelInfo};

use crate::checkpoint::{self, CheckpointFiles, MetricsSummary, TrainState};
use crate::config::{Precision, TrainConfig};
use crate::data::{eval_windows, Batcher, DataPosition, Dataset};
use crate::error::{Result, TrainError};
use crate::init::{CastFrom, SeededInit};
use crate::metrics::{MetricsLog, Record};
use crate::optim::{clip_scale, global_norm, AdamW, AdamWParams};
use crate::run::{self, RunOptions};
use crate::schedule::Schedule;

/// Peak dense bf16 FLOP/s of an H100/H200 SXM (the MFU denominator on CUDA by default).
pub const H100_BF16_PEAK: f64 = 989.4e12;

/// What a run is about to do (for progress displays).
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Updates already done (resumed runs).
    pub start_step: u64,
    /// Updates this session will stop at.
    pub end_step: u64,
    /// Updates of the whole schedule.
    pub steps: u64,
    /// Training tokens per update.
    pub tokens_per_step: u64,
    /// Model parameters.
    pub params_total: u64,
    /// Non-embedding parameters.
    pub params_non_embedding: u64,
    /// Forward FLOPs per token at the training sequence length.
    pub flops_per_token: f64,
    /// Tokens in the training split.
    pub train_tokens: u64,
    /// Tokens in the held-out split.
    pub val_tokens: u64,
}

/// Receives progress as training goes (the CLI draws a progress bar from it).
pub trait Observer {
    /// Training is about to start.
    fn start(&mut self, _info: &StartInfo) {}
    /// An update finished.
    fn step(&mut self, _step: u64, _loss: f64, _lr: f64) {}
    /// A metrics row was written.
    fn record(&mut self, _r: &Record) {}
    /// A checkpoint was written.
    fn checkpoint(&mut self, _step: u64, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// What a training session did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Updates done in total.
    pub step: u64,
    /// `(step, loss)` of every update of this session.
    pub losses: Vec<(u64, f64)>,
    /// The last metrics row.
    pub last: Option<Record>,
    /// The last checkpoint folder.
    pub checkpoint: Option<PathBuf>,
}

/// Builds the model over the f32 master variables of `vars` (created with seeded init when
/// absent); with bf16 the weights are cast copies, rebuilt per update.
fn build_model(
    cfg: &Config,
    vars: &VarMap,
    seed: u64,
    precision: Precision,
    dev: &Device,
) -> Result<Model> {
    let vb = match precision {
        Precision::F32 => VarBuilder::from_backend(
            Box::new(SeededInit {
                vars: vars.clone(),
                seed,
            }),
            DType::F32,
            dev.clone(),
        ),
        Precision::Bf16 => VarBuilder::from_backend(
            Box::new(CastFrom { vars: vars.clone() }),
            DType::BF16,
            dev.clone(),
        ),
    };
    Ok(Model::new(cfg, vb)?)
}

/// Held-out loss (nats per token) and bits per byte over fixed windows.
struct Evaluator {
    batches: Vec<(Tensor, Tensor)>,
    tokens: usize,
    bytes: u64,
}

impl Evaluator {
    fn new(data: &Dataset, cfg: &TrainConfig, dev: &Device) -> Result<Self> {
        let (seq, starts) = eval_windows(&data.val, cfg.seq_len, cfg.eval_batches * cfg.batch_size);
        let (table, exact) = data.tokenizer.token_bytes();
        if !exact {
            tracing::warn!("the tokenizer is not byte-level: val_bpb counts bytes by decoding each token alone (approximate)");
        }
        let mut batches = Vec::new();
        let mut bytes = 0u64;
        let mut window = Vec::new();
        for chunk in starts.chunks(cfg.batch_size) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for &s in chunk {
                window.clear();
                data.val.read(s, seq + 1, &mut window);
                x.extend_from_slice(&window[..seq]);
                y.extend_from_slice(&window[1..]);
            }
            bytes += y
                .iter()
                .map(|&t| table.get(t as usize).copied().unwrap_or(0) as u64)
                .sum::<u64>();
            let b = chunk.len();
            batches.push((
                Tensor::from_vec(x, (b, seq), dev)?,
                Tensor::from_vec(y, b * seq, dev)?,
            ));
        }
        Ok(Evaluator {
            tokens: starts.len() * seq,
            batches,
            bytes,
        })
    }

    fn run(&self, model: &Model) -> Result<Option<(f64, f64)>> {
        if self.tokens == 0 {
            return Ok(None);
        }
        let mut nats = 0f64;
        for (x, y) in &self.batches {
            let logits = model.forward(x)?.detach();
            let v = logits.dim(2)?;
            let n = y.dim(0)?;
            let loss =
                candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?.reshape((n, v))?, y)?;
            nats += loss.to_scalar::<f32>()? as f64 * n as f64;
        }
        let loss = nats / self.tokens as f64;
        let bpb = nats / self.bytes.max(1) as f64 / std::f64::consts::LN_2;
        Ok(Some((loss, bpb)))
    }
}

/// Trains as `opts` says (a new run or a resumed one); see the module doc.
pub fn train(opts: &RunOptions, obs: &mut dyn Observer) -> Result<Summary> {
    let prep = run::prepare(opts)?;
    let (mcfg, cfg, data) = (&prep.model_cfg, &prep.train_cfg, &prep.data);
    let dev = &opts.device;
    let vars = VarMap::new();
    let model_f32 = build_model(mcfg, &vars, cfg.seed, Precision::F32, dev)?;
    let params: Vec<(String, Var)> = {
        let map = vars
            .data()
            .lock()
            .map_err(|_| TrainError::setting("model", "vars", "lock poisoned"))?;
        let mut p: Vec<(String, Var)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        p.sort_by(|a, b| a.0.cmp(&b.0));
        p
    };
    let hp = AdamWParams {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(params.clone(), hp)?;
    let mut state = TrainState {
        format: 1,
        step: 0,
        tokens_seen: 0,
        data: DataPosition::default(),
        elapsed_s: 0.0,
        tokenizer: if data.meta.tokenizer == "bytes" {
            "bytes".into()
        } else {
            "tokenizer.json".into()
        },
        metrics: MetricsSummary::default(),
    };
    let cfg_text = mcfg
        .to_toml_string()
        .map_err(simplex_model::ModelError::from)?;
    let train_text = cfg.to_toml()?;
    if let Some(ck) = &prep.checkpoint {
        check_checkpoint_configs(ck, mcfg, cfg)?;
        ck.load_weights(opt.params())?;
        let opt_path = ck.dir.join("optimizer.safetensors");
        opt.load_state(ck.optimizer(dev)?, &opt_path)?;
        if opt.step_count() != ck.state.step {
            return Err(TrainError::checkpoint(
                &opt_path,
                format!(
                    "optimizer step {} but state.json says step {}",
                    opt.step_count(),
                    ck.state.step
                ),
            ));
        }
        state = ck.state.clone();
        tracing::info!("resumed from {} at step {}", ck.dir.display(), state.step);
    }
    let mut metrics = MetricsLog::open(
        &opts.out,
        prep.checkpoint
            .as_ref()
            .map(|c| c.state.step)
            .or(if opts.resume { Some(0) } else { None }),
    )?;
    let mut batcher = Batcher::new(&data.train, cfg.seq_len, cfg.seed, state.data)?;
    let evaluator = Evaluator::new(data, cfg, dev)?;
    let schedule = Schedule {
        peak: cfg.lr,
        min_lr_frac: cfg.min_lr_frac,
        warmup: cfg.warmup,
        steps: cfg.steps,
    };
    let info = ModelInfo::new(mcfg, cfg.seq_len);
    let tokens_per_step = (cfg.batch_size * cfg.seq_len * cfg.grad_accum) as u64;
    let peak = opts.peak_flops.or(dev.is_cuda().then_some(H100_BF16_PEAK));
    let end = opts.until.map_or(cfg.steps, |u| u.min(cfg.steps)) as u64;
    obs.start(&StartInfo {
        run_dir: opts.out.clone(),
        start_step: state.step,
        end_step: end.max(state.step),
        steps: cfg.steps as u64,
        tokens_per_step,
        params_total: info.params_total,
        params_non_embedding: info.params_non_embedding,
        flops_per_token: info.flops_per_token,
        train_tokens: data.meta.train.tokens,
        val_tokens: data.meta.val.tokens,
    });
    tracing::info!(
        "{}: {:.2}M parameters ({:.2}M non-embedding), {} tokens per update, {} train tokens ({} windows per epoch), steps {} -> {end}",
        opts.out.display(),
        info.params_total as f64 / 1e6,
        info.params_non_embedding as f64 / 1e6,
        tokens_per_step,
        data.meta.train.tokens,
        batcher.windows_per_epoch(),
        state.step
    );
    let tokenizer_json = data.dir.join("tokenizer.json");
    let files = CheckpointFiles {
        config_toml: &cfg_text,
        train_toml: &train_text,
        tokenizer_json: tokenizer_json.is_file().then_some(tokenizer_json.as_path()),
    };
    let mut summary = Summary {
        run_dir: opts.out.clone(),
        step: state.step,
        losses: Vec::new(),
        last: None,
        checkpoint: None,
    };
    let (mut int_loss, mut int_steps, mut int_time) = (0f64, 0u64, 0f64);
    let session = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut train_time = 0f64;
    while state.step < end {
        let t0 = Instant::now();
        let t = state.step as usize;
        let lr = schedule.lr(t);
        let model_bf16;
        let model = match cfg.precision {
            Precision::F32 => &model_f32,
            Precision::Bf16 => {
                model_bf16 = build_model(mcfg, &vars, cfg.seed, Precision::Bf16, dev)?;
                &model_bf16
            }
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_sum = 0f64;
        for _ in 0..cfg.grad_accum {
            let (x, y) = batcher.next_batch(cfg.batch_size)?;
            let x = Tensor::from_vec(x, (cfg.batch_size, cfg.seq_len), dev)?;
            let y = Tensor::from_vec(y, cfg.batch_size * cfg.seq_len, dev)?;
            let logits = model.forward(&x)?;
            let v = logits.dim(2)?;
            let logits = logits
                .to_dtype(DType::F32)?
                .reshape((cfg.batch_size * cfg.seq_len, v))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let scaled = if cfg.grad_accum > 1 {
                (loss / cfg.grad_accum as f64)?
            } else {
                loss
            };
            let g = scaled.backward()?;
            for (slot, (_, var)) in grads.iter_mut().zip(opt.params()) {
                if let Some(gi) = g.get(var.as_tensor()) {
                    let gi = gi.to_dtype(DType::F32)?;
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gi)?,
                        None => gi,
                    });
                }
            }
        }
        let loss = loss_sum / cfg.grad_accum as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: t + 1,
                loss: loss as f32,
            });
        }
        let grads: Vec<Tensor> = grads
            .into_iter()
            .zip(opt.params())
            .map(|(g, (_, p))| g.map_or_else(|| p.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let norm = global_norm(&grads)?;
        let scale = clip_scale(norm, cfg.grad_clip);
        opt.step(&grads, lr, scale)?;
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        state.data = batcher.position();
        let dt = t0.elapsed().as_secs_f64();
        train_time += dt;
        int_time += dt;
        int_loss += loss;
        int_steps += 1;
        summary.losses.push((state.step, loss));
        obs.step(state.step, loss, lr);
        let s = state.step;
        let final_step = s == cfg.steps as u64;
        let do_eval = (cfg.eval_every > 0 && s.is_multiple_of(cfg.eval_every as u64)) || final_step;
        if s.is_multiple_of(cfg.log_every as u64) || do_eval || s == end {
            let eval_model;
            let eval = if do_eval {
                let m = match cfg.precision {
                    Precision::F32 => &model_f32,
                    Precision::Bf16 => {
                        eval_model = build_model(mcfg, &vars, cfg.seed, Precision::Bf16, dev)?;
                        &eval_model
                    }
                };
                evaluator.run(m)?
            } else {
                None
            };
            let tps = (int_steps * tokens_per_step) as f64 / int_time.max(1e-9);
            let rec = Record {
                step: s,
                train_loss: int_loss / int_steps as f64,
                lr,
                grad_norm: norm,
                tokens_per_s: tps,
                tokens_seen: state.tokens_seen,
                elapsed_s: elapsed0 + train_time,
                val_loss: eval.map(|e| e.0),
                val_bpb: eval.map(|e| e.1),
                mfu: peak.map(|p| tps * 3.0 * info.flops_per_token / p),
            };
            metrics.append(&rec)?;
            obs.record(&rec);
            state.metrics.train_loss = Some(rec.train_loss);
            if let Some((vl, vb)) = eval {
                tracing::info!("step {s}: val_loss {vl:.4}, val_bpb {vb:.4}");
                state.metrics.val_loss = Some(vl);
                state.metrics.val_bpb = Some(vb);
                state.metrics.best_val_loss =
                    Some(state.metrics.best_val_loss.map_or(vl, |b| b.min(vl)));
            }
            summary.last = Some(rec);
            (int_loss, int_steps, int_time) = (0.0, 0, 0.0);
        }
        if (cfg.ckpt_every > 0 && s.is_multiple_of(cfg.ckpt_every as u64)) || s == end {
            state.elapsed_s = elapsed0 + train_time;
            let dir = checkpoint::save(&opts.out, opt.params(), &opt.state()?, &state, &files)?;
            tracing::info!("step {s}: checkpoint {}", dir.display());
            obs.checkpoint(s, &dir);
            summary.checkpoint = Some(dir);
        }
    }
    summary.step = state.step;
    tracing::info!(
        "session: {:.1} s wall, {:.1} s training",
        session.elapsed().as_secs_f64(),
        train_time
    );
    Ok(summary)
}

/// The checkpoint's config.toml and train.toml must be the run's (the error names the file
/// and the first key that differs).
fn check_checkpoint_configs(
    ck: &checkpoint::Checkpoint,
    mcfg: &Config,
    cfg: &TrainConfig,
) -> Result<()> {
    let cpath = ck.dir.join("config.toml");
    let ccfg = run::read_model_config(&cpath)?;
    if let Some((key, a, b)) = run::first_difference(&ccfg, mcfg) {
        return Err(TrainError::checkpoint(
            &cpath,
            format!("{key} = {a}, but the run's config.toml has {b}: the checkpoint belongs to another model"),
        ));
    }
    let tpath = ck.dir.join("train.toml");
    let mut ctrain = TrainConfig::from_toml(&ck.train_toml, &tpath)?;
    // the settings a resume may change
    ctrain.steps = cfg.steps;
    ctrain.eval_every = cfg.eval_every;
    ctrain.eval_batches = cfg.eval_batches;
    ctrain.ckpt_every = cfg.ckpt_every;
    ctrain.log_every = cfg.log_every;
    if &ctrain != cfg {
        return Err(TrainError::checkpoint(
            &tpath,
            "the training settings differ from the run's train.toml: the checkpoint belongs to another run",
        ));
    }
    Ok(())
}
