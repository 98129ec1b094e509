//! External tensor data: safe resolution of `location` inside the model's folder, and
//! memory-mapped access to the data files.

use crate::error::{Error, Result};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

/// Where one tensor's bytes live in an external data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExternalRef {
    /// The `location` as written in the model, relative to the model's folder.
    pub location: String,
    pub offset: u64,
    pub length: u64,
}

/// The memory-mapped external data files of one model, keyed by `location`.
pub(crate) struct ExternalStore {
    dir: PathBuf,
    canonical_dir: PathBuf,
    files: HashMap<String, (PathBuf, Mmap)>,
}

impl ExternalStore {
    /// An empty store for a model in folder `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let canonical_dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            canonical_dir,
            files: HashMap::new(),
        })
    }

    /// Parses a tensor's `external_data` entries, checks them against the data file (mapping it
    /// on first use) and returns where the bytes are. `expected_len` is the byte size the tensor's
    /// type and shape call for, when known.
    pub fn register(
        &mut self,
        tensor: &str,
        entries: &[(String, String)],
        expected_len: Option<u64>,
    ) -> Result<ExternalRef> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for (key, value) in entries {
            match key.as_str() {
                "location" => location = Some(value.clone()),
                "offset" => offset = parse_u64(tensor, key, value)?,
                "length" => length = Some(parse_u64(tensor, key, value)?),
                _ => {} // checksum, basepath: not needed to read the bytes.
            }
        }
        let location = location.ok_or_else(|| {
            Error::tensor(
                tensor,
                "stored externally but has no 'location' entry; the model file is malformed",
            )
        })?;
        let bad = |message: String| Error::ExternalData {
            tensor: tensor.to_string(),
            location: PathBuf::from(&location),
            message,
        };
        check_relative(&location).map_err(bad)?;
        if !self.files.contains_key(&location) {
            let path = self.dir.join(&location);
            let canonical = path.canonicalize().map_err(|e| {
                bad(format!(
                    "cannot open {} ({e}); the data file must sit next to the model",
                    path.display()
                ))
            })?;
            if !canonical.starts_with(&self.canonical_dir) {
                return Err(bad(format!(
                    "resolves to {} outside the model's folder {} (through a symbolic link); refusing to read it",
                    canonical.display(),
                    self.canonical_dir.display()
                )));
            }
            let file = File::open(&canonical).map_err(|e| Error::io(&canonical, e))?;
            // SAFETY: the map is read-only and private to this process. Another process truncating
            // the file while we run could fault, as with any mmap-based loader; inputs are never
            // written by this tool.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&canonical, e))?;
            self.files.insert(location.clone(), (canonical, map));
        }
        let file_len = self.files[&location].1.len() as u64;
        let length = length.unwrap_or_else(|| file_len.saturating_sub(offset));
        let end = offset.checked_add(length);
        if end.is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "offset {offset} + length {length} lies past the end of the {file_len}-byte file"
            )));
        }
        if let Some(expected) = expected_len {
            if expected != length {
                return Err(bad(format!(
                    "holds {length} bytes but the tensor's type and shape need {expected}"
                )));
            }
        }
        Ok(ExternalRef {
            location,
            offset,
            length,
        })
    }

    /// The bytes an [`ExternalRef`] returned by [`Self::register`] points at.
    pub fn bytes(&self, r: &ExternalRef) -> &[u8] {
        let map = &self.files[&r.location].1;
        &map[r.offset as usize..(r.offset + r.length) as usize]
    }

    /// Hands the pages under `r` back to the kernel. They stay in the page cache, and a later read
    /// faults them in again from the file; until then they no longer count in this process's
    /// resident memory, so reading a model tensor by tensor keeps one tensor resident.
    pub fn release(&self, r: &ExternalRef) {
        let map = &self.files[&r.location].1;
        // SAFETY: the map is a read-only private mapping of a file this tool never writes (see
        // `register`): none of its pages was ever copied on write, so dropping them loses nothing
        // and any slice still borrowed from it reads the same bytes from the file afterwards.
        // Failure only means the pages stay resident.
        let _ = unsafe {
            map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                r.offset as usize,
                r.length as usize,
            )
        };
    }

    /// Canonical paths of every data file in use.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.values().map(|(p, _)| p.as_path())
    }
}

fn parse_u64(tensor: &str, key: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| {
        Error::tensor(
            tensor,
            format!("external data '{key}' is '{value}', not a byte count"),
        )
    })
}

/// A `location` must be a plain relative path below the model's folder.
fn check_relative(location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err("the location is empty".into());
    }
    let path = Path::new(location);
    if path.is_absolute() || location.starts_with('\\') || location.contains(':') {
        return Err(
            "is an absolute path; ONNX external data must be relative to the model's folder".into(),
        );
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(
                    "leaves the model's folder ('..'); ONNX external data must stay inside it"
                        .into(),
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_relative;

    #[test]
    fn locations_outside_the_folder_are_refused() {
        assert!(check_relative("model.onnx.data").is_ok());
        assert!(check_relative("weights/part1.bin").is_ok());
        assert!(check_relative("./model.onnx_data").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "a/../../b",
            "C:\\x",
            "\\\\server\\share",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
