//! The peer AGAD is compared with: a central station polling a device over
//! SNMP v2c for the same metrics the built-in inspectors watch.
//!
//! [`discover`] walks the agent once (not counted: a real poller does it
//! once per device, or reads it from its inventory) and settles the exact
//! OIDs a lean poller would GET every round; [`Poller::round`] then reads all
//! of them with as few GET requests as the agent allows (one, unless it
//! answers `tooBig`). [`Relay`] sits between the poller and the agent on
//! loopback and counts every datagram's payload both ways, so the figures
//! are what crossed the wire, not an estimate.

use anyhow::{Context, bail};
use snmp2::{Oid, SyncSession, Value};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of IPv4 + UDP header every datagram carries on the wire.
pub const IP_UDP_HEADER_BYTES: u64 = 28;

/// OIDs as sub-identifier lists.
pub type Arcs = Vec<u64>;

/// A value as far as discovery cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(i64),
    Counter(u64),
    Text(String),
    Oid(Arcs),
    Missing,
    Other,
}

fn val(value: &Value<'_>) -> Val {
    match value {
        Value::Integer(n) => Val::Int(*n),
        Value::Counter32(n) | Value::Unsigned32(n) | Value::Timeticks(n) => {
            Val::Counter(u64::from(*n))
        }
        Value::Counter64(n) => Val::Counter(*n),
        Value::OctetString(s) => Val::Text(String::from_utf8_lossy(s).into_owned()),
        Value::ObjectIdentifier(o) => Val::Oid(arcs_of(o)),
        Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView => Val::Missing,
        _ => Val::Other,
    }
}

fn arcs_of(oid: &Oid<'_>) -> Arcs {
    oid.iter().map(|i| i.collect()).unwrap_or_default()
}

fn oid(arcs: &[u64]) -> anyhow::Result<Oid<'static>> {
    Oid::from(arcs).map_err(|e| anyhow::anyhow!("bad OID {arcs:?}: {e:?}"))
}

/// `1.3.6.1.2.1.1.3.0` → arcs.
pub fn parse(text: &str) -> anyhow::Result<Arcs> {
    text.trim_start_matches('.')
        .split('.')
        .map(|p| {
            p.parse::<u64>()
                .with_context(|| format!("bad OID `{text}`"))
        })
        .collect()
}

/// Arcs → `1.3.6.1.2.1.1.3.0`.
pub fn dotted(arcs: &[u64]) -> String {
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A v2c session with a short timeout (loopback answers in microseconds).
pub fn session(address: SocketAddr, community: &str) -> anyhow::Result<SyncSession> {
    SyncSession::new_v2c(
        address,
        community.as_bytes(),
        Some(Duration::from_secs(2)),
        1,
    )
    .with_context(|| format!("SNMP session to {address}"))
}

/// Every object under `root` (GETBULK, 25 at a time), at most 10 000.
pub fn walk(session: &mut SyncSession, root: &[u64]) -> anyhow::Result<Vec<(Arcs, Val)>> {
    let mut out = Vec::new();
    let mut cursor = root.to_vec();
    'outer: while out.len() < 10_000 {
        let start = oid(&cursor)?;
        let pdu = session
            .getbulk(&[&start], 0, 25)
            .map_err(|e| anyhow::anyhow!("walk {}: {e:?}", dotted(root)))?;
        if pdu.error_status != 0 {
            bail!("walk {}: error-status {}", dotted(root), pdu.error_status);
        }
        let mut progressed = false;
        for (name, value) in pdu.varbinds {
            let arcs = arcs_of(&name);
            let v = val(&value);
            if !arcs.starts_with(root) || matches!(value, Value::EndOfMibView) {
                break 'outer;
            }
            if arcs <= cursor {
                bail!(
                    "walk {}: agent went backwards at {}",
                    dotted(root),
                    dotted(&arcs)
                );
            }
            cursor = arcs.clone();
            out.push((arcs, v));
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(out)
}

/// Which metrics to poll: the equivalents of the built-in inspectors.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// CPU, memory and load (cpu-mem).
    pub host: bool,
    /// Fixed-disk filesystems (disk-space); `Some(list)` keeps only those
    /// mount points, `None` takes every fixed disk the agent lists.
    pub filesystems: Option<Option<Vec<String>>>,
    /// Interfaces (if-health); `Some(list)` keeps only those names, `None`
    /// takes every interface but software loopbacks (as if-health does).
    pub interfaces: Option<Option<Vec<String>>>,
    /// Processes with these names (app-watch).
    pub processes: Vec<String>,
    /// Plain OIDs (snmp-threshold).
    pub extra: Vec<Arcs>,
}

/// The OIDs of one round, grouped by what they are for.
#[derive(Debug, Clone, Default)]
pub struct PollSet {
    /// (what, OIDs), e.g. ("if-health: 4 interfaces × 7 columns", [...]).
    pub groups: Vec<(String, Vec<Arcs>)>,
}

impl PollSet {
    pub fn oids(&self) -> Vec<Arcs> {
        self.groups
            .iter()
            .flat_map(|(_, o)| o.iter().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.groups.iter().map(|(_, o)| o.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const HR_PROCESSOR_LOAD: &[u64] = &[1, 3, 6, 1, 2, 1, 25, 3, 3, 1, 2];
/// UCD-SNMP-MIB ssCpuRaw{User,Nice,System,Idle,Wait,Interrupt,SoftIRQ,Steal}.
const SS_CPU_RAW: &[u64] = &[50, 51, 52, 53, 54, 56, 61, 64];
const UCD_SYSTEM_STATS: &[u64] = &[1, 3, 6, 1, 4, 1, 2021, 11];
/// memTotalSwap, memAvailSwap, memTotalReal, memAvailReal, memBuffer, memCached.
const UCD_MEMORY: &[u64] = &[3, 4, 5, 6, 14, 15];
const UCD_MEM: &[u64] = &[1, 3, 6, 1, 4, 1, 2021, 4];
/// laLoad.1 (one-minute load average).
const LA_LOAD_1: &[u64] = &[1, 3, 6, 1, 4, 1, 2021, 10, 1, 3, 1];
const HR_STORAGE_ENTRY: &[u64] = &[1, 3, 6, 1, 2, 1, 25, 2, 3, 1];
const HR_STORAGE_FIXED_DISK: &[u64] = &[1, 3, 6, 1, 2, 1, 25, 2, 1, 4];
/// hrStorageSize, hrStorageUsed (allocation units are read once, at discovery).
const HR_STORAGE_POLLED: &[u64] = &[5, 6];
const IF_DESCR: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 2];
const IF_TYPE: &[u64] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 3];
/// ifType softwareLoopback.
const SOFTWARE_LOOPBACK: i64 = 24;
/// What a poller reads per interface to match if-health (the same eight
/// columns its every-tick GETBULK reads): ifAdminStatus, ifOperStatus,
/// ifHCInOctets, ifHCOutOctets, ifInDiscards, ifInErrors, ifOutDiscards,
/// ifOutErrors.
pub const IF_COLUMNS: &[(&str, &[u64])] = &[
    ("ifAdminStatus", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 7]),
    ("ifOperStatus", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 8]),
    ("ifHCInOctets", &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6]),
    ("ifHCOutOctets", &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 10]),
    ("ifInDiscards", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 13]),
    ("ifInErrors", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 14]),
    ("ifOutDiscards", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 19]),
    ("ifOutErrors", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 20]),
];
const HR_SW_RUN_NAME: &[u64] = &[1, 3, 6, 1, 2, 1, 25, 4, 2, 1, 2];
/// hrSWRunStatus, hrSWRunPerfCPU, hrSWRunPerfMem.
const HR_SW_RUN_POLLED: &[&[u64]] = &[
    &[1, 3, 6, 1, 2, 1, 25, 4, 2, 1, 7],
    &[1, 3, 6, 1, 2, 1, 25, 5, 1, 1, 1],
    &[1, 3, 6, 1, 2, 1, 25, 5, 1, 1, 2],
];

fn with_index(column: &[u64], index: &[u64]) -> Arcs {
    column.iter().chain(index).copied().collect()
}

/// Walks the agent and settles the OIDs of one round.
pub fn discover(
    address: SocketAddr,
    community: &str,
    targets: &Targets,
) -> anyhow::Result<PollSet> {
    let mut s = session(address, community)?;
    let mut set = PollSet::default();

    if targets.host {
        let mut oids = Vec::new();
        let per_core: Vec<Arcs> = walk(&mut s, HR_PROCESSOR_LOAD)?
            .into_iter()
            .filter(|(_, v)| matches!(v, Val::Int(_)))
            .map(|(o, _)| o)
            .collect();
        let cpu_what = if per_core.is_empty() {
            // Some agents (containers) have no hrProcessorTable rows; then the
            // raw CPU counters are what a poller turns into a percentage.
            oids.extend(
                SS_CPU_RAW
                    .iter()
                    .map(|c| with_index(UCD_SYSTEM_STATS, &[*c, 0])),
            );
            format!("ssCpuRaw × {}", SS_CPU_RAW.len())
        } else {
            let n = per_core.len();
            oids.extend(per_core);
            format!("hrProcessorLoad × {n} cores")
        };
        oids.extend(UCD_MEMORY.iter().map(|c| with_index(UCD_MEM, &[*c, 0])));
        oids.push(LA_LOAD_1.to_vec());
        set.groups.push((
            format!(
                "cpu-mem: {cpu_what}, UCD memory × {}, laLoad.1",
                UCD_MEMORY.len()
            ),
            oids,
        ));
    }

    if let Some(filter) = &targets.filesystems {
        let entries = walk(&mut s, HR_STORAGE_ENTRY)?;
        let column = |c: u64| -> BTreeMap<Arcs, Val> {
            let prefix = with_index(HR_STORAGE_ENTRY, &[c]);
            entries
                .iter()
                .filter_map(|(o, v)| {
                    o.strip_prefix(prefix.as_slice())
                        .map(|i| (i.to_vec(), v.clone()))
                })
                .collect()
        };
        let (types, descrs) = (column(2), column(3));
        let mut oids = Vec::new();
        let mut names = Vec::new();
        for (index, kind) in &types {
            if *kind != Val::Oid(HR_STORAGE_FIXED_DISK.to_vec()) {
                continue;
            }
            let Some(Val::Text(name)) = descrs.get(index) else {
                continue;
            };
            if filter.as_ref().is_some_and(|keep| !keep.contains(name)) {
                continue;
            }
            names.push(name.clone());
            for c in HR_STORAGE_POLLED {
                oids.push(with_index(
                    HR_STORAGE_ENTRY,
                    &[[*c].as_slice(), index].concat(),
                ));
            }
        }
        set.groups.push((
            format!(
                "disk-space: {} filesystems × hrStorage{{Size,Used}} ({})",
                names.len(),
                names.join(" ")
            ),
            oids,
        ));
    }

    if let Some(filter) = &targets.interfaces {
        let mut oids = Vec::new();
        let mut names = Vec::new();
        let loopbacks: Vec<Arcs> = walk(&mut s, IF_TYPE)?
            .into_iter()
            .filter(|(_, v)| *v == Val::Int(SOFTWARE_LOOPBACK))
            .map(|(o, _)| o[IF_TYPE.len()..].to_vec())
            .collect();
        for (o, v) in walk(&mut s, IF_DESCR)? {
            let Val::Text(name) = v else { continue };
            let index = &o[IF_DESCR.len()..];
            let keep = match filter {
                Some(keep) => keep.contains(&name),
                None => !loopbacks.iter().any(|l| l.as_slice() == index),
            };
            if !keep {
                continue;
            }
            for (_, column) in IF_COLUMNS {
                oids.push(with_index(column, index));
            }
            names.push(name);
        }
        let shown = if names.len() > 8 {
            format!(
                "{} … {}",
                names[..4].join(" "),
                names[names.len() - 2..].join(" ")
            )
        } else {
            names.join(" ")
        };
        set.groups.push((
            format!(
                "if-health: {} interfaces × {} columns ({shown})",
                names.len(),
                IF_COLUMNS.len()
            ),
            oids,
        ));
    }

    if !targets.processes.is_empty() {
        let mut oids = Vec::new();
        let mut found = 0;
        for (o, v) in walk(&mut s, HR_SW_RUN_NAME)? {
            let Val::Text(name) = v else { continue };
            if !targets.processes.contains(&name) {
                continue;
            }
            found += 1;
            let index = &o[HR_SW_RUN_NAME.len()..];
            for column in HR_SW_RUN_POLLED {
                oids.push(with_index(column, index));
            }
        }
        set.groups.push((
            format!(
                "app-watch: {found} processes named {} × hrSWRun{{Status,PerfCPU,PerfMem}}",
                targets.processes.join(",")
            ),
            oids,
        ));
    }

    if !targets.extra.is_empty() {
        let shown: Vec<String> = targets.extra.iter().map(|o| dotted(o)).collect();
        set.groups.push((
            format!("snmp-threshold: {}", shown.join(" ")),
            targets.extra.clone(),
        ));
    }
    Ok(set)
}

/// hrSystemProcesses.0: the number of processes.
const HR_SYSTEM_PROCESSES: &[u64] = &[1, 3, 6, 1, 2, 1, 25, 1, 6, 0];
/// The per-interface columns of [`fixed_set`]: traffic both ways, status
/// and errors both ways.
pub const FIXED_IF_COLUMNS: &[(&str, &[u64])] = &[
    ("ifHCInOctets", &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6]),
    ("ifHCOutOctets", &[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 10]),
    ("ifOperStatus", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 8]),
    ("ifInErrors", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 14]),
    ("ifOutErrors", &[1, 3, 6, 1, 2, 1, 2, 2, 1, 20]),
];

/// A fixed metric set, the same on every machine but for the number of
/// interfaces, so that a comparison with it does not move with what else
/// runs (how many cores, filesystems or processes the machine has): CPU
/// (the eight ssCpuRaw counters), memory (six UCD values), the one-minute
/// load, the root filesystem's size and use (hrStorage), the number of
/// processes (hrSystemProcesses), and for every interface but loopback its
/// in and out octets, oper status and in and out errors. These are the
/// values the built-in inspectors summarise (cpu-mem, disk-space,
/// if-health; app-watch's process table is reduced to the count).
pub fn fixed_set(address: SocketAddr, community: &str) -> anyhow::Result<PollSet> {
    let mut s = session(address, community)?;
    let mut set = PollSet::default();
    let mut host: Vec<Arcs> = SS_CPU_RAW
        .iter()
        .map(|c| with_index(UCD_SYSTEM_STATS, &[*c, 0]))
        .collect();
    host.extend(UCD_MEMORY.iter().map(|c| with_index(UCD_MEM, &[*c, 0])));
    host.push(LA_LOAD_1.to_vec());
    host.push(HR_SYSTEM_PROCESSES.to_vec());
    set.groups.push((
        format!(
            "host: ssCpuRaw × {}, UCD memory × {}, laLoad.1, hrSystemProcesses.0",
            SS_CPU_RAW.len(),
            UCD_MEMORY.len()
        ),
        host,
    ));
    let descr = with_index(HR_STORAGE_ENTRY, &[3]);
    let root = walk(&mut s, &descr)?
        .into_iter()
        .find(|(_, v)| *v == Val::Text("/".to_owned()))
        .map(|(o, _)| o[descr.len()..].to_vec())
        .context("the agent lists no hrStorage entry for `/`")?;
    set.groups.push((
        "root filesystem: hrStorage{Size,Used} of /".to_owned(),
        HR_STORAGE_POLLED
            .iter()
            .map(|c| with_index(HR_STORAGE_ENTRY, &[[*c].as_slice(), &root].concat()))
            .collect(),
    ));
    let loopbacks: Vec<Arcs> = walk(&mut s, IF_TYPE)?
        .into_iter()
        .filter(|(_, v)| *v == Val::Int(SOFTWARE_LOOPBACK))
        .map(|(o, _)| o[IF_TYPE.len()..].to_vec())
        .collect();
    let mut oids = Vec::new();
    let mut names = Vec::new();
    for (o, v) in walk(&mut s, IF_DESCR)? {
        let Val::Text(name) = v else { continue };
        let index = &o[IF_DESCR.len()..];
        if loopbacks.iter().any(|l| l.as_slice() == index) {
            continue;
        }
        oids.extend(FIXED_IF_COLUMNS.iter().map(|(_, c)| with_index(c, index)));
        names.push(name);
    }
    set.groups.push((
        format!(
            "interfaces: {} × {} ({})",
            names.len(),
            FIXED_IF_COLUMNS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            names.join(" ")
        ),
        oids,
    ));
    Ok(set)
}

/// Reads a [`PollSet`] in GET requests as large as the agent answers.
#[derive(Debug)]
pub struct Poller {
    community: String,
    chunks: Vec<Vec<Arcs>>,
}

/// What one round got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Round {
    pub requests: usize,
    pub varbinds: usize,
    /// Varbinds answered noSuchObject/noSuchInstance (a process that
    /// exited, say); still bytes on the wire.
    pub missing: usize,
}

impl Poller {
    /// Settles how many OIDs fit in one GET by asking `agent` directly
    /// (so this probing is not counted): all of them unless the agent
    /// answers `tooBig`, then halves.
    pub fn new(agent: SocketAddr, community: &str, set: &PollSet) -> anyhow::Result<Poller> {
        let oids = set.oids();
        if oids.is_empty() {
            bail!("nothing to poll");
        }
        let mut s = session(agent, community)?;
        let mut size = oids.len();
        loop {
            let fits = oids.chunks(size).all(|chunk| {
                let owned: Vec<Oid<'static>> = chunk.iter().filter_map(|a| oid(a).ok()).collect();
                let refs: Vec<&Oid<'_>> = owned.iter().collect();
                s.get_many(&refs).is_ok_and(|pdu| pdu.error_status == 0)
            });
            if fits {
                break;
            }
            if size == 1 {
                bail!("the agent at {agent} refuses even a one-OID GET");
            }
            size = size.div_ceil(2);
        }
        Ok(Poller {
            community: community.to_owned(),
            chunks: oids.chunks(size).map(<[Arcs]>::to_vec).collect(),
        })
    }

    pub fn requests_per_round(&self) -> usize {
        self.chunks.len()
    }

    /// One polling round against `address` (the relay, in the benchmarks).
    pub fn round(&self, address: SocketAddr) -> anyhow::Result<Round> {
        let mut s = session(address, &self.community)?;
        let mut round = Round::default();
        for chunk in &self.chunks {
            let owned: Vec<Oid<'static>> = chunk
                .iter()
                .map(|a| oid(a))
                .collect::<anyhow::Result<_>>()?;
            let refs: Vec<&Oid<'_>> = owned.iter().collect();
            let pdu = s
                .get_many(&refs)
                .map_err(|e| anyhow::anyhow!("GET of {} OIDs: {e:?}", chunk.len()))?;
            if pdu.error_status != 0 {
                bail!(
                    "GET of {} OIDs: error-status {}",
                    chunk.len(),
                    pdu.error_status
                );
            }
            round.requests += 1;
            for (_, value) in pdu.varbinds {
                round.varbinds += 1;
                if val(&value) == Val::Missing {
                    round.missing += 1;
                }
            }
        }
        Ok(round)
    }
}

/// Bytes and datagrams counted by a [`Relay`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Poller → agent, UDP payload bytes.
    pub request_bytes: u64,
    /// Agent → poller, UDP payload bytes.
    pub response_bytes: u64,
    pub datagrams: u64,
}

impl Traffic {
    pub fn payload(&self) -> u64 {
        self.request_bytes + self.response_bytes
    }

    /// Payload plus an IPv4 and a UDP header per datagram.
    pub fn with_headers(&self) -> u64 {
        self.payload() + IP_UDP_HEADER_BYTES * self.datagrams
    }
}

#[derive(Debug, Default)]
struct Counters {
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    datagrams: AtomicU64,
}

/// A UDP relay on loopback that forwards datagrams between one poller and
/// one agent and counts them. Stopped on drop.
#[derive(Debug)]
pub struct Relay {
    address: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    pub fn start(agent: SocketAddr) -> anyhow::Result<Relay> {
        let front = UdpSocket::bind((agent.ip(), 0)).context("relay: bind")?;
        let back = UdpSocket::bind((agent.ip(), 0)).context("relay: bind")?;
        back.connect(agent).context("relay: connect to the agent")?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
        }
        let address = front.local_addr()?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);

        let upward = {
            let (counters, stop, client) = (counters.clone(), stop.clone(), client.clone());
            std::thread::Builder::new()
                .name("relay-up".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = front.recv_from(&mut buf) else {
                            continue;
                        };
                        *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                        counters
                            .request_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                        counters.datagrams.fetch_add(1, Ordering::Relaxed);
                        let _ = back.send(&buf[..n]);
                    }
                })?
        };
        let downward = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("relay-down".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(n) = back2.recv(&mut buf) else {
                            continue;
                        };
                        counters
                            .response_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                        counters.datagrams.fetch_add(1, Ordering::Relaxed);
                        let to = *client.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(to) = to {
                            let _ = front2.send_to(&buf[..n], to);
                        }
                    }
                })?
        };
        Ok(Relay {
            address,
            counters,
            stop,
            threads: vec![upward, downward],
        })
    }

    /// Where the poller should send its requests.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            request_bytes: self.counters.request_bytes.load(Ordering::Relaxed),
            response_bytes: self.counters.response_bytes.load(Ordering::Relaxed),
            datagrams: self.counters.datagrams.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn oids_parse_and_print() {
        let arcs = parse(".1.3.6.1.2.1.1.3.0").expect("valid");
        assert_eq!(dotted(&arcs), "1.3.6.1.2.1.1.3.0");
        assert!(parse("1.3.x").is_err());
    }

    #[test]
    fn headers_add_per_datagram() {
        let t = Traffic {
            request_bytes: 100,
            response_bytes: 200,
            datagrams: 2,
        };
        assert_eq!(t.with_headers(), 356);
    }
}
