//! Compiling modules in a short-lived helper process.
//!
//! Cranelift's code, its worker threads and the heap a compilation grows
//! stay with a process long after the module is compiled: a managed node
//! that compiled its five inspectors itself held about 16 MiB more RSS for
//! the rest of its life than the same node loading them from its cache.
//! So the node hands the verified wasm to a helper (the same executable,
//! `agad node compile`), which writes the compiled artefact on stdout and
//! exits; the node records the artefact's digest, keeps it in its cache and
//! loads it, exactly as it loads what it compiled on an earlier run.
//!
//! The helper is bounded like anything else the node runs for a module: a
//! deadline, a cap on what it may write, its error text cut short.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine};

/// Longest compilation the helper may take; a module that takes longer is
/// refused (a Python module, the slowest kind, took 38 s on a loaded
/// debug build).
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(300);
/// Largest artefact taken from the helper (the largest bundle a node takes
/// is 64 MiB; compiled code is about twice its wasm).
pub const MAX_ARTEFACT_BYTES: u64 = 512 * 1024 * 1024;
/// How much of the helper's error output is kept for the refusal.
const MAX_ERROR_BYTES: u64 = 16 * 1024;

/// The engine configuration artefacts depend on: the node's engine and the
/// helper's must agree on it, or wasmtime refuses to load the artefact.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// Compiles a component's wasm to the artefact a node's engine loads:
/// what the helper process runs.
pub fn compile_artefact(wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = Engine::new(&engine_config())?;
    Ok(engine.precompile_component(wasm)?)
}

/// A program that reads a component's wasm on stdin and writes its
/// artefact ([`compile_artefact`]) on stdout, or its error on stderr.
#[derive(Clone, Debug)]
pub struct CompileHelper {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Why the helper produced no artefact.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper could not be started (the node then compiles itself).
    #[error("cannot start the compile helper `{program}`: {source}")]
    Unavailable {
        program: String,
        source: std::io::Error,
    },
    /// The helper ran and compiled nothing: the module's fault (invalid
    /// wasm, too slow, too large) or the helper's (killed).
    #[error("{0}")]
    Failed(String),
}

impl CompileHelper {
    /// This very executable, run as `<exe> node compile`.
    pub fn this_executable() -> std::io::Result<CompileHelper> {
        Ok(CompileHelper {
            program: std::env::current_exe()?,
            args: vec!["node".into(), "compile".into()],
        })
    }

    /// Runs the helper on `wasm` and returns its artefact.
    pub fn compile(&self, wasm: &[u8]) -> Result<Vec<u8>, HelperError> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HelperError::Unavailable {
                program: self.program.display().to_string(),
                source,
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HelperError::Failed(
                "the compile helper has no pipes".into(),
            ));
        };
        std::thread::scope(|scope| {
            // A helper that stops reading (it died) ends the write with an
            // error; its exit status says why.
            scope.spawn(move || {
                let _ = stdin.write_all(wasm);
            });
            let artefact = scope.spawn(move || read_bounded(stdout, MAX_ARTEFACT_BYTES));
            let errors = scope.spawn(move || read_bounded(stderr, MAX_ERROR_BYTES));
            let status = wait_until(&mut child, Instant::now() + COMPILE_DEADLINE);
            let artefact = artefact.join().unwrap_or_else(|_| Ok(Vec::new()));
            let errors = errors.join().unwrap_or_else(|_| Ok(Vec::new()));
            let status = status?;
            let artefact = artefact.map_err(|e| {
                HelperError::Failed(format!("cannot read the compile helper's artefact: {e}"))
            })?;
            if !status.success() {
                return Err(HelperError::Failed(failure(
                    status,
                    &errors.unwrap_or_default(),
                )));
            }
            if artefact.len() as u64 > MAX_ARTEFACT_BYTES {
                return Err(HelperError::Failed(format!(
                    "its compiled code is larger than {} MiB",
                    MAX_ARTEFACT_BYTES >> 20
                )));
            }
            Ok(artefact)
        })
    }
}

/// Reads up to `max + 1` bytes (one more says "too large"); a helper that
/// writes more finds the pipe closed.
fn read_bounded(from: impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    from.take(max + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// The helper's exit status, or kills it at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<ExitStatus, HelperError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Failed(format!(
                    "not compiled within {} s",
                    COMPILE_DEADLINE.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Failed(format!(
                    "cannot wait for the compile helper: {e}"
                )));
            }
        }
    }
}

/// What a failed helper said: its last line (its error), or how it ended.
fn failure(status: ExitStatus, errors: &[u8]) -> String {
    let text = String::from_utf8_lossy(errors);
    let said = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: ").to_owned());
    match said {
        Some(said) => agad_protocol::text::excerpt(&said, 2048),
        None => format!("the compile helper ended with {status} and said nothing"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shell(script: &str) -> CompileHelper {
        CompileHelper {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn the_artefact_is_what_the_helper_wrote_after_reading_the_wasm() {
        // `cat` echoes the input: what went in came back whole.
        let wasm: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(shell("cat").compile(&wasm).unwrap(), wasm);
    }

    #[test]
    fn a_failing_helper_is_refused_with_its_last_line() {
        let e =
            shell("cat >/dev/null; echo warming up >&2; echo 'error: not a component' >&2; exit 1")
                .compile(b"x")
                .unwrap_err();
        assert_eq!(e.to_string(), "not a component");
        let e = shell("cat >/dev/null; kill -9 $$")
            .compile(b"x")
            .unwrap_err();
        assert!(e.to_string().contains("signal: 9"), "{e}");
    }

    #[test]
    fn a_missing_helper_is_unavailable_not_failed() {
        let helper = CompileHelper {
            program: "/nonexistent/agad".into(),
            args: Vec::new(),
        };
        assert!(matches!(
            helper.compile(b"x"),
            Err(HelperError::Unavailable { .. })
        ));
    }

    #[test]
    fn the_artefact_loads_in_an_engine_of_the_same_configuration() {
        // `(component)`: the component binary's preamble and nothing else.
        let wasm = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let artefact = compile_artefact(&wasm).unwrap();
        let engine = Engine::new(&engine_config()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: compiled just above by an engine of this configuration.
        let loaded = unsafe { wasmtime::component::Component::deserialize(&engine, &artefact) };
        assert!(loaded.is_ok());
        assert!(compile_artefact(b"not wasm").is_err());
    }
}
