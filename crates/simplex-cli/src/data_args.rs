//! The flags that choose which files of the `--data` folders are read (`prepare` and `train`).

use clap::Args;
use simplex_train::data::FileFilter;

/// `--include`, `--exclude`, `--strict`.
#[derive(Args, Debug, Clone, Default)]
pub struct FileFilterArgs {
    /// Read only files whose path below a --data folder matches one of these globs
    /// (`*` crosses `/`: `*.py` matches at any depth); repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out files whose path matches one of these globs; repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// A file in a --data folder that is not UTF-8 text is an error (default: skipped and
    /// counted).
    #[arg(long)]
    pub strict: bool,
}

impl FileFilterArgs {
    /// The filter these flags describe.
    pub fn filter(self) -> FileFilter {
        FileFilter {
            include: self.include,
            exclude: self.exclude,
            strict: self.strict,
        }
    }
}
