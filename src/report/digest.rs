//! SHA-256 of the files a run read and wrote, so that a pipeline can tie a report to its files.

use super::FileDigest;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The size and SHA-256 of each file, read in 8 MiB chunks.
pub fn file_digests(paths: &[PathBuf]) -> Result<Vec<FileDigest>> {
    paths.iter().map(|p| file_digest(p)).collect()
}

fn file_digest(path: &Path) -> Result<FileDigest> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 8 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileDigest {
        path: path.to_path_buf(),
        bytes,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::file_digests;

    #[test]
    fn digests_match_the_published_test_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let d = &file_digests(&[path]).unwrap()[0];
        assert_eq!(d.bytes, 3);
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
