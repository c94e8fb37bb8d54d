//! The one error type of the crate: every message names the offending value.

/// What can go wrong when calling 2-simplicial attention.
#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    /// An input shape is wrong or two shapes disagree.
    #[error("shape: {0}")]
    Shape(String),
    /// An option is out of range (window, scale, variant).
    #[error("config: {0}")]
    Config(String),
    /// An input has a dtype or device the op does not take.
    #[error("input: {0}")]
    Input(String),
    /// An error raised by candle while running the op.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<AttnError> for candle_core::Error {
    fn from(e: AttnError) -> Self {
        match e {
            AttnError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
