//! The fuzz targets' scratch folder: one per fuzzing process, reused by every run, holding the
//! files the code under test reads (which never writes to it).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The folder, created on first use under the system's temporary folder.
pub fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("neuroal-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz folder");
        dir
    })
}

/// Writes `bytes` to the file `name` in [`folder`] and returns its path.
pub fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = folder().join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    path
}
