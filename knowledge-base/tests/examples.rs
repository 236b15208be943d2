//! The commented example in `examples/` parses against its catalog and
//! behaves as its comments say.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use agad_knowledge_base::{Action, Catalog, KnowledgeBase, State, Transition};
use agad_protocol::message::{Alarm, Comparison, Provenance, Severity};
use std::path::Path;

fn example() -> KnowledgeBase {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let catalog: Catalog =
        toml::from_str(&std::fs::read_to_string(dir.join("catalog.toml")).unwrap()).unwrap();
    KnowledgeBase::load_dir(&dir.join("rules"), &catalog).unwrap_or_else(|e| panic!("{e}"))
}

fn alarm(node: &str, key: &str, subject: &str) -> Alarm {
    Alarm {
        id: format!("{node}/disk-space/1"),
        node: node.into(),
        module: "disk-space".into(),
        provenance: Provenance::default(),
        area: agad_protocol::Area::Performance,
        key: key.into(),
        metric: "fs.used-percent".into(),
        subject: subject.into(),
        severity: Severity::Critical,
        raised: true,
        value: 99.0,
        threshold: 90.0,
        comparison: Comparison::Above,
        message: "full".into(),
        time_ms: 0,
    }
}

#[test]
fn the_example_rules_parse_and_act_as_documented() {
    let kb = example();
    let names: Vec<&str> = kb.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "web-cpu",
            "disk-full",
            "load-keeps-coming",
            "if-down",
            "if-errors-after-down"
        ]
    );
    let mut state = State::default();
    // 2026-11-27 is a Friday.
    let noon = 1_795_816_335_000 - (21 * 3600 + 52 * 60 + 15) * 1000 + 12 * 3_600_000;
    let d = kb.evaluate(&mut state, &alarm("db-1", "fs.used:/var", "/var"), noon);
    assert_eq!(d.len(), 1);
    let Action::Chain(chain) = &d[0].rule.action else {
        panic!("{:?}", d[0].rule.action)
    };
    let args = chain
        .diagnose
        .render_args(&alarm("db-1", "fs.used:/var", "/var"), &[])
        .unwrap();
    assert_eq!(args, [("path".to_owned(), "/var".to_owned())]);
    // web-cpu applies to the web group only.
    let mut cpu = alarm("db-1", "cpu.total", "");
    let e = kb.explain(&mut state, &cpu, noon);
    assert!(e.decisions.is_empty(), "{e}");
    cpu.node = "web-2".into();
    assert_eq!(kb.evaluate(&mut state, &cpu, noon)[0].rule.name, "web-cpu");
    // The maintenance probe starts and stops at its dates.
    let due = kb.due(0, u64::MAX);
    let due: Vec<(&str, Transition)> = due
        .iter()
        .map(|d| (d.schedule.name.as_str(), d.transition))
        .collect();
    assert_eq!(
        due,
        [
            ("core-maintenance-probe", Transition::Start),
            ("core-maintenance-probe", Transition::Stop)
        ]
    );
}
