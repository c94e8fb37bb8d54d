//! The data side of setting up a run: the data options of its settings, a prepared dataset's
//! settings taken into the run, and the run's link to a prepared dataset folder.

use std::path::{Path, PathBuf};

use super::RunOptions;
use crate::config::{TrainConfig, TrainOverrides};
use crate::data::{DataOptions, Dataset};
use crate::error::{IoContext, Result, TrainError};

/// The data options that the run's settings `c` give for `paths`.
pub(super) fn data_options(
    paths: &[PathBuf],
    c: &TrainConfig,
    opts: &RunOptions,
) -> Result<DataOptions> {
    let mut d = DataOptions::new(paths.to_vec());
    d.tokenizer = c.tokenizer.parse()?;
    d.doc_sep = c.doc_sep.clone();
    d.val_frac = c.val_frac;
    d.split_seed = c.split_seed;
    d.filter = opts.filter.clone();
    if let Some(s) = opts.shard_tokens {
        d.shard_tokens = s;
    }
    Ok(d)
}

/// Takes the data settings of a prepared dataset into `cfg`; a setting given on the command
/// line that differs from the dataset's is an error naming it.
pub(super) fn adopt_data_settings(
    cfg: &mut TrainConfig,
    o: &TrainOverrides,
    d: &Dataset,
) -> Result<()> {
    let m = &d.meta;
    let clash = |key: &'static str, given: String, stored: String| {
        TrainError::setting(
            key,
            given,
            format!(
                "the prepared data in {} has {stored}; prepare it again to change it",
                d.dir.display()
            ),
        )
    };
    if let Some(t) = o.tokenizer.as_ref().filter(|t| **t != m.tokenizer) {
        return Err(clash("tokenizer", t.clone(), m.tokenizer.clone()));
    }
    if let Some(s) = o.doc_sep.as_ref().filter(|s| **s != m.doc_sep) {
        return Err(clash(
            "doc_sep",
            format!("{s:?}"),
            format!("{:?}", m.doc_sep),
        ));
    }
    if let Some(v) = o.val_frac.filter(|v| *v != m.val_frac) {
        return Err(clash("val_frac", v.to_string(), m.val_frac.to_string()));
    }
    if let Some(v) = o.split_seed.filter(|v| *v != m.split_seed) {
        return Err(clash("split_seed", v.to_string(), m.split_seed.to_string()));
    }
    cfg.tokenizer = m.tokenizer.clone();
    cfg.doc_sep = m.doc_sep.clone();
    cfg.val_frac = m.val_frac;
    cfg.split_seed = m.split_seed;
    Ok(())
}

/// `link -> target` as a relative symbolic link (so that the two folders can move together).
pub(super) fn link_relative(target: &Path, link: &Path) -> Result<()> {
    let target_abs = target.canonicalize().at(target)?;
    let parent = link.parent().unwrap_or(Path::new("."));
    let from = parent.canonicalize().at(parent)?;
    let common = from
        .components()
        .zip(target_abs.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in target_abs.components().skip(common) {
        rel.push(c);
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&rel, link).at(link)
    }
    #[cfg(not(unix))]
    {
        let _ = rel;
        Err(TrainError::data(
            target,
            "a prepared data folder is linked into the run, which needs a Unix system",
        ))
    }
}

/// Checks that the prepared folder `given` holds the same data as the run's `stored` one.
pub(super) fn check_same_prepared(given: &Path, stored: &Dataset) -> Result<()> {
    let g = Dataset::open(given)?;
    let (a, b) = (&g.meta, &stored.meta);
    if a.fingerprint != b.fingerprint
        || a.tokenizer != b.tokenizer
        || a.train != b.train
        || a.val != b.val
    {
        return Err(TrainError::data(
            given,
            format!(
                "holds other data than the run's ({}): resume without --data, or start a new run",
                stored.dir.display()
            ),
        ));
    }
    Ok(())
}
