//! Setting up a run folder: a new run (model config, settings, data) or a resumed one (the
//! saved config, settings, data and checkpoint, checked against what the command line says).

use std::path::{Path, PathBuf};

use candle_core::Device;
use simplex_model::Config;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{TrainConfig, TrainOverrides};
use crate::data::{self, DataOptions, Dataset};
use crate::error::{IoContext, Result, TrainError};

/// Where the model config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// A preset of simplex-model (`tiny`, `small`, ...); its vocabulary is set to the tokenizer's.
    Preset(String),
    /// A TOML file; its `vocab_size` must cover the tokenizer's ids.
    File(PathBuf),
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
}

impl RunOptions {
    /// Options with defaults for everything but the folder, data and device.
    pub fn new(out: impl Into<PathBuf>, data: Vec<PathBuf>, device: Device) -> Self {
        RunOptions {
            out: out.into(),
            data,
            model: None,
            overrides: TrainOverrides::default(),
            resume: false,
            device,
            until: None,
            peak_flops: None,
            shard_tokens: None,
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

fn write_text(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    checkpoint::write_synced(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path).at(path)
}

fn data_options(
    paths: &[PathBuf],
    c: &TrainConfig,
    shard_tokens: Option<u64>,
) -> Result<DataOptions> {
    let mut d = DataOptions::new(paths.to_vec());
    d.tokenizer = c.tokenizer.parse()?;
    d.doc_sep = c.doc_sep.clone();
    d.val_frac = c.val_frac;
    d.split_seed = c.split_seed;
    if let Some(s) = shard_tokens {
        d.shard_tokens = s;
    }
    Ok(d)
}

/// Sets up `opts.out` for training (see the module doc).
pub fn prepare(opts: &RunOptions) -> Result<Prepared> {
    let run = &opts.out;
    let (cfg_path, train_path, data_dir) = (
        run.join("config.toml"),
        run.join("train.toml"),
        run.join("data"),
    );
    if opts.resume {
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
        let train_cfg = saved.resume_with(&opts.overrides, model_cfg.max_seq_len)?;
        if let Some(choice) = &opts.model {
            let mut given = resolve_model(choice)?;
            if matches!(choice, ModelChoice::Preset(_)) {
                given.vocab_size = model_cfg.vocab_size;
            }
            if let Some((key, a, b)) = first_difference(&given, &model_cfg) {
                return Err(TrainError::ConfigFile {
                    path: cfg_path,
                    reason: format!("the run's model has {key} = {b}, the command line asks for {a}: a resumed run keeps its model"),
                });
            }
        }
        let data = if data_dir.join("meta.json").is_file() {
            let d = Dataset::open(&data_dir)?;
            if !opts.data.is_empty() {
                d.check_matches(&data_options(&opts.data, &train_cfg, opts.shard_tokens)?)?;
            }
            d
        } else if !opts.data.is_empty() {
            data::prepare(
                &data_options(&opts.data, &train_cfg, opts.shard_tokens)?,
                &data_dir,
            )?
        } else {
            return Err(TrainError::RunDir {
                path: run.clone(),
                reason: "the run has no tokenized data (data/meta.json): pass --data".into(),
            });
        };
        check_vocab(&model_cfg, &data, &cfg_path)?;
        if train_cfg != saved {
            write_text(&train_path, &train_cfg.to_toml()?)?;
        }
        let checkpoint = match checkpoint::locate(run) {
            Some(dir) => Some(Checkpoint::read(&dir, &opts.device)?),
            None => {
                tracing::warn!("{}: no checkpoint yet, starting from step 0", run.display());
                None
            }
        };
        return Ok(Prepared {
            model_cfg,
            train_cfg,
            data,
            checkpoint,
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
    std::fs::create_dir_all(run).at(run)?;
    let choice = opts
        .model
        .clone()
        .unwrap_or(ModelChoice::Preset("tiny".into()));
    let mut model_cfg = resolve_model(&choice)?;
    let train_cfg = TrainConfig::resolve(
        &opts.overrides,
        model_cfg.max_seq_len,
        opts.device.is_cuda(),
    )?;
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
    let data = data::prepare(
        &data_options(&opts.data, &train_cfg, opts.shard_tokens)?,
        &data_dir,
    )?;
    let cfg_source = match &choice {
        ModelChoice::Preset(_) => {
            model_cfg.vocab_size = data.tokenizer.vocab_size();
            cfg_path.clone()
        }
        ModelChoice::File(p) => p.clone(),
    };
    check_vocab(&model_cfg, &data, &cfg_source)?;
    write_text(
        &cfg_path,
        &model_cfg
            .to_toml_string()
            .map_err(simplex_model::ModelError::from)?,
    )?;
    write_text(&train_path, &train_cfg.to_toml()?)?;
    Ok(Prepared {
        model_cfg,
        train_cfg,
        data,
        checkpoint: None,
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
