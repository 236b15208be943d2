//! Writes the seed corpora under `fuzz/corpus/<target>/` from real values:
//! frames of every message kind as `wire::encode` writes them, bundles
//! signed with the fuzz publisher key, the repository's own manifests and
//! topology example, and SNMP answers as agents send them. Each seed is
//! checked with the target's own properties first, so a seed that would
//! crash a target is caught here.
//!
//! Run from `fuzz/`: `cargo run --example seeds` (run.sh does it when a
//! corpus directory is missing). The output is deterministic.

use agad_fuzz::snmp_walk::{BOOTS, ENGINE_ID, TIME};
use agad_fuzz::{NOW, check_body, check_bundle, check_snmp, header, publisher};
use agad_protocol::attest;
use agad_protocol::message::{Alarm, Comparison, Report, Severity, Summary};
use agad_protocol::run;
use agad_protocol::topology::{self, Topology};
use agad_protocol::wire::{
    self, Component, ComponentStatus, Control, DeployProgress, Deployment, DomainReport,
    Enrollment, HEADER_LEN, Member, Message, MessageKind, MovedNode, NodeSummary, Queued, Replica,
    Role, State, Upward,
};
use agad_protocol::{Area, Bundle, ManifestSpec};
use agad_protocol::{ConfigKey, ConfigType};
use snmp2::snmp;
use std::path::{Path, PathBuf};

/// The repository's example topology: the `FULL` test file of
/// protocol/src/topology.rs, read from the source so it stays the same.
fn example_topology() -> String {
    let source = std::fs::read_to_string("../protocol/src/topology.rs")
        .expect("run from fuzz/: ../protocol/src/topology.rs");
    let start = source
        .find("const FULL: &str = r#\"")
        .expect("FULL in topology.rs")
        + 22;
    let end = start + source[start..].find("\"#;").expect("end of FULL");
    source[start..end].to_owned()
}

fn manifests() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["../inspectors", "../tests/guests"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("run from fuzz/")
            .map(|e| e.expect("readable dir").path())
            .collect();
        entries.sort();
        for path in entries {
            let file = path.join("manifest.toml");
            if let Ok(text) = std::fs::read_to_string(&file) {
                let name = path
                    .file_name()
                    .expect("named")
                    .to_string_lossy()
                    .into_owned();
                out.push((name, text));
            }
        }
    }
    assert!(!out.is_empty(), "no manifest.toml found");
    out
}

fn bundle(spec_text: &str, wasm: &[u8]) -> Bundle {
    let spec = ManifestSpec::from_toml(spec_text).expect("the repository's manifests parse");
    Bundle::sign(spec, wasm.to_vec(), &publisher(), NOW)
}

/// A minimal valid wasm module (magic and version only).
const WASM: &[u8] = b"\0asm\x01\0\0\0";

fn alarm(i: u64) -> Alarm {
    Alarm {
        id: format!("web-1/cpu-mem/{i}"),
        node: "web-1".into(),
        module: "cpu-mem".into(),
        provenance: Default::default(),
        area: Area::Performance,
        key: "cpu".into(),
        metric: "cpu.used".into(),
        subject: "total".into(),
        severity: Severity::Major,
        raised: true,
        value: 97.5,
        threshold: 90.0,
        comparison: Comparison::Above,
        message: "CPU above 90%".into(),
        time_ms: NOW * 1000,
    }
}

fn summary(metric: &str) -> Summary {
    Summary {
        metric: metric.into(),
        subject: "total".into(),
        unit: "%".into(),
        min: 1.0,
        max: 99.0,
        mean: 42.0,
        last: 50.0,
        count: 60,
        coverage: 1.0,
        window_start_ms: NOW * 1000,
        window_end_ms: NOW * 1000 + 60_000,
    }
}

/// One message of every kind, some in a small and a large (deflated) form.
fn messages(topo: &Topology, bundles: &[Bundle]) -> Vec<Message> {
    let slice = topo.slice("lab").expect("lab in the example");
    let campus = topo.slice("campus").expect("campus in the example");
    let members = vec![
        Member {
            name: "web-1".into(),
            role: Role::Node,
            fingerprint: "ab".repeat(32),
            state: Enrollment::Active,
        },
        Member {
            name: "station-lab-1".into(),
            role: Role::Dominio,
            fingerprint: "cd".repeat(32),
            state: Enrollment::Pending,
        },
    ];
    let lab = Replica {
        version: 7,
        topology: slice,
        modules: bundles.to_vec(),
        rules: vec![("cpu.rules".into(), "cpu.used > 90 => major".into())],
        members: members.clone(),
        subdomains: vec![],
        moved: vec![],
    };
    let replica = Replica {
        version: 8,
        topology: campus,
        modules: bundles.iter().map(Bundle::without_bytes).collect(),
        rules: vec![],
        members,
        moved: vec![MovedNode {
            node: "db-9".into(),
            domain: "lab".into(),
            parents: vec!["10.0.0.2:7001".into()],
        }],
        subdomains: vec![lab],
    };
    let report = Report {
        node: "web-1".into(),
        module: "cpu-mem".into(),
        provenance: Default::default(),
        area: Area::Performance,
        summaries: vec![summary("cpu.used"), summary("mem.used")],
        time_ms: NOW * 1000,
    };
    let domain_report = DomainReport {
        id: format!("lab/{}", NOW * 1000),
        domain: "lab".into(),
        window_start_ms: NOW * 1000,
        window_end_ms: NOW * 1000 + 60_000,
        consolidated_ms: NOW * 1000 + 65_000,
        nodes: vec![NodeSummary {
            node: "web-1".into(),
            module: "cpu-mem".into(),
            provenance: Default::default(),
            summary: summary("cpu.used"),
        }],
        domain_summaries: vec![NodeSummary {
            node: "lab".into(),
            module: "cpu-mem".into(),
            provenance: Default::default(),
            summary: summary("cpu.used"),
        }],
    };
    let components = vec![
        ComponentStatus::new(
            Component::Module {
                name: "cpu-mem".into(),
            },
            State::Running,
        ),
        ComponentStatus::new(
            Component::Domain {
                name: Some("lab".into()),
                replica_version: 7,
            },
            State::Connected {
                served_by: Some("station-lab-1".into()),
                failing: vec!["db-1".into()],
            },
        ),
        ComponentStatus::new(
            Component::Store {
                alarms: 1,
                reports: 2,
                outbox: 3,
            },
            State::Restarting {
                last_fault: "trap".into(),
                fault_at_ms: 5,
            },
        ),
        ComponentStatus::new(
            Component::Node {
                name: "web-1".into(),
            },
            State::Stale { silent_ms: 9000 },
        ),
        ComponentStatus::new(
            Component::Subdomain {
                domain: "lab".into(),
            },
            State::NotConnected,
        ),
        ComponentStatus::new(
            Component::Attestation {
                element: "web-1".into(),
            },
            State::Attested {
                at_ms: 1_700_000_000_000,
                modules: 3,
            },
        ),
        ComponentStatus::new(
            Component::Module {
                name: "if-health".into(),
            },
            State::Quarantined {
                reason: "module bytes altered on disk".into(),
            },
        ),
        ComponentStatus::new(
            Component::Attestation {
                element: "web-2".into(),
            },
            State::AttestationFailed {
                at_ms: 1_700_000_000_000,
                reason: "proof mismatch: cpu-mem".into(),
            },
        ),
        ComponentStatus::new(
            Component::NodeModule {
                node: "web-1".into(),
                module: "cpu-mem".into(),
            },
            State::Restarting {
                last_fault: "trap: out of fuel".into(),
                fault_at_ms: 1_700_000_000_000,
            },
        )
        .since(Some(1_700_000_000_000)),
    ];
    vec![
        Message::Control(Control::Hello {
            role: Role::Node,
            software: "agad 0.1.0".into(),
            ticket: Some("t-123".into()),
            modules_held: vec!["00".repeat(32)],
            keepalive_ms: 10_000,
            serving: None,
            advertise: vec![],
            generation: 0,
        }),
        Message::Control(Control::Welcome {
            enrollment: Enrollment::Active,
            reason: String::new(),
            activation: None,
        }),
        Message::Control(Control::AssignDomain {
            domain: "lab".into(),
            generation: 1,
        }),
        Message::Control(Control::Replicate(Box::new(replica))),
        Message::Control(Control::ReplicaAck { version: 8 }),
        Message::Control(Control::Enroll {
            name: "web-2".into(),
            role: Role::Node,
            fingerprint: "ef".repeat(32),
            ticket: None,
        }),
        Message::Control(Control::Deploy {
            version: 3,
            modules: bundles
                .iter()
                .map(|b| Deployment {
                    module: b.clone(),
                    config: vec![("threshold".into(), "90".into())],
                })
                .collect(),
        }),
        Message::Control(Control::DeployAck {
            version: 3,
            problems: vec!["app-watch: init refused its configuration".into()],
        }),
        Message::Control(Control::KeepAlive { components: vec![] }),
        Message::Control(Control::KeepAlive { components }),
        Message::Control(Control::Ack {
            seqs: vec![1, 2, 300, u64::MAX],
        }),
        Message::Control(Control::Unassign {
            domain: "lab".into(),
        }),
        Message::Control(Control::Redirect {
            domain: "lab-east".into(),
            parents: vec!["10.0.0.2:7001".into(), "10.0.0.3:7001".into()],
        }),
        Message::Control(Control::StepDown {
            domain: "lab".into(),
            generation: 2,
        }),
        Message::Alarm(Queued {
            seq: 1,
            body: Upward::Alarm(alarm(1)),
        }),
        Message::Reports(vec![
            Queued {
                seq: 2,
                body: Upward::NodeReport(report.clone()),
            },
            Queued {
                seq: 3,
                body: Upward::DomainReport(domain_report),
            },
            Queued {
                seq: 4,
                body: Upward::Alarm(alarm(2)),
            },
        ]),
        // A batch big enough to be deflated and to need more than one
        // deflate block.
        Message::Reports(
            (0..200)
                .map(|seq| Queued {
                    seq,
                    body: Upward::NodeReport(report.clone()),
                })
                .collect(),
        ),
        Message::Control(Control::Attest { nonce: [0x5a; 32] }),
        Message::Control(Control::Attestation(Box::new(attest::Attestation {
            nonce: [0x5a; 32],
            modules: vec![attest::AttestedModule {
                name: "cpu-mem".into(),
                sha256: "ab".repeat(32),
                proof: attest::proof(&[0x5a; 32], b"\0asm"),
                artefact: attest::Artefact::Intact,
            }],
            quarantined: vec![attest::Quarantine {
                name: "if-health".into(),
                sha256: "cd".repeat(32),
                reason: "module bytes altered on disk".into(),
            }],
        }))),
        Message::Control(Control::Run(Box::new(run::RunRequest {
            id: "edge-1/cpu-mem/7#cpu-hog#diagnose".into(),
            module: bundles[0].without_bytes(),
            args: vec![("sample".into(), "1s".into())],
            deadline_ms: 30_000,
            alarm: edge_alarm(),
        }))),
        Message::Alarm(Queued {
            seq: 9,
            body: Upward::RunResult(Box::new(run_result())),
        }),
        Message::Alarm(Queued {
            seq: 10,
            body: Upward::Case(run::Case {
                alarm_id: "edge-1/cpu-mem/7".into(),
                node: "edge-1".into(),
                key: "cpu.total".into(),
                rule: "cpu-hog".into(),
                steps: vec![(run::StepKind::Diagnose, "top-cpu".into())],
                results: vec![(run::StepKind::Diagnose, run_result())],
                state: run::CaseState::Escalated {
                    to: "ops".into(),
                    reason: "no fix applied".into(),
                },
                cleared_ms: None,
                generation: 3,
                revision: 2,
                opened_ms: 1_700_000_000_000,
                updated_ms: 1_700_000_001_000,
            }),
        }),
        Message::Control(Control::DeployProgress(DeployProgress {
            version: 3,
            nodes: 5,
            running: 3,
            failed: 1,
            not_connected: 1,
            problems: vec!["web-2: app-watch: init refused its configuration".into()],
        })),
    ]
}

fn run_result() -> run::RunResult {
    run::RunResult {
        id: "edge-1/cpu-mem/7#cpu-hog#diagnose".into(),
        node: "edge-1".into(),
        specialist: "top-cpu".into(),
        provenance: Default::default(),
        outcome: run::RunOutcome::Diagnosed {
            summary: "pid 4242 (hog) uses 99.8% of a core".into(),
            facts: vec![
                ("pid".into(), "4242".into()),
                ("cause".into(), "cpu-hog".into()),
            ],
        },
        started_ms: 1_700_000_000_000,
        finished_ms: 1_700_000_001_000,
        alarm: edge_alarm(),
    }
}

/// The alarm the seeds' specialist run answers.
fn edge_alarm() -> Alarm {
    Alarm {
        id: "edge-1/cpu-mem/7".into(),
        node: "edge-1".into(),
        ..alarm(7)
    }
}

/// Bytes of one seed, named by kind and index.
struct Seeds {
    dir: PathBuf,
    total: usize,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        Seeds { dir, total: 0 }
    }

    fn put(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(name), bytes).expect("writable corpus");
        self.total += bytes.len();
    }
}

// --- SNMP answers, built as agents send them ---------------------------
// BER by hand (snmp2's own encoder is private): tag, definite length,
// contents; integers in the fewest two's-complement bytes.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 128 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn int_with(tag: u8, n: i64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(tag, &bytes[start..])
}

fn int(n: i64) -> Vec<u8> {
    int_with(0x02, n)
}

/// Unsigned application types (Counter32 and the like): a leading zero
/// keeps the top bit from reading as a sign.
fn unsigned(tag: u8, n: u64) -> Vec<u8> {
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut content = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        vec![0]
    } else {
        vec![]
    };
    content.extend_from_slice(if bytes.is_empty() { &[0] } else { &bytes });
    tlv(tag, &content)
}

fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

fn oid(arcs: &[u32]) -> Vec<u8> {
    let mut content = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        content.extend(groups.into_iter().rev());
    }
    tlv(0x06, &content)
}

fn varbinds() -> Vec<u8> {
    let values = [
        int(-42),
        octets(b"eth0"),
        oid(&[1, 3, 6, 1, 4, 1, 8072, 3, 2, 10]),
        tlv(snmp::TYPE_IPADDRESS, &[192, 0, 2, 1]),
        unsigned(snmp::TYPE_COUNTER32, 4_000_000_000),
        unsigned(snmp::TYPE_UNSIGNED32, 1_000_000_000),
        unsigned(snmp::TYPE_TIMETICKS, 123_456),
        tlv(snmp::TYPE_OPAQUE, b"\x9f\x78\x04\x42\xf6\x00\x00"),
        unsigned(snmp::TYPE_COUNTER64, u64::MAX - 5),
        tlv(0x05, &[]),
        tlv(snmp::SNMP_NOSUCHOBJECT, &[]),
        tlv(snmp::SNMP_NOSUCHINSTANCE, &[]),
        tlv(snmp::SNMP_ENDOFMIBVIEW, &[]),
        // Last: snmp2 0.5.3 reads a BOOLEAN only under the NULL tag (its
        // `read_asn_boolean` checks for 0x05), so this one ends the walk.
        tlv(0x01, &[0x01]),
    ];
    let binds: Vec<Vec<u8>> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            seq(&[
                oid(&[1, 3, 6, 1, 2, 1, 2, 2, 1, 10, i as u32 + 1]),
                value.clone(),
            ])
        })
        .collect();
    seq(&binds)
}

fn response_pdu(message_type: u8) -> Vec<u8> {
    // request-id, error-status, error-index, varbinds
    tlv(
        message_type,
        &[int(4242), int(0), int(0), varbinds()].concat(),
    )
}

fn v2c_response() -> Vec<u8> {
    seq(&[int(1), octets(b"public"), response_pdu(snmp::MSG_RESPONSE)])
}

fn v1_trap() -> Vec<u8> {
    let trap = [
        oid(&[1, 3, 6, 1, 4, 1, 8072]),
        tlv(snmp::TYPE_IPADDRESS, &[192, 0, 2, 9]),
        int(6),
        int(1),
        unsigned(snmp::TYPE_TIMETICKS, 77),
        varbinds(),
    ];
    seq(&[
        int(0),
        octets(b"public"),
        tlv(snmp::MSG_TRAP_V1, &trap.concat()),
    ])
}

/// A v3 message with a plaintext scoped PDU: a discovery report (flags 0,
/// no engine known yet) or a noAuthNoPriv response for the known engine.
fn v3_plain(engine_id: &[u8], boots: i64, time: i64, flags: u8, message_type: u8) -> Vec<u8> {
    let global = seq(&[int(99), int(65_507), octets(&[flags]), int(3)]);
    let usm = seq(&[
        octets(engine_id),
        int(boots),
        int(time),
        octets(b"agad"),
        octets(b""),
        octets(b""),
    ]);
    let scoped = seq(&[octets(engine_id), octets(b""), response_pdu(message_type)]);
    seq(&[int(3), global, octets(&usm), scoped])
}

fn main() {
    let root = Path::new("corpus");
    let topo_text = example_topology();
    // The keys the example's assignments set, each of the type it holds.
    let keys: Vec<ConfigKey> = [
        ("threshold", ConfigType::Number),
        ("ratio", ConfigType::Number),
        ("strict", ConfigType::Boolean),
        ("name", ConfigType::String),
    ]
    .into_iter()
    .map(|(name, kind)| ConfigKey {
        name: name.into(),
        kind,
        required: false,
        default: None,
        description: String::new(),
    })
    .collect();
    let topo = topology::parse(&topo_text, "example.toml", &|_| Some(keys.as_slice()))
        .expect("example parses");
    let manifests = manifests();
    let bundles: Vec<Bundle> = manifests
        .iter()
        .take(2)
        .map(|(_, text)| bundle(text, WASM))
        .collect();

    // frame: whole frames (header and body) as encode writes them.
    // frame_kinds: [kind][flags][fields] (see the target).
    let mut frame = Seeds::new(root, "frame");
    let mut kinds = Seeds::new(root, "frame_kinds");
    let mut seen = std::collections::BTreeSet::new();
    for (i, message) in messages(&topo, &bundles).iter().enumerate() {
        let kind = MessageKind::of(message);
        seen.insert(kind.as_str());
        let bytes = wire::encode(message).expect("seed messages encode");
        assert_eq!(check_body(&bytes[HEADER_LEN..]), Some(kind));
        frame.put(&format!("{i:02}-{kind}"), &bytes);

        let plain = wire::encode_value(message);
        let index = MessageKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("in ALL");
        let prefix = if matches!(message, Message::Control(_)) {
            2
        } else {
            1
        };
        let deflated = u8::from(bytes[HEADER_LEN] == 1);
        let mut seed = vec![index as u8, deflated];
        seed.extend_from_slice(&plain[prefix..]);
        kinds.put(&format!("{i:02}-{kind}"), &seed);
    }
    assert_eq!(seen.len(), MessageKind::ALL.len(), "a seed of every kind");
    // The header alone, and a header announcing more than the cap.
    frame.put("header-only", &header(0));
    frame.put("header-too-large", &header(64 * 1024 * 1024));

    let mut bundle_seeds = Seeds::new(root, "bundle");
    for (name, text) in &manifests {
        let b = bundle(text, WASM);
        assert!(b.verify(&[agad_fuzz::trusted()], NOW).is_ok());
        check_bundle(&b.to_bytes());
        bundle_seeds.put(&format!("{name}.agad"), &b.to_bytes());
    }
    let b = bundle(&manifests[0].1, WASM);
    bundle_seeds.put("without-bytes.agad", &b.without_bytes().to_bytes());

    let mut manifest_seeds = Seeds::new(root, "manifest");
    for (name, text) in &manifests {
        manifest_seeds.put(&format!("{name}.toml"), text.as_bytes());
    }

    let mut topology_seeds = Seeds::new(root, "topology");
    topology_seeds.put("example.toml", topo_text.as_bytes());
    topology_seeds.put("written.toml", topo.to_toml().as_bytes());

    let mut snmp_seeds = Seeds::new(root, "snmp");
    let with_mode = |mode: u8, answer: Vec<u8>| [vec![mode], answer].concat();
    // The answers must take the whole path: parse and every varbind but
    // the boolean (see `varbinds`).
    for (name, mode, answer) in [
        ("v2c-response", 0, v2c_response()),
        ("v1-trap", 0, v1_trap()),
        (
            "v3-noauth-response",
            2,
            v3_plain(ENGINE_ID, BOOTS, TIME, 0, snmp::MSG_RESPONSE),
        ),
    ] {
        let seed = with_mode(mode, answer);
        assert_eq!(check_snmp(&seed), Some(Ok(13)), "{name}");
        snmp_seeds.put(name, &seed);
    }
    // Refused, but only after the parser read them whole.
    for (name, mode, answer) in [
        (
            "v3-discovery-report",
            1,
            v3_plain(ENGINE_ID, 0, 0, 0, snmp::MSG_REPORT),
        ),
        (
            "v3-authpriv-unauthenticated",
            3,
            v3_plain(ENGINE_ID, BOOTS, TIME, 0, snmp::MSG_RESPONSE),
        ),
    ] {
        let seed = with_mode(mode, answer);
        assert_eq!(check_snmp(&seed), None, "{name}");
        snmp_seeds.put(name, &seed);
    }

    let total = frame.total
        + kinds.total
        + bundle_seeds.total
        + manifest_seeds.total
        + topology_seeds.total
        + snmp_seeds.total;
    println!("wrote the seed corpora under fuzz/corpus/ ({total} bytes)");
}
