//! `wire-bytes`: steady-state bytes and packets on the wire per node per
//! hour between an AGAD node and its domain manager, against a central SNMP
//! v2c poller reading a fixed metric set from Debian's `snmpd` every 10 s;
//! and, beside them, the one-off bytes of the node's first deployment.
//!
//! **AGAD side.** A real top manager, domain manager and node as separate
//! release `agad` processes ([`agad_tests::hierarchy`]), over loopback
//! with mutual TLS 1.3. The node samples every 10 s, summarises over 60 s
//! windows (`window_secs = 60`) and keeps a 10 s keep-alive. Once the
//! deployment is acknowledged, the kernel's counters of the node's end of
//! the node ↔ GD TCP connection (`ss -ti`) are read (the first deployment:
//! everything since the connection began), then, settled and aligned on the
//! report windows (the interval starts 30 s into a wall-clock minute, half a
//! window from any window's end, so it holds exactly one send of every
//! window), again `--seconds` later. Counted: every TCP payload byte both
//! ways (TLS records: alarms, reports, keep-alives, acks, with TLS framing
//! and tags) plus, for every segment both ways (pure ACKs included), an IPv4
//! header (20 B) and a TCP header (20 B, plus 12 B when TCP timestamps are
//! on): the IP level. Packets are those segments. Not counted: link-layer
//! framing (14 B of Ethernet per packet, printed separately); the first
//! deployment's figure is TCP handshake, TLS handshake, hello, welcome, the
//! Deploy frame with the modules' bytes and its acknowledgement, up to the
//! moment the domain manager logs the deployment running.
//!
//! **Poller side.** A fixed metric set ([`poller::fixed_set`]: CPU,
//! memory, load, root filesystem, process count, and every interface's in
//! and out octets, oper status and errors; its OIDs are printed), so that
//! the ratio does not move with what else runs on the machine; one GET of
//! exactly those OIDs every 10 s during the same interval, through a relay
//! that counts every datagram both ways, plus 28 B of IPv4 + UDP header per
//! datagram (the IP level).
//!
//! **Scenarios.**
//! - (a) this machine: cpu-mem, disk-space, if-health (`source = os`),
//!   app-watch (snmpd and this program) and snmp-threshold (against a local
//!   snmpd). Goals: ≤ 75,000 B/h and ≤ 720 packets/h at the IP level
//!   (quiet, no alarms); the ratio to the poller is printed beside.
//! - (b) a device with 48 interfaces watched through SNMP by if-health
//!   (`source = snmp`): a network namespace with 48 links and its own snmpd,
//!   with the whole deployment re-run inside it (`--inner-48`, internal);
//!   the poller reads the same eight ifTable/ifXTable columns if-health
//!   reads. Goal: ≤ 3 % of the polling bytes. Needs root; `--host-only`
//!   skips it on purpose.
//!
//! Run (about 12 minutes per scenario by default):
//!
//! ```sh
//! cargo build --release -p agad -p agad-benchmarks
//! sudo target/release/wire-bytes                # 600 s measured per scenario
//! sudo target/release/wire-bytes --seconds 1200
//! target/release/wire-bytes --host-only
//! ```

use agad_benchmarks::args::Args;
use agad_benchmarks::builtins::module_config;
use agad_benchmarks::poller::{self, IP_UDP_HEADER_BYTES, Poller, Relay, Targets, Traffic};
use agad_benchmarks::processes;
use agad_benchmarks::procfs::{machine_load, own_comm};
use agad_benchmarks::stats::bytes;
use agad_tests::netns::{Netns, running_as_root};
use agad_tests::snmpd::{Snmpd, V2C_COMMUNITY};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const HELP: &str =
    "wire-bytes: node ↔ domain-manager bytes per hour (real processes, TLS, TCP/IP headers)
vs a central SNMP v2c poller for the same metrics
usage: wire-bytes [--seconds N] [--host-only]
  --seconds N   steady-state interval measured per scenario, a multiple of 60 (default 600)
  --host-only   skip the 48-interface scenario (which needs root and a network namespace)
needs target/release/agad: cargo build --release -p agad -p agad-benchmarks";

const PERIOD_SECS: u64 = 10;
const WINDOW_SECS: u64 = 60;
const STATION: &str = "s1";
/// A name of realistic length: it is in every alarm and report.
const NODE: &str = "edge-node-017";
/// After the deployment is acknowledged: first ticks, and the modules'
/// first SNMP sessions, before the counters are read.
const SETTLE: Duration = Duration::from_secs(5);
const INTERFACES_48: usize = 48;
const GOAL_HOST_PERCENT: f64 = 16.0;
/// Scenario (a), per node per hour at the IP level.
const GOAL_HOST_BYTES_PER_HOUR: f64 = 75_000.0;
const GOAL_HOST_PACKETS_PER_HOUR: f64 = 720.0;
/// Ethernet header per packet (not counted in the goals; printed beside).
const ETHERNET_HEADER_BYTES: u64 = 14;
const GOAL_48_PERCENT: f64 = 3.0;
/// IPv4 and TCP headers without options, and the timestamps option padded
/// to 4 bytes (RFC 7323), per segment.
const IPV4_HEADER_BYTES: u64 = 20;
const TCP_HEADER_BYTES: u64 = 20;
const TCP_TIMESTAMPS_BYTES: u64 = 12;

fn main() -> anyhow::Result<()> {
    let mut args = Args::from_env();
    if args.flag("--help") || args.flag("-h") {
        println!("{HELP}");
        return Ok(());
    }
    let seconds: u64 = args.value("--seconds")?.unwrap_or(10 * WINDOW_SECS);
    let host_only = args.flag("--host-only");
    let inner: Option<PathBuf> = args.value("--inner-48")?;
    args.finish()?;
    if seconds == 0 || !seconds.is_multiple_of(WINDOW_SECS) {
        bail!(
            "--seconds must be a positive multiple of {WINDOW_SECS}, so that the interval holds whole report windows"
        );
    }
    let measured = Duration::from_secs(seconds);
    if let Some(result_file) = inner {
        let outcome = device_48(measured)?;
        std::fs::write(
            &result_file,
            format!(
                "{} {}\n",
                outcome.agad_per_hour(),
                outcome.poller_per_hour()
            ),
        )?;
        return Ok(());
    }
    if !host_only && !running_as_root() {
        bail!(
            "wire-bytes needs root for its 48-interface scenario (a network namespace with 48 links);\n\
             run it as root, or pass --host-only to skip that scenario on purpose"
        );
    }
    ensure_ss()?;

    let host = this_machine(measured)?;
    let mut ratios = vec![(
        "(a) this machine",
        host.agad_per_hour(),
        host.poller_per_hour(),
        GOAL_HOST_PERCENT,
    )];
    let host_packets = host.agad_packets_per_hour();
    if host_only {
        println!("\n(48-interface scenario skipped: --host-only)");
    } else {
        let (agad, poller) = in_namespace(measured)?;
        ratios.push(("(b) 48-interface device", agad, poller, GOAL_48_PERCENT));
    }
    println!("\n== wire bytes per node per hour, summary ==");
    let host_bytes = ratios[0].1;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "(a) AGAD node ↔ GD, IP level: {host_bytes:.0} B/hour (goal ≤ {GOAL_HOST_BYTES_PER_HOUR:.0}: {}), \
         {host_packets:.0} packets/hour (goal ≤ {GOAL_HOST_PACKETS_PER_HOUR:.0}: {}); first deployment {} B in {} packets (one-off)",
        verdict(host_bytes <= GOAL_HOST_BYTES_PER_HOUR),
        verdict(host_packets <= GOAL_HOST_PACKETS_PER_HOUR),
        host.deployment_bytes(),
        host.deployment.segments()
    );
    for (name, agad, poller, goal) in ratios {
        let ratio = agad * 100.0 / poller.max(1.0);
        println!(
            "{name:<24} AGAD {:>12}  poller {:>12}  ratio {ratio:.2} %  (goal ≤ {goal:.0} %: {})",
            bytes(agad),
            bytes(poller),
            if ratio <= goal { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

/// Scenario (a): this machine's metric set.
fn this_machine(measured: Duration) -> anyhow::Result<Outcome> {
    eprintln!("== (a) this machine: starting snmpd on a loopback port ==");
    let snmpd = Snmpd::start();
    let watched = vec!["snmpd".to_owned(), own_comm()];
    let modules: Vec<Module> = [
        "cpu-mem",
        "disk-space",
        "if-health",
        "app-watch",
        "snmp-threshold",
    ]
    .into_iter()
    .map(|name| {
        let mut config = module_config(name, &watched);
        if name == "if-health" {
            config.push(("source".to_owned(), "os".to_owned()));
        }
        Module { name, config }
    })
    .collect();
    let outcome = measure(snmpd.address(), &modules, Poll::Fixed, measured)?;
    outcome.print(
        "(a) this machine: five inspectors (if-health source=os)",
        GOAL_HOST_PERCENT,
    );
    Ok(outcome)
}

/// Scenario (b), outside: a namespace with 48 links, and this program
/// re-run inside it; returns its AGAD and poller bytes per hour.
fn in_namespace(measured: Duration) -> anyhow::Result<(f64, f64)> {
    let ns = Netns::with_links(INTERFACES_48)?;
    eprintln!(
        "== (b) 48-interface device: network namespace {} ==",
        ns.name()
    );
    let result = tempfile::NamedTempFile::new()?;
    let result_path = result
        .path()
        .to_str()
        .context("temporary file path is not UTF-8")?;
    let seconds = measured.as_secs().to_string();
    ns.run(
        &std::env::current_exe()?,
        &["--seconds", &seconds, "--inner-48", result_path],
    )?;
    drop(ns);
    let text = std::fs::read_to_string(result.path())?;
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(agad)), Some(Ok(poller))) => Ok((agad, poller)),
        _ => bail!(
            "the run inside the namespace left no result (`{}`)",
            text.trim()
        ),
    }
}

/// Scenario (b), inside the namespace: snmpd on its loopback, if-health
/// reading it over SNMP.
fn device_48(measured: Duration) -> anyhow::Result<Outcome> {
    let links = std::fs::read_dir("/sys/class/net")?.count();
    if links < INTERFACES_48 {
        bail!(
            "--inner-48 runs inside the benchmark's namespace (it sees {links} interfaces here, not {INTERFACES_48}+)"
        );
    }
    let snmpd = Snmpd::start();
    let modules = [Module {
        name: "if-health",
        config: vec![("source".to_owned(), "snmp".to_owned())],
    }];
    let targets = Targets {
        interfaces: Some(None),
        ..Targets::default()
    };
    let outcome = measure(snmpd.address(), &modules, Poll::Like(targets), measured)?;
    outcome.print(
        &format!("(b) device with {INTERFACES_48} interfaces: if-health (source=snmp) vs polling the ifTable"),
        GOAL_48_PERCENT,
    );
    Ok(outcome)
}

/// A built-in inspector and its settings besides `period` and `window_secs`.
struct Module {
    name: &'static str,
    config: Vec<(String, String)>,
}

/// What the poller reads.
enum Poll {
    /// [`poller::fixed_set`].
    Fixed,
    /// What the inspectors read ([`poller::discover`]).
    Like(Targets),
}

/// What one scenario measured.
struct Outcome {
    modules: Vec<&'static str>,
    /// Counter differences over the interval, at the node's socket.
    link: Socket,
    /// The counters from the connection's start to the deployment running.
    deployment: Socket,
    /// TCP timestamps on: 12 more header bytes per segment.
    timestamps: bool,
    elapsed: Duration,
    traffic: Traffic,
    rounds: u64,
    set: poller::PollSet,
    gets_per_round: usize,
    missing_last_round: usize,
    /// BIG's report rows from the node, per module, and its alarms (whole run).
    report_rows: BTreeMap<String, usize>,
    alarms: usize,
}

impl Outcome {
    fn header_bytes_per_segment(&self) -> u64 {
        IPV4_HEADER_BYTES
            + TCP_HEADER_BYTES
            + if self.timestamps {
                TCP_TIMESTAMPS_BYTES
            } else {
                0
            }
    }

    fn agad_bytes(&self) -> u64 {
        self.link.bytes_sent
            + self.link.bytes_received
            + self.header_bytes_per_segment() * self.link.segments()
    }

    fn agad_per_hour(&self) -> f64 {
        self.agad_bytes() as f64 * 3600.0 / self.elapsed.as_secs_f64()
    }

    fn agad_packets_per_hour(&self) -> f64 {
        self.link.segments() as f64 * 3600.0 / self.elapsed.as_secs_f64()
    }

    /// The first deployment at the IP level.
    fn deployment_bytes(&self) -> u64 {
        let d = &self.deployment;
        d.bytes_sent + d.bytes_received + self.header_bytes_per_segment() * d.segments()
    }

    fn per_hour(&self, total: u64) -> f64 {
        total as f64 / self.rounds.max(1) as f64 * (3600 / PERIOD_SECS) as f64
    }

    fn poller_per_hour(&self) -> f64 {
        self.per_hour(self.traffic.with_headers())
    }

    fn print(&self, title: &str, goal_percent: f64) {
        let secs = self.elapsed.as_secs_f64();
        let l = &self.link;
        println!();
        println!("== wire bytes, {title} ==");
        println!("machine: {}", machine_load());
        println!(
            "node {NODE}: {} at period {PERIOD_SECS} s, window_secs {WINDOW_SECS}, keep-alive {}; \
             {secs:.1} s measured in steady state (deployment acknowledged + {} s)",
            self.modules.join(", "),
            processes::KEEPALIVE,
            SETTLE.as_secs()
        );
        println!(
            "AGAD, node ↔ GD TCP connection (kernel counters of the node's socket, `ss -ti`):"
        );
        println!(
            "  TCP payload (TLS 1.3 records): {} B node → GD, {} B GD → node",
            l.bytes_sent, l.bytes_received
        );
        println!(
            "  segments: {} out + {} in (pure ACKs included) × {} B IPv4+TCP headers{} = {} B",
            l.segs_out,
            l.segs_in,
            self.header_bytes_per_segment(),
            if self.timestamps {
                " (20 + 20 + 12 timestamps option, net.ipv4.tcp_timestamps on)"
            } else {
                " (net.ipv4.tcp_timestamps off)"
            },
            self.header_bytes_per_segment() * l.segments()
        );
        let agad = self.agad_per_hour();
        let packets = self.agad_packets_per_hour();
        println!(
            "  total {} B in {secs:.1} s → {agad:.0} B/hour ({}) at the IP level, {packets:.0} packets/hour; \
             with {ETHERNET_HEADER_BYTES} B of Ethernet per packet {:.0} B/hour",
            self.agad_bytes(),
            bytes(agad),
            agad + packets * ETHERNET_HEADER_BYTES as f64
        );
        let d = &self.deployment;
        println!(
            "  first deployment (one-off; TCP + TLS handshakes, hello, welcome, Deploy with the modules' bytes, its ack): \
             {} B node → GD + {} B GD → node TCP payload, {} + {} segments → {} B ({}) at the IP level",
            d.bytes_sent,
            d.bytes_received,
            d.segs_out,
            d.segs_in,
            self.deployment_bytes(),
            bytes(self.deployment_bytes() as f64)
        );
        let rows: Vec<String> = self
            .report_rows
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        println!(
            "  (BIG holds report rows from the node per module: {}; alarms: {})",
            if rows.is_empty() {
                "none".to_owned()
            } else {
                rows.join(", ")
            },
            self.alarms
        );
        let poller = self.poller_per_hour();
        println!(
            "SNMP v2c poller: {} OIDs, {} GET request(s) per {PERIOD_SECS} s round, {} rounds, {} datagrams \
             ({:.0} B requests + {:.0} B responses per round){}",
            self.set.len(),
            self.gets_per_round,
            self.rounds,
            self.traffic.datagrams,
            self.traffic.request_bytes as f64 / self.rounds.max(1) as f64,
            self.traffic.response_bytes as f64 / self.rounds.max(1) as f64,
            if self.missing_last_round > 0 {
                format!(
                    ", {} noSuch* answers in the last round",
                    self.missing_last_round
                )
            } else {
                String::new()
            }
        );
        for (what, oids) in &self.set.groups {
            println!("  {:>4} OIDs  {what}", oids.len());
            if self.set.len() <= 64 {
                for oid in oids {
                    println!("          {}", poller::dotted(oid));
                }
            }
        }
        let poller_packets = self.per_hour(self.traffic.datagrams);
        println!(
            "  UDP payload {:.0} B/hour; with {IP_UDP_HEADER_BYTES} B IPv4+UDP per datagram {poller:.0} B/hour ({}), \
             {poller_packets:.0} packets/hour; with {ETHERNET_HEADER_BYTES} B of Ethernet per packet {:.0} B/hour",
            self.per_hour(self.traffic.payload()),
            bytes(poller),
            poller + poller_packets * ETHERNET_HEADER_BYTES as f64
        );
        let ratio = agad * 100.0 / poller.max(1.0);
        println!(
            "ratio AGAD / poller, both with IP and transport headers: {ratio:.2} % (the poller moves {:.1}× more); \
             goal ≤ {goal_percent:.0} %: {}",
            poller / agad.max(1.0),
            if ratio <= goal_percent {
                "met"
            } else {
                "MISSED"
            }
        );
        println!(
            "(not counted on either side in the hourly figures: link-layer framing, connection set-up — TCP and TLS \
             handshakes, enrollment, deployment, shown apart above — and the poller's discovery walk)"
        );
    }
}

/// Runs `modules` on a node under a real hierarchy (its SNMP agent at
/// `agent`), and polls `targets` from `agent`, over the same `measured`
/// interval in steady state.
fn measure(
    agent: SocketAddr,
    modules: &[Module],
    poll: Poll,
    measured: Duration,
) -> anyhow::Result<Outcome> {
    let mut d = processes::start("info")?;
    let mut topology = format!(
        "[[domain]]\nname = \"d1\"\nstations = [\"{STATION}\"]\n\n[[node]]\nname = \"{NODE}\"\ndomain = \"d1\"\n"
    );
    for m in modules {
        d.publish_inspector(m.name)?;
        topology += &format!(
            "\n[[assign]]\nmodule = \"{}\"\nnodes = [\"{NODE}\"]\n[assign.config]\nperiod = \"{PERIOD_SECS}s\"\nwindow_secs = {WINDOW_SECS}\n",
            m.name
        );
        for (key, value) in &m.config {
            topology += &format!("{key} = \"{value}\"\n");
        }
    }
    d.apply(&topology)?;
    let station = d.start_station(STATION)?;
    let port: u16 = station
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("station address {station}"))?;
    let node_config = format!(
        "[[agents]]\nname = \"local\"\naddress = \"{agent}\"\nversion = \"v2c\"\ncommunity = \"{V2C_COMMUNITY}\"\n"
    );
    d.start_node_with_config(NODE, &station, &node_config)?;
    agad_benchmarks::hierarchy::wait_deployment_running(&mut d, STATION)?;

    let deployment = node_socket(port)?;
    let set = match &poll {
        Poll::Fixed => poller::fixed_set(agent, V2C_COMMUNITY)?,
        Poll::Like(targets) => poller::discover(agent, V2C_COMMUNITY, targets)?,
    };
    let snmp_poller = Poller::new(agent, V2C_COMMUNITY, &set)?;
    let relay = Relay::start(agent)?;
    std::thread::sleep(SETTLE);
    // Aligned on the windows: they end on whole wall-clock minutes and the
    // node sends them within its period after that, so an interval of whole
    // minutes starting half a minute in holds exactly one send of each.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        % (WINDOW_SECS * 1000);
    let to_start =
        (WINDOW_SECS * 1000 / 2 + WINDOW_SECS * 1000 - into_minute) % (WINDOW_SECS * 1000);
    std::thread::sleep(Duration::from_millis(to_start));

    eprintln!("measuring {} s of steady state...", measured.as_secs());
    let before = node_socket(port)?;
    let start = Instant::now();
    let rounds = measured.as_secs() / PERIOD_SECS;
    let mut last_round = poller::Round::default();
    for i in 0..rounds {
        let at = start + Duration::from_secs(i * PERIOD_SECS);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        last_round = snmp_poller.round(relay.address())?;
    }
    std::thread::sleep((start + measured).saturating_duration_since(Instant::now()));
    let after = node_socket(port)?;
    let elapsed = start.elapsed();
    if after.local != before.local {
        bail!(
            "the node reconnected during the measurement ({} then {})",
            before.local,
            after.local
        );
    }

    let mut report_rows = BTreeMap::new();
    for line in d.agad(&["report", "--json", "--node", NODE])?.lines() {
        let row: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("`agad report --json` printed `{line}`"))?;
        if let Some(module) = row["module"].as_str() {
            *report_rows.entry(module.to_owned()).or_default() += 1;
        }
    }
    Ok(Outcome {
        modules: modules.iter().map(|m| m.name).collect(),
        link: after.since(&before),
        deployment,
        timestamps: tcp_timestamps()?,
        elapsed,
        traffic: relay.traffic(),
        rounds,
        set,
        gets_per_round: snmp_poller.requests_per_round(),
        missing_last_round: last_round.missing,
        report_rows,
        alarms: d.alarms()?.len(),
    })
}

/// The kernel's counters of one TCP socket (`ss -ti`).
#[derive(Debug, Clone, Copy)]
struct Socket {
    local: SocketAddr,
    /// TCP payload bytes sent, retransmissions included.
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    segs_in: u64,
}

impl Socket {
    fn segments(&self) -> u64 {
        self.segs_out + self.segs_in
    }

    fn since(&self, before: &Socket) -> Socket {
        Socket {
            bytes_sent: self.bytes_sent - before.bytes_sent,
            bytes_received: self.bytes_received - before.bytes_received,
            segs_out: self.segs_out - before.segs_out,
            segs_in: self.segs_in - before.segs_in,
            ..*self
        }
    }
}

/// The node's end of its connection to the station listening on `port`.
/// On loopback `ss` lists both ends; the station's has `port` as its local
/// port, the node's as its peer port.
fn node_socket(port: u16) -> anyhow::Result<Socket> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", &filter])
        .output()
        .context("running ss")?;
    if !out.status.success() {
        bail!(
            "`ss -tinH state established {filter}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        // A socket line (local and peer address), then indented info lines.
        let addresses: Vec<SocketAddr> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let mut info = String::new();
        while let Some(next) = lines.next_if(|l| l.starts_with(char::is_whitespace)) {
            info.push_str(next);
            info.push(' ');
        }
        if let [local, peer] = addresses[..]
            && peer.port() == port
        {
            found.push(parse_info(local, &info));
        }
    }
    match found[..] {
        [socket] => Ok(socket),
        _ => bail!(
            "expected one node connection to port {port}, ss shows {}:\n{text}",
            found.len()
        ),
    }
}

fn parse_info(local: SocketAddr, info: &str) -> Socket {
    let field = |name: &str| -> u64 {
        info.split_whitespace()
            .find_map(|t| t.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
            // ss leaves out counters that are still zero.
            .unwrap_or(0)
    };
    Socket {
        local,
        bytes_sent: field("bytes_sent"),
        bytes_received: field("bytes_received"),
        segs_out: field("segs_out"),
        segs_in: field("segs_in"),
    }
}

/// Whether TCP timestamps are on for connections between two ends on this
/// kernel (both ends of the loopback link are). Read from the sysctl: `ss`
/// 6.1 on newer kernels may not show the option flags (`ts`, `sack`) at all.
fn tcp_timestamps() -> anyhow::Result<bool> {
    let path = "/proc/sys/net/ipv4/tcp_timestamps";
    let value = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(value.trim() != "0")
}

/// `ss` (iproute2), installed with apt-get when missing and root.
fn ensure_ss() -> anyhow::Result<()> {
    let present = || {
        Command::new("ss")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    if !running_as_root() {
        bail!("`ss` (iproute2) is missing; install it with `sudo apt-get install -y iproute2`");
    }
    eprintln!("`ss` is missing; installing iproute2 with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "--no-install-recommends", "iproute2"];
    if !(apt(&install) || (apt(&["update"]) && apt(&install))) || !present() {
        bail!("installing iproute2 with apt-get failed; install it by hand and run again");
    }
    Ok(())
}
