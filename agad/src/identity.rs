//! The certificate a station or node presents, and the CA it trusts, from
//! one PKI directory as `agad pki` writes it.

use agad_net::tls::{self, Identity};
use anyhow::Context;
use std::path::PathBuf;
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

    pub fn client(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let (identity, ca) = self.load()?;
        Ok(tls::client_config(&identity, &ca)?)
    }
}
