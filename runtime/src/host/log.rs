//! The `log` capability: module diagnostics go to the node's tracing log.

use crate::bindings::log::{self, Level};

pub struct ModuleLog {
    module: String,
}

impl ModuleLog {
    pub fn new(module: &str) -> ModuleLog {
        ModuleLog {
            module: module.to_owned(),
        }
    }
}

/// A module cannot flood the node's log with one huge line.
const MAX_LINE_BYTES: usize = 1024;

impl log::Host for ModuleLog {
    fn log(&mut self, level: Level, message: String) {
        let mut line = message;
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let module = self.module.as_str();
        match level {
            Level::Trace => tracing::trace!(module, "{line}"),
            Level::Debug => tracing::debug!(module, "{line}"),
            Level::Info => tracing::info!(module, "{line}"),
            Level::Warn => tracing::warn!(module, "{line}"),
            Level::Error => tracing::error!(module, "{line}"),
        }
    }
}
