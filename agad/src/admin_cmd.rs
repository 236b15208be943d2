//! Operator commands against a running top manager (through its admin
//! socket): publish modules, apply the topology, enroll, and read BIG.

use crate::table::Table;
use agad_gerente_mor::admin::{self, Answer, Request};
use agad_gerente_mor::query::{AlarmQuery, ReportQuery};
use agad_gerente_mor::units;
use agad_protocol::Area;
use agad_protocol::message::Severity;
use agad_protocol::status::Diagnosis;
use agad_protocol::wire::{Component, State};
use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`agad report | head`); `main` treats a broken pipe as success.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// Which top manager to talk to.
#[derive(clap::Args, Clone)]
pub struct MorDir {
    /// Data directory of the running `agad mor`.
    #[arg(
        long = "mor-dir",
        env = "AGAD_MOR_DIR",
        default_value = "agad-data/mor",
        global = true
    )]
    pub dir: PathBuf,
}

/// Waiting for a change to reach the nodes.
#[derive(clap::Args, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until every connected node runs the change (or said why it
    /// cannot), showing progress; fails if a node refused it.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (`90s`, `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, requires = "wait")]
    pub timeout: Duration,
}

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Show the difference between BTPG and FILE, then apply it as a whole.
    Apply {
        /// The topology file (TOML: `[[domain]]`, `[[node]]`, `[[link]]`,
        /// `[[assign]]`), the whole topology wanted.
        file: PathBuf,
        /// Only show the difference.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the topology in force (the file format `apply` reads).
    Show,
}

#[derive(Subcommand)]
pub enum EnrollCommand {
    /// List every identity that asked to join, with its state.
    List,
    /// Approve a pending request.
    Approve {
        /// The request's certificate fingerprint as `enroll list` shows it,
        /// or a prefix of it no other request shares (4 hex digits at least).
        fingerprint: String,
    },
    /// Let an approved identity start working.
    Activate {
        /// The identity's name (its certificate's name).
        name: String,
    },
    /// A one-time ticket that approves NAME when it first connects
    /// (give it to the node or station with `--ticket-file`).
    Ticket {
        /// The name of the node or station the ticket is for.
        name: String,
    },
    /// List the tickets not used yet.
    Tickets,
    /// Cancel unused tickets.
    Revoke {
        /// A name (all of its unused tickets), or a ticket's first hex
        /// digits as `enroll tickets` shows them (4 at least).
        ticket: String,
    },
    /// Refuse a pending request, or forget a member (a stale request, or a
    /// name whose certificate was re-issued); its next connection asks anew.
    #[command(visible_alias = "remove")]
    Reject {
        /// The name, the certificate fingerprint, or a prefix of it no
        /// other shares (4 hex digits at least).
        who: String,
    },
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Only this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this node (per-node rows).
    #[arg(long)]
    node: Option<String>,
    /// Only this module.
    #[arg(long)]
    module: Option<String>,
    /// Only rows computed by this code: a module version (1.2.0) or a
    /// prefix of the module's hash (at least 6 hex digits).
    #[arg(long)]
    module_version: Option<String>,
    /// Only this metric.
    #[arg(long)]
    metric: Option<String>,
    /// From this long ago (e.g. 15m, 1h, 2d, 1h30m).
    #[arg(long, default_value = "1h", value_parser = crate::parse_cli_duration)]
    since: Duration,
    /// Up to this long ago (windows starting before then; e.g. 30m, 1d) [default: now].
    #[arg(long, value_parser = crate::parse_cli_duration)]
    until: Option<Duration>,
    /// Per-domain rows (every node merged) instead of per-node rows.
    #[arg(long)]
    per_domain: bool,
    /// At most this many rows, the newest (at most 10000; page further
    /// back with --until).
    #[arg(long, default_value_t = 500)]
    limit: usize,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AlarmsArgs {
    /// Only conditions still raised (the latest event per node, module and key).
    #[arg(long)]
    active: bool,
    /// Only nodes the topology places in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this node.
    #[arg(long)]
    node: Option<String>,
    /// Only this module.
    #[arg(long)]
    module: Option<String>,
    /// Only alarms from this code: a module version (1.2.0) or a prefix of
    /// the module's hash (at least 6 hex digits).
    #[arg(long)]
    module_version: Option<String>,
    /// Only this management area (fault, configuration, accounting, performance, security).
    #[arg(long, value_parser = parse_kebab::<Area>)]
    area: Option<Area>,
    /// Only this severity or worse (info, warning, minor, major, critical).
    #[arg(long, value_parser = parse_kebab::<Severity>)]
    severity: Option<Severity>,
    /// From this long ago (e.g. 15m, 1h, 2d, 1h30m) [default: all].
    #[arg(long, value_parser = crate::parse_cli_duration)]
    since: Option<Duration>,
    /// Up to this long ago [default: now].
    #[arg(long, value_parser = crate::parse_cli_duration)]
    until: Option<Duration>,
    /// At most this many, the newest (at most 10000; page further back
    /// with --until).
    #[arg(long, default_value_t = 500)]
    limit: usize,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the knowledge base did about an alarm, in one line: the rule, the
/// case's state, each specialist's result.
fn case_line(case: &agad_protocol::run::Case) -> String {
    use agad_protocol::run::CaseState;
    let mut line = format!("rule {}: {}", case.rule, case.state.label());
    match &case.state {
        CaseState::Escalated { to, reason } => line.push_str(&format!(" to {to} ({reason})")),
        CaseState::Failed { reason } => line.push_str(&format!(" ({reason})")),
        _ => {}
    }
    for (step, r) in &case.results {
        line.push_str(&format!(
            " · {step} {}: {}: {}",
            r.specialist,
            r.outcome.label(),
            agad_protocol::text::excerpt(&r.outcome.text(), 160)
        ));
    }
    line
}

/// A node's state in one word, for the alarm table.
fn node_state(state: &State) -> &'static str {
    match state {
        State::Connected { failing, .. } if failing.is_empty() => "up",
        State::Connected { .. } => "degraded",
        State::Stale { .. } => "stale",
        State::NotConnected => "down",
        State::Failed {
            diagnosis: Diagnosis::HostDown,
            ..
        } => "host-down",
        State::Failed {
            diagnosis: Diagnosis::AgentDown,
            ..
        } => "agent-down",
        _ => "?",
    }
}

/// One of the protocol's kebab-case enums as the word its JSON uses
/// (`critical`, `host-down`), never its Rust name.
pub fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A value of one of the protocol's kebab-case enums (`--area fault`).
fn parse_kebab<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("`{text}` is not one of the accepted values"))
}

pub fn ask(dir: &Path, request: Request) -> anyhow::Result<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(admin::request(dir, &request))? {
        Answer::Error(e) => bail!("{e}"),
        answer => Ok(answer),
    }
}

fn unexpected(answer: Answer) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the top manager: {answer:?}")
}

pub fn publish(dir: &Path, bundle: &Path) -> anyhow::Result<()> {
    let bytes = crate::module_cmd::read_bundle_bytes(bundle)?;
    // Checked here too, so a forged name never reaches the top manager's
    // log; the top manager checks it again.
    let parsed =
        agad_protocol::Bundle::from_bytes(&bytes).with_context(|| bundle.display().to_string())?;
    agad_protocol::validate_module_name(&parsed.manifest.name)
        .with_context(|| bundle.display().to_string())?;
    match ask(
        dir,
        Request::Publish {
            bundle_hex: hex::encode(bytes),
        },
    )? {
        Answer::Published {
            module,
            version,
            sequence,
            outcome,
        } => {
            use agad_gerente_mor::bases::Published;
            let what = match outcome {
                Published::New => "published".to_owned(),
                Published::Replaced { previous_sequence } => {
                    format!("published, replacing sequence {previous_sequence}")
                }
                Published::AlreadyThere => "already published: nothing changed".to_owned(),
            };
            outln!("{module} {version} (sequence {sequence}): {what}");
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

pub fn topology(dir: &Path, cmd: TopologyCommand) -> anyhow::Result<()> {
    match cmd {
        TopologyCommand::Apply {
            file,
            dry_run,
            wait,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let request = Request::TopologyApply {
                file: file.display().to_string(),
                text,
                dry_run,
            };
            match ask(dir, request)? {
                Answer::TopologyDiff {
                    changes,
                    applied,
                    version,
                } => {
                    if changes.is_empty() {
                        outln!("no change");
                    }
                    for c in &changes {
                        outln!("{c}");
                    }
                    match (applied, version) {
                        (true, Some(v)) => outln!("applied as version {v}"),
                        _ if !changes.is_empty() => outln!("not applied (dry run)"),
                        _ => {}
                    }
                    if wait.wait && !dry_run {
                        wait_deployed(dir, wait.timeout)?;
                    }
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
        TopologyCommand::Show => match ask(dir, Request::TopologyShow)? {
            Answer::Topology { text, version } => {
                outln!("# BTPG version {version}\n{text}");
                Ok(())
            }
            other => Err(unexpected(other)),
        },
    }
}

/// How often `--wait` asks the top manager.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// Waits until every connected node runs the bases in force or said why it
/// cannot, drawing the progress on stderr (a bar on a terminal, a line per
/// change otherwise). Fails when a node refused the deployment or on timeout.
pub fn wait_deployed(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let d = match ask(dir, Request::Status)? {
            Answer::Status(s) => s.deployment,
            other => return Err(unexpected(other)),
        };
        let line = progress_line(&d);
        if terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{} {line}", bar(&d, 24));
            let _ = err.flush();
        } else if line != last {
            eprintln!("{line}");
        }
        last = line;
        let done = d.complete();
        if done || started.elapsed() >= timeout {
            if terminal {
                eprintln!();
            }
            if d.failed > 0 {
                bail!(
                    "{} of {} nodes could not run version {}:\n  {}",
                    d.failed,
                    d.nodes,
                    d.version,
                    d.problems.join("\n  ")
                );
            }
            if !done {
                let behind = if d.domains_behind.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the managers of {} have not taken the change yet",
                        d.domains_behind.join(", ")
                    )
                };
                bail!(
                    "gave up after {}: {} nodes have not acknowledged version {}{behind}",
                    humantime::format_duration(timeout),
                    d.pending(),
                    d.version
                );
            }
            if d.not_connected > 0 {
                eprintln!(
                    "{} nodes are not connected: they get version {} when they connect",
                    d.not_connected, d.version
                );
            }
            return Ok(());
        }
        std::thread::sleep(WAIT_POLL);
    }
}

/// `version 7: 3/5 nodes running, 1 failed, 1 not connected, 0 pending`.
fn progress_line(d: &agad_gerente_mor::query::Deployment) -> String {
    let mut line = format!(
        "version {}: {}/{} nodes running, {} failed, {} not connected, {} pending",
        d.version,
        d.running,
        d.nodes,
        d.failed,
        d.not_connected,
        d.pending()
    );
    if !d.domains_behind.is_empty() {
        line.push_str(&format!(" (waiting for {})", d.domains_behind.join(", ")));
    }
    line
}

/// `[#######----x...]`: running, pending, failed, not connected.
fn bar(d: &agad_gerente_mor::query::Deployment, width: u64) -> String {
    let total = d.nodes.max(1);
    let part = |n: u64| (n * width).div_ceil(total).min(width) as usize;
    let (run, fail, off) = (part(d.running), part(d.failed), part(d.not_connected));
    let rest = (width as usize).saturating_sub(run + fail + off);
    format!(
        "[{}{}{}{}]",
        "#".repeat(run),
        "-".repeat(rest),
        "x".repeat(fail),
        ".".repeat(off)
    )
}

pub fn enroll(dir: &Path, cmd: EnrollCommand) -> anyhow::Result<()> {
    let request = match cmd {
        EnrollCommand::List => Request::EnrollList,
        EnrollCommand::Approve { fingerprint } => Request::EnrollApprove { fingerprint },
        EnrollCommand::Activate { name } => Request::EnrollActivate { name },
        EnrollCommand::Ticket { name } => Request::EnrollTicket { name },
        EnrollCommand::Tickets => Request::EnrollTickets,
        EnrollCommand::Revoke { ticket } => Request::EnrollRevoke { who: ticket },
        EnrollCommand::Reject { who } => Request::EnrollRemove { who },
    };
    match ask(dir, request)? {
        Answer::Members(members) => {
            if members.is_empty() {
                eprintln!("nobody has asked to enroll yet");
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ROLE", "STATE", "FINGERPRINT"]);
            for m in members {
                table.row(vec![
                    m.name,
                    m.role.to_string(),
                    word(&m.state),
                    m.fingerprint,
                ]);
            }
            table.print()?;
        }
        Answer::Member(m) => {
            outln!("{} ({}) is now {}", m.name, m.role, word(&m.state));
            if m.state == agad_protocol::wire::Enrollment::Inactive {
                outln!(
                    "(it starts working after `agad enroll activate {}`)",
                    m.name
                );
            }
        }
        Answer::Unchanged(m) => outln!(
            "{} ({}) is already {}: nothing changed",
            m.name,
            m.role,
            word(&m.state)
        ),
        Answer::Removed(m) => outln!(
            "{} ({}, {}, {}) removed; its next connection is a new request",
            m.name,
            m.role,
            word(&m.state),
            m.fingerprint
        ),
        Answer::Ticket { name, ticket } => {
            outln!("{ticket}");
            eprintln!(
                "(one use; save it to a file and start `{name}` with --ticket-file FILE, or set AGAD_TICKET)"
            );
        }
        Answer::Tickets(tickets) => {
            if tickets.is_empty() {
                eprintln!("no unused tickets");
                return Ok(());
            }
            // The rest of a ticket is its secret: enough to tell them apart.
            let mut table = Table::new(&["NAME", "TICKET"]);
            for (name, ticket) in tickets {
                table.row(vec![name, format!("{}…", prefix(&ticket, 8))]);
            }
            table.print()?;
        }
        Answer::Revoked(tickets) => {
            for (name, ticket) in tickets {
                outln!("ticket {}… for {name} cancelled", prefix(&ticket, 8));
            }
        }
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// The first `n` characters of `text`.
fn prefix(text: &str, n: usize) -> &str {
    text.char_indices().nth(n).map_or(text, |(i, _)| &text[..i])
}

pub fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let status = match ask(dir, Request::Status)? {
        Answer::Status(s) => s,
        other => return Err(unexpected(other)),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    outln!("bases version {}", status.version);
    outln!(
        "modules in BGC: {}",
        if status.modules.is_empty() {
            "none".into()
        } else {
            status.modules.join(", ")
        }
    );
    for d in &status.domains {
        let station = d.station.as_deref().unwrap_or("NO MANAGER");
        let replica = match (d.replica_sent, d.replica_acked) {
            (Some(s), Some(a)) => format!("replica v{s} sent, v{a} acknowledged"),
            (Some(s), None) => format!("replica v{s} sent"),
            _ => "no replica".into(),
        };
        let heard = d
            .ms_since_heard
            .map(|ms| format!(", heard {:.1} s ago", ms as f64 / 1000.0))
            .unwrap_or_default();
        let generation = d
            .generation
            .map(|g| format!(", activation {g}"))
            .unwrap_or_default();
        // The domain is in the state of the station serving it.
        let in_state = since(
            d.stations
                .iter()
                .find(|s| s.serving)
                .and_then(|s| s.since_ms),
        );
        outln!(
            "domain {}: {station} ({}{in_state}), {replica}{heard}{generation}",
            d.domain,
            d.state
        );
        for s in &d.stations {
            let mark = match &s.state {
                State::Connected { failing, .. } if failing.is_empty() => "ok  ",
                _ => "DOWN",
            };
            let role = if s.serving { "serving" } else { "standby" };
            let what = format!("station {} ({role})", s.name);
            outln!("  {mark} {what:<32} {}{}", s.state, since(s.since_ms));
        }
        for c in &d.components {
            if matches!(c.component, Component::NodeModule { .. }) {
                continue; // on its node's `modules:` line
            }
            let mark = if c.healthy() { "ok  " } else { "DOWN" };
            let what = match &c.component {
                Component::Store {
                    alarms,
                    reports,
                    outbox,
                } => format!("store (alarms={alarms} reports={reports} outbox={outbox})"),
                Component::Domain {
                    name: Some(name),
                    replica_version,
                } => format!("domain {name} v{replica_version}"),
                other => other.to_string(),
            };
            outln!("  {mark} {what:<32} {}{}", c.state, since(c.since_ms));
            if let Component::Node { name } = &c.component
                && let Some(n) = status.nodes.iter().find(|n| n.name == *name)
            {
                outln!("         modules: {}", modules_line(n));
            }
        }
        // Nodes of the domain its manager has not mentioned yet.
        for n in status
            .nodes
            .iter()
            .filter(|n| n.domain == d.domain && n.state.is_none())
        {
            let what = format!("node {}", n.name);
            outln!("  ?    {what:<32} not heard of yet");
            outln!("         modules: {}", modules_line(n));
        }
    }
    let d = &status.deployment;
    let state = if d.complete() { "done" } else { "in progress" };
    outln!("deployment {state}: {}", progress_line(d));
    for p in &d.problems {
        outln!("  {p}");
    }
    for l in &status.links {
        match &l.failed {
            None => outln!("link {} -- {}: ok", l.a, l.b),
            Some(why) => outln!("link {} -- {}: FAILED, {why}", l.a, l.b),
        }
    }
    Ok(())
}

/// `cpu-mem running since 10:02:11 (5m), app-watch FAILING since ...
/// (restarting: ...)` (or `none assigned`).
fn modules_line(n: &agad_gerente_mor::query::NodeStatus) -> String {
    use agad_gerente_mor::query::ModuleState;
    if n.modules.is_empty() {
        return "none assigned".into();
    }
    n.modules
        .iter()
        .map(|m| {
            let state = match m.state {
                ModuleState::Failing => "FAILING",
                other => other.as_str(),
            };
            let detail = m
                .detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("{} {state}{}{detail}", m.name, since(m.since_ms))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` since <time> (<how long>)` of a state, if known.
fn since(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return String::new();
    };
    let ago = Duration::from_millis(ago_ms(Duration::ZERO).saturating_sub(ms));
    let ago = humantime::format_duration(Duration::from_secs(ago.as_secs()));
    format!(" since {} ({ago})", time(ms))
}

fn ago_ms(ago: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(ago.as_millis() as u64)
}

/// An instant as RFC 3339 UTC, to the second.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Tells the operator (on stderr, so `--json` output stays clean) that the
/// limit left older entries out.
fn note_truncated(truncated: bool, limit: usize) {
    if truncated {
        let shown = limit.min(agad_gerente_mor::query::MAX_ROWS);
        eprintln!(
            "(only the newest {shown}; raise --limit (up to {}), narrow --since, or page back with --until for more)",
            agad_gerente_mor::query::MAX_ROWS
        );
    }
}

pub fn report(dir: &Path, args: ReportArgs) -> anyhow::Result<()> {
    let query = ReportQuery {
        domain: args.domain,
        node: args.node,
        module: args.module,
        module_version: args.module_version,
        metric: args.metric,
        since_ms: Some(ago_ms(args.since)),
        until_ms: args.until.map(ago_ms),
        per_domain: args.per_domain,
        limit: Some(args.limit),
    };
    let answer = match ask(dir, Request::Reports(query))? {
        Answer::Reports(r) => r,
        other => return Err(unexpected(other)),
    };
    if args.json {
        for r in &answer.rows {
            let line = serde_json::json!({
                "window_start": time(r.window_start_ms), "window_end": time(r.window_end_ms),
                "window_start_ms": r.window_start_ms, "window_end_ms": r.window_end_ms,
                "domain": r.domain, "node": r.node, "module": r.module,
                "provenance": r.provenance,
                "unit": units::unit_of(&r.summary.metric, &r.summary.unit),
                "summary": r.summary,
            });
            outln!("{line}");
        }
        note_truncated(answer.truncated, args.limit);
        return Ok(());
    }
    // A per-domain row is the domain's: its "node" would be the domain again.
    let mut table = Table::new(if args.per_domain {
        &[
            "START", "LENGTH", "DOMAIN", "MODULE", "VERSION", "METRIC", "SUBJECT", "MIN>", "MAX>",
            "MEAN>", "LAST>", "UNIT", "COUNT>", "COVER>",
        ]
    } else {
        &[
            "START", "LENGTH", "DOMAIN", "NODE", "MODULE", "VERSION", "METRIC", "SUBJECT", "MIN>",
            "MAX>", "MEAN>", "LAST>", "UNIT", "COUNT>", "COVER>",
        ]
    });
    for r in &answer.rows {
        let s = &r.summary;
        let scale = units::scale_of(&s.metric, &s.unit, &[s.min, s.max, s.mean, s.last]);
        let mut cells = vec![
            time(r.window_start_ms),
            length(r.window_end_ms.saturating_sub(r.window_start_ms)),
            r.domain.clone(),
        ];
        if !args.per_domain {
            cells.push(r.node.clone());
        }
        cells.extend([
            r.module.clone(),
            r.provenance.version.clone(),
            s.metric.clone(),
            or_dash(&s.subject),
            scale.format(s.min),
            scale.format(s.max),
            scale.format(s.mean),
            scale.format(s.last),
            or_dash(&scale.unit),
            s.count.to_string(),
            format!("{:.0}%", s.coverage * 100.0),
        ]);
        table.row(cells);
    }
    if table.is_empty() {
        eprintln!(
            "no report rows match (windows since {}); widen --since, or see `agad status` for what is running",
            time(ago_ms(args.since))
        );
    } else {
        table.print()?;
    }
    note_truncated(answer.truncated, args.limit);
    Ok(())
}

/// A window's length as people say it (`1m`, `2s`, `1h 30m`).
fn length(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

pub fn alarms(dir: &Path, args: AlarmsArgs) -> anyhow::Result<()> {
    let query = AlarmQuery {
        active_only: args.active,
        domain: args.domain,
        node: args.node,
        module: args.module,
        module_version: args.module_version,
        area: args.area,
        severity: args.severity,
        since_ms: args.since.map(ago_ms),
        until_ms: args.until.map(ago_ms),
        limit: Some(args.limit),
    };
    let answer = match ask(dir, Request::Alarms(query))? {
        Answer::Alarms(a) => a,
        other => return Err(unexpected(other)),
    };
    let mut table = Table::new(&[
        "TIME",
        "STATE",
        "SEVERITY",
        "NODE",
        "NODE STATE",
        "MODULE",
        "VERSION",
        "MESSAGE",
    ]);
    for a in &answer.alarms {
        let cases = answer
            .cases
            .get(&a.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if args.json {
            let mut value = serde_json::to_value(a)?;
            if !cases.is_empty()
                && let serde_json::Value::Object(fields) = &mut value
            {
                fields.insert("cases".into(), serde_json::to_value(cases)?);
            }
            outln!("{value}");
        } else {
            table.row(vec![
                time(a.time_ms),
                match (a.raised, a.is_closing()) {
                    (true, _) => "RAISED",
                    (false, true) => "closed",
                    (false, false) => "cleared",
                }
                .into(),
                word(&a.severity),
                a.node.clone(),
                answer.nodes.get(&a.node).map_or("-", node_state).into(),
                a.module.clone(),
                a.provenance.version.clone(),
                a.message.clone(),
            ]);
            for case in cases {
                table.note(format!("{:<20}  └ {}", "", case_line(case)));
            }
            if let Some(ack) = answer.acks.get(&a.id) {
                table.note(format!(
                    "{:<20}  └ acknowledged by {} at {}{}",
                    "",
                    ack.by,
                    time(ack.at_ms),
                    if ack.comment.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", ack.comment)
                    }
                ));
            }
        }
    }
    if !args.json {
        if table.is_empty() {
            eprintln!("no alarms match");
        } else {
            table.print()?;
        }
    }
    note_truncated(answer.truncated, args.limit);
    Ok(())
}
