//! Text that came from a peer or a module, made safe to log or show.
//!
//! A peer's bytes end up in error messages (a decoder quoting a bad string,
//! a refused name) and from there in logs and terminals. Everything such a
//! message carries goes through [`excerpt`]: bounded in length, with control
//! characters and terminal escapes written out, so one frame costs one short
//! line and cannot forge another.

use std::fmt::Write;

/// How much of a peer's text an error message quotes.
pub const EXCERPT: usize = 160;

/// `text` with control characters escaped (`\n`, `\u{1b}`), cut to at most
/// `max` bytes (escapes included) and marked with how much of the original
/// was left out.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 24);
    let mut escaped = String::new();
    for (at, c) in text.char_indices() {
        escaped.clear();
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}'..='\u{200f}') {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
        if out.len() + escaped.len() > max {
            let _ = write!(out, "…(+{} bytes)", text.len() - at);
            return out;
        }
        out.push_str(&escaped);
    }
    out
}

/// Whether `name` is fit to be a name (of a module, a node, a station):
/// 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit. Names appear in logs, paths, alarm ids and terminal
/// tables.
pub fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A time in seconds since the Unix epoch as people read it: RFC 3339 in
/// UTC (`2026-11-28T04:47:35Z`); past the year 9999, the number of seconds.
pub fn utc_seconds(secs: u64) -> String {
    // 9999-12-31T23:59:59Z: humantime formats no later date.
    const LAST: u64 = 253_402_300_799;
    if secs > LAST {
        return format!("{secs} s after 1970");
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_seconds(1_795_780_800), "2026-11-27T12:00:00Z");
        assert_eq!(utc_seconds(u64::MAX), format!("{} s after 1970", u64::MAX));
    }

    #[test]
    fn control_characters_are_escaped_and_length_is_bounded() {
        assert_eq!(excerpt("plain", 10), "plain");
        assert_eq!(excerpt("a\nb\u{1b}[31m", 64), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let cut = excerpt(&long, 100);
        assert!(
            cut.starts_with(&"x".repeat(100)) && cut.ends_with("…(+9900 bytes)"),
            "{cut}"
        );
        assert!(cut.len() < 120);
        // Never cuts inside a character.
        assert_eq!(excerpt("ééé", 3), "é…(+4 bytes)");
    }

    #[test]
    fn names_are_plain() {
        for good in ["cpu-mem", "n1", "node_7.lab", "A"] {
            assert!(is_name(good), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "a\nb",
            "-x",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}
