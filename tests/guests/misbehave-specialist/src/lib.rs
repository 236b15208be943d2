//! A test specialist that misbehaves on request, so the node's limits on
//! specialists and the knowledge base's handling of their failures can be
//! tested with a real component (like `misbehave`, for inspectors). Not a
//! model of a specialist: see `specialists/` for those.
//!
//! Argument `mode` (default `ok`):
//! - `ok`: a diagnosis with fact `mode` = `ok`;
//! - `bomb`: allocates 1 MiB at a time until memory growth is refused
//!   (past the manifest's `max_memory_bytes`: a trap);
//! - `loop`: spins until the call's deadline stops it.

use agad_sdk::{Config, Diagnosis};

pub struct Misbehave;

impl agad_sdk::Specialist for Misbehave {
    const ARGS: &'static [&'static str] = &["mode"];

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let mode: String = config.get_or("mode", "ok".to_owned())?;
        match mode.as_str() {
            "ok" => Ok(Diagnosis::new("nothing wrong").fact("mode", "ok")),
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "loop" => loop {
                std::hint::black_box(0u64);
            },
            other => Err(format!("mode: unknown `{other}` (ok, bomb or loop)")),
        }
    }
}

agad_sdk::specialist!(Misbehave);
