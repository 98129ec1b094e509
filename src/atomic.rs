//! Files that appear complete or not at all, and the one record of which files a job owns.
//!
//! An [`AtomicFile`] is written under a temporary name in the destination's folder (created
//! exclusively, so that nothing planted at that name is followed) and renamed into place only
//! when fully written and synced. A [`Job`] owns the outputs committed through it: until
//! [`Job::keep`], they are removed when the job is dropped (it failed) or the process is
//! interrupted ([`abandon_and_exit`]). Every temporary file still being written is removed in
//! both cases, whoever writes it.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The process's partial files: temporaries being written, and the outputs each unfinished job
/// has renamed into place.
struct Registry {
    temporaries: Vec<PathBuf>,
    /// Per job not yet kept: its id and its committed outputs.
    jobs: Vec<(u64, Vec<PathBuf>)>,
    next_job: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    temporaries: Vec::new(),
    jobs: Vec::new(),
    next_job: 0,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// Removes every temporary and every output of every unfinished job.
    fn remove_all(&mut self) {
        let outputs = self.jobs.drain(..).flat_map(|(_, files)| files);
        for path in self.temporaries.drain(..).chain(outputs) {
            let _ = fs::remove_file(path);
        }
    }

    /// Forgets job `id`, returning the outputs it had committed.
    fn take_job(&mut self, id: u64) -> Vec<PathBuf> {
        match self.jobs.iter().position(|(j, _)| *j == id) {
            Some(i) => self.jobs.swap_remove(i).1,
            None => Vec::new(),
        }
    }
}

/// Removes every temporary file still being written and every output of a job not yet kept,
/// then exits with `code` without releasing the registry, so that no other thread creates or
/// renames a file in between: an interrupted job leaves nothing behind. For signal handlers
/// (SIGINT, SIGTERM, SIGHUP).
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

/// The outputs of one job: every file committed through it is removed again when the job is
/// dropped before [`Job::keep`] (a failure) or the process is interrupted, so that a failed job
/// leaves no model without its report.
pub struct Job {
    id: u64,
    kept: bool,
}

impl Job {
    /// Starts a job that owns nothing yet.
    pub fn start() -> Job {
        let mut files = registry();
        let id = files.next_job;
        files.next_job += 1;
        files.jobs.push((id, Vec::new()));
        Job { id, kept: false }
    }

    /// Renames `file` into place as an output of this job. Errors name the destination.
    pub fn commit(&self, file: AtomicFile) -> Result<PathBuf> {
        file.commit_as(Some(self.id))
    }

    /// Writes `bytes` to `target` atomically, as an output of this job.
    pub fn write(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        let file = AtomicFile::create(target)?;
        file.file()
            .write_all(bytes)
            .map_err(|e| Error::io(target, e))?;
        self.commit(file)?;
        Ok(())
    }

    /// Keeps the outputs committed so far: the job has finished.
    pub fn keep(mut self) {
        registry().take_job(self.id);
        self.kept = true;
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.kept {
            let mut files = registry();
            for path in files.take_job(self.id) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// A file being written next to its destination; removed on drop unless committed.
pub struct AtomicFile {
    path: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file `.NAME.tmp-PID` for `target` (its folder must exist and be
    /// writable). The temporary must not exist yet: a file or link already there (a leftover of
    /// a killed process, or a link planted to redirect the write) is refused, never followed.
    pub fn create(target: &Path) -> Result<Self> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let path = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        // Registered while still locked, so that an interrupt never misses it.
        let mut files = registry();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return Error::io(
                        &path,
                        std::io::Error::new(
                            e.kind(),
                            "the temporary file for the output already exists (left by a killed \
                             run, or a link); remove it and run again",
                        ),
                    );
                }
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

    /// Syncs the data to disk and renames the file into place, owned by no job. Errors name the
    /// destination.
    pub fn commit(self) -> Result<PathBuf> {
        self.commit_as(None)
    }

    /// Syncs, renames into place, records the output as job `owner`'s and syncs the folder, so
    /// that the rename itself survives a crash.
    fn commit_as(mut self, owner: Option<u64>) -> Result<PathBuf> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.target, e))?;
        {
            let mut files = registry();
            fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))?;
            files.temporaries.retain(|p| *p != self.path);
            if let Some(outputs) = files
                .jobs
                .iter_mut()
                .find(|(id, _)| Some(*id) == owner)
                .map(|(_, outputs)| outputs)
            {
                outputs.push(self.target.clone());
            }
            self.committed = true;
        }
        sync_folder(&self.target)?;
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

/// Syncs the folder holding `target`, so that its new entry is on disk.
fn sync_folder(target: &Path) -> Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::{AtomicFile, Job};
    use std::path::Path;

    fn temporary_of(target: &Path) -> std::path::PathBuf {
        let name = target.file_name().unwrap().to_string_lossy();
        target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("out.onnx");
        let planted = temporary_of(&target);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        let e = AtomicFile::create(&target).err().expect("refused");
        assert!(e.to_string().contains(".out.onnx.tmp-"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(planted.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(!target.exists());
        // A dangling link is refused too, and nothing is created where it points.
        let nowhere = dir.path().join("nowhere");
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(&nowhere, &planted).unwrap();
        assert!(AtomicFile::create(&target).is_err());
        assert!(!nowhere.exists());
    }

    #[test]
    fn a_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.json");
        let file = AtomicFile::create(&target).unwrap();
        assert!(file.temp_path().exists() && !target.exists());
        drop(file);
        assert!(!temporary_of(&target).exists() && !target.exists());
        let file = AtomicFile::create(&target).unwrap();
        assert_eq!(file.commit().unwrap(), target);
        assert!(target.exists() && !temporary_of(&target).exists());
    }

    #[test]
    fn a_job_removes_its_outputs_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let failed = Job::start();
        failed.write(&a, b"a").unwrap();
        let other = Job::start();
        other.write(&b, b"b").unwrap();
        drop(failed);
        assert!(!a.exists(), "a dropped job's output is removed");
        assert!(b.exists(), "another job's output stays");
        other.keep();
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
    }
}
