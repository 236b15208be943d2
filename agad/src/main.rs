//! `agad`: the one command-line tool of AGAD. This file only parses the
//! command line, sets up logging and dispatches; the work lives in the
//! subcommand modules and in the library crates.

mod demo;
mod module_cmd;
mod node_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "agad",
    version,
    about = "AGAD: network management with signed WebAssembly inspectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign, verify and manage module bundles.
    #[command(subcommand)]
    Module(module_cmd::ModuleCommand),
    /// Run the node runtime.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// Sign the built-in inspectors with a fresh key and run them on this machine.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Module(cmd) => module_cmd::run(cmd),
        Command::Node(cmd) => node_cmd::run(cmd),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
