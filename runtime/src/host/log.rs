//! The `log` capability: module diagnostics go to the node's tracing log,
//! bounded — a line is at most 1 KiB with control characters escaped (a
//! module cannot forge another line), and a module writes at most 50 lines
//! at once and one a second after that (the next line written says how
//! many were left out), so a buggy module cannot fill the node's disk.

use crate::bindings::log::{self, Level};
use agad_net::rate::TokenBucket;
use agad_protocol::text::excerpt;
use std::time::{Duration, Instant};

pub struct ModuleLog {
    module: String,
    lines: TokenBucket,
    suppressed: u64,
}

/// Longest line a module may write.
const MAX_LINE_BYTES: usize = 1024;
/// Lines a module may write at once, and then one per `LINE_EVERY`.
const LINE_BURST: u32 = 50;
const LINE_EVERY: Duration = Duration::from_secs(1);

impl ModuleLog {
    pub fn new(module: &str) -> ModuleLog {
        ModuleLog {
            module: module.to_owned(),
            lines: TokenBucket::new(LINE_BURST, 1.0 / LINE_EVERY.as_secs_f64(), Instant::now()),
            suppressed: 0,
        }
    }

    /// The line to write for `message`, with how many lines were left out
    /// before it; `None` when this one is left out.
    fn admit(&mut self, message: &str, now: Instant) -> Option<(String, u64)> {
        if !self.lines.try_take(now) {
            self.suppressed += 1;
            return None;
        }
        Some((
            excerpt(message, MAX_LINE_BYTES),
            std::mem::take(&mut self.suppressed),
        ))
    }
}

impl log::Host for ModuleLog {
    fn log(&mut self, level: Level, message: String) {
        let Some((line, suppressed)) = self.admit(&message, Instant::now()) else {
            return;
        };
        let module = self.module.as_str();
        match (level, suppressed) {
            (Level::Trace, 0) => tracing::trace!(module, "{line}"),
            (Level::Debug, 0) => tracing::debug!(module, "{line}"),
            (Level::Info, 0) => tracing::info!(module, "{line}"),
            (Level::Warn, 0) => tracing::warn!(module, "{line}"),
            (Level::Error, 0) => tracing::error!(module, "{line}"),
            (Level::Trace, _) => tracing::trace!(module, suppressed, "{line}"),
            (Level::Debug, _) => tracing::debug!(module, suppressed, "{line}"),
            (Level::Info, _) => tracing::info!(module, suppressed, "{line}"),
            (Level::Warn, _) => tracing::warn!(module, suppressed, "{line}"),
            (Level::Error, _) => tracing::error!(module, suppressed, "{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_writes_a_burst_then_a_line_a_second_and_no_forged_lines() {
        let start = Instant::now();
        let mut log = ModuleLog::new("chatty");
        let written = (0..10_000)
            .filter(|_| log.admit("x", start).is_some())
            .count();
        assert_eq!(written, LINE_BURST as usize);
        let (line, suppressed) = log
            .admit("a\nforged: line\u{1b}[2J", start + LINE_EVERY)
            .expect("a line a second");
        assert_eq!(suppressed, 10_000 - u64::from(LINE_BURST));
        assert!(!line.contains(['\n', '\u{1b}']), "{line:?}");
        let (long, _) = log
            .admit(&"y".repeat(100_000), start + 2 * LINE_EVERY)
            .expect("a line a second");
        assert!(long.len() < MAX_LINE_BYTES + 32, "{}", long.len());
    }
}
