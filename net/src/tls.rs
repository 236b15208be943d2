//! rustls configurations for links between levels: TLS 1.3 only, and both
//! sides always show a certificate issued by the deployment's CA.
//!
//! For: turning certificate files into server and client configs, and
//! reading who a peer is out of its certificate. Not for: deciding whether
//! that peer may talk to us (enrollment does that with [`PeerIdentity`]).
//!
//! Clients dial an IP address and do not know which station will answer, so
//! the client does not check the server's *name*; chain, validity and
//! signatures are still checked by webpki, and the name and role are checked
//! by the application from [`PeerIdentity`].

use crate::conn::NetError;
use crate::pki::{PkiError, fingerprint, read, validate_name};
use agad_protocol::wire::Role;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// This station's certificate chain and private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate (leaf first, as `agad pki issue` writes it)
    /// and its PEM private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, PkiError> {
        let chain = read_certificates(cert_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|e| PkiError::BadFile {
                path: key_path.to_path_buf(),
                reason: format!("no PEM private key: {e}"),
            })?;
        Ok(Identity { chain, key })
    }
}

/// The deployment's CA certificate(s): the only roots a peer may chain to.
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    roots: Arc<RootCertStore>,
}

impl TrustAnchor {
    pub fn load(ca_cert_path: &Path) -> Result<TrustAnchor, PkiError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(ca_cert_path)? {
            roots.add(cert).map_err(|e| PkiError::BadFile {
                path: ca_cert_path.to_path_buf(),
                reason: format!("not usable as a trust anchor: {e}"),
            })?;
        }
        Ok(TrustAnchor {
            roots: Arc::new(roots),
        })
    }
}

/// Who is on the other end, as its certificate (already verified) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the peer's certificate, hex.
    pub fingerprint: String,
}

/// Reads `CN` (name) and `OU` (role) from a certificate. It does not verify
/// the certificate: call it on what a completed handshake verified.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, NetError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| NetError::Identity(format!("unreadable certificate: {e}")))?;
    let subject = parsed.subject();
    let single = |mut values: Vec<&str>, what: &str| match values.len() {
        1 => Ok(values.remove(0).to_string()),
        n => Err(NetError::Identity(format!(
            "certificate subject \"{subject}\" has {n} {what} attributes, expected one"
        ))),
    };
    let names = subject.iter_common_name().filter_map(|a| a.as_str().ok());
    let name = single(names.collect(), "CN")?;
    let roles = subject
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok());
    let role_text = single(roles.collect(), "OU")?;
    validate_name(&name).map_err(|e| NetError::Identity(e.to_string()))?;
    let role = Role::parse(&role_text).ok_or_else(|| {
        NetError::Identity(format!(
            "certificate of {name} has unknown role OU={role_text:?}"
        ))
    })?;
    Ok(PeerIdentity {
        name,
        role,
        fingerprint: fingerprint(cert),
    })
}

/// Listening side: requires a client certificate chaining to `ca`.
pub fn server_config(identity: &Identity, ca: &TrustAnchor) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots.clone(), provider.clone())
        .build()
        .map_err(config_error)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// Listening side for browsers and API clients (the top manager's web
/// port): `identity`'s certificate, no client certificate asked (people log
/// in), TLS 1.2 and 1.3, HTTP/1.1.
pub fn web_server_config(identity: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connecting side: presents `identity` and requires a server certificate
/// chaining to `ca`, whatever name it carries.
pub fn client_config(identity: &Identity, ca: &TrustAnchor) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(ca.roots.clone(), provider.clone())
        .build()
        .map_err(config_error)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNameVerifier(webpki)))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// The name a client asks for; no station needs to carry it (see
/// [`AnyNameVerifier`]).
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from("agad").expect("\"agad\" is a valid DNS name")
}

/// Explicit rather than the process-wide default provider, so that no
/// caller has to install one first.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> PkiError {
    PkiError::Config(e.to_string())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bad = |reason: String| PkiError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no PEM certificate in it".to_string()));
    }
    Ok(chain)
}

/// webpki's server verifier minus the name check. webpki verifies the chain
/// (issuer, validity, signatures, key usage) before it looks at the name, so
/// a name error can only come from a certificate that passed everything
/// else; every other error still refuses the server.
#[derive(Debug)]
struct AnyNameVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::{init_ca, issue};

    #[test]
    fn the_identity_comes_from_cn_and_ou() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        let issued = issue(dir.path(), Role::Mor, "top.site_1", dir.path()).unwrap();
        let der = CertificateDer::from_pem_file(&issued.cert).unwrap();
        let peer = peer_identity(&der).unwrap();
        assert_eq!(peer.name, "top.site_1");
        assert_eq!(peer.role, Role::Mor);
        assert_eq!(peer.fingerprint, issued.fingerprint);
    }

    #[test]
    fn a_certificate_without_a_role_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = peer_identity(cert.der()).unwrap_err();
        assert!(err.to_string().contains("OU"), "{err}");
    }

    #[test]
    fn loading_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let err = TrustAnchor::load(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");

        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key").unwrap();
        init_ca(dir.path(), "test").unwrap();
        let err = Identity::load(&dir.path().join("ca.crt"), &garbage)
            .err()
            .unwrap();
        assert!(err.to_string().contains("garbage.key"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        let a = issue(dir.path(), Role::Node, "a", dir.path()).unwrap();
        let b = issue(dir.path(), Role::Node, "b", dir.path()).unwrap();
        let ca = TrustAnchor::load(&dir.path().join("ca.crt")).unwrap();
        let mixed = Identity::load(&a.cert, &b.key).unwrap();
        assert!(matches!(
            server_config(&mixed, &ca),
            Err(PkiError::Config(_))
        ));
    }
}
