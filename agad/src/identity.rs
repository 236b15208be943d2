//! The certificate a station or node presents, and the CA it trusts, from
//! one PKI directory as `agad pki` writes it; and the one-time enrollment
//! ticket it presents the first time.

use agad_net::tls::{self, Identity};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Clone, Debug)]
pub struct IdentityArgs {
    /// Directory holding the deployment's `ca.crt` and this process's
    /// `<name>.crt` and `<name>.key` (written by `agad pki`).
    #[arg(long, value_name = "DIR")]
    pub pki: PathBuf,
    /// This process's certificate name.
    #[arg(long)]
    pub name: String,
}

impl IdentityArgs {
    fn load(&self) -> anyhow::Result<(Identity, tls::TrustAnchor)> {
        let identity = Identity::load(
            &self.pki.join(format!("{}.crt", self.name)),
            &self.pki.join(format!("{}.key", self.name)),
        )
        .with_context(|| {
            format!(
                "no usable certificate for `{}` in {}",
                self.name,
                self.pki.display()
            )
        })?;
        let ca = tls::TrustAnchor::load(&self.pki.join("ca.crt"))?;
        Ok((identity, ca))
    }

    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let (identity, ca) = self.load()?;
        Ok(tokio_rustls::TlsAcceptor::from(tls::server_config(
            &identity, &ca,
        )?))
    }

    /// TLS for the top manager's web port: this identity, no client
    /// certificate.
    pub fn web_server(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (identity, _) = self.load()?;
        Ok(tls::web_server_config(&identity)?)
    }

    pub fn client(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let (identity, ca) = self.load()?;
        Ok(tls::client_config(&identity, &ca)?)
    }
}

/// Where an enrollment ticket may come from. A ticket on the command line
/// is readable by every local user (`ps`, `/proc/*/cmdline`, and any module
/// granted `os`) until the process ends, so a file or the environment is
/// preferred; the flag stays for a one-off by hand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TicketArgs {
    /// File holding the one-time enrollment ticket from `agad enroll ticket`
    /// (preferred: unlike --ticket it is not visible in `ps`). The
    /// environment variable AGAD_TICKET works too.
    #[arg(long, value_name = "FILE", conflicts_with = "ticket")]
    pub ticket_file: Option<PathBuf>,
    /// The one-time enrollment ticket itself. Visible to every local user
    /// in `ps`: prefer --ticket-file or AGAD_TICKET.
    #[arg(long)]
    pub ticket: Option<String>,
}

/// Environment variable an enrollment ticket may be passed in.
pub const TICKET_ENV: &str = "AGAD_TICKET";

/// A ticket is short; a file much larger is not one.
const MAX_TICKET_FILE_BYTES: u64 = 4096;

impl TicketArgs {
    /// The ticket, if any: `--ticket-file`, else `--ticket` (with a warning),
    /// else `AGAD_TICKET`.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        self.resolve_with(std::env::var(TICKET_ENV).ok())
    }

    fn resolve_with(&self, env: Option<String>) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.ticket_file {
            return read_ticket_file(path).map(Some);
        }
        if let Some(ticket) = &self.ticket {
            eprintln!(
                "warning: --ticket is visible to other local users (ps); prefer --ticket-file or {TICKET_ENV}"
            );
            return Ok(Some(ticket.trim().to_owned()));
        }
        Ok(env.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
    }
}

fn read_ticket_file(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read ticket file {}", path.display()))?
        .len();
    if size > MAX_TICKET_FILE_BYTES {
        bail!(
            "ticket file {} is {size} bytes; a ticket is a short line",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ticket file {}", path.display()))?;
    let ticket = text.trim();
    if ticket.is_empty() {
        bail!("ticket file {} is empty", path.display());
    }
    Ok(ticket.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_comes_from_the_file_then_the_flag_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "from-file\n").unwrap();
        let args = |ticket_file: Option<PathBuf>, ticket: Option<&str>| TicketArgs {
            ticket_file,
            ticket: ticket.map(str::to_owned),
        };
        let env = || Some("from-env".to_owned());
        assert_eq!(
            args(Some(file.clone()), None).resolve_with(env()).unwrap(),
            Some("from-file".into())
        );
        assert_eq!(
            args(None, Some("from-flag")).resolve_with(env()).unwrap(),
            Some("from-flag".into())
        );
        assert_eq!(
            args(None, None).resolve_with(env()).unwrap(),
            Some("from-env".into())
        );
        assert_eq!(
            args(None, None).resolve_with(Some(" ".into())).unwrap(),
            None
        );
        assert_eq!(args(None, None).resolve_with(None).unwrap(), None);
    }

    #[test]
    fn an_empty_missing_or_oversized_ticket_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |path: PathBuf| TicketArgs {
            ticket_file: Some(path),
            ticket: None,
        };
        let missing = with(dir.path().join("none"))
            .resolve_with(None)
            .unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read ticket file"),
            "{missing:#}"
        );
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let empty = with(dir.path().join("empty"))
            .resolve_with(None)
            .unwrap_err();
        assert!(empty.to_string().contains("is empty"), "{empty}");
        std::fs::write(dir.path().join("big"), vec![b'x'; 5000]).unwrap();
        let big = with(dir.path().join("big")).resolve_with(None).unwrap_err();
        assert!(big.to_string().contains("5000 bytes"), "{big}");
    }
}
