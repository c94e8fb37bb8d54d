//! The training loop:
//!
//! ```text
//! setup     run folder, data, model (seeded) and AdamW; a resumed run loads its checkpoint
//! for t in start..end:
//!     update(lr = schedule(t))                           see step.rs
//!     metrics row every log_every; eval every eval_every and at the last step (eval.rs,
//!     and the eval sets of `eval_sets`, evalsets/);
//!     checkpoint every ckpt_every and at the end (checkpoint.rs)
//! ```
//! Everything that decides the next update (weights, moments, step, data position) is in the
//! checkpoint, and nothing else is random, so a resumed run repeats the uninterrupted one: on
//! the CPU bit for bit (our attention kernels and candle's CPU matmuls reduce in a fixed
//! order for a given thread count).
//!
//! [`train_ranked`] is the same loop on one rank of a data-parallel job (crate::ddp): the
//! gradients are summed over the ranks, the logged losses averaged, and only rank 0 evaluates
//! and writes metrics and checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use simplex_model::ModelInfo;

use crate::checkpoint::{self, CheckpointFiles, MetricsSummary, TrainState};
use crate::data::{Batcher, DataPosition};
use crate::ddp::{self, Collective, Distributed, RankBatcher, ReduceOp, Solo};
use crate::error::{Result, TrainError};
use crate::eval::Evaluator;
use crate::evalsets::{self, EvalSource, ScoreOptions};
use crate::metrics::{eval_key, MetricsLog, Record};
use crate::restore::{check_same_start, restore};
use crate::run::RunOptions;
use crate::schedule::Schedule;
use crate::step::{Learner, Update};

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
    /// An update finished (its loss is read at the next metrics row, [`Observer::record`]).
    fn step(&mut self, _step: u64, _lr: f64) {}
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
    /// The run stopped early because [`RunOptions::stop`] was set (after writing a
    /// checkpoint of its last update).
    pub stopped: bool,
}

/// Metrics accumulated since the last row. Updates leave their loss and gradient norm on the
/// device ([`Update`]); they are read when a row or a checkpoint is written, one wait for
/// several updates.
#[derive(Default)]
struct Interval {
    pending: Vec<(u64, Update)>,
    loss: f64,
    steps: u64,
    grad_norm: f64,
    seconds: f64,
    /// The MoE statistics of the last resolved update.
    moe: Option<simplex_model::MoeLoss>,
}

impl Interval {
    /// Reads the pending updates into the sums (every loss also into `losses`), each loss the
    /// mean over the ranks of `comm`; a non-finite loss is a divergence error naming its step.
    fn resolve(&mut self, losses: &mut Vec<(u64, f64)>, comm: &dyn Collective) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let part = |f: fn(&Update) -> &Tensor| -> Result<Tensor> {
            let ts: Vec<Tensor> = self.pending.iter().map(|(_, u)| f(u).clone()).collect();
            Ok(Tensor::cat(&ts, 0)?)
        };
        let mut loss = part(|u| &u.loss)?.copy()?;
        if comm.world() > 1 {
            comm.all_reduce(&loss, ReduceOp::Sum)?;
            loss = (loss / comm.world() as f64)?;
        }
        let values = Tensor::stack(&[loss, part(|u| &u.grad_norm)?], 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for ((step, _), v) in self.pending.iter().zip(values.chunks(2)) {
            let loss = v[0] as f64;
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    step: *step as usize,
                    loss: v[0],
                });
            }
            losses.push((*step, loss));
            self.loss += loss;
            self.steps += 1;
            self.grad_norm = v[1] as f64;
        }
        if let Some((_, u)) = self.pending.last() {
            self.moe = u.moe.clone();
        }
        self.pending.clear();
        Ok(())
    }
}

/// How often, at most, the ranks of a job agree on whether to stop (updates).
const STOP_CHECK_EVERY: usize = 10;

/// Trains as `opts` says (a new run or a resumed one); see the module doc.
pub fn train(opts: &RunOptions, obs: &mut dyn Observer) -> Result<Summary> {
    let solo = Solo::new(opts.device.clone());
    train_ranked(opts, obs, &Distributed::new(&solo))
}

/// [`train`] as one rank of a data-parallel job (see the module doc and crate::ddp); every
/// rank of the job calls it with the same options.
pub fn train_ranked(
    opts: &RunOptions,
    obs: &mut dyn Observer,
    dist: &Distributed,
) -> Result<Summary> {
    let comm = dist.comm;
    let (lead, world) = (comm.rank() == 0, comm.world());
    let mut prep = ddp::prepare_ranks(opts, comm)?;
    let (mcfg, cfg, data, dev) = (&prep.model_cfg, &prep.train_cfg, &prep.data, &opts.device);
    let mut learner = Learner::new(mcfg, cfg, dev)?
        .with_kernels(opts.kernels)
        .with_backward(opts.backward);
    if world > 1 {
        learner.distribute(dist.bucket_bytes)?;
    }
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
    if let Some(ck) = &prep.checkpoint {
        restore(ck, mcfg, cfg, &mut learner, dev)?;
        state = ck.state.clone();
        tracing::info!("resumed from {} at step {}", ck.dir.display(), state.step);
    }
    if world > 1 {
        check_same_start(comm, &state, &learner)?;
    }
    let resumed_at = prep.checkpoint.as_ref().map(|c| c.state.step);
    let mut metrics = match lead {
        true => Some(MetricsLog::open(
            &opts.out,
            resumed_at.or(opts.resume.then_some(0)),
        )?),
        false => None,
    };
    let batcher = Batcher::new(&data.train, cfg.seq_len, cfg.seed, state.data)?;
    let mut batcher = RankBatcher::new(batcher, comm.rank(), world)?;
    let evaluator = lead.then(|| Evaluator::new(data, cfg, dev)).transpose()?;
    let eval_sets = match lead {
        true => evalsets::resolve(&cfg.eval_sets, &cfg.eval_sets_dir())?,
        false => Vec::new(),
    };
    let eval_opts = ScoreOptions {
        batch_size: cfg.batch_size,
        max_items: None,
        max_len: Some(cfg.seq_len),
    };
    let schedule = Schedule {
        peak: cfg.lr,
        min_lr_frac: cfg.min_lr_frac,
        warmup: cfg.warmup,
        steps: cfg.steps,
    };
    let info = ModelInfo::new(mcfg, cfg.seq_len);
    let tokens_per_step = (cfg.batch_size * cfg.seq_len * cfg.grad_accum * world) as u64;
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
        "{}: {:.2}M parameters, {tokens_per_step} tokens per update, {} windows per epoch, steps {} -> {end}",
        opts.out.display(),
        info.params_total as f64 / 1e6,
        batcher.windows_per_epoch(),
        state.step
    );
    let cfg_text = mcfg
        .to_toml_string()
        .map_err(simplex_model::ModelError::from)?;
    let train_text = cfg.to_toml()?;
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
        stopped: false,
    };
    let mut interval = Interval::default();
    let elapsed0 = state.elapsed_s;
    let mut train_time = 0f64;
    let mut board = None;
    if state.step < end && lead {
        // a resume that changed settings records them only now that it runs
        prep.save_settings()?;
        if let Some(dir) = &opts.tensorboard {
            let mut w = crate::tensorboard::EventWriter::create(dir)?;
            w.session_start(state.step + 1)?;
            tracing::info!("TensorBoard events: {}", w.path().display());
            board = Some(w);
        }
    }
    // set up: from here on a new run's folder stays, even if training fails
    if let Some(s) = prep.scratch.take() {
        s.keep();
    }
    let mut t0 = Instant::now();
    while state.step < end {
        let lr = schedule.lr(state.step as usize);
        comm.progress();
        let up = learner.update_ranked(&mut batcher, cfg, lr, comm)?;
        state.step += 1;
        state.tokens_seen += tokens_per_step;
        state.data = batcher.position();
        interval.pending.push((state.step, up));
        obs.step(state.step, lr);
        let s = state.step;
        let every = |n: usize| n > 0 && s.is_multiple_of(n as u64);
        let wants_stop = s < end && opts.stop.as_ref().is_some_and(|f| f.is_set());
        // every rank must stop after the same update: they agree at fixed steps
        let stop = match world {
            1 => wants_stop,
            _ if s < end && every(cfg.log_every.min(STOP_CHECK_EVERY)) => {
                ddp::any(comm, wants_stop)?
            }
            _ => false,
        };
        let do_eval = every(cfg.eval_every) || s == cfg.steps as u64;
        let row = every(cfg.log_every) || do_eval || s == end || stop;
        let do_ckpt = every(cfg.ckpt_every) || s == end || stop;
        if !(row || do_ckpt) {
            continue;
        }
        // whether this step's held-out loss is the run's best so far
        let mut best = false;
        // reading the losses waits for the device: the timed interval ends here
        interval.resolve(&mut summary.losses, comm)?;
        let dt = t0.elapsed().as_secs_f64();
        train_time += dt;
        interval.seconds += dt;
        if row {
            let eval = match &evaluator {
                Some(ev) if do_eval => ev.run(learner.model())?,
                _ => None,
            };
            let tps = (interval.steps * tokens_per_step) as f64 / interval.seconds.max(1e-9);
            let evals = if do_eval && lead {
                let heldout = eval.map(|e| e.0);
                set_nlls(learner.model(), data, &eval_sets, &eval_opts, heldout, s)?
            } else {
                Default::default()
            };
            let moe = interval
                .moe
                .as_ref()
                .map(crate::metrics::moe_fields)
                .transpose()?;
            let rec = Record {
                step: s,
                train_loss: interval.loss / interval.steps.max(1) as f64,
                lr,
                grad_norm: interval.grad_norm,
                tokens_per_s: tps,
                tokens_seen: state.tokens_seen,
                elapsed_s: elapsed0 + train_time,
                val_loss: eval.map(|e| e.0),
                val_bpb: eval.map(|e| e.1),
                mfu: peak.map(|p| tps * 3.0 * info.flops_per_token / (p * world as f64)),
                moe_balance_loss: moe.as_ref().map(|m| m.0),
                moe_z_loss: moe.as_ref().map(|m| m.1),
                moe_max_load: moe.as_ref().map(|m| m.2),
                moe_load: moe.map(|m| m.3),
                evals,
            };
            if let Some(m) = &mut metrics {
                m.append(&rec)?;
            }
            if let Some(w) = &mut board {
                w.record(&rec)?;
            }
            comm.progress();
            obs.record(&rec);
            let m = &mut state.metrics;
            m.train_loss = Some(rec.train_loss);
            if let Some((vl, vb)) = eval {
                tracing::info!("step {s}: val_loss {vl:.4}, val_bpb {vb:.4}");
                (m.val_loss, m.val_bpb) = (Some(vl), Some(vb));
                best = m.best_val_loss.is_none_or(|b| vl < b);
                m.best_val_loss = Some(m.best_val_loss.map_or(vl, |b| b.min(vl)));
            }
            summary.last = Some(rec);
            interval = Interval::default();
        }
        let best = best && opts.keep.best;
        if lead && (do_ckpt || best) {
            state.elapsed_s = elapsed0 + train_time;
            let opt = &learner.opt;
            let dir = checkpoint::save(
                &opts.out,
                &opt.master_weights()?,
                &opt.state()?,
                &state,
                &files,
            )?;
            tracing::info!("step {s}: checkpoint {}", dir.display());
            checkpoint::keep_copies(&opts.out, &dir, s, opts.keep.last, best)?;
            obs.checkpoint(s, &dir);
            summary.checkpoint = Some(dir);
        }
        if stop {
            tracing::info!("step {s}: stopped on request");
            summary.stopped = true;
            break;
        }
        t0 = Instant::now();
    }
    summary.step = state.step;
    if world > 1 {
        // the ranks end together, once rank 0's last checkpoint is written: no rank sees
        // another leave while it still works
        comm.barrier()?;
    }
    Ok(summary)
}

/// `eval/<name>_nll` of each eval set at step `step` (`heldout` is `val_loss`, absent when
/// the held-out split is too short).
fn set_nlls(
    model: &simplex_model::Model,
    data: &crate::data::Dataset,
    sets: &[EvalSource],
    opts: &ScoreOptions,
    heldout: Option<f64>,
    step: u64,
) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for src in sets {
        let nll = match src {
            EvalSource::Set(set) => evalsets::score(model, &data.tokenizer, set, opts)?.nll,
            EvalSource::Heldout => match heldout {
                Some(v) => v,
                None => continue,
            },
        };
        tracing::info!("step {step}: {} nll {nll:.4}", src.name());
        out.insert(eval_key(src.name()), nll);
    }
    Ok(out)
}
