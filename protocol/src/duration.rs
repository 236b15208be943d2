//! Durations as operators write them in files and on the command line:
//! a whole number followed by `ms`, `s`, `m` or `h` (`500ms`, `10s`, `2m`,
//! `1h`). Fractions and bare numbers are refused so that `10` never means
//! ten of a unit the reader has to guess.

use std::time::Duration;

/// `500ms`, `10s`, `2m`, `1h`; `None` for anything else (or on overflow).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

/// The inverse of [`parse_duration`] for whole milliseconds, in the largest
/// unit that divides exactly, so a file written back reads like the original
/// (`60000` → `1m`, `1500` → `1500ms`).
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (size, unit) in UNITS {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }

    #[test]
    fn durations_format_back() {
        for (ms, text) in [
            (0, "0ms"),
            (1500, "1500ms"),
            (60_000, "1m"),
            (90_000, "90s"),
            (7_200_000, "2h"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(parse_duration(text), Some(Duration::from_millis(ms)));
        }
    }
}
