//! The wire protocol between levels: messages and their one codec.
//!
//! Three classes travel on every link (DESIGN §2): control, alarm and
//! report. A frame is `[u32 body length, big-endian][u16 protocol version]
//! [body]`; the body is one byte saying how the rest is packed (0: as is,
//! 1: deflate, 2: deflate with the connection's recent bodies as history,
//! see [`History`]) followed by the bincode 2 encoding of one [`Message`].
//! Bodies from a hundred bytes up are deflated: report batches (their metric
//! names, units and window times repeat, within a batch and from one window
//! to the next) and deployments (module bytes). This module is the only
//! place that knows the byte layout, so the format can change in one place;
//! everything else sends and receives [`Message`]s.
//!
//! Every body comes from a certified but possibly hostile peer, so decoding
//! is bounded before anything is allocated: the body's size
//! ([`MAX_FRAME_LEN`], checked on the header), its nesting
//! ([`MAX_NESTING`]) and the heap its decoded form holds
//! ([`MAX_DECODED_LEN`]); see `bounded`. [`decode_body_from`] also refuses a
//! kind of message the sending end may not send ([`Sender`],
//! [`MessageKind::may_come_from`]) from its first bytes, before the rest is
//! decoded.

use crate::bundle::Bundle;
use crate::message::{Alarm, Provenance, Report, Summary};
use crate::topology::DomainTopology;
use serde::{Deserialize, Serialize};
use std::fmt;

mod bounded;

/// Bumped on every incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest body accepted; anything bigger closes the connection unread.
/// Big enough for a replica carrying a domain's module bundles.
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;
/// Length prefix plus protocol version.
pub const HEADER_LEN: usize = 6;
/// Most nesting a body may use (sequences, maps, enums, options and
/// newtypes entered), so no frame can exhaust a stack: a `Replica` takes two
/// levels per sub-domain level, which allows domain trees 29 levels deep.
pub const MAX_NESTING: usize = 64;
/// Most heap one decoded body may hold: collection slots (as `Vec` reserves
/// them), text and bytes together. In-memory forms are wider than their
/// varints (an empty `String` is one byte on the wire, 24 in memory): a
/// replica of 25,000 nodes with five assignments each is 7 MB framed and
/// 44 MB decoded, so this leaves room for domains of about 35,000 such
/// nodes, while a hostile frame of tiny entries (200 MB decoded from 5 MB
/// before this bound) gets no more.
pub const MAX_DECODED_LEN: usize = 2 * MAX_FRAME_LEN;

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

/// A module to run on a node, with its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The module, with its bytes only when the node lacks that hash (see
    /// [`Bundle::without_bytes`]).
    pub module: Bundle,
    pub config: Vec<(String, String)>,
}

/// One version of a domain's bases, pushed by the top manager (BC, BTPD, BCN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub version: u64,
    pub topology: DomainTopology,
    /// BC: the bundles the domain's assignments name.
    pub modules: Vec<Bundle>,
    /// BCN: knowledge-base rule files (name, text); may be empty.
    pub rules: Vec<(String, String)>,
    /// Identities enrolled in this domain and their state.
    pub members: Vec<Member>,
    /// Nodes that moved from this domain to another: the manager sends
    /// each one there ([`Control::Redirect`]) when it connects.
    pub moved: Vec<MovedNode>,
    /// Replicas of the domains whose `parent` is this one: this domain's
    /// manager activates their managers and relays their traffic upward.
    /// (The last field: a trust test builds deep nestings from its encoding.)
    pub subdomains: Vec<Replica>,
}

/// A node that left a domain, and where its new domain is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedNode {
    pub node: String,
    pub domain: String,
    /// The new domain's station addresses, serving one first; empty while
    /// none is known (no station of that domain connected).
    pub parents: Vec<String>,
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
            m.wasm = Vec::new();
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
    /// When the station made this consolidation. Reports that reach the
    /// station after their window was sent (a node that buffered through
    /// an outage) make it send the window again, whole: the receiver keeps
    /// the one consolidated last.
    pub consolidated_ms: u64,
    /// Per node: one summary per (module, metric, subject).
    pub nodes: Vec<NodeSummary>,
    /// Per domain: the node summaries of each (module, metric, subject) merged.
    pub domain_summaries: Vec<NodeSummary>,
}

impl DomainReport {
    /// Keys the report by the station that consolidated it (`<domain>/<window
    /// start>@<station>`): across a fail-over two stations each hold part of
    /// a window, and a receiver keeps one report per id. `sender` is the
    /// authenticated peer, and `is_candidate` tells the domain's candidate
    /// stations: a report of a domain `sender` is no candidate of was
    /// relayed from below, and keeps the station its relay named if that is
    /// a candidate of the domain; anything else is keyed by `sender`.
    pub fn key_by_origin(&mut self, sender: &str, is_candidate: impl Fn(&str) -> bool) {
        let prefix = format!("{}/{}@", self.domain, self.window_start_ms);
        let origin = match self.id.strip_prefix(&prefix) {
            Some(named) if !is_candidate(sender) && is_candidate(named) => named.to_owned(),
            _ => sender.to_owned(),
        };
        self.id = prefix + &origin;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node name, or the domain's name for domain-wide rows.
    pub node: String,
    pub module: String,
    /// The code of `module` that computed it: a domain-wide row merges the
    /// nodes that ran the same code, so two versions during a roll-out
    /// stay apart.
    pub provenance: Provenance,
    pub summary: Summary,
}

/// Everything a reportable message can carry upward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Upward {
    Alarm(Alarm),
    NodeReport(Report),
    DomainReport(DomainReport),
    /// Node → domain manager: how a specialist run ended.
    RunResult(Box<crate::run::RunResult>),
    /// Domain manager → top manager: a knowledge-base case, each time it changes.
    Case(crate::run::Case),
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
        /// A station: the domain of the replica it holds, so a parent that
        /// removed that domain while the station was away can tell it to
        /// stop. `None` for a node.
        serving: Option<String>,
        /// A station: where its own children (nodes, sub-domain stations)
        /// reach it, so a node that moves to its domain can be sent there.
        advertise: Vec<String>,
        /// A station: the generation of its last activation for `serving`
        /// (0: none), so a parent can keep the station that still serves.
        generation: u64,
    },
    /// The answer to `Hello`. Anything but `Active` is followed by a close;
    /// the peer retries later.
    Welcome {
        enrollment: Enrollment,
        reason: String,
        /// A domain manager: the domain it serves and the generation of its
        /// activation. A child remembers the highest generation it saw per
        /// domain and refuses a parent with an older one (fencing).
        activation: Option<Activation>,
    },
    /// Parent → station: serve this domain (then `Replicate`), as activation
    /// `generation` (persisted by both; higher than every earlier one).
    AssignDomain {
        domain: String,
        generation: u64,
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
    /// Parent → station: `domain` left the topology; stop serving it (its
    /// nodes' modules are undeployed, its replica forgotten).
    Unassign {
        domain: String,
    },
    /// Domain manager → node: the node moved to `domain`, whose stations
    /// are at `parents` (priority order). The node remembers them and
    /// connects there; this link closes.
    Redirect {
        domain: String,
        parents: Vec<String>,
    },
    /// Top manager → station: `domain` is served by another station since
    /// activation `generation`; stop serving it (keep the replica, refuse
    /// nodes, deliver what is queued) until activated again.
    StepDown {
        domain: String,
        generation: u64,
    },
    /// Parent → child: prove, for this fresh nonce, which code you hold
    /// (see [`crate::attest`]).
    Attest {
        nonce: crate::attest::Nonce,
    },
    /// Child → parent: the answer to [`Control::Attest`].
    Attestation(Box<crate::attest::Attestation>),
    /// Domain manager → node: run a specialist once (the result comes
    /// back through the node's outbox as [`Upward::RunResult`]).
    Run(Box<crate::run::RunRequest>),
    /// Station → its parent: how far the domain's nodes are in running the
    /// deployment of its replica, sent when that changes (at most a few
    /// times a second), so `topology apply --wait` and the page show it.
    DeployProgress(DeployProgress),
}

/// How far a domain's nodes are in running its replica's deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployProgress {
    /// The replica version the station deploys.
    pub version: u64,
    /// Nodes the domain's topology lists.
    pub nodes: u64,
    /// Nodes that acknowledged this version's deployment without problems.
    pub running: u64,
    /// Nodes that acknowledged it with problems.
    pub failed: u64,
    /// Nodes not connected: they get the deployment when they connect.
    pub not_connected: u64,
    /// `node: problem` for the first [`DeployProgress::MAX_PROBLEMS`] problems.
    pub problems: Vec<String>,
}

impl DeployProgress {
    /// Most problems one progress frame names (the rest are counted).
    pub const MAX_PROBLEMS: usize = 16;
    /// Longest problem kept, in bytes.
    pub const MAX_PROBLEM_LEN: usize = 300;

    /// Connected nodes that have not acknowledged this version yet.
    pub fn pending(&self) -> u64 {
        self.nodes
            .saturating_sub(self.running)
            .saturating_sub(self.failed)
            .saturating_sub(self.not_connected)
    }

    /// Whether what a child sent is within bounds and adds up.
    pub fn check(&self) -> Result<(), String> {
        let counted = self
            .running
            .checked_add(self.failed)
            .and_then(|n| n.checked_add(self.not_connected));
        if counted.is_none_or(|n| n > self.nodes) {
            return Err("deployment progress counts more nodes than the domain has".into());
        }
        if self.problems.len() > Self::MAX_PROBLEMS
            || self
                .problems
                .iter()
                .any(|p| p.len() > Self::MAX_PROBLEM_LEN)
        {
            return Err("deployment progress names too many or too long problems".into());
        }
        Ok(())
    }
}

/// Which activation of a domain's manager a station serves under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub domain: String,
    pub generation: u64,
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
        MessageKind::of(self).as_str()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    /// What was wrong, quoting at most [`crate::text::EXCERPT`] bytes of
    /// the frame's content (see [`CodecError::malformed`]).
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("frame would decode into more than {max} bytes")]
    DecodedTooLarge { max: usize },
    #[error("a {from} may not send `{kind}` (refused before decoding it)")]
    Forbidden { kind: MessageKind, from: Sender },
}

impl CodecError {
    /// A malformed frame, described by `what` cut to a short, printable
    /// excerpt: decoder errors quote the peer's bytes (a bad string is
    /// printed whole), and these end up in logs.
    pub fn malformed(what: impl fmt::Display) -> CodecError {
        CodecError::Malformed(crate::text::excerpt(
            &what.to_string(),
            crate::text::EXCERPT,
        ))
    }
}

/// Which end of a link a frame comes from: what it may send follows from
/// that, and is checked before its body is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The manager above (a domain manager for a node or a sub-domain
    /// station, the top manager for a station).
    Parent,
    /// An element below: a node, or a station.
    Child,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Parent => "parent",
            Sender::Child => "child",
        })
    }
}

/// What a frame is, known from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Hello,
    Welcome,
    AssignDomain,
    Replicate,
    ReplicaAck,
    Enroll,
    Deploy,
    DeployAck,
    KeepAlive,
    Ack,
    Unassign,
    Redirect,
    StepDown,
    Alarm,
    Reports,
    Attest,
    Attestation,
    Run,
    DeployProgress,
}

/// `Control`'s variants in declaration order, which is their wire index.
const CONTROL_KINDS: [MessageKind; 17] = [
    MessageKind::Hello,
    MessageKind::Welcome,
    MessageKind::AssignDomain,
    MessageKind::Replicate,
    MessageKind::ReplicaAck,
    MessageKind::Enroll,
    MessageKind::Deploy,
    MessageKind::DeployAck,
    MessageKind::KeepAlive,
    MessageKind::Ack,
    MessageKind::Unassign,
    MessageKind::Redirect,
    MessageKind::StepDown,
    MessageKind::Attest,
    MessageKind::Attestation,
    MessageKind::Run,
    MessageKind::DeployProgress,
];
/// `Message`'s variants in declaration order (`None`: a `Control`).
const MESSAGE_KINDS: [Option<MessageKind>; 3] =
    [None, Some(MessageKind::Alarm), Some(MessageKind::Reports)];

impl MessageKind {
    pub const ALL: [MessageKind; 19] = [
        MessageKind::Hello,
        MessageKind::Welcome,
        MessageKind::AssignDomain,
        MessageKind::Replicate,
        MessageKind::ReplicaAck,
        MessageKind::Enroll,
        MessageKind::Deploy,
        MessageKind::DeployAck,
        MessageKind::KeepAlive,
        MessageKind::Ack,
        MessageKind::Unassign,
        MessageKind::Redirect,
        MessageKind::StepDown,
        MessageKind::Alarm,
        MessageKind::Reports,
        MessageKind::Attest,
        MessageKind::Attestation,
        MessageKind::Run,
        MessageKind::DeployProgress,
    ];

    pub fn of(message: &Message) -> MessageKind {
        match message {
            Message::Control(control) => match control {
                Control::Hello { .. } => MessageKind::Hello,
                Control::Welcome { .. } => MessageKind::Welcome,
                Control::AssignDomain { .. } => MessageKind::AssignDomain,
                Control::Replicate(_) => MessageKind::Replicate,
                Control::ReplicaAck { .. } => MessageKind::ReplicaAck,
                Control::Enroll { .. } => MessageKind::Enroll,
                Control::Deploy { .. } => MessageKind::Deploy,
                Control::DeployAck { .. } => MessageKind::DeployAck,
                Control::KeepAlive { .. } => MessageKind::KeepAlive,
                Control::Ack { .. } => MessageKind::Ack,
                Control::Unassign { .. } => MessageKind::Unassign,
                Control::Redirect { .. } => MessageKind::Redirect,
                Control::StepDown { .. } => MessageKind::StepDown,
                Control::Attest { .. } => MessageKind::Attest,
                Control::Attestation(_) => MessageKind::Attestation,
                Control::Run(_) => MessageKind::Run,
                Control::DeployProgress(_) => MessageKind::DeployProgress,
            },
            Message::Alarm(_) => MessageKind::Alarm,
            Message::Reports(_) => MessageKind::Reports,
        }
    }

    /// Which end of a link may send this: orders and answers to joining
    /// come from the parent, joining and everything reported from a child,
    /// liveness and acknowledgements from both.
    pub fn may_come_from(self, sender: Sender) -> bool {
        use MessageKind::*;
        match self {
            Welcome | AssignDomain | Replicate | Deploy | Unassign | Redirect | StepDown
            | Attest | Run => sender == Sender::Parent,
            Hello | Enroll | ReplicaAck | DeployAck | Alarm | Reports | Attestation
            | DeployProgress => sender == Sender::Child,
            KeepAlive | Ack => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Hello => "hello",
            MessageKind::Welcome => "welcome",
            MessageKind::AssignDomain => "assign-domain",
            MessageKind::Replicate => "replicate",
            MessageKind::ReplicaAck => "replica-ack",
            MessageKind::Enroll => "enroll",
            MessageKind::Deploy => "deploy",
            MessageKind::DeployAck => "deploy-ack",
            MessageKind::KeepAlive => "keep-alive",
            MessageKind::Ack => "ack",
            MessageKind::Unassign => "unassign",
            MessageKind::Redirect => "redirect",
            MessageKind::StepDown => "step-down",
            MessageKind::Alarm => "alarm",
            MessageKind::Reports => "reports",
            MessageKind::Attest => "attest",
            MessageKind::Attestation => "attestation",
            MessageKind::Run => "run",
            MessageKind::DeployProgress => "deploy-progress",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Bodies from this size up are deflated: report batches and the like,
/// whose names and times repeat, and module bytes (wasm deflates to about
/// 40 %), which a node downloads once per version.
const DEFLATE_FROM: usize = 256;
/// Bodies up to this size are deflated hard (level 6); larger ones —
/// deployments, replicas — at level 1 (the five built-in inspectors: 1.27 MB
/// to 536 KB, against 478 KB at level 6 for four times the CPU), and the
/// last one is kept for the next receiver (see [`LAST_LARGE`]).
const DEFLATE_HARD_UP_TO: usize = 64 * 1024;
/// Bodies from this size up are deflated after the connection's history
/// ([`encode_after`]): an alarm or a keep-alive with components mostly
/// repeats what went before.
const DEFLATE_AFTER_FROM: usize = 128;
const PLAIN: u8 = 0;
const DEFLATED: u8 = 1;
const DEFLATED_AFTER: u8 = 2;

/// Bytes of recent bodies a [`History`] keeps: a node's report batch of a
/// window (about 2.5 KB) with room for an alarm or an attestation between
/// two of them.
pub const HISTORY_LEN: usize = 8 * 1024;

/// What one direction of one connection remembers between frames: the last
/// [`HISTORY_LEN`] bytes of the plain bodies packed [`DEFLATED_AFTER`], in
/// order. The writer deflates the next body as if it followed them, so what
/// repeats from one window's reports to the next (metric names, subjects,
/// units, window times, values that did not change) costs a back-reference;
/// the reader, which decoded the same bodies in the same order, holds the
/// same bytes and inflates against them. Only bodies packed that way
/// enter it, so frames encoded once for many receivers ([`encode`]) can
/// be mixed in. Both ends start empty on every connection, which is what
/// a replay after a reconnection needs.
///
/// That keeps a connection's deflate state to these bytes instead of a
/// compressor's and an inflater's tables (hundreds of KiB), which a domain
/// manager with ten thousand nodes could not hold per connection.
#[derive(Debug, Default, Clone)]
pub struct History {
    recent: Vec<u8>,
}

impl History {
    fn remember(&mut self, plain: &[u8]) {
        let plain = &plain[plain.len().saturating_sub(HISTORY_LEN)..];
        let keep = HISTORY_LEN - plain.len();
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
        self.recent.extend_from_slice(plain);
    }
}

/// The whole frame (header and body) for one message, packed on its own:
/// for frames encoded once and sent to many receivers.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    encode_packed(message, None)
}

/// The whole frame for the next message of a connection whose earlier
/// bodies are in `history` (the writer's), which it then joins.
pub fn encode_after(message: &Message, history: &mut History) -> Result<Vec<u8>, CodecError> {
    encode_packed(message, Some(history))
}

fn encode_packed(message: &Message, history: Option<&mut History>) -> Result<Vec<u8>, CodecError> {
    let plain = bincode::serde::encode_to_vec(message, config()).map_err(CodecError::malformed)?;
    let mut frame = vec![0u8; HEADER_LEN];
    if plain.len() > DEFLATE_HARD_UP_TO {
        frame.push(DEFLATED);
        frame.extend_from_slice(&deflate_large(plain));
    } else if let Some(history) = history.filter(|_| plain.len() >= DEFLATE_AFTER_FROM) {
        frame.push(DEFLATED_AFTER);
        frame.extend_from_slice(&deflate_after(&history.recent, &plain)?);
        history.remember(&plain);
    } else if plain.len() >= DEFLATE_FROM {
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

/// The last large body deflated and its deflated form: a domain manager
/// sends the same deployment to every node of a group, and deflating a
/// megabyte costs tens of milliseconds, comparing it a fraction of one.
static LAST_LARGE: std::sync::Mutex<Option<PlainAndDeflated>> = std::sync::Mutex::new(None);

/// A body and its deflated form, shared by the frames that carry it.
type PlainAndDeflated = (Vec<u8>, std::sync::Arc<Vec<u8>>);

/// `plain` deflated at level 1, from [`LAST_LARGE`] when it is the same body.
fn deflate_large(plain: Vec<u8>) -> std::sync::Arc<Vec<u8>> {
    let last = || LAST_LARGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((body, deflated)) = last().as_ref()
        && *body == plain
    {
        return deflated.clone();
    }
    let deflated = std::sync::Arc::new(miniz_oxide::deflate::compress_to_vec(&plain, 1));
    *last() = Some((plain, deflated.clone()));
    deflated
}

/// `plain` deflated (level 6) as the continuation of a stream that held
/// `history`: the compressor sees the history, flushes to a byte boundary
/// and its output up to there is dropped; what follows refers back into
/// the history as into any earlier part of a stream.
fn deflate_after(history: &[u8], plain: &[u8]) -> Result<Vec<u8>, CodecError> {
    use miniz_oxide::deflate::core::{
        CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
    };
    let run = |compressor: &mut CompressorOxide, mut input: &[u8], flush: TDEFLFlush| {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut buf = [0u8; 4096];
        loop {
            let (status, used, written) = compress(compressor, input, &mut buf, flush);
            input = &input[used..];
            out.extend_from_slice(&buf[..written]);
            match status {
                TDEFLStatus::Done => return Ok(out),
                // Flushed: all taken, and the output had room to spare.
                TDEFLStatus::Okay
                    if flush == TDEFLFlush::Sync && input.is_empty() && written < buf.len() =>
                {
                    return Ok(out);
                }
                TDEFLStatus::Okay => {}
                other => return Err(CodecError::Malformed(format!("deflate failed: {other:?}"))),
            }
        }
    };
    // Raw deflate (no zlib wrapper), as `compress_to_vec`.
    let mut compressor = CompressorOxide::new(create_comp_flags_from_zip_params(6, 0, 0));
    if !history.is_empty() {
        run(&mut compressor, history, TDEFLFlush::Sync)?;
    }
    run(&mut compressor, plain, TDEFLFlush::Finish)
}

/// Inflates a body packed [`DEFLATED_AFTER`]: the history goes first, as
/// one stored (uncompressed) block, so that the body's back-references
/// find it, and is cut from the output.
fn inflate_after(history: &[u8], deflated: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = u16::try_from(history.len()).expect("a history is shorter than a stored block");
    let mut stream = Vec::with_capacity(5 + history.len() + deflated.len());
    // BFINAL 0, BTYPE 00 (stored), padded to the byte; LEN and its complement.
    stream.push(0);
    stream.extend_from_slice(&len.to_le_bytes());
    stream.extend_from_slice(&(!len).to_le_bytes());
    stream.extend_from_slice(history);
    stream.extend_from_slice(deflated);
    let mut plain = inflate(&stream, MAX_FRAME_LEN + history.len())?;
    plain.drain(..history.len());
    Ok(plain)
}

/// Raw deflate inflated up to `limit` bytes. The limit keeps a small frame
/// from inflating into a huge one. The error's text only (`Display`): its
/// `Debug` form carries the whole partial output, up to the limit, and
/// errors are logged.
fn inflate(deflated: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, limit)
        .map_err(|e| CodecError::malformed(format!("bad deflate stream: {e}")))
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

/// Decodes one body from a peer whose position is not known (or not
/// checked); trailing bytes are an error, not ignored. Nesting and the
/// decoded size are bounded either way ([`MAX_NESTING`], [`MAX_DECODED_LEN`]).
pub fn decode_body(body: &[u8]) -> Result<Message, CodecError> {
    decode_body_after(body, &mut History::default())
}

/// [`decode_body`] for the next body of a connection whose earlier bodies
/// are in `history` (the reader's side of its [`History`]).
pub fn decode_body_after(body: &[u8], history: &mut History) -> Result<Message, CodecError> {
    decode_plain(&unpack(body, history)?)
}

/// Decodes one body from `from`, refusing a kind that end may not send
/// (a child's `Replicate`, a parent's `Alarm`) from its first bytes, before
/// the rest is decoded. `history` is the reader's side of the connection's
/// [`History`].
pub fn decode_body_from(
    body: &[u8],
    from: Sender,
    history: &mut History,
) -> Result<Message, CodecError> {
    let plain = unpack(body, history)?;
    let kind = peek_kind(&plain)?;
    if !kind.may_come_from(from) {
        return Err(CodecError::Forbidden { kind, from });
    }
    decode_plain(&plain)
}

/// The bincode bytes of a body, inflated if need be.
fn unpack<'a>(
    body: &'a [u8],
    history: &mut History,
) -> Result<std::borrow::Cow<'a, [u8]>, CodecError> {
    match body.split_first() {
        Some((&PLAIN, rest)) => Ok(rest.into()),
        Some((&DEFLATED, rest)) => inflate(rest, MAX_FRAME_LEN).map(Into::into),
        Some((&DEFLATED_AFTER, rest)) => {
            let plain = inflate_after(&history.recent, rest)?;
            history.remember(&plain);
            Ok(plain.into())
        }
        Some((other, _)) => Err(CodecError::Malformed(format!(
            "unknown body packing {other}"
        ))),
        None => Err(CodecError::Malformed("empty body".into())),
    }
}

/// The kind of message in `plain` from its variant indices alone (bincode
/// writes an enum as its variant's index, then the fields).
fn peek_kind(plain: &[u8]) -> Result<MessageKind, CodecError> {
    let index = |bytes: &[u8]| -> Result<(usize, usize), CodecError> {
        let (index, used): (u32, usize) =
            bincode::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| CodecError::malformed(format!("no message kind: {e}")))?;
        Ok((index as usize, used))
    };
    let unknown =
        |what: &str, index: usize| CodecError::Malformed(format!("unknown {what} variant {index}"));
    let (outer, used) = index(plain)?;
    match MESSAGE_KINDS.get(outer) {
        Some(Some(kind)) => Ok(*kind),
        Some(None) => {
            let (inner, _) = index(&plain[used..])?;
            CONTROL_KINDS
                .get(inner)
                .copied()
                .ok_or_else(|| unknown("control", inner))
        }
        None => Err(unknown("message", outer)),
    }
}

fn decode_plain(plain: &[u8]) -> Result<Message, CodecError> {
    let budget = bounded::Budget::new(MAX_NESTING, MAX_DECODED_LEN);
    let root = bounded::Root::<Message> {
        budget: &budget,
        marker: std::marker::PhantomData,
    };
    let (message, used) =
        bincode::serde::seed_decode_from_slice(root, plain, config()).map_err(|e| match budget
            .exceeded()
        {
            Some(bounded::Exceeded::Depth) => CodecError::TooDeep { max: MAX_NESTING },
            Some(bounded::Exceeded::Heap) => CodecError::DecodedTooLarge {
                max: MAX_DECODED_LEN,
            },
            None => CodecError::malformed(e),
        })?;
    if used != plain.len() {
        return Err(CodecError::Malformed(format!(
            "{} bytes left over after the message",
            plain.len() - used
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
        .map_err(CodecError::malformed)?;
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
    fn a_report_is_keyed_by_the_station_that_consolidated_it() {
        let report = |id: &str| DomainReport {
            id: id.into(),
            domain: "lab".into(),
            window_start_ms: 60_000,
            window_end_ms: 120_000,
            consolidated_ms: 120_500,
            nodes: vec![],
            domain_summaries: vec![],
        };
        let lab_stations = |s: &str| s == "s2" || s == "s3";
        // From a candidate of its domain: keyed by that sender, whatever it says.
        let mut own = report("lab/60000@s3");
        own.key_by_origin("s2", lab_stations);
        assert_eq!(own.id, "lab/60000@s2");
        // Relayed by the parent's station: the lab station it names stays.
        let mut relayed = report("lab/60000@s3");
        relayed.key_by_origin("campus-1", lab_stations);
        assert_eq!(relayed.id, "lab/60000@s3");
        // A relay naming no candidate, or another window, is keyed by the relay.
        for claimed in ["lab/60000@campus-9", "lab/0@s3", "other/60000@s3", ""] {
            let mut forged = report(claimed);
            forged.key_by_origin("campus-1", lab_stations);
            assert_eq!(forged.id, "lab/60000@campus-1", "{claimed}");
        }
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
    fn a_deployment_is_deflated_once_for_many_receivers_and_survives() {
        // Code-like bytes: a few opcodes with varying operands, which
        // deflate as wasm does (to well under half).
        let wasm: Vec<u8> = (0..300_000u32)
            .map(|i| match i % 4 {
                0 => 0x20,
                1 => (i / 4 % 16) as u8,
                2 => 0x41,
                _ => (i / 64 % 251) as u8,
            })
            .collect();
        let deploy = Message::Control(Control::Deploy {
            version: 7,
            modules: vec![Deployment {
                module: module_copy(Some(wasm.clone())),
                config: vec![],
            }],
        });
        let frame = encode(&deploy).unwrap();
        let (header, body) = split(&frame);
        assert_eq!(body[0], DEFLATED);
        assert!(body.len() < wasm.len() / 2, "{}", body.len());
        assert_eq!(decode_header(header).unwrap(), body.len());
        assert_eq!(decode_body(body).unwrap(), deploy);
        // The second receiver's frame is the same bytes.
        assert_eq!(encode(&deploy).unwrap(), frame);
    }

    fn components(states: &[State]) -> Message {
        Message::Control(Control::KeepAlive {
            components: states
                .iter()
                .enumerate()
                .map(|(i, state)| {
                    ComponentStatus::new(
                        Component::Module {
                            name: format!("inspector-{i}-with-a-long-name"),
                        },
                        state.clone(),
                    )
                })
                .collect(),
        })
    }

    #[test]
    fn a_body_like_the_last_costs_little_and_survives_with_shared_frames_between() {
        let (mut written, mut read) = (History::default(), History::default());
        let first = components(&vec![State::Running; 12]);
        let mut second_states = vec![State::Running; 12];
        second_states[7] = State::Refused {
            reason: "configuration refused".into(),
        };
        let second = components(&second_states);
        let alone = encode(&second).unwrap().len();

        let frame = encode_after(&first, &mut written).unwrap();
        assert_eq!(split(&frame).1[0], DEFLATED_AFTER);
        assert_eq!(
            decode_body_after(split(&frame).1, &mut read).unwrap(),
            first
        );
        // A frame encoded once for many receivers, between them, is not
        // part of the history on either side.
        let shared = encode(&first).unwrap();
        assert_eq!(
            decode_body_after(split(&shared).1, &mut read).unwrap(),
            first
        );
        let frame = encode_after(&second, &mut written).unwrap();
        let body = split(&frame).1;
        assert!(
            body.len() * 2 < alone,
            "{} bytes after the first, {alone} alone",
            body.len()
        );
        assert_eq!(
            decode_body_from(body, Sender::Child, &mut read).unwrap(),
            second
        );
        assert_eq!(written.recent, read.recent);
    }

    #[test]
    fn a_body_read_without_the_history_it_refers_to_is_refused() {
        let mut written = History::default();
        let first = components(&vec![State::Running; 12]);
        encode_after(&first, &mut written).unwrap();
        let frame = encode_after(&first, &mut written).unwrap();
        let error = decode_body_after(split(&frame).1, &mut History::default()).unwrap_err();
        assert!(matches!(error, CodecError::Malformed(_)), "{error}");
    }

    #[test]
    fn a_history_keeps_the_latest_bytes_only() {
        let mut history = History::default();
        history.remember(&[1; HISTORY_LEN - 10]);
        history.remember(&[2; 20]);
        assert_eq!(history.recent.len(), HISTORY_LEN);
        assert_eq!(&history.recent[HISTORY_LEN - 20..], &[2; 20]);
        assert_eq!(history.recent[0], 1);
        history.remember(&[3; HISTORY_LEN * 2]);
        assert_eq!(history.recent, vec![3; HISTORY_LEN]);
    }

    #[test]
    fn a_deflate_bomb_is_refused() {
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; MAX_FRAME_LEN + 1], 6);
        let mut body = vec![DEFLATED];
        body.extend_from_slice(&bomb);
        let error = decode_body(&body).unwrap_err();
        assert!(matches!(error, CodecError::Malformed(_)));
        // The inflater's error holds all it inflated (32 MiB): none of it
        // may reach the message, which ends up in a log.
        assert!(
            error.to_string().len() < 200,
            "{} bytes",
            error.to_string().len()
        );
    }

    #[test]
    fn errors_quote_a_peer_s_bytes_short_and_escaped() {
        // A deflated body of 60 KiB of newlines and escapes that is no message.
        let junk: Vec<u8> = b"\n\x1b[2J".iter().copied().cycle().take(60_000).collect();
        let mut body = vec![DEFLATED];
        body.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&junk, 6));
        for error in [
            decode_body(&body).unwrap_err(),
            CodecError::malformed(String::from_utf8_lossy(&junk)),
        ] {
            let line = error.to_string();
            assert!(
                line.len() < 200 && !line.contains(['\n', '\x1b']),
                "{line:?}"
            );
        }
    }

    /// Found by fuzz/ (target `frame`): a 5-byte body whose deflate
    /// stream breaks off made a 1.3 KB error, and a bomb a ~100 MB one (the
    /// partial output, printed as numbers), which the receiver then logged.
    #[test]
    fn a_bad_deflate_stream_makes_a_short_error() {
        let truncated: &[u8] = &[DEFLATED, 0x2b, 0x1c, 0x01, 0x00];
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; MAX_FRAME_LEN + 1], 6);
        for body in [truncated.to_vec(), [&[DEFLATED][..], &bomb].concat()] {
            let e = decode_body(&body).unwrap_err();
            assert!(matches!(e, CodecError::Malformed(_)), "{e}");
            assert!(e.to_string().len() < 100, "{} bytes", e.to_string().len());
        }
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

    // --- Bounds: hostile bodies built by hand --------------------------

    /// Heap bytes allocated by the current thread, live and at their peak,
    /// so a test can show what one decode cost.
    mod counting {
        #![allow(unsafe_code)]
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        struct Counting;

        #[global_allocator]
        static COUNTING: Counting = Counting;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn note(delta: isize) {
            let _ = LIVE.try_with(|live| {
                let now = live.get() + delta;
                live.set(now);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
            });
        }

        // SAFETY: every call goes to `System` unchanged; only counters move.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc(layout) };
                if !p.is_null() {
                    note(layout.size() as isize);
                }
                p
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc_zeroed(layout) };
                if !p.is_null() {
                    note(layout.size() as isize);
                }
                p
            }
            unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
                unsafe { System.dealloc(p, layout) };
                note(-(layout.size() as isize));
            }
            unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
                let q = unsafe { System.realloc(p, layout, new) };
                if !q.is_null() {
                    // Counted as both buffers at once: a moving realloc holds both.
                    note(new as isize);
                    note(-(layout.size() as isize));
                }
                q
            }
        }

        /// `f`'s result and the most heap it held at once beyond what was
        /// live when it started.
        pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
            let start = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(start));
            let out = f();
            (out, (PEAK.with(Cell::get) - start).max(0) as usize)
        }
    }
    use counting::peak_during;

    const STACK: usize = 2 * 1024 * 1024;

    /// Runs `f` on a thread with a 2 MiB stack, like a tokio worker's.
    fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn replica(version: u64, subdomains: Vec<Replica>) -> Replica {
        Replica {
            version,
            topology: DomainTopology {
                domain: crate::topology::Domain {
                    name: String::new(),
                    parent: None,
                    stations: vec![],
                    report_window_ms: 0,
                },
                nodes: vec![],
                links: vec![],
                assignments: vec![],
                subdomains: vec![],
            },
            modules: vec![],
            rules: vec![],
            members: vec![],
            subdomains,
            moved: vec![],
        }
    }

    fn module_copy(wasm: Option<Vec<u8>>) -> Bundle {
        Bundle {
            manifest: crate::Manifest {
                name: "cpu-mem".into(),
                version: semver::Version::new(0, 1, 0),
                sequence: 1,
                kind: crate::manifest::Kind::Inspector,
                area: crate::manifest::Area::Performance,
                capabilities: vec![crate::manifest::Capability::Os],
                limits: crate::manifest::Limits::default(),
                config: Vec::new(),
                emits: Default::default(),
                sha256: [7; 32],
                issued_at: 1,
                expires_at: 2,
                signer: crate::KeyId([1; 8]),
            },
            signature: vec![0; 64],
            wasm: wasm.unwrap_or_default(),
        }
    }

    /// Bincode bytes (without packing byte) of `Replicate` with an empty
    /// replica, split before the replica: the message and variant tags.
    fn replicate_parts() -> (Vec<u8>, Vec<u8>) {
        let leaf = encode_value(&replica(0, vec![]));
        let whole = encode_value(&Message::Control(Control::Replicate(Box::new(replica(
            0,
            vec![],
        )))));
        let tags = whole[..whole.len() - leaf.len()].to_vec();
        // `subdomains` is the last field: its count is the last byte.
        assert_eq!(leaf.last(), Some(&0));
        (tags, leaf)
    }

    fn varint(n: u64) -> Vec<u8> {
        encode_value(&n)
    }

    /// A `Replicate` whose replica nests `depth` levels, each level's
    /// `subdomains` claiming `claimed` entries and holding the next level.
    fn nested_replicate(depth: usize, claimed: u64) -> Vec<u8> {
        let (tags, leaf) = replicate_parts();
        let mut level = leaf[..leaf.len() - 1].to_vec();
        level.extend(varint(claimed));
        let mut body = vec![PLAIN];
        body.extend(tags);
        for _ in 0..depth {
            body.extend_from_slice(&level);
        }
        body.extend(leaf);
        body
    }

    #[test]
    fn a_self_nested_replica_is_refused_without_exhausting_the_stack() {
        let body = nested_replicate(100_000, 1);
        assert!(body.len() <= MAX_FRAME_LEN);
        let (result, peak) = on_small_stack(move || peak_during(|| decode_body(&body)));
        assert!(
            matches!(result, Err(CodecError::TooDeep { max: MAX_NESTING })),
            "{result:?}"
        );
        assert!(peak < 1024 * 1024, "{peak} bytes");
    }

    #[test]
    fn nested_vectors_each_claiming_a_huge_length_preallocate_nothing() {
        // Before the bounds, every level reserved up to 1 MiB from its claim.
        let body = nested_replicate(1_000, 1 << 60);
        let (result, peak) = on_small_stack(move || peak_during(|| decode_body(&body)));
        assert!(
            matches!(result, Err(CodecError::TooDeep { .. })),
            "{result:?}"
        );
        assert!(peak < 1024 * 1024, "{peak} bytes");
    }

    /// A domain tree `levels` deep, each level holding one full module.
    fn replica_tree(levels: usize) -> Replica {
        let mut tree = replica(levels as u64, vec![]);
        tree.modules.push(module_copy(Some(vec![1, 2, 3])));
        for level in (1..levels).rev() {
            let mut parent = replica(level as u64, vec![tree]);
            parent.modules.push(module_copy(None));
            tree = parent;
        }
        tree
    }

    #[test]
    fn a_domain_tree_29_levels_deep_decodes_on_a_small_stack() {
        let ok = Message::Control(Control::Replicate(Box::new(replica_tree(29))));
        let frame = encode(&ok).unwrap();
        let decoded = on_small_stack(move || decode_body(&frame[HEADER_LEN..]).unwrap());
        assert_eq!(decoded, ok);
        let deeper = Message::Control(Control::Replicate(Box::new(replica_tree(30))));
        let frame = encode(&deeper).unwrap();
        assert!(matches!(
            decode_body(&frame[HEADER_LEN..]),
            Err(CodecError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_collection_claiming_2_pow_60_entries_is_refused_cleanly() {
        // Message::Reports (variant 2), then its length as a bincode varint
        // (0xfd: eight little-endian bytes follow), then no entries at all.
        let mut body = vec![PLAIN, 2, 0xfd];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(&body[2..], varint(1 << 60).as_slice());
        let (result, peak) = peak_during(|| decode_body(&body));
        assert!(
            matches!(result, Err(CodecError::Malformed(_))),
            "{result:?}"
        );
        assert!(peak < 64 * 1024, "{peak} bytes");
    }

    #[test]
    fn a_string_or_bytes_claiming_more_than_is_sent_allocate_nothing() {
        // Control (0), Hello (0), role Node (0), `software` claiming 2^60 bytes.
        let mut hello = vec![PLAIN, 0, 0, 0, 0xfd];
        hello.extend_from_slice(&(1u64 << 60).to_le_bytes());
        // A deployment whose module claims 31 MiB of wasm and sends none.
        let deploy = Message::Control(Control::Deploy {
            version: 1,
            modules: vec![Deployment {
                module: module_copy(Some(vec![])),
                config: vec![],
            }],
        });
        let encoded = encode_value(&deploy);
        // ... wasm: length 0, then `config`'s length 0.
        assert!(encoded.ends_with(&[0, 0]));
        let mut deploy = vec![PLAIN];
        deploy.extend_from_slice(&encoded[..encoded.len() - 2]);
        deploy.extend(varint(31 * 1024 * 1024));
        for body in [hello, deploy] {
            let (result, peak) = peak_during(|| decode_body(&body));
            assert!(
                matches!(result, Err(CodecError::Malformed(_))),
                "{result:?}"
            );
            assert!(peak < 64 * 1024, "{peak} bytes");
        }
    }

    #[test]
    fn a_frame_of_tiny_entries_cannot_decode_past_the_heap_bound() {
        // Empty sub-domain replicas: 13 bytes each on the wire, 280 in
        // memory; a full frame of them would take 700 MB to 1.4 GB decoded.
        let (tags, leaf) = replicate_parts();
        let count = (MAX_FRAME_LEN - 64) / leaf.len();
        let mut body = vec![PLAIN];
        body.extend(tags);
        body.extend_from_slice(&leaf[..leaf.len() - 1]);
        body.extend(varint(count as u64));
        for _ in 0..count {
            body.extend_from_slice(&leaf);
        }
        assert!(body.len() <= MAX_FRAME_LEN);
        let (result, peak) = peak_during(|| decode_body(&body));
        eprintln!("{} bytes of tiny entries: {peak} bytes peak", body.len());
        assert!(
            matches!(result, Err(CodecError::DecodedTooLarge { .. })),
            "{result:?}"
        );
        // The bound plus the one buffer a growing `Vec` moves out of.
        assert!(peak <= MAX_DECODED_LEN * 3 / 2, "{peak} bytes");
    }

    #[test]
    fn a_large_legitimate_replica_decodes() {
        // 25,000 nodes with five assignments each, as dominio-capacity runs.
        let mut big = replica(1, vec![]);
        for i in 0..25_000 {
            let node = format!("node-{i:05}");
            big.topology.nodes.push(crate::topology::NodeEntry {
                name: node.clone(),
                domain: "lab".into(),
                address: Some(format!("10.0.{}.{}:161", i / 256, i % 256)),
            });
            big.members.push(Member {
                name: node.clone(),
                role: Role::Node,
                fingerprint: "ab".repeat(32),
                state: Enrollment::Active,
            });
            for m in 0..5 {
                big.topology
                    .assignments
                    .push(crate::topology::NodeAssignment {
                        node: node.clone(),
                        module: format!("inspector-{m}"),
                        config: vec![("period".into(), "10s".into())],
                    });
            }
        }
        let message = Message::Control(Control::Replicate(Box::new(big)));
        let frame = encode(&message).unwrap();
        let (decoded, peak) = peak_during(|| decode_body(&frame[HEADER_LEN..]).unwrap());
        assert_eq!(decoded, message);
        // Legitimate replicas are about six times larger decoded than framed;
        // the peak also holds the inflated body (replicas travel deflated),
        // which the decode budget does not count: still under that budget.
        assert!(peak < MAX_DECODED_LEN, "{peak} bytes");
        eprintln!(
            "25,000-node replica: {} bytes framed, {peak} bytes peak while decoding",
            frame.len()
        );
    }

    // --- Who may send what ---------------------------------------------

    fn sample(kind: MessageKind) -> Message {
        let control = |c| Message::Control(c);
        match kind {
            MessageKind::Hello => control(Control::Hello {
                role: Role::Node,
                software: "agad".into(),
                ticket: None,
                modules_held: vec![],
                keepalive_ms: 10_000,
                serving: None,
                advertise: vec![],
                generation: 0,
            }),
            MessageKind::Welcome => control(Control::Welcome {
                enrollment: Enrollment::Active,
                reason: String::new(),
                activation: Some(Activation {
                    domain: "lab".into(),
                    generation: 3,
                }),
            }),
            MessageKind::AssignDomain => control(Control::AssignDomain {
                domain: "lab".into(),
                generation: 3,
            }),
            MessageKind::Replicate => control(Control::Replicate(Box::new(replica(1, vec![])))),
            MessageKind::ReplicaAck => control(Control::ReplicaAck { version: 1 }),
            MessageKind::Enroll => control(Control::Enroll {
                name: "n".into(),
                role: Role::Node,
                fingerprint: "ab".into(),
                ticket: None,
            }),
            MessageKind::Deploy => control(Control::Deploy {
                version: 1,
                modules: vec![],
            }),
            MessageKind::DeployAck => control(Control::DeployAck {
                version: 1,
                problems: vec![],
            }),
            MessageKind::KeepAlive => keep_alive(),
            MessageKind::Ack => control(Control::Ack { seqs: vec![1] }),
            MessageKind::Unassign => control(Control::Unassign {
                domain: "lab".into(),
            }),
            MessageKind::Redirect => control(Control::Redirect {
                domain: "lab".into(),
                parents: vec!["127.0.0.1:7000".into()],
            }),
            MessageKind::StepDown => control(Control::StepDown {
                domain: "lab".into(),
                generation: 4,
            }),
            MessageKind::Alarm => Message::Alarm(Queued {
                seq: 1,
                body: Upward::NodeReport(Report {
                    node: "n".into(),
                    module: "m".into(),
                    provenance: Provenance::default(),
                    area: crate::manifest::Area::Fault,
                    summaries: vec![],
                    time_ms: 0,
                }),
            }),
            MessageKind::Reports => Message::Reports(vec![]),
            MessageKind::Attest => control(Control::Attest { nonce: [7; 32] }),
            MessageKind::Attestation => {
                control(Control::Attestation(Box::new(crate::attest::Attestation {
                    nonce: [7; 32],
                    modules: vec![crate::attest::AttestedModule {
                        name: "m".into(),
                        sha256: "00".repeat(32),
                        proof: [1; 32],
                        artefact: crate::attest::Artefact::Intact,
                    }],
                    quarantined: Vec::new(),
                })))
            }
            MessageKind::Run => control(Control::Run(Box::new(crate::run::RunRequest {
                id: "n/m/1#rule#diagnose".into(),
                module: module_copy(None),
                args: vec![("path".into(), "/var".into())],
                deadline_ms: 30_000,
                alarm: crate::run::tests::alarm("n", "n/m/1"),
            }))),
            MessageKind::DeployProgress => control(Control::DeployProgress(DeployProgress {
                version: 2,
                nodes: 3,
                running: 1,
                failed: 1,
                not_connected: 0,
                problems: vec!["n2: module `m` refused".into()],
            })),
        }
    }

    #[test]
    fn every_kind_is_known_from_its_first_bytes_and_checked_against_its_sender() {
        for kind in MessageKind::ALL {
            let message = sample(kind);
            assert_eq!(MessageKind::of(&message), kind);
            let frame = encode(&message).unwrap();
            let body = &frame[HEADER_LEN..];
            assert_eq!(
                peek_kind(&unpack(body, &mut History::default()).unwrap()).unwrap(),
                kind
            );
            for from in [Sender::Parent, Sender::Child] {
                match decode_body_from(body, from, &mut History::default()) {
                    Ok(decoded) => {
                        assert!(kind.may_come_from(from), "{kind} from {from}");
                        assert_eq!(decoded, message);
                    }
                    Err(CodecError::Forbidden { kind: k, from: f }) => {
                        assert!(!kind.may_come_from(from), "{kind} from {from}");
                        assert_eq!((k, f), (kind, from));
                    }
                    Err(e) => panic!("{kind} from {from}: {e}"),
                }
            }
        }
        use MessageKind::*;
        let parent_only = [
            Welcome,
            AssignDomain,
            Replicate,
            Deploy,
            Unassign,
            Redirect,
            StepDown,
            Attest,
            Run,
        ];
        let child_only = [
            Hello,
            Enroll,
            ReplicaAck,
            DeployAck,
            Alarm,
            Reports,
            Attestation,
            DeployProgress,
        ];
        for kind in MessageKind::ALL {
            assert_eq!(
                kind.may_come_from(Sender::Child),
                !parent_only.contains(&kind)
            );
            assert_eq!(
                kind.may_come_from(Sender::Parent),
                !child_only.contains(&kind)
            );
        }
    }

    #[test]
    fn a_child_replicate_is_refused_before_its_body_is_decoded() {
        // Control, Replicate, then bytes that are no replica at all: only
        // the tags are read.
        let body = [PLAIN, 0, 3, 0xff, 0xff, 0xff];
        let err = decode_body_from(&body, Sender::Child, &mut History::default()).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Forbidden {
                    kind: MessageKind::Replicate,
                    from: Sender::Child
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "a child may not send `replicate` (refused before decoding it)"
        );
        assert!(matches!(
            decode_body_from(&body, Sender::Parent, &mut History::default()),
            Err(CodecError::Malformed(_))
        ));
        // A deep self-nested replica from a child costs no recursion at all.
        let nested = nested_replicate(100_000, 1);
        assert!(matches!(
            decode_body_from(&nested, Sender::Child, &mut History::default()),
            Err(CodecError::Forbidden { .. })
        ));
    }

    #[test]
    fn unknown_variants_are_malformed() {
        for body in [&[PLAIN, 9][..], &[PLAIN, 0, 77], &[PLAIN]] {
            assert!(
                matches!(
                    decode_body_from(body, Sender::Parent, &mut History::default()),
                    Err(CodecError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }
}
