//! `agad`: the one command-line tool of AGAD. This file only parses the
//! command line, sets up logging and dispatches; the work lives in the
//! subcommand modules and in the library crates.

mod admin_cmd;
mod demo;
mod identity;
mod kb_cmd;
mod module_cmd;
mod module_new;
mod node_cmd;
mod pki_cmd;
mod station_cmd;
mod table;
mod web_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "agad",
    version,
    about = "AGAD: network management with signed WebAssembly inspectors",
    after_help = "Logging: AGAD_LOG (or, if unset, RUST_LOG) sets the log filter, in \
        tracing's EnvFilter syntax: AGAD_LOG=info, or AGAD_LOG=warn,agad_gerente_mor=debug \
        for one crate. Default: warn. Logs go to stderr."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign, verify and publish module bundles.
    #[command(subcommand)]
    Module(module_cmd::ModuleCommand),
    /// Run the node runtime: under a domain manager (`--dominio`), or `run` locally.
    Node(node_cmd::NodeArgs),
    /// Run the top manager (gerente-mor).
    Mor(station_cmd::MorArgs),
    /// Run a domain-manager station (gerente de domínio).
    Dominio(station_cmd::DominioArgs),
    /// The deployment's certificate authority and certificates.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
    /// Enrollment of nodes and stations at the top manager.
    Enroll {
        #[command(subcommand)]
        command: admin_cmd::EnrollCommand,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// The topology base (BTPG) of the top manager.
    Topology {
        #[command(subcommand)]
        command: admin_cmd::TopologyCommand,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// Consolidated reports from BIG.
    Report {
        #[command(flatten)]
        args: admin_cmd::ReportArgs,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// Alarms from BIG.
    Alarms {
        #[command(flatten)]
        args: admin_cmd::AlarmsArgs,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// Domains, their managers, replicas and components.
    Status {
        /// Print the typed status as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// The top manager's web port: its users.
    Web {
        #[command(subcommand)]
        command: web_cmd::WebCommand,
        #[command(flatten)]
        mor: admin_cmd::MorDir,
    },
    /// Start a whole hierarchy on this machine: top manager, two domains, nodes.
    Demo(demo::DemoArgs),
    /// The knowledge base's rules (BCN): check them, test an alarm against them.
    #[command(subcommand)]
    Kb(kb_cmd::KbCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Node(_) | Command::Mor(_) | Command::Dominio(_) | Command::Demo(_)
    ) {
        private_files();
        // Daemons: a small heap (see agad_runtime::heap), before any thread.
        agad_runtime::heap::limit_arenas();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGAD_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Module(cmd) => module_cmd::run(cmd),
        Command::Node(args) => node_cmd::run(args),
        Command::Mor(args) => station_cmd::run_mor(args),
        Command::Dominio(args) => station_cmd::run_dominio(args),
        Command::Pki(cmd) => pki_cmd::run(cmd),
        Command::Enroll { command, mor } => admin_cmd::enroll(&mor.dir, command),
        Command::Topology { command, mor } => admin_cmd::topology(&mor.dir, command),
        Command::Report { args, mor } => admin_cmd::report(&mor.dir, args),
        Command::Alarms { args, mor } => admin_cmd::alarms(&mor.dir, args),
        Command::Status { json, mor } => admin_cmd::status(&mor.dir, json),
        Command::Web { command, mor } => web_cmd::run(command, &mor.dir),
        Command::Demo(args) => demo::run(args),
        Command::Kb(cmd) => kb_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", said_once(&e));
            ExitCode::from(2)
        }
    }
}

/// Everything a daemon creates — databases, outboxes, unused enrollment
/// tickets, keys, compiled modules — is its own user's alone: directories
/// 0700, files 0600, whatever the umask it was started with.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// `500ms`, `30s`, `5m`, `1h`, `2d`, `1h30m` on the command line: the
/// files' syntax, and days and combinations as humantime reads them.
fn parse_cli_duration(text: &str) -> Result<std::time::Duration, String> {
    agad_runtime::parse_duration(text)
        .or_else(|| humantime::parse_duration(text.trim()).ok())
        .ok_or_else(|| format!("`{text}` is not a duration (use e.g. 500ms, 30s, 5m, 1h, 2d)"))
}

/// Resolves on Ctrl-C or SIGTERM, so managers and nodes stop cleanly either way.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The error and its causes on one line, each said once: many errors
/// already print their cause (`cannot read x: No such file`), and `{:#}`
/// would repeat it after them.
fn said_once(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The reader of our output went away (`agad report | head`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    /// An error that prints its cause and also gives it as its source,
    /// as thiserror's `{source}` fields do.
    #[derive(Debug)]
    struct Reading(std::io::Error);

    impl std::fmt::Display for Reading {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read x.crt: {}", self.0)
        }
    }

    impl std::error::Error for Reading {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Reading(io)).context("no usable certificate for `mor`");
        assert_eq!(
            format!("{e:#}"),
            "no usable certificate for `mor`: cannot read x.crt: No such file: No such file",
            "what `{{:#}}` says"
        );
        assert_eq!(
            super::said_once(&e),
            "no usable certificate for `mor`: cannot read x.crt: No such file"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::said_once(&e), "outer: inner");
    }

    #[test]
    fn durations_on_the_command_line() {
        let d = |t: &str| super::parse_cli_duration(t);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(d("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(d("10").unwrap_err().contains("2d"));
        assert!(d("soon").is_err());
    }
}
