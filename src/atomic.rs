//! Files that appear complete or not at all: written under a temporary name in the destination's
//! folder and renamed into place only when fully written and synced.
//!
//! Every temporary file, and every output committed since the last [`keep_outputs`], is registered
//! process-wide so that an interrupted job can remove them all ([`abandon_and_exit`]).

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Files of the current job: temporaries being written, outputs renamed into place.
struct Registry {
    temporaries: Vec<PathBuf>,
    committed: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    temporaries: Vec::new(),
    committed: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn remove_all(&mut self) {
        for path in self.temporaries.drain(..).chain(self.committed.drain(..)) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Removes every temporary file still being written and every output committed since the last
/// [`keep_outputs`], then exits with `code` without releasing the registry, so that no other
/// thread creates or renames a file in between: an interrupted job leaves nothing behind. For
/// signal handlers.
pub fn abandon_and_exit(code: i32) -> ! {
    let mut files = registry();
    files.remove_all();
    // `_exit`, not `exit`: other threads (ONNX Runtime's among them) are still running, and the
    // process-exit handlers and static destructors that `exit` runs may abort under them.
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// Returns at once unless an interrupt is being handled, and then never: the handler exits with
/// its own code. Call before reporting an error, which may come from a file removed by it.
pub fn wait_for_interrupt() {
    drop(registry());
}

/// Keeps the outputs committed so far: the job that wrote them has finished.
pub fn keep_outputs() {
    registry().committed.clear();
}

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
        // Registered while still locked, so that an interrupt never misses it.
        let mut files = registry();
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
        files.temporaries.push(path.clone());
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

    /// Syncs the data to disk and renames the file into place. Errors name the destination.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.target, e))?;
        let mut files = registry();
        fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))?;
        files.temporaries.retain(|p| *p != self.path);
        files.committed.push(self.target.clone());
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let mut files = registry();
            let _ = fs::remove_file(&self.path);
            files.temporaries.retain(|p| *p != self.path);
        }
    }
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let file = AtomicFile::create(target)?;
    file.file()
        .write_all(bytes)
        .map_err(|e| Error::io(target, e))?;
    file.commit()?;
    Ok(())
}
