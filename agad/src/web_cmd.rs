//! `agad web`: the users of the top manager's web port.

use agad_gerente_mor::web::users::{Role, add_user};
use clap::{Subcommand, ValueEnum};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum WebCommand {
    /// Users of the web port (`agad mor --web`).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user, or change an existing user's role and password. The
    /// password is read from the first line of standard input (at least 8
    /// characters); only its Argon2id hash is written.
    Add {
        /// The user's login name.
        name: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The users file. Default: `web-users.toml` in the top manager's
        /// data directory (`--mor-dir`).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Read everything: pages, API, /metrics.
    ReadOnly,
    /// Read and change.
    Admin,
}

pub fn run(command: WebCommand, mor_dir: &Path) -> anyhow::Result<()> {
    match command {
        WebCommand::User(UserCommand::Add { name, role, file }) => {
            let path = file.unwrap_or_else(|| mor_dir.join("web-users.toml"));
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let role = match role {
                RoleArg::ReadOnly => Role::ReadOnly,
                RoleArg::Admin => Role::Admin,
            };
            let existed = add_user(&path, &name, role, password)?;
            println!(
                "{} user `{name}` in {} (restart `agad mor` to use it)",
                if existed { "changed" } else { "added" },
                path.display()
            );
            Ok(())
        }
    }
}
