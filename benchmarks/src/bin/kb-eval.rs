//! `kb-eval`: the cost of choosing the rule for one alarm in a knowledge
//! base of 10,000 rules (issue goal: ≤ 50 µs per alarm).
//!
//! The rule set is generated: rules spread over 2,000 alarm keys (exact
//! keys, 5 rules each, with severity, node, hours and repetition conditions
//! that make most of them fail), 500 key families (`fam-N:*`), 100
//! area-only rules and a few with no key and no area — the shape an
//! operator's rule set has, much larger. It measures, each on its own:
//!
//! - **parse + check**: the whole set from TOML text, once.
//! - **evaluate (indexed)**: `KnowledgeBase::evaluate` for a raised alarm
//!   whose key has rules (the index hands it its ~5 key rules, the family
//!   and area rules and the catch-alls); repetition state updated, decision
//!   and its reasons built.
//! - **explain**: the same alarm with every candidate's verdict
//!   (what `agad kb test` prints).
//! - **no key or area**: a second set where no rule has a key or area and
//!   rules differ by node (`nodes = ["n<i>"]`, with metric, severity and
//!   hours conditions the probe meets): the index by node hands the alarm
//!   its own node's rules only.
//! - **linear scan**: a third set that no index can cut, where all 10,000
//!   rules differ only in a time of day that never holds for the probe,
//!   so every rule's conditions are checked up to the last one: the cost
//!   of the worst rule set an operator could write.
//!
//! Run:
//!
//! ```sh
//! cargo run --release -p agad-benchmarks --bin kb-eval
//! # the same program without building the rest of the workspace:
//! cargo run --release -p agad-knowledge-base --example kb-eval
//! ```
//!
//! It prints figures only; nothing here asserts a timing.

use agad_knowledge_base::{Catalog, KnowledgeBase, State};
use agad_protocol::manifest::{ConfigKey, ConfigType};
use agad_protocol::message::{Alarm, Comparison, Provenance, Severity};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const RULES: usize = 10_000;
const KEYS: usize = 2_000;
const FAMILIES: usize = 500;
const AREA_RULES: usize = 100;
const ANY_RULES: usize = 4;
const ITERATIONS: usize = 200_000;
const WORST_ITERATIONS: usize = 2_000;
const GOAL: Duration = Duration::from_micros(50);

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.specialists.insert(
        "top-cpu".into(),
        vec![ConfigKey {
            name: "sample".into(),
            kind: ConfigType::Duration,
            required: false,
            default: None,
            description: "sampling time".into(),
        }],
    );
    c.specialists.insert(
        "disk-usage".into(),
        vec![ConfigKey {
            name: "path".into(),
            kind: ConfigType::String,
            required: true,
            default: None,
            description: "where".into(),
        }],
    );
    for k in 0..KEYS {
        c.keys.insert(format!("key-{k}"));
    }
    for f in 0..FAMILIES {
        c.keys.insert(format!("fam-{f}:*"));
    }
    c.metrics.insert("m".into());
    c
}

/// Which generated rule set.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Keys, key families, areas and a few catch-alls.
    Operator,
    /// No key or area; a node per rule.
    ByNode,
    /// Nothing indexable; only a time of day (never the probe's) differs.
    Unindexable,
}

/// The generated rule set.
fn rules(shape: Shape) -> String {
    let mut text = String::from("[[group]]\nname = \"web\"\nnodes = [\"web-1\", \"web-2\"]\n");
    let areas = [
        "fault",
        "performance",
        "security",
        "accounting",
        "configuration",
    ];
    let diagnose =
        "[rule.diagnose]\nspecialist = \"disk-usage\"\nargs = { path = \"{subject}\" }\n";
    let keyed = RULES - FAMILIES - AREA_RULES - ANY_RULES;
    for i in 0..RULES {
        let _ = write!(text, "[[rule]]\nname = \"r{i}\"\n[rule.match]\n");
        if shape == Shape::ByNode {
            // The probe's node is web-1: no rule is its.
            let _ = write!(
                text,
                "metric = \"m\"\nseverity = \"minor\"\nhours = \"00:00-24:00\"\nnodes = [\"n{i}\"]\n"
            );
        } else if shape == Shape::Unindexable {
            // Every condition but the last holds for the probe at noon.
            let _ = write!(
                text,
                "severity = \"minor\"\nhours = \"{:02}:00-{:02}:30\"\n",
                i % 12,
                i % 12
            );
        } else if i < keyed {
            let _ = writeln!(text, "key = \"key-{}\"", i % KEYS);
            match i % 5 {
                0 => text.push_str("severity = \"critical\"\n"),
                1 => text.push_str("group = \"web\"\nhours = \"08:00-18:00\"\n"),
                2 => text.push_str("repeat = { count = 3, within = \"10m\" }\n"),
                3 => text.push_str("nodes = [\"db-1\"]\n"),
                _ => text.push_str("severity = \"minor\"\nmetric = \"m\"\n"),
            }
        } else if i < keyed + FAMILIES {
            let _ = writeln!(text, "key = \"fam-{}:*\"", i - keyed);
        } else if i < keyed + FAMILIES + AREA_RULES {
            let _ = writeln!(text, "area = \"{}\"\nseverity = \"critical\"", areas[i % 5]);
        } else {
            text.push_str("severity = \"critical\"\nmetric = \"m\"\n");
        }
        text.push_str(diagnose);
    }
    text
}

fn probe() -> Alarm {
    Alarm {
        id: "web-1/cpu-mem/1".into(),
        node: "web-1".into(),
        module: "cpu-mem".into(),
        provenance: Provenance::default(),
        area: agad_protocol::Area::Performance,
        // Rules r1234, r3234, ... (key 1234): the 5th of them matches.
        key: "key-1234".into(),
        metric: "m".into(),
        subject: "/var".into(),
        severity: Severity::Major,
        raised: true,
        value: 97.0,
        threshold: 90.0,
        comparison: Comparison::Above,
        message: "probe".into(),
        time_ms: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let p99 = percentile(&samples, 0.99);
    println!(
        "{what:<34} mean {:>9.2?}  p50 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}  ({} runs; goal ≤ {GOAL:?}: {})",
        mean,
        percentile(&samples, 0.5),
        p99,
        samples[samples.len() - 1],
        samples.len(),
        if p99 <= GOAL {
            "met at p99"
        } else {
            "NOT met at p99"
        }
    );
}

fn time<T>(iterations: usize, mut f: impl FnMut(usize) -> T) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let start = Instant::now();
        std::hint::black_box(f(i));
        samples.push(start.elapsed());
    }
    samples
}

pub fn main() {
    let catalog = catalog();
    let text = rules(Shape::Operator);
    let files = [("bench.toml".to_owned(), text)];
    let start = Instant::now();
    let kb = match KnowledgeBase::parse(&files, &catalog) {
        Ok(kb) => kb,
        Err(errors) => {
            eprintln!("generated rules refused: {}", errors[0]);
            std::process::exit(1);
        }
    };
    println!(
        "kb-eval: {} rules ({} KiB of TOML) parsed and checked in {:.1?}",
        kb.rules().len(),
        files[0].1.len() / 1024,
        start.elapsed()
    );
    let alarm = probe();
    // 2026-11-27T12:00:00Z; each alarm a second later than the last, so
    // repetition windows slide as they would.
    let noon: u64 = 1_795_780_800_000;
    let mut state = State::default();
    let e = kb.explain(&mut state, &alarm, noon);
    println!(
        "probe alarm: {} candidate rule(s) of {}, acting: {:?}",
        e.considered.len(),
        kb.rules().len(),
        e.decisions
            .iter()
            .map(|d| d.rule.name.as_str())
            .collect::<Vec<_>>()
    );
    // Warm-up, then measure.
    for i in 0..10_000u64 {
        std::hint::black_box(kb.evaluate(&mut state, &alarm, noon + i * 1000).len());
    }
    let base = noon + 10_000 * 1000;
    report(
        "evaluate (indexed)",
        time(ITERATIONS, |i| {
            kb.evaluate(&mut state, &alarm, base + i as u64 * 1000)
                .len()
        }),
    );
    let base = base + ITERATIONS as u64 * 1000;
    report(
        "explain (indexed)",
        time(ITERATIONS / 4, |i| {
            kb.explain(&mut state, &alarm, base + i as u64 * 1000)
                .considered
                .len()
        }),
    );

    for (shape, label, what) in [
        (
            Shape::ByNode,
            "no key or area",
            "evaluate (no key or area, by node)",
        ),
        (
            Shape::Unindexable,
            "linear scan",
            "evaluate (linear scan, 10,000)",
        ),
    ] {
        let set = match KnowledgeBase::parse(&[("set.toml".to_owned(), rules(shape))], &catalog) {
            Ok(kb) => kb,
            Err(errors) => {
                eprintln!("generated rules refused: {}", errors[0]);
                std::process::exit(1);
            }
        };
        let mut state = State::default();
        let e = set.explain(&mut state, &alarm, noon);
        println!(
            "{label}: {} candidate rule(s) of {}, acting: {}",
            e.considered.len(),
            set.rules().len(),
            e.decisions.len()
        );
        let iterations = if e.considered.len() > 1_000 {
            WORST_ITERATIONS
        } else {
            ITERATIONS
        };
        // Every sample at noon on another day: the hours never hold.
        report(
            what,
            time(iterations, |i| {
                set.evaluate(&mut state, &alarm, noon + i as u64 * 86_400_000)
                    .len()
            }),
        );
    }
}
