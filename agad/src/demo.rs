//! `agad demo`: the whole hierarchy on this machine, over loopback with real
//! TLS — a deployment CA, a top manager, two domains each with its domain
//! manager, and three nodes, all separate processes; the built-in inspectors
//! signed, published and assigned by a demo topology. Prints the equivalent
//! commands and where to look, and stops everything on Ctrl-C.
//!
//! The demo stays up when one of its processes dies, so that an operator
//! can watch the system notice and heal: it says which process exited,
//! how, and where its log is, and keeps the others running. Every process
//! has a restart script, `<dir>/restart-<name>.sh`, with the command line
//! the demo started it with; the demo notices the restarted process (from
//! the pid file the script writes) and stops it too on Ctrl-C.

use crate::admin_cmd;
use crate::module_cmd::unix_now;
use agad_gerente_mor::admin::{Answer, Request};
use agad_protocol::wire::{Enrollment, Role};
use agad_protocol::{Bundle, ManifestSpec, SecretKey};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's keys, certificates, bundles, databases and
    /// logs. A second run in the same folder goes on from the first: the
    /// same identities, and BIG keeps the history (see --fresh).
    #[arg(long, default_value = "agad-demo")]
    dir: PathBuf,
    /// Start afresh: clear the databases and logs a previous run left in
    /// --dir (keys, certificates and signed bundles are kept), so the run
    /// shows the whole sequence again (publish, apply, enroll, deploy).
    #[arg(long)]
    fresh: bool,
    /// How often each inspector samples.
    #[arg(long, default_value = "2s")]
    period: String,
    /// Report window of nodes and domains, in seconds.
    #[arg(long, default_value = "20")]
    window_secs: u64,
    /// Stop after this long (e.g. 60s); runs until Ctrl-C otherwise.
    #[arg(long = "for", value_parser = crate::parse_cli_duration)]
    run_for: Option<Duration>,
}

/// (domain, its station, its nodes)
const DOMAINS: &[(&str, &str, &[&str])] = &[
    ("campus", "station-campus", &["campus-1", "campus-2"]),
    ("lab", "station-lab", &["lab-1"]),
];

/// Modules that need an SNMP agent named in a node file; the demo has none.
const NEEDS_AGENT: &[&str] = &["snmp-threshold"];

/// The demo's knowledge base: every alarm its topology can raise gets a
/// specialist's diagnosis on its node (lab's missing daemon, at once).
const DEMO_RULES: &str = r#"# The demo's knowledge base (BCN); `agad alarms` shows each case under its alarm.

# A watched process is missing: which processes run the node right now.
[[rule]]
name = "process-missing"
[rule.match]
key = "proc.running:*"
[rule.diagnose]
specialist = "top-cpu"
args = { sample = "1s", count = 3 }
[rule.escalate]
to = "on-call"

[[rule]]
name = "cpu-busy"
[rule.match]
key = "cpu.total"
[rule.diagnose]
specialist = "top-cpu"
args = { sample = "2s" }

# What fills a filesystem (the demo's nodes allow no path: the answer is
# the node policy's refusal, as it would be on a node that does not allow it).
[[rule]]
name = "disk-filling"
[rule.match]
key = "fs.used:*"
[rule.diagnose]
specialist = "disk-usage"
args = { path = "{subject}" }

[[rule]]
name = "link-down"
[rule.match]
key = "if.link:*"
[rule.diagnose]
specialist = "if-diagnose"
args = { interface = "{subject}", source = "os" }
"#;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let d = dir.display();
    let names = std::iter::once("mor").chain(
        DOMAINS
            .iter()
            .flat_map(|(_, s, n)| std::iter::once(*s).chain(n.iter().copied())),
    );
    let previous = dir.join("mor").exists();
    if args.fresh {
        // Keys and certificates are kept; the processes' bases go.
        for name in names {
            let data = dir.join(name);
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("cannot clear {}", data.display()))?;
            }
        }
        if previous {
            eprintln!(
                "Starting afresh (--fresh): the previous run's databases and logs in {d} are cleared."
            );
        }
    } else if previous {
        eprintln!(
            "Going on from the previous run in {d}: same identities, BIG keeps its history (`--fresh` starts afresh)."
        );
    }
    let publisher = publisher_key(&dir)?;
    let bundles = sign_builtins(&dir, &publisher)?;
    let pki = dir.join("pki");
    issue_certificates(&pki)?;
    let mor_dir = dir.join("mor");
    let mor_addr = free_port()?;
    let web_addr = free_port()?;
    let web_password = web_user(&dir, &mor_dir)?;
    let exe = std::env::current_exe()?;
    let mut children = Children::new(&dir, args.fresh);

    eprintln!(
        "#   agad mor --pki {d}/pki --name mor --listen {mor_addr} --data-dir {d}/mor --trust {d}/publisher.pub --web {web_addr}"
    );
    children.spawn(
        "mor",
        "top manager",
        Command::new(&exe)
            .args(["mor", "--pki"])
            .arg(&pki)
            .args(["--name", "mor", "--listen", &mor_addr, "--data-dir"])
            .arg(&mor_dir)
            .arg("--trust")
            .arg(dir.join("publisher.pub"))
            .args(["--web", &web_addr]),
    )?;
    wait_for(&mor_dir, &mut children)?;
    // The operator commands below find the top manager through it.
    eprintln!("#   export AGAD_MOR_DIR={d}/mor");
    for path in &bundles {
        eprintln!("#   agad module publish {}", path.display());
        admin_cmd::publish(&mor_dir, path).with_context(|| {
            format!(
                "the built-in modules changed since the run that published them in {d}: run `agad demo --fresh`"
            )
        })?;
    }
    let topology = dir.join("topology.toml");
    std::fs::write(&topology, demo_topology(&args.period, args.window_secs))?;
    eprintln!("#   agad topology apply {d}/topology.toml");
    admin_cmd::topology(
        &mor_dir,
        admin_cmd::TopologyCommand::Apply {
            file: topology,
            dry_run: false,
            wait: admin_cmd::WaitArgs {
                wait: false,
                timeout: Duration::ZERO,
            },
        },
    )?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("demo.toml"), DEMO_RULES)?;
    eprintln!("#   agad kb apply {d}/rules");
    crate::kb_cmd::run(crate::kb_cmd::KbCommand::Apply {
        rules,
        dry_run: false,
        mor: admin_cmd::MorDir {
            dir: mor_dir.clone(),
        },
    })?;

    let mut names = Vec::new();
    for (domain, station, nodes) in DOMAINS {
        let listen = free_port()?;
        let station_ticket = ticket(&dir, &mor_dir, station)?;
        eprintln!(
            "#   agad dominio --pki {d}/pki --name {station} --mor {mor_addr} --listen {listen} --data-dir {d}/{station} --trust {d}/publisher.pub{} --keepalive 5s",
            ticket_flag(&station_ticket)
        );
        children.spawn(
            station,
            "domain manager",
            Command::new(&exe)
                .args(["dominio", "--pki"])
                .arg(&pki)
                .args([
                    "--name",
                    station,
                    "--mor",
                    &mor_addr,
                    "--listen",
                    &listen,
                    "--data-dir",
                ])
                .arg(dir.join(station))
                .arg("--trust")
                .arg(dir.join("publisher.pub"))
                .args(ticket_args(&station_ticket))
                .args(["--keepalive", "5s"]),
        )?;
        names.push(station.to_string());
        for node in *nodes {
            let node_ticket = ticket(&dir, &mor_dir, node)?;
            eprintln!(
                "#   agad node --dominio {listen} --pki {d}/pki --name {node} --trust {d}/publisher.pub --data-dir {d}/{node}{} --keepalive 5s   (domain {domain})",
                ticket_flag(&node_ticket)
            );
            children.spawn(
                node,
                "node",
                Command::new(&exe)
                    .args(["node", "--dominio", &listen, "--pki"])
                    .arg(&pki)
                    .args(["--name", node, "--trust"])
                    .arg(dir.join("publisher.pub"))
                    .arg("--data-dir")
                    .arg(dir.join(node))
                    .args(ticket_args(&node_ticket))
                    .args(["--keepalive", "5s"]),
            )?;
            names.push(node.to_string());
        }
    }
    activate_when_approved(&mor_dir, &names, &mut children)?;
    // What `agad topology apply --wait` shows: the nodes taking the change.
    eprintln!("# Deploying the modules to the nodes (as `agad topology apply --wait` shows it):");
    if let Err(e) = admin_cmd::wait_deployed(&mor_dir, Duration::from_secs(120)) {
        eprintln!("warning: {e:#}");
    }
    eprintln!();
    eprintln!("AGAD is running: top manager, 2 domain managers, 3 nodes (logs in {d}/logs).");
    eprintln!("Look at it from another terminal:");
    eprintln!("  export AGAD_MOR_DIR={d}/mor");
    eprintln!("  agad status             # domains, their managers, nodes and modules");
    eprintln!(
        "  agad alarms             # alarms in BIG (lab-1 alarms: a process it watches is missing),"
    );
    eprintln!(
        "                          # each with the rule that acted and its specialist's diagnosis"
    );
    eprintln!("  agad kb stats           # how often each rule of {d}/rules helped");
    eprintln!(
        "  agad report             # consolidated reports, one per domain per {}s window",
        args.window_secs
    );
    eprintln!("  (from the source tree: cargo run --release -p agad -- status, ...)");
    eprintln!("In a browser: http://{web_addr}/ (log in as `demo`, password `{web_password}`);");
    eprintln!("  Prometheus: curl -u demo:{web_password} http://{web_addr}/metrics");
    let (node, station) = (DOMAINS[0].2[0], DOMAINS[0].1);
    eprintln!("Stop or kill one element and watch the others notice (the demo keeps running):");
    for (name, role) in [(node, "node"), (station, "domain manager")] {
        let pid = children.pid(name).context("a demo process is missing")?;
        eprintln!("  kill -STOP {pid}   # freeze {role} {name} (kill -CONT {pid} thaws it)");
        eprintln!("  kill -9 {pid}      # kill {role} {name}");
        eprintln!(
            "  sh {}   # start {name} again once it is gone",
            restart_script(&dir, name).display()
        );
    }
    eprintln!("Every process has one: {d}/restart-<name>.sh.");
    eprintln!("Ctrl-C stops everything.");
    let deadline = args.run_for.map(|d| Instant::now() + d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(crate::shutdown_signal());
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    while !stop.load(std::sync::atomic::Ordering::SeqCst)
        && deadline.is_none_or(|d| Instant::now() < d)
    {
        if children.any_exited() {
            // Ctrl-C reaches the children too; give our own handler a moment.
            std::thread::sleep(Duration::from_millis(500));
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        for event in children.watch() {
            eprintln!("{event}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping...");
    children.stop_all();
    Ok(())
}

fn publisher_key(dir: &Path) -> anyhow::Result<SecretKey> {
    let secret_path = dir.join("publisher.secret");
    if secret_path.exists() {
        return crate::module_cmd::read_secret_key(&secret_path);
    }
    let key = SecretKey::generate();
    crate::module_cmd::write_private(&secret_path, key.to_text().as_bytes())?;
    std::fs::write(dir.join("publisher.pub"), key.public().to_text())?;
    eprintln!("#   agad module keygen --out {}/publisher", dir.display());
    Ok(key)
}

/// Signs the built-in inspectors into `<dir>/<name>.agad`.
fn sign_builtins(dir: &Path, key: &SecretKey) -> anyhow::Result<Vec<PathBuf>> {
    let mut bundles = Vec::new();
    let mut reused = 0;
    let builtins = agad_modules::INSPECTORS
        .iter()
        .chain(agad_modules::SPECIALISTS);
    for builtin in builtins {
        if NEEDS_AGENT.contains(&builtin.name) {
            continue;
        }
        let spec = ManifestSpec::from_toml(builtin.manifest_toml)
            .with_context(|| format!("built-in manifest of {}", builtin.name))?;
        let bundle_path = dir.join(format!("{}.agad", builtin.name));
        let manifest_path = dir.join(format!("{}.toml", builtin.name));
        // The previous run's bundle, if it signed this very module: signing
        // again would make a new bundle under the same sequence, which the
        // top manager that kept its BGC refuses.
        let same = std::fs::read(&bundle_path)
            .ok()
            .and_then(|b| Bundle::from_bytes(&b).ok())
            .is_some_and(|old| {
                old.wasm == builtin.wasm
                    && std::fs::read_to_string(&manifest_path)
                        .is_ok_and(|m| m == builtin.manifest_toml)
                    && old.verify(&[key.public()], unix_now()).is_ok()
            });
        if same {
            reused += 1;
            bundles.push(bundle_path);
            continue;
        }
        std::fs::write(dir.join(format!("{}.wasm", builtin.name)), builtin.wasm)?;
        std::fs::write(&manifest_path, builtin.manifest_toml)?;
        let bundle = Bundle::sign(spec, builtin.wasm.to_vec(), key, unix_now());
        std::fs::write(&bundle_path, bundle.to_bytes())?;
        eprintln!(
            "#   agad module sign {0}/{1}.wasm --manifest {0}/{1}.toml --key {0}/publisher.secret --out {0}/{1}.agad",
            dir.display(),
            builtin.name
        );
        bundles.push(bundle_path);
    }
    if reused > 0 {
        eprintln!(
            "#   ({reused} bundles signed by a previous run in {} are reused)",
            dir.display()
        );
    }
    Ok(bundles)
}

fn issue_certificates(pki: &Path) -> anyhow::Result<()> {
    if !pki.join("ca.key").exists() {
        agad_net::pki::init_ca(pki, "agad-demo")?;
        eprintln!("#   agad pki init --dir {}", pki.display());
    }
    let mut all = vec![("mor", Role::Mor)];
    for (_, station, nodes) in DOMAINS {
        all.push((station, Role::Dominio));
        all.extend(nodes.iter().map(|n| (*n, Role::Node)));
    }
    for (name, role) in all {
        if !pki.join(format!("{name}.key")).exists() {
            agad_net::pki::issue(pki, role, name, pki)?;
            eprintln!(
                "#   agad pki issue --ca-dir {0} --role {role} --name {name} --out {0}",
                pki.display()
            );
        }
    }
    Ok(())
}

fn demo_topology(period: &str, window_secs: u64) -> String {
    let mut t = String::from("# The demo's network: two domains, three nodes.\n");
    for (domain, station, nodes) in DOMAINS {
        t += &format!(
            "\n[[domain]]\nname = \"{domain}\"\nstations = [\"{station}\"]\nreport_window = \"{window_secs}s\"\n"
        );
        for node in *nodes {
            t += &format!(
                "\n[[node]]\nname = \"{node}\"\ndomain = \"{domain}\"\naddress = \"127.0.0.1\"\n"
            );
        }
    }
    t += "\n[[link]]\nbetween = [\"campus-1\", \"campus-2\"]\n";
    let common = format!("period = \"{period}\"\nwindow_secs = {window_secs}\n");
    t += &format!(
        "\n[[assign]]\nmodule = \"cpu-mem\"\ndomain = \"campus\"\nnodes = [\"lab-1\"]\n[assign.config]\n{common}"
    );
    t += &format!(
        "\n[[assign]]\nmodule = \"disk-space\"\ndomain = \"campus\"\n[assign.config]\n{common}"
    );
    t += &format!(
        "\n[[assign]]\nmodule = \"if-health\"\nnodes = [\"campus-1\"]\n[assign.config]\nsource = \"os\"\n{common}"
    );
    // A process that is certainly not running, so the demo shows an alarm.
    t += &format!(
        "\n[[assign]]\nmodule = \"app-watch\"\ndomain = \"lab\"\n[assign.config]\nprocesses = \"agad,agad-demo-missing-daemon\"\n{common}"
    );
    t
}

/// A ticket for `name` in `<dir>/<name>.ticket` (printed as the command
/// that makes it), or `None` when `name` is enrolled already (a run that
/// goes on from the previous one).
fn ticket(dir: &Path, mor_dir: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let Answer::Members(members) = admin_cmd::ask(mor_dir, Request::EnrollList)? else {
        bail!("unexpected answer to enroll list");
    };
    if members.iter().any(|m| m.name == name) {
        return Ok(None);
    }
    let ticket = match admin_cmd::ask(
        mor_dir,
        Request::EnrollTicket {
            name: name.to_owned(),
        },
    )? {
        Answer::Ticket { ticket, .. } => ticket,
        other => bail!("unexpected answer: {other:?}"),
    };
    let path = dir.join(format!("{name}.ticket"));
    eprintln!("#   agad enroll ticket {name} > {}", path.display());
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    crate::module_cmd::write_private(&path, ticket.as_bytes())?;
    Ok(Some(path))
}

/// ` --ticket-file FILE`, as printed.
fn ticket_flag(ticket: &Option<PathBuf>) -> String {
    ticket
        .as_ref()
        .map(|p| format!(" --ticket-file {}", p.display()))
        .unwrap_or_default()
}

/// `--ticket-file FILE` on a command line, if there is a ticket.
fn ticket_args(ticket: &Option<PathBuf>) -> Vec<std::ffi::OsString> {
    ticket
        .iter()
        .flat_map(|p| ["--ticket-file".into(), p.clone().into_os_string()])
        .collect()
}

/// Tickets approve; the operator still activates. The demo plays the operator.
fn activate_when_approved(
    mor_dir: &Path,
    names: &[String],
    children: &mut Children,
) -> anyhow::Result<()> {
    let mut waiting: Vec<&String> = names.iter().collect();
    let started = Instant::now();
    while !waiting.is_empty() {
        if let Some(name) = children.exited() {
            bail!("{name} stopped unexpectedly; see its log in the demo folder");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("still not enrolled after 60 s: {waiting:?}");
        }
        let Answer::Members(members) = admin_cmd::ask(mor_dir, Request::EnrollList)? else {
            bail!("unexpected answer to enroll list");
        };
        for m in members.iter().filter(|m| m.state == Enrollment::Pending) {
            // Left pending by an interrupted run (its ticket is spent):
            // the demo plays the operator.
            if waiting.iter().any(|w| **w == m.name) {
                eprintln!("#   agad enroll approve {}", m.fingerprint);
                admin_cmd::ask(
                    mor_dir,
                    Request::EnrollApprove {
                        fingerprint: m.fingerprint.clone(),
                    },
                )?;
            }
        }
        for m in members.iter().filter(|m| m.state != Enrollment::Pending) {
            if waiting.iter().any(|w| **w == m.name) {
                if m.state == Enrollment::Inactive {
                    eprintln!("#   agad enroll activate {}", m.name);
                    admin_cmd::ask(
                        mor_dir,
                        Request::EnrollActivate {
                            name: m.name.clone(),
                        },
                    )?;
                }
                waiting.retain(|w| **w != m.name);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn wait_for(mor_dir: &Path, children: &mut Children) -> anyhow::Result<()> {
    let started = Instant::now();
    while !agad_gerente_mor::admin_socket(mor_dir).exists() {
        if children.exited().is_some() || started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the top manager did not start; see {}/../logs/mor.log",
                mor_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The demo's web login: user `demo` (admin) with a password made once
/// and kept in `DIR/web-password`, added to the top manager's users file
/// whenever that file is new (a first run, or `--fresh`).
fn web_user(dir: &Path, mor_dir: &Path) -> anyhow::Result<String> {
    let saved = dir.join("web-password");
    let password = match std::fs::read_to_string(&saved) {
        Ok(p) if p.trim().len() >= 8 => p.trim().to_owned(),
        _ => {
            let p = hex::encode(rand::random::<[u8; 8]>());
            std::fs::write(&saved, &p)?;
            p
        }
    };
    let users = mor_dir.join("web-users.toml");
    if !users.exists() {
        std::fs::create_dir_all(mor_dir)?;
        eprintln!(
            "#   cat {} | agad web user add demo --role admin --file {}",
            saved.display(),
            users.display()
        );
        agad_gerente_mor::web::users::add_user(
            &users,
            "demo",
            agad_gerente_mor::web::users::Role::Admin,
            &password,
        )?;
    }
    Ok(password)
}

fn free_port() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The demo's restart script for `name`.
fn restart_script(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("restart-{name}.sh"))
}

/// Where `name`'s restart script writes the process id it started.
fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.pid"))
}

/// `text` as one word for `sh`.
fn shell_quote(text: &std::ffi::OsStr) -> String {
    format!("'{}'", text.to_string_lossy().replace('\'', r"'\''"))
}

/// Whether process `pid` runs (exists and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`; comm may hold spaces and parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// One process of the demo.
struct Element {
    name: String,
    /// "node", "domain manager", "top manager": for the operator.
    role: &'static str,
    /// The demo's own run of it, until it exits.
    child: Option<Child>,
    /// A run its restart script started (the pid it wrote), while it runs.
    restarted: Option<u32>,
    /// The last pid read from its pid file, so a run is announced once.
    pid_seen: Option<u32>,
}

/// The demo's processes; stopped with SIGTERM (a clean shutdown) at the
/// end, including those started again by their restart scripts.
struct Children {
    dir: PathBuf,
    elements: Vec<Element>,
    /// Logs start empty (else each run's output follows the previous one's).
    fresh: bool,
}

impl Children {
    fn new(dir: &Path, fresh: bool) -> Children {
        Children {
            dir: dir.to_owned(),
            elements: Vec::new(),
            fresh,
        }
    }

    /// Starts `command` as `name`, logging to `<dir>/logs/<name>.log`, and
    /// writes its restart script.
    fn spawn(
        &mut self,
        name: &str,
        role: &'static str,
        command: &mut Command,
    ) -> anyhow::Result<()> {
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(!self.fresh)
            .write(true)
            .truncate(self.fresh)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_filter = std::env::var("AGAD_LOG").unwrap_or_else(|_| "info".into());
        self.write_restart_script(name, command, &log_filter, &log_path)?;
        let _ = std::fs::remove_file(pid_file(&self.dir, name));
        let child = command
            .env("AGAD_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.elements.push(Element {
            name: name.to_owned(),
            role,
            child: Some(child),
            restarted: None,
            pid_seen: None,
        });
        Ok(())
    }

    /// `<dir>/restart-<name>.sh`: `command` again in the background, its
    /// output appended to the same log, its pid in `<dir>/logs/<name>.pid`
    /// for the demo to find.
    fn write_restart_script(
        &self,
        name: &str,
        command: &Command,
        log_filter: &str,
        log: &Path,
    ) -> anyhow::Result<()> {
        let mut line = vec![shell_quote(command.get_program())];
        line.extend(command.get_args().map(shell_quote));
        let pid_file = pid_file(&self.dir, name);
        let script = format!(
            "#!/bin/sh\n\
             # Starts {name} of the AGAD demo again, with the command line the demo\n\
             # started it with, in the background; its output goes on in its log.\n\
             # Run it once {name} is gone (kill -9, a crash); `agad demo` notices.\n\
             AGAD_LOG={filter} nohup {line} >>{log} 2>&1 </dev/null &\n\
             echo $! >{pid_file}\n\
             echo \"{name} started again: pid $!, log {log_text}\"\n",
            filter = shell_quote(log_filter.as_ref()),
            line = line.join(" "),
            log = shell_quote(log.as_os_str()),
            pid_file = shell_quote(pid_file.as_os_str()),
            log_text = log.display(),
        );
        let path = restart_script(&self.dir, name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
        }
        // It names the enrollment ticket's file: the user's only.
        crate::module_cmd::write_private(&path, script.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// The process id of `name`'s current run, if it runs.
    fn pid(&self, name: &str) -> Option<u32> {
        let e = self.elements.iter().find(|e| e.name == name)?;
        e.child.as_ref().map(Child::id).or(e.restarted)
    }

    /// The first of the demo's own runs that exited, if any (while
    /// starting, any exit is a failure).
    fn exited(&mut self) -> Option<String> {
        self.elements.iter_mut().find_map(|e| {
            let child = e.child.as_mut()?;
            matches!(child.try_wait(), Ok(Some(_))).then(|| e.name.clone())
        })
    }

    /// Whether a process exited since the last [`Children::watch`].
    fn any_exited(&mut self) -> bool {
        self.exited().is_some()
            || self
                .elements
                .iter()
                .any(|e| e.restarted.is_some_and(|pid| !alive(pid)))
    }

    /// What changed since the last call, for the operator: processes that
    /// exited (which, how, its log and restart script) and processes their
    /// restart script started again.
    fn watch(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        for e in &mut self.elements {
            let log = self.dir.join("logs").join(format!("{}.log", e.name));
            let script = restart_script(&self.dir, &e.name);
            if let Some(child) = e.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let pid = child.id();
                e.child = None;
                events.push(format!(
                    "{} {} (pid {pid}) exited: {status}; its log: {}; the others keep running; start it again with: sh {}",
                    e.role,
                    e.name,
                    log.display(),
                    script.display()
                ));
            }
            if let Some(pid) = e.restarted
                && !alive(pid)
            {
                e.restarted = None;
                events.push(format!(
                    "{} {} (pid {pid}) exited; its log: {}; start it again with: sh {}",
                    e.role,
                    e.name,
                    log.display(),
                    script.display()
                ));
            }
            let written = std::fs::read_to_string(pid_file(&self.dir, &e.name))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            if let Some(pid) = written
                && e.pid_seen != Some(pid)
                && e.child.is_none()
                && alive(pid)
            {
                e.pid_seen = Some(pid);
                e.restarted = Some(pid);
                events.push(format!(
                    "{} {} runs again (pid {pid}, started by its restart script)",
                    e.role, e.name
                ));
            }
        }
        events
    }

    fn stop_all(&mut self) {
        let pids: Vec<(String, u32)> = self
            .elements
            .iter()
            .rev()
            .filter_map(|e| Some((e.name.clone(), self.pid(&e.name)?)))
            .collect();
        for (_, pid) in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for e in &mut self.elements {
            let deadline = Instant::now() + Duration::from_secs(10);
            if let Some(child) = e.child.as_mut() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!("{} did not stop in 10 s; killing it", e.name);
                    let _ = child.kill();
                    let _ = child.wait();
                }
                e.child = None;
            }
            // Not our child: it is reaped by whoever adopted it.
            if let Some(pid) = e.restarted.take() {
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if alive(pid)
                    && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
                {
                    eprintln!("{} did not stop in 10 s; killing it", e.name);
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}
