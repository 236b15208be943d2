//! `agad pki ...`: the deployment's CA and the certificates of its stations.

use agad_protocol::wire::Role;
use anyhow::{Context, anyhow};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create the deployment's CA: ca.crt (give it to every station) and ca.key (keep it offline).
    Init {
        /// Directory for ca.crt and ca.key; created if missing.
        #[arg(long)]
        dir: PathBuf,
        /// Deployment name, written into the CA certificate.
        #[arg(long, default_value = "agad")]
        deployment: String,
    },
    /// Issue a certificate signed by the CA for a node, a domain manager
    /// or the top manager (--role): <NAME>.crt and <NAME>.key.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// What the certificate is for, written into it (a peer acts only
        /// in its certificate's role): `node` (a managed node, `agad node`),
        /// `dominio` (a domain-manager station, `agad dominio`) or `mor`
        /// (the top manager, `agad mor`).
        #[arg(long, value_parser = ["node", "dominio", "mor"])]
        role: String,
        /// Station name (certificate CN): 1-64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Directory to write <NAME>.crt and <NAME>.key into; created if missing.
        #[arg(long)]
        out: PathBuf,
        /// A host name or IP address browsers reach this station by
        /// (repeatable): for the top manager's HTTPS web port
        /// (`agad mor --web`). The hierarchy itself goes by NAME only.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
}

pub fn run(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init { dir, deployment } => {
            let ca = agad_net::init_ca(&dir, &deployment)
                .with_context(|| format!("cannot create the CA in {}", dir.display()))?;
            println!(
                "CA of deployment {deployment}: certificate {}, key {} (keep it private)",
                ca.cert.display(),
                ca.key.display()
            );
            println!("  sha256 {}", ca.fingerprint);
            Ok(())
        }
        PkiCommand::Issue {
            ca_dir,
            role,
            name,
            out,
            hosts,
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                let valid = [Role::Node, Role::Dominio, Role::Mor].map(Role::as_str);
                anyhow!(
                    "unknown role {role:?}: expected one of {}",
                    valid.join(", ")
                )
            })?;
            let issued = agad_net::issue_for_hosts(&ca_dir, role, &name, &out, &hosts)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            println!(
                "{role} {name}: certificate {}, key {}",
                issued.cert.display(),
                issued.key.display()
            );
            println!("  sha256 {}", issued.fingerprint);
            if !hosts.is_empty() {
                println!("  also valid for {}", hosts.join(", "));
            }
            Ok(())
        }
    }
}
