#!/usr/bin/env bash
# Prints the module graph of the crate: one line per top-level module of src/ (and `binary` for
# src/main.rs with the modules it declares), followed by the modules it imports, read from the
# `crate::…` paths (`neuroal_onnx::…` in the binary) of its non-test code. Exits non-zero when the
# graph has a cycle.
#
#   scripts/module-graph.sh           print the graph
#   scripts/module-graph.sh --check   also require the graph in docs/architecture.md to be it
#
# Unit tests (from a file's `#[cfg(test)]` on) and comments are not read: tests may reach across
# layers, the product may not. `crate::Error` and `crate::Result` are `error`'s re-exports.
set -euo pipefail
cd "$(dirname "$0")/.."

# The files of a module: src/NAME.rs, or every file under src/NAME/.
files_of() {
    if [[ -d "src/$1" ]]; then find "src/$1" -name '*.rs' | sort; else echo "src/$1.rs"; fi
}

# The modules the files on stdin's list import through `$2::` (other than `$1`).
imports() {
    local self=$1 root=$2
    xargs awk '/^#\[cfg\(test\)\]/ { nextfile } { sub(/\/\/.*/, ""); print }' |
        grep -oE "\b${root}::[A-Za-z_]+" |
        sed -E "s/^${root}:://; s/^(Error|Result)$/error/" |
        grep -E '^[a-z_]+$' | grep -vx "$self" | sort -u | tr '\n' ' ' | sed 's/ $//'
}

graph() {
    local lib_modules binary_modules
    lib_modules=$(sed -nE 's/^pub mod ([a-z_]+);/\1/p' src/lib.rs)
    binary_modules=$(sed -nE 's/^mod ([a-z_]+);/\1/p' src/main.rs)
    for m in $lib_modules; do
        echo "$m -> $(files_of "$m" | imports "$m" crate)" | sed 's/ -> $/ ->/'
    done
    {
        echo src/main.rs
        for m in $binary_modules; do files_of "$m"; done
    } | imports binary neuroal_onnx | sed 's/^/binary -> /'
}

edges=$(graph)
echo "$edges"

# tsort reads pairs and fails on a loop; every module is paired with itself so that one without
# imports still counts.
if ! echo "$edges" | awk -F' -> ' '{ print $1, $1; n = split($2, to, " "); for (i = 1; i <= n; i++) print $1, to[i] }' |
    tsort >/dev/null 2>/tmp/module-graph.$$; then
    echo "error: the module graph has a cycle:" >&2
    grep -v '^tsort: -: input contains a loop:' /tmp/module-graph.$$ | sed 's/^tsort: /  /' >&2
    rm -f /tmp/module-graph.$$
    exit 1
fi
rm -f /tmp/module-graph.$$

if [[ "${1:-}" == "--check" ]]; then
    committed=$(sed -n '/<!-- module-graph:start -->/,/<!-- module-graph:end -->/p' docs/architecture.md |
        grep -E '^[a-z_]+ ->' || true)
    if [[ "$committed" != "$edges" ]]; then
        echo "error: docs/architecture.md's module graph differs from the code's; paste the graph above between its module-graph markers:" >&2
        diff <(echo "$committed") <(echo "$edges") >&2 || true
        exit 1
    fi
fi
