//! Errors of the training crate: every message names the file, key or flag at fault.

use std::path::{Path, PathBuf};

/// What can go wrong preparing data, training, checkpointing, generating or plotting.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A data path that cannot be used (missing, empty, no documents).
    #[error("{}: {reason}", path.display())]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data file that is not UTF-8 text (or holds a NUL byte, as binary files do).
    #[error("{}: not UTF-8 text (invalid byte 0x{byte:02x} at byte offset {offset}, line {line}); simplex trains on UTF-8 text: convert the file (e.g. `iconv -f latin1 -t utf-8`) or leave it out (--exclude GLOB)", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// 1-based line of that byte.
        line: usize,
        /// The byte.
        byte: u8,
    },
    /// Reading or writing a file failed (full disk, permissions, ...).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error (in the message, not a `source()`: the CLI prints the chain, and the
        /// reason would show twice).
        error: std::io::Error,
    },
    /// A training setting with a value that cannot be used.
    #[error("{key} = {value}: {reason}")]
    Setting {
        /// The setting (the flag without `--`, as in train.toml).
        key: &'static str,
        /// Its value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A config file (model config.toml or train.toml) that cannot be used.
    #[error("{}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the key).
        reason: String,
    },
    /// A tokenizer that cannot be built, trained or loaded.
    #[error("tokenizer {what}: {reason}")]
    Tokenizer {
        /// The tokenizer spec or file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint that is missing, corrupted or does not fit the run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A run folder that cannot be used as asked (exists without --resume, nothing to resume).
    #[error("run folder {}: {reason}", path.display())]
    RunDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Training diverged: the loss is not finite.
    #[error("step {step}: the training loss is {loss}; lower --lr, raise --warmup or check the data (the last checkpoint is kept)")]
    Diverged {
        /// The step whose loss was not finite.
        step: usize,
        /// The loss.
        loss: f32,
    },
    /// Data-parallel training across ranks failed: a rank that died or hung, a collective the
    /// ranks disagree on, a rendezvous that did not complete, NCCL errors.
    #[error("rank {rank}: {reason}")]
    Distributed {
        /// The rank that reports it.
        rank: usize,
        /// What went wrong (names the other rank where one is at fault).
        reason: String,
    },
    /// The model refused its config or inputs.
    #[error(transparent)]
    Model(#[from] simplex_model::ModelError),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    /// An I/O error at `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        TrainError::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// A bad data path.
    pub fn data(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        TrainError::Data {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// A bad checkpoint file.
    pub fn checkpoint(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// A data-parallel failure seen by `rank`.
    pub fn distributed(rank: usize, reason: impl Into<String>) -> Self {
        TrainError::Distributed {
            rank,
            reason: reason.into(),
        }
    }

    /// A bad training setting.
    pub fn setting(
        key: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        TrainError::Setting {
            key,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result of the training crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Adds the path to I/O results: `fs::read(p).at(p)?`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| TrainError::io(path, e))
    }
}
