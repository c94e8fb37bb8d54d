//! Continuing from a checkpoint: its weights and optimizer state into the learner after
//! checking that it belongs to the run, and (data-parallel runs) that every rank starts from
//! the same state.

use candle_core::Device;
use simplex_model::Config;

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::ddp::{check_same, Collective};
use crate::error::{Result, TrainError};
use crate::run;
use crate::step::Learner;

/// Checks that every rank holds rank 0's step, data position, tokens seen and weights (a
/// checksum of the f32 masters), so that no rank starts from another checkpoint.
pub(crate) fn check_same_start(
    comm: &dyn Collective,
    state: &TrainState,
    learner: &Learner,
) -> Result<()> {
    let weights = learner.opt.master_weights()?;
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    // summed on the host in a fixed order: the same bits on every rank for the same weights
    let mut sum = 0f64;
    for n in names {
        let v = weights[n].flatten_all()?.to_vec1::<f32>()?;
        sum += v.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    check_same(
        comm,
        &[
            "step",
            "data epoch",
            "data cursor",
            "tokens seen",
            "the weights' checksum",
        ],
        &[
            state.step,
            state.data.epoch,
            state.data.cursor,
            state.tokens_seen,
            sum.to_bits(),
        ],
    )
}

/// Loads a checkpoint's weights and optimizer state into `learner`, after checking that its
/// configs are the run's.
pub(crate) fn restore(
    ck: &checkpoint::Checkpoint,
    mcfg: &Config,
    cfg: &TrainConfig,
    learner: &mut Learner,
    dev: &Device,
) -> Result<()> {
    check_checkpoint_configs(ck, mcfg, cfg)?;
    let opt_path = ck.dir.join("optimizer.safetensors");
    learner.opt.load(
        (&ck.dir.join("model.safetensors"), &ck.weights),
        Some((&opt_path, ck.optimizer(dev)?)),
    )?;
    if learner.opt.step_count() != ck.state.step {
        return Err(TrainError::checkpoint(
            &opt_path,
            format!(
                "optimizer step {} but state.json says step {}",
                learner.opt.step_count(),
                ck.state.step
            ),
        ));
    }
    Ok(())
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
    ctrain.eval_sets = cfg.eval_sets.clone();
    ctrain.eval_dir = cfg.eval_dir.clone();
    // a resume on another number of ranks keeps the global batch (ddp::rebatch)
    let global = |c: &TrainConfig| c.batch_size * c.grad_accum * c.world_size;
    if global(&ctrain) == global(cfg) {
        (ctrain.batch_size, ctrain.grad_accum, ctrain.world_size) =
            (cfg.batch_size, cfg.grad_accum, cfg.world_size);
    }
    if &ctrain != cfg {
        return Err(TrainError::checkpoint(
            &tpath,
            "the training settings differ from the run's train.toml: the checkpoint belongs to another run",
        ));
    }
    Ok(())
}
