//! The `kb-eval` benchmark (benchmarks/src/bin/kb-eval.rs) built from this
//! crate alone: the benchmarks crate links the whole system (wasmtime,
//! managers), which a release build of one figure about rule evaluation
//! should not have to compile.

#[path = "../../benchmarks/src/bin/kb-eval.rs"]
mod kb_eval;

fn main() {
    kb_eval::main();
}
