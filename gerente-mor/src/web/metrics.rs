//! The Prometheus exposition of BIG's consolidated metrics: the latest
//! window of every series (node, module, metric, subject), so an existing
//! Prometheus or Grafana scrapes the top manager instead of every node.
//!
//! Each AGAD metric `cpu.total-percent` becomes the gauges
//! `agad_cpu_total_percent` (the window's mean), `…_min`, `…_max` and
//! `…_last`, labelled `domain`, `node`, `module`, `subject` and `unit`.
//! Values are the windows' own: a scrape between two windows sees the same
//! figures again, as it would from an exporter that caches.

use crate::query::ReportRow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `agad_` and the metric with every character Prometheus does not allow
/// in a name as `_`.
pub fn metric_name(metric: &str) -> String {
    let mut name = String::from("agad_");
    name.extend(metric.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    name
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text of `rows` (any order; for each series the row with
/// the latest window is used).
pub fn exposition(rows: &[ReportRow]) -> String {
    let mut latest: BTreeMap<(&str, &str, &str, &str), &ReportRow> = BTreeMap::new();
    for row in rows {
        let key = (
            row.summary.metric.as_str(),
            row.node.as_str(),
            row.module.as_str(),
            row.summary.subject.as_str(),
        );
        let newer = latest
            .get(&key)
            .is_none_or(|held| held.window_start_ms < row.window_start_ms);
        if newer {
            latest.insert(key, row);
        }
    }
    // Grouped by metric: the format wants each family's samples together.
    let mut families: BTreeMap<String, Vec<&ReportRow>> = BTreeMap::new();
    for ((metric, ..), row) in latest {
        families.entry(metric_name(metric)).or_default().push(row);
    }
    let mut out = String::new();
    for (name, rows) in families {
        for (suffix, what) in [
            ("", "mean"),
            ("_min", "minimum"),
            ("_max", "maximum"),
            ("_last", "last sample"),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name}{suffix} AGAD `{}`: {what} over the latest consolidated window.",
                rows[0].summary.metric
            );
            let _ = writeln!(out, "# TYPE {name}{suffix} gauge");
            for row in &rows {
                let s = &row.summary;
                let value = match suffix {
                    "" => s.mean,
                    "_min" => s.min,
                    "_max" => s.max,
                    _ => s.last,
                };
                let _ = writeln!(
                    out,
                    "{name}{suffix}{{domain=\"{}\",node=\"{}\",module=\"{}\",subject=\"{}\",unit=\"{}\"}} {value}",
                    escape(&row.domain),
                    escape(&row.node),
                    escape(&row.module),
                    escape(&s.subject),
                    escape(&s.unit),
                );
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::message::{Provenance, Summary};

    fn row(node: &str, metric: &str, start: u64, mean: f64) -> ReportRow {
        ReportRow {
            domain: "lab".into(),
            window_start_ms: start,
            window_end_ms: start + 60_000,
            node: node.into(),
            module: "cpu-mem".into(),
            provenance: Provenance::default(),
            summary: Summary {
                metric: metric.into(),
                subject: "a \"quoted\" subject".into(),
                unit: "%".into(),
                min: 1.0,
                max: 9.0,
                mean,
                last: 5.0,
                count: 6,
                coverage: 1.0,
                window_start_ms: start,
                window_end_ms: start + 60_000,
            },
        }
    }

    #[test]
    fn the_latest_window_of_each_series_in_the_text_format() {
        let text = exposition(&[
            row("n1", "cpu.total-percent", 60_000, 42.5),
            row("n1", "cpu.total-percent", 0, 10.0),
            row("n2", "cpu.total-percent", 0, 7.0),
        ]);
        let sample = "agad_cpu_total_percent{domain=\"lab\",node=\"n1\",module=\"cpu-mem\",subject=\"a \\\"quoted\\\" subject\",unit=\"%\"} 42.5";
        assert!(text.contains(sample), "{text}");
        assert!(text.contains("node=\"n2\""), "{text}");
        assert!(!text.contains("} 10\n"), "an older window: {text}");
        assert_eq!(
            text.matches("# TYPE agad_cpu_total_percent gauge").count(),
            1
        );
        assert!(text.contains("# TYPE agad_cpu_total_percent_max gauge"));
        // Every sample line: a name, labels, a value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, rest) = line.split_once('{').unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let value = rest.rsplit_once("} ").unwrap().1;
            value.parse::<f64>().unwrap();
        }
    }
}
