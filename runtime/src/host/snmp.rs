//! The `snmp` capability: GET, GETNEXT, GETBULK and walks against the agents
//! the node's configuration names. A module sees agent names only; addresses
//! and credentials stay in [`AgentConfig`].
//!
//! Requests are synchronous (they run on the node's blocking pool, see
//! [`crate::host::blocking`])
//! and bounded: every attempt waits at most `timeout_ms`, a request makes at
//! most `retries + 1` attempts, and a walk returns at most
//! [`WALK_MAX_VARBINDS`] objects. Every failure becomes an `snmp-error` value
//! for the module to handle; nothing here traps or panics, even when the
//! agent (or the SNMP library) misbehaves.
//!
//! Sessions are opened lazily, one per agent per module instance, and thrown
//! away after any failure so that a late or duplicated answer can never be
//! mistaken for the answer to a later request, and so that SNMPv3 engine
//! discovery runs again after an agent restart.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snmp2::{Oid, SyncSession, Value as Raw, v3};
use tracing::{debug, debug_span};

use crate::bindings::snmp;
use crate::host::blocking::Offloaded;

/// Port used when an agent's address names none.
pub const DEFAULT_PORT: u16 = 161;
/// Objects asked for per GETBULK while walking.
pub const WALK_MAX_REPETITIONS: u32 = 25;
/// Most objects one walk may return; a larger subtree is refused so that a
/// module cannot make the node hold an entire router's MIB in memory.
pub const WALK_MAX_VARBINDS: usize = 50_000;
/// net-snmp refuses shorter USM passphrases.
pub const MIN_PASSWORD_LEN: usize = 8;
/// RFC 2578: at most 128 sub-identifiers.
const MAX_SUB_IDS: usize = 128;
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_RETRIES: u32 = 10;

/// SNMP protocol version of an agent.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnmpVersion {
    /// Community-based SNMPv2c.
    V2c,
    /// User-based SNMPv3 (USM).
    V3,
}

/// SNMPv3 authentication protocol (HMAC over the message).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthProtocol {
    Md5,
    /// SHA-1, as net-snmp's `SHA`.
    #[serde(alias = "sha1")]
    Sha,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// SNMPv3 privacy protocol (encryption of the scoped PDU).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrivProtocol {
    Des,
    /// AES-128 (CFB), as net-snmp's `AES`.
    #[serde(alias = "aes128")]
    Aes,
    /// AES-192 with the Blumenthal key extension (net-snmp's `AES-192`).
    Aes192,
    /// AES-256 with the Blumenthal key extension (net-snmp's `AES-256`).
    Aes256,
}

/// One SNMP agent a node's modules may query, as the operator writes it in
/// the node's configuration.
#[derive(Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name modules use to pick this agent; unique within a node.
    pub name: String,
    /// `host:port`, `host`, `[v6]:port` or a bare IP; the port defaults to 161.
    /// A host name is resolved when the first request opens the session.
    pub address: String,
    /// Protocol version: `v2c` or `v3`.
    pub version: SnmpVersion,
    /// v2c community string (required for v2c, refused for v3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub community: Option<String>,
    /// v3 USM user name (required for v3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// v3 authentication protocol; set together with `auth_password`.
    /// Without it the user is noAuthNoPriv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_protocol: Option<AuthProtocol>,
    /// v3 authentication passphrase, at least 8 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<String>,
    /// v3 privacy protocol; set together with `priv_password`, and only with
    /// authentication (authPriv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priv_protocol: Option<PrivProtocol>,
    /// v3 privacy passphrase, at least 8 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priv_password: Option<String>,
    /// How long one attempt waits for the answer, in milliseconds (1–60000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first before a request fails with `timeout` (0–10).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_retries() -> u32 {
    1
}

/// Secrets stay out of logs: communities and passphrases print redacted.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("AgentConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("version", &self.version)
            .field("community", &redact(&self.community))
            .field("user", &self.user)
            .field("auth_protocol", &self.auth_protocol)
            .field("auth_password", &redact(&self.auth_password))
            .field("priv_protocol", &self.priv_protocol)
            .field("priv_password", &redact(&self.priv_password))
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .finish()
    }
}

impl AgentConfig {
    /// An SNMPv2c agent with the default timeout and retries.
    pub fn v2c(name: &str, address: &str, community: &str) -> AgentConfig {
        AgentConfig {
            name: name.to_owned(),
            address: address.to_owned(),
            version: SnmpVersion::V2c,
            community: Some(community.to_owned()),
            user: None,
            auth_protocol: None,
            auth_password: None,
            priv_protocol: None,
            priv_password: None,
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
        }
    }

    /// An SNMPv3 authPriv agent with the default timeout and retries.
    pub fn v3_auth_priv(
        name: &str,
        address: &str,
        user: &str,
        auth: (AuthProtocol, &str),
        privacy: (PrivProtocol, &str),
    ) -> AgentConfig {
        AgentConfig {
            name: name.to_owned(),
            address: address.to_owned(),
            version: SnmpVersion::V3,
            community: None,
            user: Some(user.to_owned()),
            auth_protocol: Some(auth.0),
            auth_password: Some(auth.1.to_owned()),
            priv_protocol: Some(privacy.0),
            priv_password: Some(privacy.1.to_owned()),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
        }
    }

    /// Checks what can be checked without the network. The message names
    /// the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        split_host_port(&self.address)?;
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, not {}",
                self.timeout_ms
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "retries must be at most {MAX_RETRIES}, not {}",
                self.retries
            ));
        }
        match self.version {
            SnmpVersion::V2c => {
                if self.community.as_deref().is_none_or(str::is_empty) {
                    return Err("v2c needs a community".into());
                }
                let v3_only = [
                    ("user", self.user.is_some()),
                    ("auth_protocol", self.auth_protocol.is_some()),
                    ("auth_password", self.auth_password.is_some()),
                    ("priv_protocol", self.priv_protocol.is_some()),
                    ("priv_password", self.priv_password.is_some()),
                ];
                if let Some((field, _)) = v3_only.iter().find(|(_, set)| *set) {
                    return Err(format!("{field} is only used with v3"));
                }
            }
            SnmpVersion::V3 => {
                if self.user.as_deref().is_none_or(str::is_empty) {
                    return Err("v3 needs a user".into());
                }
                if self.community.is_some() {
                    return Err("community is only used with v2c".into());
                }
                match (&self.auth_protocol, &self.auth_password) {
                    (Some(_), Some(p)) => check_password("auth_password", p)?,
                    (None, None) => {}
                    (Some(_), None) => return Err("auth_protocol needs auth_password".into()),
                    (None, Some(_)) => return Err("auth_password needs auth_protocol".into()),
                }
                match (&self.priv_protocol, &self.priv_password) {
                    (Some(_), Some(p)) => check_password("priv_password", p)?,
                    (None, None) => {}
                    (Some(_), None) => return Err("priv_protocol needs priv_password".into()),
                    (None, Some(_)) => return Err("priv_password needs priv_protocol".into()),
                }
                if self.priv_protocol.is_some() && self.auth_protocol.is_none() {
                    return Err(
                        "privacy needs authentication (auth_protocol, auth_password)".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_password(field: &str, password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD_LEN {
        return Err(format!(
            "{field} must be at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    Ok(())
}

/// Validates every agent and that names are unique; the message starts with
/// the agent's name.
pub fn validate_agents(agents: &[AgentConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for agent in agents {
        agent
            .validate()
            .map_err(|e| format!("agent `{}`: {e}", agent.name))?;
        if !seen.insert(agent.name.as_str()) {
            return Err(format!("agent `{}` is named twice", agent.name));
        }
    }
    Ok(())
}

/// Splits an agent address into host and port (161 when absent).
fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let a = address.trim();
    if a.is_empty() {
        return Err("address must not be empty".into());
    }
    let checked = |port: u16| {
        if port == 0 {
            Err(format!("address `{a}`: port 0"))
        } else {
            Ok(port)
        }
    };
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), checked(sa.port())?));
    }
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Ok((ip.to_string(), DEFAULT_PORT));
    }
    if let Some(inner) = a.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let ip: IpAddr = inner
            .parse()
            .map_err(|_| format!("address `{a}`: bad IPv6 address"))?;
        return Ok((ip.to_string(), DEFAULT_PORT));
    }
    match a.rsplit_once(':') {
        Some((host, port)) => {
            if host.is_empty() || host.contains(':') {
                return Err(format!("address `{a}`: expected host:port"));
            }
            let port = port
                .parse()
                .map_err(|_| format!("address `{a}`: bad port `{port}`"))?;
            Ok((host.to_owned(), checked(port)?))
        }
        None => Ok((a.to_owned(), DEFAULT_PORT)),
    }
}

/// Parses a dotted-decimal OID (an optional leading dot is accepted).
fn parse_oid(text: &str) -> Result<Vec<u64>, snmp::SnmpError> {
    let invalid = || snmp::SnmpError::InvalidOid(text.to_owned());
    let body = text.trim();
    let body = body.strip_prefix('.').unwrap_or(body);
    let arcs = body
        .split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse::<u32>().ok().map(u64::from)
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(invalid)?;
    // The encoder packs the first two arcs into one byte (40·x + y), and the
    // library accepts only x ≤ 2, y < 40.
    if arcs.len() < 2 || arcs.len() > MAX_SUB_IDS || arcs[0] > 2 || arcs[1] >= 40 {
        return Err(invalid());
    }
    Ok(arcs)
}

fn raw_oid(arcs: &[u64], text: &str) -> Result<Oid<'static>, snmp::SnmpError> {
    Oid::from(arcs).map_err(|_| snmp::SnmpError::InvalidOid(text.to_owned()))
}

fn parse_oids(texts: &[String]) -> Result<Vec<Oid<'static>>, snmp::SnmpError> {
    texts.iter().map(|t| raw_oid(&parse_oid(t)?, t)).collect()
}

fn oid_text(arcs: &[u64]) -> String {
    let mut s = String::with_capacity(arcs.len() * 4);
    for (i, a) in arcs.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(&a.to_string());
    }
    s
}

/// RFC 3416 error-status names, as net-snmp prints them.
fn error_status_name(status: u32) -> String {
    const NAMES: [&str; 19] = [
        "noError",
        "tooBig",
        "noSuchName",
        "badValue",
        "readOnly",
        "genErr",
        "noAccess",
        "wrongType",
        "wrongLength",
        "wrongEncoding",
        "wrongValue",
        "noCreation",
        "inconsistentValue",
        "resourceUnavailable",
        "commitFailed",
        "undoFailed",
        "authorizationError",
        "notWritable",
        "inconsistentName",
    ];
    usize::try_from(status)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("error-status {status}"), |n| (*n).to_owned())
}

/// One object of an answer, its OID kept as arcs for walk ordering.
struct Binding {
    arcs: Vec<u64>,
    value: snmp::Value,
}

impl Binding {
    fn into_varbind(self) -> snmp::Varbind {
        snmp::Varbind {
            oid: oid_text(&self.arcs),
            value: self.value,
        }
    }
}

fn is_exception(value: &snmp::Value) -> bool {
    matches!(
        value,
        snmp::Value::EndOfMibView | snmp::Value::NoSuchObject | snmp::Value::NoSuchInstance
    )
}

fn convert_value(raw: Raw<'_>) -> Result<snmp::Value, String> {
    Ok(match raw {
        Raw::Boolean(b) => snmp::Value::Boolean(b),
        Raw::Null => snmp::Value::Null,
        Raw::Integer(i) => snmp::Value::Integer(i),
        Raw::OctetString(s) => snmp::Value::OctetString(s.to_vec()),
        Raw::ObjectIdentifier(o) => {
            let arcs: Vec<u64> = o
                .iter()
                .ok_or("object-id value with an oversized arc")?
                .collect();
            snmp::Value::ObjectId(oid_text(&arcs))
        }
        Raw::IpAddress([a, b, c, d]) => snmp::Value::IpAddress((a, b, c, d)),
        Raw::Counter32(n) => snmp::Value::Counter32(n),
        Raw::Unsigned32(n) => snmp::Value::Unsigned32(n),
        Raw::Timeticks(n) => snmp::Value::Timeticks(n),
        Raw::Opaque(b) => snmp::Value::Opaque(b.to_vec()),
        Raw::Counter64(n) => snmp::Value::Counter64(n),
        Raw::EndOfMibView => snmp::Value::EndOfMibView,
        Raw::NoSuchObject => snmp::Value::NoSuchObject,
        Raw::NoSuchInstance => snmp::Value::NoSuchInstance,
        other => return Err(format!("unexpected value in a varbind: {other:?}")),
    })
}

/// What one request asks.
enum Op {
    Get(Vec<Oid<'static>>),
    GetNext(Vec<Oid<'static>>),
    Bulk {
        oids: Vec<Oid<'static>>,
        non_repeaters: u32,
        max_repetitions: u32,
    },
}

/// Why one exchange failed.
enum Failure {
    /// The library's error: socket, encoding, USM.
    Snmp(snmp2::Error),
    /// The agent answered with a non-zero error-status.
    Status(u32),
    /// The answer made no sense, or the library panicked on it.
    Malformed(String),
    /// No session could be opened (bad address, unresolvable host, socket).
    Setup(String),
}

/// One round trip on an open session.
fn exchange(session: &mut SyncSession, op: &Op) -> Result<Vec<Binding>, Failure> {
    let (oids, expected) = match op {
        Op::Get(oids) | Op::GetNext(oids) => (oids, Some(oids.len())),
        Op::Bulk { oids, .. } => (oids, None),
    };
    let refs: Vec<&Oid<'_>> = oids.iter().collect();
    let pdu = match op {
        Op::Get(_) => session.get_many(&refs),
        Op::GetNext(_) if refs.len() == 1 => session.getnext(refs[0]),
        // The library's GETNEXT carries one OID. A GETBULK whose every OID is
        // a non-repeater has exactly GETNEXT's semantics (RFC 3416 §4.2.3).
        Op::GetNext(_) => session.getbulk(&refs, u32::try_from(refs.len()).unwrap_or(u32::MAX), 0),
        Op::Bulk {
            non_repeaters,
            max_repetitions,
            ..
        } => session.getbulk(&refs, *non_repeaters, *max_repetitions),
    }
    .map_err(Failure::Snmp)?;
    if pdu.error_status != 0 {
        return Err(Failure::Status(pdu.error_status));
    }
    let mut out = Vec::with_capacity(expected.unwrap_or(16));
    for (oid, raw) in pdu.varbinds {
        let arcs: Vec<u64> = oid
            .iter()
            .ok_or_else(|| Failure::Malformed("varbind OID with an oversized arc".into()))?
            .collect();
        let value = convert_value(raw).map_err(Failure::Malformed)?;
        out.push(Binding { arcs, value });
    }
    // The varbind iterator stops quietly at the first one it cannot decode.
    if let Some(n) = expected
        && out.len() != n
    {
        return Err(Failure::Malformed(format!(
            "asked for {n} objects, answer holds {}",
            out.len()
        )));
    }
    Ok(out)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn security_of(cfg: &AgentConfig) -> v3::Security {
    let user = cfg.user.as_deref().unwrap_or_default().as_bytes();
    let (Some(auth), Some(auth_password)) = (cfg.auth_protocol, cfg.auth_password.as_deref())
    else {
        return v3::Security::new(user, b"").with_auth(v3::Auth::NoAuthNoPriv);
    };
    let auth = match auth {
        AuthProtocol::Md5 => v3::AuthProtocol::Md5,
        AuthProtocol::Sha => v3::AuthProtocol::Sha1,
        AuthProtocol::Sha224 => v3::AuthProtocol::Sha224,
        AuthProtocol::Sha256 => v3::AuthProtocol::Sha256,
        AuthProtocol::Sha384 => v3::AuthProtocol::Sha384,
        AuthProtocol::Sha512 => v3::AuthProtocol::Sha512,
    };
    let security = v3::Security::new(user, auth_password.as_bytes()).with_auth_protocol(auth);
    let (Some(privacy), Some(priv_password)) = (cfg.priv_protocol, cfg.priv_password.as_deref())
    else {
        return security.with_auth(v3::Auth::AuthNoPriv);
    };
    let cipher = match privacy {
        PrivProtocol::Des => v3::Cipher::Des,
        PrivProtocol::Aes => v3::Cipher::Aes128,
        PrivProtocol::Aes192 => v3::Cipher::Aes192,
        PrivProtocol::Aes256 => v3::Cipher::Aes256,
    };
    let security = security.with_auth(v3::Auth::AuthPriv {
        cipher,
        privacy_password: priv_password.as_bytes().to_vec(),
    });
    if cipher.priv_key_needs_extension(&auth) {
        // What net-snmp does for AES-192/256 ("Cisco"/Reeder would be AES-192C).
        security.with_key_extension_method(v3::KeyExtension::Blumenthal)
    } else {
        security
    }
}

/// Opens a socket towards the agent and, for v3, runs engine discovery.
fn open_session(cfg: &AgentConfig, first_request_id: i32) -> Result<Box<SyncSession>, Failure> {
    cfg.validate()
        .map_err(|e| Failure::Setup(format!("agent `{}` is misconfigured: {e}", cfg.name)))?;
    let (host, port) = split_host_port(&cfg.address).map_err(Failure::Setup)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Failure::Setup(format!("cannot resolve `{host}`: {e}")))?
        .next()
        .ok_or_else(|| Failure::Setup(format!("`{host}` resolves to no address")))?;
    let timeout = Some(Duration::from_millis(cfg.timeout_ms));
    let socket_error = |e: std::io::Error| Failure::Setup(format!("socket towards {addr}: {e}"));
    match cfg.version {
        SnmpVersion::V2c => {
            let community = cfg.community.as_deref().unwrap_or_default().as_bytes();
            SyncSession::new_v2c(addr, community, timeout, first_request_id)
                .map(Box::new)
                .map_err(socket_error)
        }
        SnmpVersion::V3 => {
            let mut session = Box::new(
                SyncSession::new_v3(addr, timeout, first_request_id, security_of(cfg))
                    .map_err(socket_error)?,
            );
            session.init().map_err(Failure::Snmp)?;
            Ok(session)
        }
    }
}

/// Host side of the `snmp` interface for one module instance.
pub struct SnmpClient {
    agents: Arc<[AgentConfig]>,
    /// Open sessions by agent index. Boxed: a session holds two 64 KiB buffers.
    sessions: HashMap<usize, Box<SyncSession>>,
    /// Label for tracing: the module this client serves.
    module: String,
    /// Seeds each new session's request ids, so that a new session never
    /// starts where a discarded one left off.
    seed: RandomState,
    opened: u64,
}

impl fmt::Debug for SnmpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnmpClient")
            .field("module", &self.module)
            .field(
                "agents",
                &self
                    .agents
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("open_sessions", &self.sessions.len())
            .finish()
    }
}

impl SnmpClient {
    /// A client for `agents`, the first being the default. Nothing is opened
    /// until a module asks; agents are expected to be validated already
    /// ([`validate_agents`]), and one that is not fails its requests with
    /// `transport`.
    pub fn new(agents: Arc<[AgentConfig]>) -> SnmpClient {
        SnmpClient {
            agents,
            sessions: HashMap::new(),
            module: String::new(),
            seed: RandomState::new(),
            opened: 0,
        }
    }

    /// Names the module in this client's tracing spans.
    pub fn with_module(mut self, module: impl Into<String>) -> SnmpClient {
        self.module = module.into();
        self
    }

    fn agent_index(&self, agent: &str) -> Result<usize, snmp::SnmpError> {
        if agent.is_empty() {
            return if self.agents.is_empty() {
                Err(snmp::SnmpError::UnknownAgent(String::new()))
            } else {
                Ok(0)
            };
        }
        self.agents
            .iter()
            .position(|a| a.name == agent)
            .ok_or_else(|| snmp::SnmpError::UnknownAgent(agent.to_owned()))
    }

    fn next_request_id(&mut self) -> i32 {
        self.opened += 1;
        let h = self.seed.hash_one(self.opened);
        // Positive and far from overflow; the library wraps anyway.
        i32::try_from(h % 0x4000_0000).unwrap_or(1) + 1
    }

    /// One exchange on the agent's session, opening it if needed. A panic
    /// inside the library is caught: the session is dropped, the module
    /// gets an error value.
    fn attempt(&mut self, idx: usize, op: &Op) -> Result<Vec<Binding>, Failure> {
        let first_id = self.next_request_id();
        let agents = self.agents.clone();
        let cfg = &agents[idx];
        let sessions = &mut self.sessions;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let session = match sessions.entry(idx) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(open_session(cfg, first_id)?)
                }
            };
            exchange(session, op)
        }));
        outcome.unwrap_or_else(|payload| {
            self.sessions.remove(&idx);
            Err(Failure::Malformed(format!(
                "SNMP library panicked: {}",
                panic_message(&*payload)
            )))
        })
    }

    /// A request with the agent's timeout and retries.
    fn request(&mut self, idx: usize, op: &Op) -> Result<Vec<Binding>, snmp::SnmpError> {
        let (timeout_ms, retries, v3) = {
            let cfg = &self.agents[idx];
            (
                cfg.timeout_ms.max(1),
                cfg.retries,
                cfg.version == SnmpVersion::V3,
            )
        };
        let attempts = retries.saturating_add(1);
        // Each attempt blocks at most one timeout; this bounds the extra round
        // trips that USM re-synchronisation may add.
        let deadline =
            Instant::now() + Duration::from_millis(timeout_ms.saturating_mul(u64::from(attempts)));
        let mut failed_attempts = 0;
        let mut resyncs = 0;
        let mut rediscovered = false;
        let mut clean = true;
        loop {
            let result = self.attempt(idx, op);
            let transport = |msg: String| snmp::SnmpError::Transport(msg);
            match result {
                Ok(bindings) => {
                    if !clean {
                        // An earlier attempt's answer may still arrive on this
                        // socket and would be taken for the next request's.
                        self.sessions.remove(&idx);
                    }
                    return Ok(bindings);
                }
                Err(Failure::Status(status)) => {
                    return Err(snmp::SnmpError::AgentError(error_status_name(status)));
                }
                Err(Failure::Setup(msg)) => return Err(transport(msg)),
                Err(Failure::Malformed(msg)) => {
                    self.sessions.remove(&idx);
                    return Err(transport(msg));
                }
                Err(Failure::Snmp(snmp2::Error::AuthUpdated)) if resyncs < 2 => {
                    // USM learnt the agent's boots/time from a report: resend.
                    resyncs += 1;
                }
                Err(Failure::Snmp(snmp2::Error::Send | snmp2::Error::Receive)) => {
                    clean = false;
                    failed_attempts += 1;
                    debug!(agent = %self.agents[idx].name, attempt = failed_attempts, "no answer");
                    if failed_attempts >= attempts {
                        self.sessions.remove(&idx);
                        return Err(snmp::SnmpError::Timeout);
                    }
                }
                Err(Failure::Snmp(snmp2::Error::RequestIdMismatch)) => {
                    // A stale datagram is queued; only a fresh socket is sure
                    // to be rid of it.
                    self.sessions.remove(&idx);
                    clean = false;
                    failed_attempts += 1;
                    if failed_attempts >= attempts {
                        return Err(snmp::SnmpError::Timeout);
                    }
                }
                Err(Failure::Snmp(
                    e @ (snmp2::Error::AuthFailure(_) | snmp2::Error::AuthUpdated),
                )) if v3 && !rediscovered => {
                    // The agent may have restarted (new engine boots or id):
                    // discover it again, once.
                    debug!(agent = %self.agents[idx].name, error = %e, "re-running v3 discovery");
                    self.sessions.remove(&idx);
                    rediscovered = true;
                }
                Err(Failure::Snmp(e)) => {
                    self.sessions.remove(&idx);
                    return Err(transport(match e {
                        snmp2::Error::AuthFailure(kind) => {
                            format!("authentication failure: {kind}")
                        }
                        other => other.to_string(),
                    }));
                }
            }
            if Instant::now() >= deadline {
                self.sessions.remove(&idx);
                return Err(snmp::SnmpError::Timeout);
            }
        }
    }

    fn walk_bindings(
        &mut self,
        idx: usize,
        root_text: &str,
    ) -> Result<Vec<Binding>, snmp::SnmpError> {
        let root = parse_oid(root_text)?;
        let mut cursor = root.clone();
        let mut out: Vec<Binding> = Vec::new();
        'walk: loop {
            let op = Op::Bulk {
                oids: vec![raw_oid(&cursor, root_text)?],
                non_repeaters: 0,
                max_repetitions: WALK_MAX_REPETITIONS,
            };
            let batch = self.request(idx, &op)?;
            if batch.is_empty() {
                break;
            }
            for b in batch {
                if is_exception(&b.value) || !b.arcs.starts_with(&root) {
                    break 'walk;
                }
                if b.arcs <= cursor {
                    return Err(snmp::SnmpError::Transport(format!(
                        "agent returned {} after {}: OIDs not increasing",
                        oid_text(&b.arcs),
                        oid_text(&cursor)
                    )));
                }
                if out.len() >= WALK_MAX_VARBINDS {
                    return Err(snmp::SnmpError::Transport(format!(
                        "walk of {root_text} stopped at the node's limit of {WALK_MAX_VARBINDS} objects; walk a smaller subtree"
                    )));
                }
                cursor.clone_from(&b.arcs);
                out.push(b);
            }
        }
        if out.is_empty() {
            // Like snmpwalk: a root that is itself an instance (sysUpTime.0)
            // has nothing under it but is what the caller wants.
            let got = self.request(idx, &Op::Get(vec![raw_oid(&root, root_text)?]))?;
            out.extend(got.into_iter().filter(|b| !is_exception(&b.value)));
        }
        Ok(out)
    }

    /// Runs one capability call under a span and logs how it ended.
    fn traced(
        &mut self,
        call: &'static str,
        agent: &str,
        f: impl FnOnce(&mut SnmpClient) -> Result<Vec<Binding>, snmp::SnmpError>,
    ) -> Result<Vec<snmp::Varbind>, snmp::SnmpError> {
        let span = debug_span!("snmp", call, module = %self.module, agent = %agent);
        let _entered = span.enter();
        let started = Instant::now();
        let result = f(self);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(b) => debug!(varbinds = b.len(), elapsed_ms, "ok"),
            Err(e) => debug!(error = ?e, elapsed_ms, "failed"),
        }
        result.map(|b| b.into_iter().map(Binding::into_varbind).collect())
    }
}

/// The `snmp` calls, run on the blocking pool by [`Offloaded`].
impl SnmpClient {
    pub fn agents(&mut self) -> Vec<String> {
        self.agents.iter().map(|a| a.name.clone()).collect()
    }

    pub fn get(
        &mut self,
        agent: String,
        oids: Vec<String>,
    ) -> Result<Vec<snmp::Varbind>, snmp::SnmpError> {
        self.traced("get", &agent, |c| {
            let idx = c.agent_index(&agent)?;
            let oids = parse_oids(&oids)?;
            if oids.is_empty() {
                return Ok(Vec::new());
            }
            c.request(idx, &Op::Get(oids))
        })
    }

    pub fn get_next(
        &mut self,
        agent: String,
        oids: Vec<String>,
    ) -> Result<Vec<snmp::Varbind>, snmp::SnmpError> {
        self.traced("get-next", &agent, |c| {
            let idx = c.agent_index(&agent)?;
            let oids = parse_oids(&oids)?;
            if oids.is_empty() {
                return Ok(Vec::new());
            }
            c.request(idx, &Op::GetNext(oids))
        })
    }

    pub fn get_bulk(
        &mut self,
        agent: String,
        oids: Vec<String>,
        non_repeaters: u32,
        max_repetitions: u32,
    ) -> Result<Vec<snmp::Varbind>, snmp::SnmpError> {
        self.traced("get-bulk", &agent, |c| {
            let idx = c.agent_index(&agent)?;
            let oids = parse_oids(&oids)?;
            if oids.is_empty() {
                return Ok(Vec::new());
            }
            c.request(
                idx,
                &Op::Bulk {
                    oids,
                    non_repeaters,
                    max_repetitions,
                },
            )
        })
    }

    pub fn walk(
        &mut self,
        agent: String,
        root: String,
    ) -> Result<Vec<snmp::Varbind>, snmp::SnmpError> {
        self.traced("walk", &agent, |c| {
            let idx = c.agent_index(&agent)?;
            c.walk_bindings(idx, &root)
        })
    }
}

type Varbinds = Result<Vec<snmp::Varbind>, snmp::SnmpError>;

impl snmp::Host for Offloaded<SnmpClient> {
    async fn agents(&mut self) -> wasmtime::Result<Vec<String>> {
        self.run("snmp.agents", SnmpClient::agents).await
    }
    async fn get(&mut self, agent: String, oids: Vec<String>) -> wasmtime::Result<Varbinds> {
        self.run("snmp.get", move |c| c.get(agent, oids)).await
    }
    async fn get_next(&mut self, agent: String, oids: Vec<String>) -> wasmtime::Result<Varbinds> {
        self.run("snmp.get-next", move |c| c.get_next(agent, oids))
            .await
    }
    async fn get_bulk(
        &mut self,
        agent: String,
        oids: Vec<String>,
        non_repeaters: u32,
        max_repetitions: u32,
    ) -> wasmtime::Result<Varbinds> {
        self.run("snmp.get-bulk", move |c| {
            c.get_bulk(agent, oids, non_repeaters, max_repetitions)
        })
        .await
    }
    async fn walk(&mut self, agent: String, root: String) -> wasmtime::Result<Varbinds> {
        self.run("snmp.walk", move |c| c.walk(agent, root)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotted_decimal_oids() {
        assert_eq!(
            parse_oid("1.3.6.1.2.1.1.1.0").ok(),
            Some(vec![1, 3, 6, 1, 2, 1, 1, 1, 0])
        );
        assert_eq!(parse_oid(".1.3.6.1").ok(), Some(vec![1, 3, 6, 1]));
        assert_eq!(parse_oid(" 1.3 ").ok(), Some(vec![1, 3]));
        assert_eq!(
            parse_oid("1.3.4294967295").ok(),
            Some(vec![1, 3, 4_294_967_295])
        );
    }

    #[test]
    fn rejects_malformed_oids() {
        for bad in [
            "",
            ".",
            "1",
            "1..3",
            "1.3.",
            "..1.3",
            "1.3.a",
            "1.3.-1",
            "1.3.+1",
            "3.1",
            "1.40",
            "1.3.4294967296",
            "sysDescr.0",
            "1.3.6.1 .2",
        ] {
            match parse_oid(bad) {
                Err(snmp::SnmpError::InvalidOid(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} parsed as {:?}", other.map(|a| oid_text(&a))),
            }
        }
        let long = vec!["1"; MAX_SUB_IDS + 1].join(".");
        assert!(parse_oid(&long).is_err());
    }

    #[test]
    fn oid_round_trips_through_the_library() {
        let arcs = parse_oid("1.3.6.1.4.1.8072.3.2.10").expect("valid");
        let raw = raw_oid(&arcs, "x").expect("encodable");
        let back: Vec<u64> = raw.iter().expect("small arcs").collect();
        assert_eq!(back, arcs);
        assert_eq!(oid_text(&back), "1.3.6.1.4.1.8072.3.2.10");
    }

    #[test]
    fn names_error_statuses() {
        assert_eq!(error_status_name(1), "tooBig");
        assert_eq!(error_status_name(2), "noSuchName");
        assert_eq!(error_status_name(18), "inconsistentName");
        assert_eq!(error_status_name(99), "error-status 99");
    }

    fn v3_agent() -> AgentConfig {
        AgentConfig::v3_auth_priv(
            "core",
            "10.0.0.1",
            "agad",
            (AuthProtocol::Sha, "authpass1"),
            (PrivProtocol::Aes, "privpass1"),
        )
    }

    #[test]
    fn valid_configs_pass() {
        assert_eq!(
            AgentConfig::v2c("a", "127.0.0.1:1161", "public").validate(),
            Ok(())
        );
        assert_eq!(v3_agent().validate(), Ok(()));
        let mut no_priv = v3_agent();
        no_priv.priv_protocol = None;
        no_priv.priv_password = None;
        assert_eq!(no_priv.validate(), Ok(()));
        let mut no_auth = no_priv.clone();
        no_auth.auth_protocol = None;
        no_auth.auth_password = None;
        assert_eq!(no_auth.validate(), Ok(()));
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases: Vec<(AgentConfig, &str)> = vec![
            (AgentConfig::v2c("", "h", "c"), "name"),
            (AgentConfig::v2c("a", "", "c"), "address"),
            (AgentConfig::v2c("a", "h:x", "c"), "port"),
            (AgentConfig::v2c("a", "h:0", "c"), "port 0"),
            (AgentConfig::v2c("a", "h", ""), "community"),
            (
                AgentConfig {
                    timeout_ms: 0,
                    ..AgentConfig::v2c("a", "h", "c")
                },
                "timeout_ms",
            ),
            (
                AgentConfig {
                    retries: 11,
                    ..AgentConfig::v2c("a", "h", "c")
                },
                "retries",
            ),
            (
                AgentConfig {
                    user: Some("u".into()),
                    ..AgentConfig::v2c("a", "h", "c")
                },
                "user",
            ),
            (
                AgentConfig {
                    user: None,
                    ..v3_agent()
                },
                "user",
            ),
            (
                AgentConfig {
                    community: Some("c".into()),
                    ..v3_agent()
                },
                "community",
            ),
            (
                AgentConfig {
                    auth_password: Some("short".into()),
                    ..v3_agent()
                },
                "auth_password",
            ),
            (
                AgentConfig {
                    priv_password: Some("1234567".into()),
                    ..v3_agent()
                },
                "priv_password",
            ),
            (
                AgentConfig {
                    auth_password: None,
                    ..v3_agent()
                },
                "auth_password",
            ),
            (
                AgentConfig {
                    priv_protocol: None,
                    ..v3_agent()
                },
                "priv_protocol",
            ),
            (
                AgentConfig {
                    auth_protocol: None,
                    auth_password: None,
                    ..v3_agent()
                },
                "authentication",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg
                .validate()
                .expect_err(&format!("{cfg:?} should be refused"));
            assert!(err.contains(field), "{err:?} does not mention {field}");
        }
    }

    #[test]
    fn agent_lists_need_unique_names() {
        let a = AgentConfig::v2c("a", "h", "c");
        assert_eq!(validate_agents(&[a.clone(), v3_agent()]), Ok(()));
        let err = validate_agents(&[a.clone(), a]).expect_err("duplicate");
        assert!(err.contains("named twice"));
        let err = validate_agents(&[AgentConfig::v2c("x", "h", "")]).expect_err("bad");
        assert!(err.starts_with("agent `x`"));
    }

    #[test]
    fn addresses_default_to_port_161() {
        assert_eq!(split_host_port("10.0.0.1"), Ok(("10.0.0.1".into(), 161)));
        assert_eq!(
            split_host_port("10.0.0.1:1161"),
            Ok(("10.0.0.1".into(), 1161))
        );
        assert_eq!(
            split_host_port("router.example"),
            Ok(("router.example".into(), 161))
        );
        assert_eq!(
            split_host_port("router.example:162"),
            Ok(("router.example".into(), 162))
        );
        assert_eq!(split_host_port("::1"), Ok(("::1".into(), 161)));
        assert_eq!(split_host_port("[::1]"), Ok(("::1".into(), 161)));
        assert_eq!(split_host_port("[::1]:1161"), Ok(("::1".into(), 1161)));
        assert!(split_host_port("a:b:c").is_err());
    }

    #[test]
    fn config_reads_from_toml_with_defaults_and_refuses_unknown_fields() {
        let cfg: AgentConfig = toml::from_str(
            "name = \"core\"\naddress = \"10.0.0.1\"\nversion = \"v3\"\nuser = \"agad\"\n\
             auth_protocol = \"sha256\"\nauth_password = \"authpass1\"\n\
             priv_protocol = \"aes256\"\npriv_password = \"privpass1\"\n",
        )
        .expect("parses");
        assert_eq!(cfg.timeout_ms, 1000);
        assert_eq!(cfg.retries, 1);
        assert_eq!(cfg.auth_protocol, Some(AuthProtocol::Sha256));
        assert_eq!(cfg.priv_protocol, Some(PrivProtocol::Aes256));
        assert!(
            toml::from_str::<AgentConfig>(
                "name = \"a\"\naddress = \"h\"\nversion = \"v2c\"\ncommunity = \"c\"\nport = 1\n"
            )
            .is_err()
        );
        assert!(
            !format!("{cfg:?}").contains("authpass1"),
            "Debug must redact secrets"
        );
        let aliased: AgentConfig = toml::from_str(
            "name = \"a\"\naddress = \"h\"\nversion = \"v3\"\nuser = \"u\"\n\
             auth_protocol = \"sha1\"\nauth_password = \"authpass1\"\n\
             priv_protocol = \"aes128\"\npriv_password = \"privpass1\"\n",
        )
        .expect("aliases parse");
        assert_eq!(aliased.auth_protocol, Some(AuthProtocol::Sha));
        assert_eq!(aliased.priv_protocol, Some(PrivProtocol::Aes));
    }

    #[test]
    fn unknown_and_default_agents_resolve() {
        let client = SnmpClient::new(vec![AgentConfig::v2c("a", "h", "c"), v3_agent()].into());
        assert!(matches!(client.agent_index(""), Ok(0)));
        assert!(matches!(client.agent_index("core"), Ok(1)));
        assert!(matches!(
            client.agent_index("nope"),
            Err(snmp::SnmpError::UnknownAgent(name)) if name == "nope"
        ));
        let empty = SnmpClient::new(Vec::new().into());
        assert!(matches!(
            empty.agent_index(""),
            Err(snmp::SnmpError::UnknownAgent(_))
        ));
    }
}
