//! An operator's topology file (`topology::parse`), then what a top manager
//! does with one: a topology that parses writes back (`to_toml`) to one that
//! parses equal, slices into each domain's BTPD, resolves its assignments
//! and differs from itself in nothing.
#![no_main]

use agad_protocol::topology;
use agad_protocol::{ConfigKey, ConfigType};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// One optional key of each type, and one required key, so that every
/// check of an assignment's config is reached.
static KEYS: LazyLock<Vec<ConfigKey>> = LazyLock::new(|| {
    use ConfigType::*;
    [
        ("s", String, false),
        ("i", Integer, false),
        ("n", Number, false),
        ("b", Boolean, false),
        ("d", Duration, false),
        ("l", List, false),
        ("r", String, true),
    ]
    .into_iter()
    .map(|(name, kind, required)| ConfigKey {
        name: name.into(),
        kind,
        required,
        default: None,
        description: std::string::String::new(),
    })
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every other module name counts as unpublished, so both answers of
    // `published` are exercised.
    let published = |module: &str| module.len().is_multiple_of(2).then_some(KEYS.as_slice());
    let Ok(topo) = topology::parse(text, "fuzz.toml", &published) else {
        return;
    };
    let written = topo.to_toml();
    let again = topology::parse(&written, "written.toml", &published)
        .unwrap_or_else(|e| panic!("to_toml wrote a file parse refuses: {e}\n{written}"));
    assert_eq!(again, topo, "to_toml changed the topology:\n{written}");
    assert!(topo.diff(&again).is_empty());
    assert!(topo.changed_domains(&again).is_empty());
    let _ = topo.resolved();
    let _ = topo.modules();
    for domain in &topo.domains {
        let slice = topo
            .slice(&domain.name)
            .expect("a domain of the topology slices");
        assert_eq!(slice.domain, *domain);
        for node in &slice.nodes {
            assert_eq!(topo.domain_of(&node.name), Some(domain.name.as_str()));
        }
    }
});
