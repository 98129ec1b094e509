//! The module graph of docs/architecture.md: `scripts/module-graph.sh --check` finds no cycle in
//! `src/` and the committed graph is the code's; on a tree with a cycle the script fails.

use crate::harness::scratch;
use std::path::Path;
use std::process::{Command, Output};

fn module_graph(root: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(root.join("scripts/module-graph.sh"))
        .args(args)
        .output()
        .expect("the script runs")
}

#[test]
fn the_committed_module_graph_is_the_codes_and_has_no_cycle() {
    let r = module_graph(Path::new(env!("CARGO_MANIFEST_DIR")), &["--check"]);
    assert!(
        r.status.success(),
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn a_cycle_or_a_stale_graph_fails_the_check() {
    let dir = scratch();
    let root = dir.path();
    for folder in ["scripts", "src", "docs"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/module-graph.sh"),
        root.join("scripts/module-graph.sh"),
    )
    .unwrap();
    let write = |path: &str, text: &str| std::fs::write(root.join(path), text).unwrap();
    write("src/lib.rs", "pub mod a;\npub mod b;\n");
    write("src/main.rs", "use neuroal_onnx::a::f;\n");
    write(
        "src/a.rs",
        "// crate::b in a comment is no import\npub fn f() {}\n",
    );
    write(
        "src/b.rs",
        "use crate::a::f;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n",
    );
    let graph = "<!-- module-graph:start -->\n```text\na ->\nb -> a\nbinary -> a\n```\n<!-- module-graph:end -->\n";
    write("docs/architecture.md", graph);
    let r = module_graph(root, &["--check"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    // a imports b, which imports a: a cycle.
    write("src/a.rs", "pub fn f() {}\npub use crate::b::g;\n");
    let r = module_graph(root, &["--check"]);
    assert!(!r.status.success(), "a cycle is refused");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("cycle"), "{stderr}");

    // Without the cycle, a graph that differs from the committed one is refused too.
    write("src/a.rs", "pub fn f() {}\n");
    write("src/b.rs", "pub fn g() {}\n");
    let r = module_graph(root, &["--check"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("differs"),
        "{stderr}"
    );
}
