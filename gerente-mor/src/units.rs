//! How a metric's values are shown to people: which unit a series is in
//! and how its values scale (bytes as KiB/MiB/GiB, bits per second as
//! kbit/s/Mbit/s, ...). The CLI and the web page show values through these
//! functions, so a number reads the same wherever it appears.
//!
//! What it is not for: converting stored values. BIG keeps what the module
//! measured, in the unit it declared; only the text changes.

/// The unit of a series: the one its module declared, or else the one its
/// name carries by the naming convention of the built-in inspectors
/// (`proc.rss-bytes`, `cpu.total-percent`, `link.rtt-ms`, `if.in-bps`,
/// `if.error-rate`); empty for a plain count.
pub fn unit_of(metric: &str, declared: &str) -> String {
    let declared = declared.trim();
    if !declared.is_empty() {
        return declared.to_owned();
    }
    // The last word of the name: `rss-bytes` of `proc.rss-bytes`.
    let word = metric
        .rsplit(['-', '.', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match word.as_str() {
        "bytes" => "B",
        "percent" => "%",
        "ms" => "ms",
        "secs" | "seconds" => "s",
        "bps" => "bit/s",
        "rate" => "/s",
        _ => "",
    }
    .to_owned()
}

/// One scale for a set of values of the same series (a row's min, max,
/// mean and last are shown in the same unit, so they compare at a glance).
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    /// What one shown unit is worth in the stored unit.
    pub factor: f64,
    /// The unit to print after the scaled value (`MiB`, `Mbit/s`, `%`).
    pub unit: String,
}

impl Scale {
    /// `value` in this scale, as text (two decimals; a count that is a
    /// whole number without them).
    pub fn format(&self, value: f64) -> String {
        let scaled = value / self.factor;
        if self.factor == 1.0 && self.unit.is_empty() && scaled.fract() == 0.0 && scaled.is_finite()
        {
            format!("{scaled:.0}")
        } else {
            format!("{scaled:.2}")
        }
    }

    /// `value` in this scale with its unit (`442.48 MiB`, `12.50 %`).
    pub fn format_with_unit(&self, value: f64) -> String {
        if self.unit.is_empty() {
            self.format(value)
        } else {
            format!("{} {}", self.format(value), self.unit)
        }
    }
}

/// Binary prefixes for quantities of bytes (memory, files).
const BINARY: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
/// Decimal prefixes for bits per second, as links are rated.
const DECIMAL: [&str; 6] = ["", "k", "M", "G", "T", "P"];

/// The scale that shows values of `unit` up to `magnitude` (the largest
/// absolute value to show) with the fewest digits before the point.
pub fn scale_for(unit: &str, magnitude: f64) -> Scale {
    let magnitude = if magnitude.is_finite() {
        magnitude.abs()
    } else {
        0.0
    };
    // A unit with a prefix ladder: the base and the step between prefixes;
    // bytes per second scale as bytes do.
    let (base, rest, step, prefixes) = match unit {
        "B" | "B/s" => ("B", &unit[1..], 1024.0, &BINARY),
        "bit/s" | "bit" => ("bit", &unit[3..], 1000.0, &DECIMAL),
        "ms" if magnitude >= 1000.0 => {
            return Scale {
                factor: 1000.0,
                unit: "s".into(),
            };
        }
        _ => {
            return Scale {
                factor: 1.0,
                unit: unit.to_owned(),
            };
        }
    };
    let mut factor = 1.0;
    let mut prefix = 0;
    while prefix + 1 < prefixes.len() && magnitude >= factor * step {
        factor *= step;
        prefix += 1;
    }
    Scale {
        factor,
        unit: format!("{}{base}{rest}", prefixes[prefix]),
    }
}

/// The scale for a summary's values: its unit (declared or named) at the
/// largest of the values given.
pub fn scale_of(metric: &str, declared: &str, values: &[f64]) -> Scale {
    let magnitude = values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, |m, v| m.max(v.abs()));
    scale_for(&unit_of(metric, declared), magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_declaration_or_the_name() {
        assert_eq!(unit_of("proc.rss-bytes", "B"), "B");
        assert_eq!(unit_of("proc.rss-bytes", ""), "B");
        assert_eq!(unit_of("cpu.total-percent", ""), "%");
        assert_eq!(unit_of("link.rtt-ms", ""), "ms");
        assert_eq!(unit_of("if.in-bps", ""), "bit/s");
        assert_eq!(unit_of("if.error-rate", ""), "/s");
        assert_eq!(unit_of("proc.count", ""), "");
        assert_eq!(unit_of("load.one", ""), "");
        assert_eq!(unit_of("anything", " dB "), "dB");
    }

    #[test]
    fn bytes_scale_by_1024_and_bits_by_1000() {
        let rss = scale_of("proc.rss-bytes", "B", &[463_978_496.0]);
        assert_eq!(rss.unit, "MiB");
        assert_eq!(rss.format(463_978_496.0), "442.48");
        assert_eq!(rss.format_with_unit(463_978_496.0), "442.48 MiB");
        assert_eq!(scale_for("B", 1023.0).unit, "B");
        assert_eq!(scale_for("B", 1024.0).unit, "KiB");
        assert_eq!(scale_for("B", 3.0 * 1024.0 * 1024.0 * 1024.0).unit, "GiB");
        assert_eq!(scale_for("B/s", 2048.0).unit, "KiB/s");
        let link = scale_of("if.in-bps", "bit/s", &[12.0, 2_500_000.0]);
        assert_eq!(link.unit, "Mbit/s");
        assert_eq!(link.format(12.0), "0.00");
        assert_eq!(link.format(2_500_000.0), "2.50");
        assert_eq!(scale_for("bit/s", 999.0).unit, "bit/s");
    }

    #[test]
    fn other_units_stay_as_declared() {
        assert_eq!(scale_for("%", 1e9).unit, "%");
        assert_eq!(scale_for("/s", 1e9).unit, "/s");
        assert_eq!(scale_for("ms", 20.0).unit, "ms");
        let slow = scale_for("ms", 2500.0);
        assert_eq!(slow.format_with_unit(2500.0), "2.50 s");
        let count = scale_of("proc.count", "", &[3.0]);
        assert_eq!(count.format_with_unit(3.0), "3");
        assert_eq!(count.format(2.5), "2.50");
        // Nothing to scale by: no panic, no NaN prefix hunt.
        assert_eq!(scale_of("proc.rss-bytes", "", &[f64::NAN]).unit, "B");
        assert_eq!(scale_of("proc.rss-bytes", "", &[]).unit, "B");
    }
}
