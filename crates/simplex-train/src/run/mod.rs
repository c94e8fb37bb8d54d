//! Setting up a run folder: a new run (model config, settings, data) or a resumed one (the
//! saved config, settings, data and checkpoint, checked against what the command line says).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use simplex_model::Config;

mod data;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{TrainConfig, TrainOverrides};
use crate::data::{Dataset, FileFilter};
use crate::error::{IoContext, Result, TrainError};
use crate::scratch::Scratch;
use data::{adopt_data_settings, check_same_prepared, data_options, link_relative};

/// Where the model config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// A preset of simplex-model (`tiny`, `small`, ...); its vocabulary is set to the tokenizer's.
    Preset(String),
    /// A TOML file; its `vocab_size` must cover the tokenizer's ids.
    File(PathBuf),
    /// A config built by the caller (a sweep); its `vocab_size` must cover the tokenizer's ids.
    Given(Box<Config>),
}

/// What `simplex train` asks for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Text files and folders (may be empty when resuming: the stored shards are used).
    pub data: Vec<PathBuf>,
    /// The model (default: preset `tiny`; when resuming, must agree with the saved config).
    pub model: Option<ModelChoice>,
    /// A layer pattern (`--pattern`, e.g. `DDLS`) replacing the model's; when resuming, it
    /// must agree with the saved config.
    pub pattern: Option<String>,
    /// Settings given on the command line.
    pub overrides: TrainOverrides,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
    /// Where to train.
    pub device: Device,
    /// Stop (with a checkpoint) after this step even if the schedule goes on.
    pub until: Option<usize>,
    /// Peak FLOP/s for MFU (default: 989.4e12, H100/H200 dense bf16, on CUDA; none on CPU).
    pub peak_flops: Option<f64>,
    /// Tokens per shard file (default 64 Mi).
    pub shard_tokens: Option<u64>,
    /// Which files of the `data` folders are read.
    pub filter: FileFilter,
    /// Checkpoints kept besides the latest.
    pub keep: KeepCheckpoints,
    /// Set from elsewhere (a signal handler, a deadline) to stop after the current update
    /// with a checkpoint ([`crate::Summary::stopped`]).
    pub stop: Option<StopFlag>,
    /// Also write the metrics rows as a TensorBoard event file in this folder
    /// ([`crate::tensorboard`]; a new file per session).
    pub tensorboard: Option<PathBuf>,
    /// Which CUDA attention kernels run (default automatic; `deterministic=on` for bitwise
    /// repeatable 2-simplicial gradients). A setting of this session, not stored in the run.
    pub kernels: simplex_attn::Kernels,
    /// How the gradients are computed ([`crate::step::Backward`]; default: the model's
    /// written-out backward where it has one). A setting of this session, not stored in the
    /// run.
    pub backward: crate::step::Backward,
}

/// Which checkpoints a run keeps besides the latest (`RUN_DIR/checkpoint/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepCheckpoints {
    /// The newest N checkpoints as `RUN_DIR/checkpoints/step-NNNNNNNN/` (0: none).
    pub last: usize,
    /// The checkpoint of the lowest held-out loss as `RUN_DIR/checkpoint-best/` (a checkpoint
    /// is written at every eval that improves it).
    pub best: bool,
}

/// A flag that asks a run to stop after its current update (shared with whoever sets it).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag not yet set.
    pub fn new() -> Self {
        StopFlag::default()
    }
    /// Asks the run to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The prepared dataset folder (`simplex prepare`) that `paths` names, if it names exactly one
/// folder holding a `meta.json`.
pub fn prepared_dir(paths: &[PathBuf]) -> Option<&Path> {
    match paths {
        [p] if p.is_dir() && p.join("meta.json").is_file() => Some(p),
        _ => None,
    }
}

impl RunOptions {
    /// Options with defaults for everything but the folder, data and device.
    pub fn new(out: impl Into<PathBuf>, data: Vec<PathBuf>, device: Device) -> Self {
        RunOptions {
            out: out.into(),
            data,
            model: None,
            pattern: None,
            overrides: TrainOverrides::default(),
            resume: false,
            device,
            until: None,
            peak_flops: None,
            shard_tokens: None,
            filter: FileFilter::default(),
            keep: KeepCheckpoints::default(),
            stop: None,
            tensorboard: None,
            kernels: simplex_attn::Kernels::default(),
            backward: crate::step::Backward::Auto,
        }
    }
}

/// A run folder ready to train.
pub struct Prepared {
    /// The model config (vocabulary set).
    pub model_cfg: Config,
    /// The settings.
    pub train_cfg: TrainConfig,
    /// The tokenized data.
    pub data: Dataset,
    /// The checkpoint to continue from.
    pub checkpoint: Option<Checkpoint>,
    /// A resume whose command line changed the saved settings: the run's `train.toml`, not
    /// yet rewritten (see [`Prepared::save_settings`]).
    pub settings_to_save: Option<PathBuf>,
    /// A new run's folder, removed with what was written into it if this value is dropped
    /// while it is set; the trainer takes and keeps it once its setup succeeded (a setup that
    /// fails leaves nothing behind).
    pub(crate) scratch: Option<Scratch>,
}

impl Prepared {
    /// Writes the resumed run's changed settings to its `train.toml`; the trainer calls it only
    /// once everything that can fail has been set up and there are updates to run, so a
    /// resume that fails or has nothing to do leaves `train.toml` as it was.
    pub fn save_settings(&self) -> Result<()> {
        match &self.settings_to_save {
            Some(path) => checkpoint::write_atomic(path, self.train_cfg.to_toml()?.as_bytes()),
            None => Ok(()),
        }
    }
}

/// `cfg` with its layer pattern replaced by `pattern` (the `--pattern` flag), checked: one
/// letter per layer, D, L or S, and a model that is valid with it; errors name the flag.
pub fn with_pattern(mut cfg: Config, pattern: Option<&str>) -> Result<Config> {
    let Some(p) = pattern else {
        return Ok(cfg);
    };
    let bad = |reason: String| TrainError::setting("pattern", format!("{p:?}"), reason);
    if p.is_empty() {
        return Err(bad(
            "--pattern needs at least one layer letter: D (dot-product), L (sliding window) or S (2-simplicial)".into(),
        ));
    }
    if let Some((pos, c)) = p
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, 'D' | 'L' | 'S'))
    {
        return Err(bad(format!(
            "--pattern letter `{c}` at position {pos} is not a layer kind: D (dot-product), L (sliding window) or S (2-simplicial)"
        )));
    }
    cfg.pattern = p.to_string();
    cfg.validate()
        .map_err(|e| bad(format!("--pattern gives an invalid model: {e}")))?;
    Ok(cfg)
}

/// Reads a model config file; errors name the file and the key.
pub fn read_model_config(path: &Path) -> Result<Config> {
    let cfg_err = |reason: String| TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(cfg_err("no such file".into()));
    }
    let text = std::fs::read_to_string(path).at(path)?;
    Config::from_toml_str(&text).map_err(|e| cfg_err(e.to_string()))
}

fn resolve_model(choice: &ModelChoice) -> Result<Config> {
    match choice {
        ModelChoice::Preset(name) => {
            Config::preset(name).map_err(|e| TrainError::setting("preset", name, e.to_string()))
        }
        ModelChoice::File(p) => read_model_config(p),
        ModelChoice::Given(c) => Ok((**c).clone()),
    }
}

/// The first top-level or `[simplicial]` key where two configs differ, with both values.
pub fn first_difference(a: &Config, b: &Config) -> Option<(String, String, String)> {
    let (ta, tb) = (
        toml::Value::try_from(a).ok()?,
        toml::Value::try_from(b).ok()?,
    );
    fn walk(prefix: &str, a: &toml::Value, b: &toml::Value) -> Option<(String, String, String)> {
        match (a, b) {
            (toml::Value::Table(x), toml::Value::Table(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let key = format!("{prefix}{k}");
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => walk(&format!("{key}."), u, v).map(|(kk, uu, vv)| {
                            (if kk.is_empty() { key.clone() } else { kk }, uu, vv)
                        }),
                        (u, v) => Some((
                            key,
                            u.map_or("(absent)".into(), |u| u.to_string()),
                            v.map_or("(absent)".into(), |v| v.to_string()),
                        )),
                    }
                })
            }
            (u, v) if u != v => Some((String::new(), u.to_string(), v.to_string())),
            _ => None,
        }
    }
    walk("", &ta, &tb)
}

/// Sets up `opts.out` for training (see the module doc).
pub fn prepare(opts: &RunOptions) -> Result<Prepared> {
    prepare_for(opts, 1, false)
}

/// [`prepare`] for one rank of a job of `world` ranks: a new run records `world_size`, a
/// resume on another number of ranks keeps the global batch ([`crate::ddp::rebatch`]). A
/// `follower` (a rank > 0, once rank 0 has prepared the folder) opens the run as a resume
/// would and writes nothing.
pub fn prepare_for(opts: &RunOptions, world: usize, follower: bool) -> Result<Prepared> {
    let run = &opts.out;
    let (cfg_path, train_path, data_dir) = (
        run.join("config.toml"),
        run.join("train.toml"),
        run.join("data"),
    );
    if opts.resume || follower {
        if !train_path.is_file() || !cfg_path.is_file() {
            return Err(TrainError::RunDir {
                path: run.clone(),
                reason:
                    "nothing to resume (no train.toml and config.toml): start it without --resume"
                        .into(),
            });
        }
        let model_cfg = read_model_config(&cfg_path)?;
        let saved = TrainConfig::from_toml(
            &std::fs::read_to_string(&train_path).at(&train_path)?,
            &train_path,
        )?;
        let (rebatched, overrides) = crate::ddp::rebatch(&saved, &opts.overrides, world)?;
        let train_cfg = rebatched.resume_with(&overrides, model_cfg.max_seq_len)?;
        let given = match &opts.model {
            Some(choice) => {
                let mut given = resolve_model(choice)?;
                if matches!(choice, ModelChoice::Preset(_)) {
                    given.vocab_size = model_cfg.vocab_size;
                }
                Some(with_pattern(given, opts.pattern.as_deref())?)
            }
            None if opts.pattern.is_some() => {
                Some(with_pattern(model_cfg.clone(), opts.pattern.as_deref())?)
            }
            None => None,
        };
        if let Some(given) = given {
            if let Some((key, a, b)) = first_difference(&given, &model_cfg) {
                return Err(TrainError::ConfigFile {
                    path: cfg_path,
                    reason: format!("the run's model has {key} = {b}, the command line asks for {a}: a resumed run keeps its model"),
                });
            }
        }
        let data = if follower {
            Dataset::open(&data_dir)?
        } else if data_dir.join("meta.json").is_file() {
            let d = Dataset::open(&data_dir)?;
            if let Some(p) = prepared_dir(&opts.data) {
                check_same_prepared(p, &d)?;
            } else if !opts.data.is_empty() {
                d.check_matches(&data_options(&opts.data, &train_cfg, opts)?)?;
            }
            d
        } else if let Some(p) = prepared_dir(&opts.data) {
            if data_dir.symlink_metadata().is_ok() {
                std::fs::remove_file(&data_dir).at(&data_dir)?;
            }
            let d = Dataset::open(p)?;
            link_relative(p, &data_dir)?;
            d
        } else if !opts.data.is_empty() {
            crate::data::prepare(&data_options(&opts.data, &train_cfg, opts)?, &data_dir)?
        } else {
            return Err(TrainError::RunDir {
                path: run.clone(),
                reason: "the run has no tokenized data (data/meta.json): pass --data".into(),
            });
        };
        check_vocab(&model_cfg, &data, &cfg_path)?;
        let settings_to_save = (train_cfg != saved).then_some(train_path);
        let checkpoint = match checkpoint::locate(run) {
            Some(dir) => Some(Checkpoint::read(&dir, &opts.device)?),
            None => {
                if !follower {
                    tracing::warn!("{}: no checkpoint yet, starting from step 0", run.display());
                }
                None
            }
        };
        return Ok(Prepared {
            model_cfg,
            train_cfg,
            data,
            checkpoint,
            settings_to_save,
            scratch: None,
        });
    }
    let taken = [
        "train.toml",
        "config.toml",
        "metrics.jsonl",
        checkpoint::CHECKPOINT,
    ]
    .iter()
    .find(|n| run.join(n).exists());
    if let Some(n) = taken {
        return Err(TrainError::RunDir {
            path: run.clone(),
            reason: format!(
                "already holds a run ({n}): pass --resume to continue it, or choose another --out"
            ),
        });
    }
    // everything that can be checked without writing is checked before the folder exists
    let choice = opts
        .model
        .clone()
        .unwrap_or(ModelChoice::Preset("tiny".into()));
    let mut model_cfg = with_pattern(resolve_model(&choice)?, opts.pattern.as_deref())?;
    let mut train_cfg = TrainConfig::resolve(
        &opts.overrides,
        model_cfg.max_seq_len,
        opts.device.is_cuda(),
    )?;
    if prepared_dir(&opts.data).is_none() {
        data_options(&opts.data, &train_cfg, opts)?;
    }
    crate::evalsets::resolve(&train_cfg.eval_sets, &train_cfg.eval_sets_dir())?;
    // removed again (with what it holds) if the setup fails before training starts
    let scratch = Scratch::create(run)?;
    train_cfg.world_size = world;
    if data_dir.is_symlink() {
        // a run killed before writing its settings left its link to prepared data
        std::fs::remove_file(&data_dir).at(&data_dir)?;
    }
    if data_dir.exists() {
        // a run killed after tokenizing but before writing its settings left its own data/
        // (it has our meta.json): start that over; anything else there is not ours to delete
        if Dataset::open(&data_dir).is_ok() {
            std::fs::remove_dir_all(&data_dir).at(&data_dir)?;
        } else {
            return Err(TrainError::RunDir {
                path: run.clone(),
                reason: "has a data/ folder that simplex did not write: choose another --out"
                    .into(),
            });
        }
    }
    let data = match prepared_dir(&opts.data) {
        Some(p) => {
            let d = Dataset::open(p)?;
            adopt_data_settings(&mut train_cfg, &opts.overrides, &d)?;
            link_relative(p, &data_dir)?;
            Dataset::open(&data_dir)?
        }
        None => crate::data::prepare(&data_options(&opts.data, &train_cfg, opts)?, &data_dir)?,
    };
    let cfg_source = match &choice {
        ModelChoice::Preset(_) => {
            model_cfg.vocab_size = data.tokenizer.vocab_size();
            cfg_path.clone()
        }
        ModelChoice::File(p) => p.clone(),
        ModelChoice::Given(_) => cfg_path.clone(),
    };
    check_vocab(&model_cfg, &data, &cfg_source)?;
    let cfg_text = model_cfg
        .to_toml_string()
        .map_err(simplex_model::ModelError::from)?;
    checkpoint::write_atomic(&cfg_path, cfg_text.as_bytes())?;
    checkpoint::write_atomic(&train_path, train_cfg.to_toml()?.as_bytes())?;
    Ok(Prepared {
        model_cfg,
        train_cfg,
        data,
        checkpoint: None,
        settings_to_save: None,
        scratch: Some(scratch),
    })
}

fn check_vocab(cfg: &Config, data: &Dataset, path: &Path) -> Result<()> {
    let need = data.tokenizer.vocab_size();
    if cfg.vocab_size < need {
        return Err(TrainError::ConfigFile {
            path: path.to_path_buf(),
            reason: format!(
                "vocab_size = {}, but the tokenizer `{}` has {need} ids (end-of-text included): set vocab_size >= {need}",
                cfg.vocab_size, data.meta.tokenizer
            ),
        });
    }
    Ok(())
}
