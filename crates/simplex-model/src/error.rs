//! Errors of the model crate: every message names the key, shape or value at fault.

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that is out of range or contradicts another key.
    #[error("config key `{key}` = {value}: {reason}")]
    Invalid {
        /// The TOML key (dotted for sections: `simplicial.w1`).
        key: &'static str,
        /// Its value as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The TOML does not parse, or has unknown keys or wrong types (the message has the line).
    #[error("config TOML: {0}")]
    Parse(toml::de::Error),
    /// Required keys are absent (all of them listed, dotted for sections: `simplicial.w1`).
    #[error("config is missing the required key(s) {keys} (`simplex model config` prints a complete config)")]
    Missing {
        /// The absent keys, comma-separated.
        keys: String,
    },
    /// The config cannot be written as TOML.
    #[error("config TOML: {0}")]
    Write(toml::ser::Error),
    /// No preset has that name.
    #[error("unknown preset `{name}`: expected one of {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The preset names.
        known: String,
    },
}

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An attention op refused its inputs.
    #[error("attention: {0}")]
    Attn(simplex_attn::AttnError),
    /// A bad call: token shape, a cache used past `max_seq_len`, a sampling option.
    #[error("input: {0}")]
    Input(String),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<ModelError> for candle_core::Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// Result of the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;

// The wrapped errors are part of the message and not a `source()`: the CLI prints an error's
// chain, which would repeat their text.
impl From<toml::de::Error> for ConfigError {
    fn from(e: toml::de::Error) -> Self {
        ConfigError::Parse(e)
    }
}

impl From<toml::ser::Error> for ConfigError {
    fn from(e: toml::ser::Error) -> Self {
        ConfigError::Write(e)
    }
}

impl From<simplex_attn::AttnError> for ModelError {
    fn from(e: simplex_attn::AttnError) -> Self {
        ModelError::Attn(e)
    }
}
