//! Errors of the scaling-law fits: every message names the file, line, column or group at fault.

use std::path::{Path, PathBuf};

/// What can go wrong reading a results table, fitting it or writing the outputs.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Reading or writing a file failed (missing file, permissions, full disk, ...).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error (in the message, not a `source()`: the CLI prints the chain, and the
        /// reason would show twice).
        error: std::io::Error,
    },
    /// The file is not a CSV table we can read (bad quoting, ragged rows, not UTF-8, ...).
    #[error("{}{}: {reason}", path.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, where known.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The file has no header or no data rows.
    #[error("{}: {what}; expected a header with the columns kind,eval_set,params,loss and at least one row per point", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What is missing ("empty file", "no data rows").
        what: String,
    },
    /// Required columns are not in the header.
    #[error("{}: missing column{} {} (the header has: {})", path.display(), if missing.len() == 1 { "" } else { "s" }, missing.join(", "), found.join(", "))]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// The required columns that are absent.
        missing: Vec<String>,
        /// The columns the header has.
        found: Vec<String>,
    },
    /// A cell that cannot be used (not a number, not positive, empty label, ...).
    #[error("{}: line {line}: column {column} is {value:?}: {reason}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line of the row (the header is line 1).
        line: u64,
        /// The column.
        column: String,
        /// The cell as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A (kind, eval_set) group without enough distinct sizes to fit.
    #[error("group kind={kind} eval_set={eval_set}: {sizes} distinct value{} of {column}, the fits need at least 3", if *sizes == 1 { "" } else { "s" })]
    TooFewSizes {
        /// The group's kind.
        kind: String,
        /// The group's eval set.
        eval_set: String,
        /// Its number of distinct sizes.
        sizes: usize,
        /// The size column.
        column: String,
    },
    /// An option that cannot be used (unknown baseline kind, ...).
    #[error("{option} {value}: {reason}")]
    Setting {
        /// The option (as the command line spells it).
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A plot could not be drawn.
    #[error("{}: cannot draw: {reason}", path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The backend's message.
        reason: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, FitError>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    /// The error, if any, as [`FitError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|error| FitError::Io {
            path: path.to_path_buf(),
            error,
        })
    }
}
