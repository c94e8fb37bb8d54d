//! A folder a command sets up, removed again if the command fails before it is done, so a
//! failed `train`, `prepare` or `sweep` leaves no empty or half-made output folder behind.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// A folder being set up (see the module doc). Dropped while armed, it removes what this
/// process added: the folder itself and the parents [`Scratch::create`] made, or, when the
/// folder existed before, only the entries that were not there then. [`Scratch::keep`]
/// disarms it once the setup succeeded.
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
    /// The folders created, the outermost first (`root` last, when it was created).
    created: Vec<PathBuf>,
    /// The names in `root` before, when it existed.
    before: Option<HashSet<OsString>>,
    armed: bool,
}

fn names(dir: &Path) -> Result<HashSet<OsString>> {
    std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .at(dir)
}

impl Scratch {
    /// Creates `root` and its missing parents (or notes what an existing `root` holds).
    pub fn create(root: &Path) -> Result<Scratch> {
        let mut created = Vec::new();
        let mut p = Some(root);
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            created.push(dir.to_path_buf());
            p = dir.parent();
        }
        created.reverse();
        let before = if created.is_empty() {
            Some(names(root)?)
        } else {
            None
        };
        let scratch = Scratch {
            root: root.to_path_buf(),
            created,
            before,
            armed: true,
        };
        // on failure, drop removes whatever part of the chain was made
        std::fs::create_dir_all(root).at(root)?;
        Ok(scratch)
    }

    /// The setup succeeded: keep everything.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match &self.before {
            Some(before) => {
                let Ok(now) = names(&self.root) else { return };
                for name in now.difference(before) {
                    let p = self.root.join(name);
                    let dir = p.symlink_metadata().is_ok_and(|m| m.is_dir());
                    let r = if dir {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    if let Err(e) = r {
                        tracing::warn!("{}: could not remove it: {e}", p.display());
                    }
                }
            }
            None => {
                if let Some(first) = self.created.first() {
                    // every folder from the outermost created one down is ours
                    if let Err(e) = std::fs::remove_dir_all(first) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!("{}: could not remove it: {e}", first.display());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_scratch_removes_what_it_added() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| crate::TrainError::io("tempdir", e))?;
        let deep = tmp.path().join("a/b/c");
        let s = Scratch::create(&deep)?;
        std::fs::write(deep.join("f"), "x").at(&deep)?;
        drop(s);
        assert!(!tmp.path().join("a").exists(), "created parents go too");

        let kept = tmp.path().join("kept");
        let s = Scratch::create(&kept)?;
        std::fs::write(kept.join("f"), "x").at(&kept)?;
        s.keep();
        assert!(kept.join("f").is_file());

        // an existing folder keeps what it held and itself
        let s = Scratch::create(&kept)?;
        std::fs::create_dir(kept.join("new")).at(&kept)?;
        std::fs::write(kept.join("new/g"), "y").at(&kept)?;
        std::fs::write(kept.join("h"), "z").at(&kept)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&deep, kept.join("link")).at(&kept)?;
        drop(s);
        let left = names(&kept)?;
        assert_eq!(left, HashSet::from([OsString::from("f")]));
        Ok(())
    }
}
