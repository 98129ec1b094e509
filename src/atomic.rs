//! Files that appear complete or not at all: written under a temporary name in the destination's
//! folder and renamed into place only when fully written and synced.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file being written next to its destination; removed on drop unless committed.
pub struct AtomicFile {
    path: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file for `target` (its folder must exist and be writable).
    pub fn create(target: &Path) -> Result<Self> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let path = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&path).map_err(|e| {
            let dir = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Error::io(
                dir,
                std::io::Error::new(e.kind(), format!("cannot write the output here: {e}")),
            )
        })?;
        Ok(Self {
            path,
            target: target.to_path_buf(),
            file,
            committed: false,
        })
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the data to disk and renames the file into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let file = AtomicFile::create(target)?;
    file.file()
        .write_all(bytes)
        .map_err(|e| Error::io(file.temp_path(), e))?;
    file.commit()?;
    Ok(())
}
