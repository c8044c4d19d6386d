//! Data dirs a start created, so that a failed start leaves none behind half made.
//!
//! [`CreatedDir::create`] makes a data dir (and its missing parents) and remembers the topmost
//! directory it made; [`CreatedDir::remove`] removes exactly that after a failed start, and
//! nothing when the directory was already there: an operator's existing data dir, or anything
//! in it, is never removed.

use std::path::{Path, PathBuf};

use crate::error::LedgerError;

/// What creating a data dir created. See the module doc.
#[derive(Debug)]
#[must_use = "remove what was created if the start fails"]
pub struct CreatedDir {
    path: PathBuf,
    /// The topmost directory this run created (`path` or one of its parents); `None` when
    /// `path` existed.
    top: Option<PathBuf>,
}

impl CreatedDir {
    /// Creates `path` and its missing parents, remembering the topmost one that did not exist.
    pub fn create(path: &Path) -> Result<Self, LedgerError> {
        let top =
            path.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf);
        std::fs::create_dir_all(path).map_err(|source| LedgerError::Io { path: path.to_path_buf(), source })?;
        Ok(CreatedDir { path: path.to_path_buf(), top })
    }

    /// Whether this run created the directory.
    pub fn created(&self) -> bool {
        self.top.is_some()
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes what [`CreatedDir::create`] created, with everything put in it since; nothing
    /// if the directory existed before. Call it only once nothing holds files in it (the
    /// ledger closed).
    pub fn remove(self) -> Result<(), LedgerError> {
        let Some(top) = self.top else { return Ok(()) };
        match std::fs::remove_dir_all(&top) {
            Ok(()) => {
                tracing::info!(dir = %top.display(), "removed the data dir this failed start created");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LedgerError::Io { path: top, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_what_it_created() {
        let root = tempfile::tempdir().expect("tempdir");
        let deep = root.path().join("a/b/c");
        let made = CreatedDir::create(&deep).expect("create");
        assert!(made.created() && deep.is_dir());
        std::fs::write(deep.join("node.key"), b"x").expect("write");
        made.remove().expect("remove");
        assert!(!root.path().join("a").exists(), "the topmost created parent goes too");
        assert!(root.path().is_dir(), "what existed stays");

        let existing = root.path().join("kept");
        std::fs::create_dir(&existing).expect("mkdir");
        std::fs::write(existing.join("data"), b"x").expect("write");
        let again = CreatedDir::create(&existing).expect("create");
        assert!(!again.created());
        again.remove().expect("nothing to remove");
        assert!(existing.join("data").is_file(), "a pre-existing dir and its files are kept");
    }
}
