//! The `clock` capability.

use crate::bindings::clock;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Clock;

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl clock::Host for Clock {
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn monotonic_ns(&mut self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}
