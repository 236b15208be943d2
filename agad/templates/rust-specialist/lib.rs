//! `{{name}}`: an AGAD specialist, run once when a knowledge-base rule
//! picks it for an alarm (or by hand: `agad node run --bundle {{name}}.agad
//! --trust publisher.pub --arg limit=50`).
//!
//! A sample diagnosis: how much memory is used and whether that is above
//! `limit`. Replace it with yours: [`diagnose`] is plain Rust tested
//! natively; the glue at the bottom reads the host.
//!
//! | arg     | default | meaning                          |
//! |---------|---------|----------------------------------|
//! | `limit` | 90      | memory used, % (0-100), for `cause` |

use agad_sdk::{Config, Diagnosis, Specialist, os, specialist};

/// The arguments it accepts; any other is refused before `run`.
pub const ARGS: &[&str] = &["limit"];

/// The diagnosis for `used` of `total` bytes against `limit` percent.
pub fn diagnose(used: u64, total: u64, limit: f64) -> Diagnosis {
    let percent = if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 };
    let cause = if percent > limit { "memory-high" } else { "memory-normal" };
    Diagnosis::new(format!("memory {percent:.1}% used (limit {limit}%)"))
        .fact("cause", cause)
        .fact("used_percent", format!("{percent:.1}"))
        .fact("used_bytes", used)
}

/// The WIT glue: `specialist!` exports `run`.
pub struct Module;

impl Specialist for Module {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(args: &Config) -> Result<Diagnosis, String> {
        let limit = args.number_in("limit", 90.0, 0.0, 100.0)?;
        let memory = os::memory();
        Ok(diagnose(memory.used_bytes, memory.total_bytes, limit))
    }
}

specialist!(Module);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_follows_the_limit() {
        assert_eq!(diagnose(95, 100, 90.0).get("cause"), Some("memory-high"));
        assert_eq!(diagnose(50, 100, 90.0).get("cause"), Some("memory-normal"));
        assert_eq!(diagnose(0, 0, 90.0).get("used_percent"), Some("0.0"));
    }
}
