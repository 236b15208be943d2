//! Domain consolidation: the node reports of one window merged per node and
//! per domain, so one message per window goes upward whatever the size of
//! the domain.

use agad_protocol::message::{Provenance, Report, Summary};
use agad_protocol::wire::{DomainReport, NodeSummary};
use std::collections::BTreeMap;

/// One series: node (or domain), module, the module's code, metric, subject.
type Series = (String, String, Provenance, String, String);

fn fold(rows: impl Iterator<Item = (String, String, Provenance, Summary)>) -> Vec<NodeSummary> {
    let mut merged: BTreeMap<Series, Summary> = BTreeMap::new();
    for (node, module, provenance, s) in rows {
        let key = (
            node,
            module,
            provenance,
            s.metric.clone(),
            s.subject.clone(),
        );
        merged
            .entry(key)
            .and_modify(|m| *m = m.merged(&s))
            .or_insert(s);
    }
    merged
        .into_iter()
        .map(|((node, module, provenance, _, _), summary)| NodeSummary {
            node,
            module,
            provenance,
            summary,
        })
        .collect()
}

/// The report of `domain` for the window `[start, end)` from its node
/// reports, made at `now_ms`.
pub fn consolidate(
    domain: &str,
    start_ms: u64,
    end_ms: u64,
    reports: &[Report],
    now_ms: u64,
) -> DomainReport {
    let nodes = fold(reports.iter().flat_map(|r| {
        r.summaries.iter().map(|s| {
            (
                r.node.clone(),
                r.module.clone(),
                r.provenance.clone(),
                s.clone(),
            )
        })
    }));
    let domain_summaries = fold(nodes.iter().map(|n| {
        (
            domain.to_owned(),
            n.module.clone(),
            n.provenance.clone(),
            n.summary.clone(),
        )
    }));
    DomainReport {
        id: format!("{domain}/{start_ms}"),
        domain: domain.to_owned(),
        window_start_ms: start_ms,
        window_end_ms: end_ms,
        consolidated_ms: now_ms,
        nodes,
        domain_summaries,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::Area;

    fn summary(min: f64, max: f64, mean: f64, last: f64, count: u32, end: u64) -> Summary {
        covered(min, max, mean, last, count, end, 1.0)
    }

    fn covered(
        min: f64,
        max: f64,
        mean: f64,
        last: f64,
        count: u32,
        end: u64,
        coverage: f64,
    ) -> Summary {
        Summary {
            metric: "cpu".into(),
            subject: String::new(),
            unit: "%".into(),
            min,
            max,
            mean,
            last,
            count,
            coverage,
            window_start_ms: end - 10,
            window_end_ms: end,
        }
    }

    fn report(node: &str, s: Summary) -> Report {
        Report {
            node: node.into(),
            module: "cpu-mem".into(),
            provenance: Provenance::default(),
            area: Area::Performance,
            summaries: vec![s],
            time_ms: 0,
        }
    }

    #[test]
    fn merging_weights_the_mean_and_keeps_the_latest_last() {
        let m = summary(1.0, 5.0, 2.0, 4.0, 1, 20).merged(&summary(0.0, 3.0, 5.0, 3.0, 3, 30));
        assert_eq!((m.min, m.max, m.count, m.last), (0.0, 5.0, 4, 3.0));
        assert!((m.mean - 4.25).abs() < 1e-9);
        assert_eq!((m.window_start_ms, m.window_end_ms), (10, 30));
    }

    #[test]
    fn coverage_adds_up_over_time_and_averages_over_nodes() {
        // One node's windows [10, 20) and [30, 40): [20, 30) is missing.
        let m = covered(0.0, 1.0, 0.5, 1.0, 10, 20, 1.0)
            .merged(&covered(0.0, 1.0, 0.5, 1.0, 5, 40, 0.5));
        assert!((m.coverage - 15.0 / 30.0).abs() < 1e-9, "{m:?}");
        // The same window on two nodes.
        let m = covered(0.0, 1.0, 0.5, 1.0, 10, 20, 1.0)
            .merged(&covered(0.0, 1.0, 0.5, 1.0, 10, 20, 0.5));
        assert!((m.coverage - 0.75).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn a_window_becomes_one_row_per_node_series_and_one_per_domain_series() {
        let reports = [
            report("a", summary(1.0, 2.0, 1.5, 2.0, 2, 20)),
            report("a", summary(3.0, 4.0, 3.5, 4.0, 2, 30)),
            report("b", summary(10.0, 10.0, 10.0, 10.0, 4, 30)),
        ];
        let r = consolidate("lab", 0, 60, &reports, 100);
        assert_eq!(r.id, "lab/0");
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.nodes[0].node, "a");
        assert_eq!(r.nodes[0].summary.count, 4);
        assert_eq!(r.nodes[0].summary.max, 4.0);
        assert_eq!(r.domain_summaries.len(), 1);
        let d = &r.domain_summaries[0].summary;
        assert_eq!((d.min, d.max, d.count), (1.0, 10.0, 8));
        assert!((d.mean - 6.25).abs() < 1e-9);
    }

    #[test]
    fn two_versions_of_a_module_during_a_roll_out_stay_apart() {
        let old = Provenance {
            version: "1.0.0".into(),
            sequence: 1,
            sha256: "aa".repeat(32),
        };
        let new = Provenance {
            version: "1.1.0".into(),
            sequence: 2,
            sha256: "bb".repeat(32),
        };
        let mut a = report("a", summary(1.0, 1.0, 1.0, 1.0, 2, 20));
        a.provenance = old.clone();
        let mut b = report("b", summary(9.0, 9.0, 9.0, 9.0, 2, 20));
        b.provenance = new.clone();
        let r = consolidate("lab", 0, 60, &[a, b], 100);
        let domain: Vec<(&Provenance, f64)> = r
            .domain_summaries
            .iter()
            .map(|n| (&n.provenance, n.summary.mean))
            .collect();
        assert_eq!(domain, vec![(&old, 1.0), (&new, 9.0)]);
        assert_eq!(r.nodes[1].provenance, new);
    }
}
