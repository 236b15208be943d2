//! Compiles every guest crate of the repository to a wasm component
//! (`wasm32-wasip2`, release) with a nested cargo, copies the results into
//! `OUT_DIR` and tells `lib.rs` where they are. Like wasmtime's
//! test-programs: a separate target directory (`wasm-modules` inside the outer
//! build's target directory, which follows `CARGO_TARGET_DIR`), so the nested
//! cargo never waits on the outer build's lock.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

/// (package, folder) of every guest: the built-in inspectors, the built-in
/// specialists, the test guests.
const GUESTS: &[(&str, &str)] = &[
    ("cpu-mem", "inspectors/cpu-mem"),
    ("disk-space", "inspectors/disk-space"),
    ("if-health", "inspectors/if-health"),
    ("app-watch", "inspectors/app-watch"),
    ("snmp-threshold", "inspectors/snmp-threshold"),
    ("link-watch", "probes/link-watch"),
    ("top-cpu", "specialists/top-cpu"),
    ("disk-usage", "specialists/disk-usage"),
    ("if-diagnose", "specialists/if-diagnose"),
    ("link-probe", "specialists/link-probe"),
    ("service-restart", "specialists/service-restart"),
    ("misbehave", "tests/guests/misbehave"),
    ("misbehave-specialist", "tests/guests/misbehave-specialist"),
];

/// Variables of the outer build that must not reach the guest build: flags
/// for the host target (or for coverage, or clippy's driver) would break or
/// bloat the wasm, and the outer jobserver and target dir belong to the
/// outer cargo.
const LEAKING_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_LLVM_COV",
    "CARGO_INCREMENTAL",
];
const LEAKING_PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_FEATURE_", "CARGO_CFG_"];

/// The guests' release profile, set here rather than in the root
/// `Cargo.toml` so it applies to this nested build only. Size matters (nodes
/// download modules) and no debugger ever attaches to a guest. Most of the
/// remaining size is the precompiled std (formatting, panics), which these
/// settings cannot shrink.
const PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s"),
    ("CARGO_PROFILE_RELEASE_LTO", "true"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
    ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    ("CARGO_PROFILE_RELEASE_STRIP", "true"),
    // Panics must stay traps the runtime can recover from; on wasm32 the
    // default strategy already aborts with `unreachable`, so nothing to set.
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("modules/ sits in the workspace root")
        .to_path_buf();
    for path in [
        "wit",
        "sdk",
        "inspectors",
        "specialists",
        "tests/guests",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    ensure_target();

    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = outer_target_dir(&out_dir).join("wasm-modules");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (package, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    for var in LEAKING_VARS {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars() {
        if LEAKING_PREFIXES.iter().any(|p| var.starts_with(p)) {
            cmd.env_remove(var);
        }
    }
    cmd.envs(PROFILE.iter().copied());
    // Cargo reads a build script's stdout for `cargo:` directives; the
    // nested cargo's output is for people, so it goes to stderr.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the wasm modules: {e}"));
    assert!(
        status.success(),
        "building the wasm modules failed (see the nested cargo output above)"
    );

    // Copies in OUT_DIR, so that a later guest build (from another cargo
    // command sharing <target>/wasm-modules) cannot change the bytes under a
    // running test, and the paths below stay valid for this build.
    let built = target_dir.join(TARGET).join("release");
    let mut generated = String::new();
    for (package, folder) in GUESTS {
        let file = format!("{}.wasm", package.replace('-', "_"));
        let wasm = out_dir.join(&file);
        std::fs::copy(built.join(&file), &wasm)
            .unwrap_or_else(|e| panic!("{} was not produced: {e}", built.join(&file).display()));
        let manifest = root.join(folder).join("manifest.toml");
        let ident = package.to_uppercase().replace('-', "_");
        generated.push_str(&format!(
            "pub const {ident}_WASM: &str = {:?};\npub const {ident}_MANIFEST: &str = {:?};\n",
            wasm.display().to_string(),
            manifest.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("modules.rs"), generated).expect("OUT_DIR is writable");
}

/// The outer build's target directory, wherever it is (`target/`,
/// `CARGO_TARGET_DIR`, `build.target-dir` in a cargo config, `--target-dir`):
/// a build script sees `CARGO_TARGET_DIR` only when it is an environment
/// variable, but `OUT_DIR` always lies inside the target directory, as
/// `<target>[/<triple>]/<profile>/build/<package>-<hash>/out`. Cargo marks
/// the target directory's root with `CACHEDIR.TAG`; the layout is the
/// fallback.
fn outer_target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = out_dir
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    // out → <package>-<hash> → build → <profile> → the target directory, or
    // the <triple> folder of a build with an explicit `--target`.
    let above_profile = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is <target>/<profile>/build/<package>-<hash>/out");
    let triple = std::env::var("TARGET").unwrap_or_default();
    let under_triple = above_profile
        .file_name()
        .is_some_and(|name| *name == *triple);
    match above_profile.parent() {
        Some(parent) if under_triple => parent.to_path_buf(),
        _ => above_profile.to_path_buf(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// The guest target's standard library must be installed. On a machine with
/// only rustup and cargo it is not yet (rust-toolchain.toml lists it, but
/// rustup adds listed targets only when it installs the toolchain), so add it
/// here; fail with instructions, not a wall of "can't find crate for `std`".
fn ensure_target() {
    if target_installed() {
        return;
    }
    println!(
        "cargo:warning=installing the Rust target {TARGET} with rustup (the inspectors are built for it)"
    );
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added && target_installed(),
        "the Rust target {TARGET} is not installed and `rustup target add {TARGET}` failed; \
         the inspectors are compiled for it. Install it and build again."
    );
}

fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Path::new(&sysroot)
                .join("lib/rustlib")
                .join(TARGET)
                .join("lib")
                .is_dir()
        })
}
