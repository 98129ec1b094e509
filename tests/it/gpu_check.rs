//! The GPU check's parts without a GPU: `scripts/gpu-check.sh --receive` waits for every part in
//! the manifest, refuses parts that do not match it, and unpacks each bundle once.

use crate::harness::scratch;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `sh` in `dir` and asserts that it succeeded.
fn shell(dir: &Path, sh: &str) {
    let r = Command::new("bash")
        .args(["-c", sh])
        .current_dir(dir)
        .output()
        .expect("bash runs");
    assert!(
        r.status.success(),
        "{sh}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// `scripts/gpu-check.sh --receive`, copied into the checkout `root`.
fn receive(root: &Path) -> Output {
    Command::new(root.join("scripts/gpu-check.sh"))
        .arg("--receive")
        .current_dir(root)
        .output()
        .expect("the script runs")
}

#[test]
fn parts_gather_until_the_manifest_is_complete_then_unpack_once() {
    let dir = scratch();
    let root = dir.path();
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh"),
        root.join("scripts/gpu-check.sh"),
    )
    .unwrap();
    // Two bundles as `--stage` writes them: an xz tarball cut into parts, and their checksums.
    // `core` is random bytes, so that it takes three parts of 8 KiB.
    shell(
        root,
        "set -e; mkdir -p src/core/bin src/extra parts
         head -c 20000 /dev/urandom >src/core/bin/payload
         echo extra >src/extra/note.txt
         for b in core extra; do tar -C src/$b -cf - . | xz -0 | split -b 8k -d -a 2 - parts/$b.tar.xz.; done
         (cd parts && sha256sum -- * >manifest.sha256)
         mkdir -p .cache/gpu/parts && cp parts/manifest.sha256 .cache/gpu/parts/",
    );
    let parts = root.join(".cache/gpu/parts");
    let manifest = std::fs::read_to_string(parts.join("manifest.sha256")).unwrap();
    let names: Vec<&str> = manifest.lines().map(|l| &l[66..]).collect();
    assert_eq!(
        names,
        [
            "core.tar.xz.00",
            "core.tar.xz.01",
            "core.tar.xz.02",
            "extra.tar.xz.00"
        ]
    );
    let unpacked = root.join(".cache/gpu/bin/payload");

    // Parts arrive one call at a time: each call but the last waits, naming what is missing.
    for (i, name) in names.iter().enumerate() {
        std::fs::copy(root.join("parts").join(name), parts.join(name)).unwrap();
        let r = receive(root);
        let stderr = String::from_utf8_lossy(&r.stderr);
        if i + 1 < names.len() {
            assert_eq!(r.status.code(), Some(3), "{stderr}");
            assert!(
                stderr.contains(&format!("waiting for {} part(s)", names.len() - i - 1))
                    && stderr.contains(names[names.len() - 1]),
                "{stderr}"
            );
            assert!(!unpacked.exists(), "unpacked before every part arrived");
        } else {
            assert!(r.status.success(), "{stderr}");
        }
    }
    assert_eq!(
        std::fs::read(&unpacked).unwrap(),
        std::fs::read(root.join("src/core/bin/payload")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join(".cache/gpu/note.txt")).unwrap(),
        "extra\n"
    );

    // An unpacked bundle is not unpacked again.
    std::fs::write(&unpacked, b"edited").unwrap();
    assert!(receive(root).status.success());
    assert_eq!(std::fs::read(&unpacked).unwrap(), b"edited");

    // A part that does not match the manifest is refused, and nothing of it is unpacked.
    std::fs::remove_file(root.join(".cache/gpu/.core.unpacked")).unwrap();
    std::fs::remove_file(&unpacked).unwrap();
    let mut part = std::fs::read(parts.join("core.tar.xz.01")).unwrap();
    part[100] ^= 1;
    std::fs::write(parts.join("core.tar.xz.01"), part).unwrap();
    let r = receive(root);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the parts of core do not match"),
        "{stderr}"
    );
    assert!(!unpacked.exists());
}
