//! The wire protocol between levels: messages and their one codec.
//!
//! Three classes travel on every link (DESIGN §2): control, alarm and
//! report. A frame is `[u32 body length, big-endian][u16 protocol version]
//! [body]`; the body is one byte saying how the rest is packed (0: as is,
//! 1: deflate) followed by the bincode 2 encoding of one [`Message`]. Bodies
//! from a few hundred bytes to 64 KiB — report batches — are deflated: their
//! metric names, units and window times repeat. This module is the only
//! place that knows the byte layout, so the format can change in one place;
//! everything else sends and receives [`Message`]s.

use crate::manifest::Manifest;
use crate::message::{Alarm, Report, Summary};
use crate::topology::DomainTopology;
use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest body accepted; anything bigger closes the connection unread.
/// Big enough for a replica carrying a domain's module bundles.
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;
/// Length prefix plus protocol version.
pub const HEADER_LEN: usize = 6;

/// What a peer is, as its certificate says (`OU=<role>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Node,
    Dominio,
    Mor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Dominio => "dominio",
            Role::Mor => "mor",
        }
    }

    /// The roles this role accepts as its parent: only managers ever are,
    /// so a stolen node certificate cannot pose as one.
    pub fn parent_roles(self) -> &'static [Role] {
        match self {
            Role::Node => &[Role::Dominio],
            Role::Dominio => &[Role::Mor, Role::Dominio],
            Role::Mor => &[],
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "node" => Some(Role::Node),
            "dominio" => Some(Role::Dominio),
            "mor" => Some(Role::Mor),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a peer stands in enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrollment {
    /// Known to nobody yet: waits for `agad enroll approve <fingerprint>`.
    Pending,
    /// Approved (by an operator or a ticket); waits for `agad enroll activate`.
    Inactive,
    Active,
}

/// One module as a manager hands it down: the signed manifest always, the
/// wasm bytes only when the receiver said it lacks that hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleCopy {
    pub manifest: Manifest,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub wasm: Option<Vec<u8>>,
}

/// A module to run on a node, with its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub module: ModuleCopy,
    pub config: Vec<(String, String)>,
}

/// One version of a domain's bases, pushed by the top manager (BC, BTPD, BCN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub version: u64,
    pub topology: DomainTopology,
    /// BC: the bundles the domain's assignments name.
    pub modules: Vec<ModuleCopy>,
    /// BCN: knowledge-base rule files (name, text); may be empty.
    pub rules: Vec<(String, String)>,
    /// Identities enrolled in this domain and their state.
    pub members: Vec<Member>,
    /// Replicas of the domains whose `parent` is this one: this domain's
    /// manager activates their managers and relays their traffic upward.
    pub subdomains: Vec<Replica>,
}

impl Replica {
    /// This replica and every nested one, depth first.
    pub fn all(&self) -> Vec<&Replica> {
        let mut out = vec![self];
        for sub in &self.subdomains {
            out.extend(sub.all());
        }
        out
    }

    /// The replica with module bytes and versions set aside: equal digests
    /// mean nothing worth a new version changed.
    pub fn without_bytes(&self) -> Replica {
        let mut r = self.clone();
        r.version = 0;
        for m in &mut r.modules {
            m.wasm = None;
        }
        r.subdomains = r.subdomains.iter().map(Replica::without_bytes).collect();
        r
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    pub state: Enrollment,
}

pub use crate::status::{Component, ComponentStatus, State};

/// Consolidation of one domain over one window, sent up by its manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainReport {
    /// `<domain>/<window start>`: the receiver keeps one per id.
    pub id: String,
    pub domain: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// Per node: one summary per (module, metric, subject).
    pub nodes: Vec<NodeSummary>,
    /// Per domain: the node summaries of each (module, metric, subject) merged.
    pub domain_summaries: Vec<NodeSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node name, or the domain's name for domain-wide rows.
    pub node: String,
    pub module: String,
    pub summary: Summary,
}

/// Everything a reportable message can carry upward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Upward {
    Alarm(Alarm),
    NodeReport(Report),
    DomainReport(DomainReport),
}

/// Control class: membership, replication, deployment, liveness, acks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// First frame of a connecting peer. Its identity is its certificate;
    /// `ticket` is a one-time enrollment ticket, `modules_held` the hashes
    /// (hex) it already stores so they are not sent again.
    Hello {
        role: Role,
        software: String,
        ticket: Option<String>,
        modules_held: Vec<String>,
        /// How often this peer sends at least one frame: its parent judges
        /// its silence against this.
        keepalive_ms: u64,
    },
    /// The answer to `Hello`. Anything but `Active` is followed by a close;
    /// the peer retries later.
    Welcome {
        enrollment: Enrollment,
        reason: String,
    },
    /// Top manager → station: serve this domain (then `Replicate`).
    AssignDomain {
        domain: String,
    },
    /// Top manager → domain manager: a new version of the domain's bases.
    Replicate(Box<Replica>),
    ReplicaAck {
        version: u64,
    },
    /// Domain manager → top manager: someone asks to join this domain.
    Enroll {
        name: String,
        role: Role,
        fingerprint: String,
        ticket: Option<String>,
    },
    /// Domain manager → node: run exactly these modules (replaces the last set).
    Deploy {
        version: u64,
        modules: Vec<Deployment>,
    },
    DeployAck {
        version: u64,
        problems: Vec<String>,
    },
    /// "Still alive". `components` is the status of each component, sent
    /// when it changed since the last keep-alive on this connection; empty
    /// means unchanged. A parent answers each one with an empty keep-alive,
    /// so the child can judge its parent's liveness too.
    KeepAlive {
        components: Vec<ComponentStatus>,
    },
    /// Receiver → sender: these outbox sequence numbers are stored for good.
    Ack {
        seqs: Vec<u64>,
    },
}

/// One outbox entry on the wire: the sender's sequence number, which the
/// receiver acknowledges once the body is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub seq: u64,
    pub body: Upward,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Control(Control),
    /// Urgent: sent alone, at once.
    Alarm(Queued),
    /// Reports travel in batches, in the keep-alive's slot.
    Reports(Vec<Queued>),
}

impl Message {
    /// What kind of frame this is, for logs: a peer's frame is logged by its
    /// kind and size, never by its contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Alarm(_) => "alarm",
            Message::Reports(_) => "reports",
            Message::Control(c) => match c {
                Control::Hello { .. } => "hello",
                Control::Welcome { .. } => "welcome",
                Control::AssignDomain { .. } => "assign-domain",
                Control::Replicate(_) => "replicate",
                Control::ReplicaAck { .. } => "replica-ack",
                Control::Enroll { .. } => "enroll",
                Control::Deploy { .. } => "deploy",
                Control::DeployAck { .. } => "deploy-ack",
                Control::KeepAlive { .. } => "keep-alive",
                Control::Ack { .. } => "ack",
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Bodies in this range are deflated: report batches and the like, whose
/// names and times repeat. Larger ones (module bytes) are already dense and
/// would cost a manager CPU per receiver.
const DEFLATE: std::ops::RangeInclusive<usize> = 256..=64 * 1024;
const PLAIN: u8 = 0;
const DEFLATED: u8 = 1;

/// The whole frame (header and body) for one message.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    let plain = bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let mut frame = vec![0u8; HEADER_LEN];
    if DEFLATE.contains(&plain.len()) {
        frame.push(DEFLATED);
        frame.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&plain, 6));
    } else {
        frame.push(PLAIN);
        frame.extend_from_slice(&plain);
    }
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    frame[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    Ok(frame)
}

/// Checks a header and returns the body length that follows it.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: version });
    }
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes one body; trailing bytes are an error, not ignored.
pub fn decode_body(body: &[u8]) -> Result<Message, CodecError> {
    let inflated;
    let body = match body.split_first() {
        Some((&PLAIN, rest)) => rest,
        Some((&DEFLATED, rest)) => {
            // The limit keeps a small frame from inflating into a huge one.
            inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(rest, MAX_FRAME_LEN)
                .map_err(|e| CodecError::Malformed(format!("bad deflate stream: {e:?}")))?;
            &inflated
        }
        Some((other, _)) => {
            return Err(CodecError::Malformed(format!(
                "unknown body packing {other}"
            )));
        }
        None => return Err(CodecError::Malformed("empty body".into())),
    };
    let (message, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Malformed(format!(
            "{} bytes left over after the message",
            body.len() - used
        )));
    }
    Ok(message)
}

/// Bytes of a wire type as the bases and outboxes store it (same encoding
/// as on the wire, without a frame).
pub fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("wire types hold only plain data, so encoding cannot fail")
}

pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keep_alive() -> Message {
        Message::Control(Control::KeepAlive {
            components: vec![ComponentStatus::new(
                Component::Module {
                    name: "cpu-mem".into(),
                },
                State::Running,
            )],
        })
    }

    fn split(frame: &[u8]) -> (&[u8; HEADER_LEN], &[u8]) {
        let (h, b) = frame.split_at(HEADER_LEN);
        (h.try_into().unwrap(), b)
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let frame = encode(&keep_alive()).unwrap();
        let (header, body) = split(&frame);
        assert_eq!(decode_header(header).unwrap(), body.len());
        assert_eq!(decode_body(body).unwrap(), keep_alive());
    }

    #[test]
    fn another_version_is_refused() {
        let mut frame = encode(&keep_alive()).unwrap();
        frame[5] = 9;
        let (header, _) = split(&frame);
        assert!(matches!(
            decode_header(header),
            Err(CodecError::Version { got: 9 })
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        header[4..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        assert!(matches!(
            decode_header(&header),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn large_bodies_are_deflated_and_survive() {
        let big = Message::Control(Control::KeepAlive {
            components: (0..40)
                .map(|i| {
                    ComponentStatus::new(
                        Component::Module {
                            name: format!("module-{i}"),
                        },
                        State::Running,
                    )
                })
                .collect(),
        });
        let frame = encode(&big).unwrap();
        let (header, body) = split(&frame);
        assert_eq!(body[0], DEFLATED);
        assert!(
            body.len() < crate::wire::encode_value(&big).len() / 2,
            "{}",
            body.len()
        );
        assert_eq!(decode_header(header).unwrap(), body.len());
        assert_eq!(decode_body(body).unwrap(), big);
    }

    #[test]
    fn a_deflate_bomb_is_refused() {
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; MAX_FRAME_LEN + 1], 6);
        let mut body = vec![DEFLATED];
        body.extend_from_slice(&bomb);
        assert!(matches!(decode_body(&body), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        assert!(matches!(
            decode_body(&[0xff; 7]),
            Err(CodecError::Malformed(_))
        ));
        let frame = encode(&keep_alive()).unwrap();
        let mut body = frame[HEADER_LEN..].to_vec();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(CodecError::Malformed(_))));
    }
}
