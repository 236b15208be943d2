//! Copies the node's SNMP value conversion out of runtime/src/host/snmp.rs
//! (`oid_text`, `is_exception`, `convert_value`) so the SNMP target runs the
//! very code the node runs without depending on agad-runtime (wasmtime
//! would take most of an hour to build instrumented). The functions are
//! taken by name, brace-matched, at every build: a change to them in the
//! runtime is fuzzed as is, and a renamed or moved one fails this build
//! instead of silently fuzzing a stale copy.

use std::path::Path;

const SOURCE: &str = "../runtime/src/host/snmp.rs";
const FUNCTIONS: [&str; 3] = ["oid_text", "is_exception", "convert_value"];

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let text =
        std::fs::read_to_string(SOURCE).unwrap_or_else(|e| panic!("cannot read {SOURCE}: {e}"));
    let mut out = format!("// Copied from {SOURCE} by fuzz/build.rs; do not edit.\n\n");
    for name in FUNCTIONS {
        out.push_str(&function(&text, name));
        out.push_str("\n\n");
    }
    let dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&dir).join("runtime_snmp.rs"), out).expect("OUT_DIR is writable");
}

/// The text of `fn <name>(...) ... { ... }` at the start of a line.
fn function(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("\nfn {name}("))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{SOURCE} no longer has `fn {name}(`: update fuzz/build.rs"));
    let open = start + text[start..].find('{').expect("a function has a body");
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return text[start..=open + i].to_owned();
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in `fn {name}` of {SOURCE}: update fuzz/build.rs")
}
