//! The deployment's certificate authority: creating it and issuing station
//! certificates from it.
//!
//! For: the offline steps an operator runs (`agad pki init`, `agad pki
//! issue`). Not for: loading certificates into TLS (see [`crate::tls`]) or
//! deciding who may join (enrollment works on the fingerprints printed here).
//!
//! A leaf says who a station is with `CN=<name>` and what it is with
//! `OU=<role>`; the TLS layer reads them back with
//! [`crate::tls::peer_identity`]. Keys are ECDSA P-256, which ring verifies
//! for TLS 1.3 in both directions.

use agad_protocol::wire::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Stations' clocks disagree; a certificate issued "now" must already be
/// valid on a peer whose clock is a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; it is never overwritten (remove it first to replace it)", .0.display())]
    Exists(PathBuf),
    #[error(
        "invalid name {0:?}: use 1 to 64 characters among A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    BadName(String),
    #[error("invalid host {0:?}: give a DNS name (A-Z a-z 0-9 . _ -) or an IP address")]
    BadHost(String),
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// What [`init_ca`] wrote.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the CA certificate (DER), hex.
    pub fingerprint: String,
}

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the new certificate (DER), hex: what enrollment approves.
    pub fingerprint: String,
}

/// Creates the deployment's CA in `dir` (`ca.crt`, `ca.key`).
pub fn init_ca(dir: &Path, deployment: &str) -> Result<CaFiles, PkiError> {
    validate_name(deployment)?;
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    refuse_existing(&[&key_path, &cert_path])?;
    create_dir(dir)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{deployment} CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, deployment);
    // Path length 0: the CA signs stations, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY);

    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(CaFiles {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// Issues a certificate for station `name` with `role`, signed by the CA in
/// `ca_dir`, into `<out_dir>/<name>.crt` and `<out_dir>/<name>.key`.
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out_dir: &Path,
) -> Result<IssuedFiles, PkiError> {
    issue_for_hosts(ca_dir, role, name, out_dir, &[])
}

/// [`issue`], the certificate also valid for `hosts` (DNS names or IP
/// addresses): what browsers check when they open the top manager's web
/// port by its host's name. Peers of the hierarchy go by the station name
/// alone (CN), never by these.
pub fn issue_for_hosts(
    ca_dir: &Path,
    role: Role,
    name: &str,
    out_dir: &Path,
    hosts: &[String],
) -> Result<IssuedFiles, PkiError> {
    validate_name(name)?;
    let mut names = vec![SanType::DnsName(name.try_into()?)];
    for host in hosts {
        names.push(match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if agad_protocol::text::is_name(host) => {
                SanType::DnsName(host.as_str().try_into()?)
            }
            Err(_) => return Err(PkiError::BadHost(host.clone())),
        });
    }
    let cert_path = out_dir.join(format!("{name}.crt"));
    let key_path = out_dir.join(format!("{name}.key"));
    refuse_existing(&[&key_path, &cert_path])?;
    let issuer = load_issuer(ca_dir)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.subject_alt_names = names;
    params.is_ca = IsCa::ExplicitNoCa;
    // Every station both listens (for the level below) and connects (to the
    // level above), so one certificate serves both ends of TLS.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    create_dir(out_dir)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(IssuedFiles {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Station and deployment names end up in file names and log lines, so they
/// are kept to a conservative alphabet.
pub(crate) fn validate_name(name: &str) -> Result<(), PkiError> {
    if agad_protocol::text::is_name(name) {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_path = ca_dir.join("ca.crt");
    let key_path = ca_dir.join("ca.key");
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let bad = |path: &Path, reason: String| PkiError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| bad(&cert_path, format!("no PEM certificate: {e}")))?;
    let key_text = std::str::from_utf8(&key_pem)
        .map_err(|_| bad(&key_path, "not a PEM text file".to_string()))?;
    let key = KeyPair::from_pem(key_text)
        .map_err(|e| bad(&key_path, format!("not a usable private key: {e}")))?;

    // A mismatched pair would sign certificates that no peer accepts; say so
    // here rather than in a handshake on another machine.
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(&cert_path, format!("not an X.509 certificate: {e}")))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(bad(
            &key_path,
            format!("is not the key of {}", cert_path.display()),
        ));
    }
    Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad(&cert_path, format!("not usable as a CA: {e}")))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + validity).into();
}

fn refuse_existing(paths: &[&Path]) -> Result<(), PkiError> {
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(PkiError::Exists(path.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// `create_new` so that a key is never replaced, even by a race between two
/// invocations; the mode is set at creation so a key is never readable by
/// others, not even briefly.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_path_buf()),
            _ => io("create", e),
        })?;
    file.write_all(bytes).map_err(|e| io("write", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), "test").unwrap();
        assert_eq!(mode(&ca.key), 0o600);
        assert!(matches!(
            init_ca(dir.path(), "test"),
            Err(PkiError::Exists(_))
        ));

        let out = dir.path().join("out");
        let leaf = issue(dir.path(), Role::Node, "node-1", &out).unwrap();
        assert_eq!(mode(&leaf.key), 0o600);
        assert_eq!(leaf.fingerprint.len(), 64);
        assert!(matches!(
            issue(dir.path(), Role::Node, "node-1", &out),
            Err(PkiError::Exists(_))
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        let long = "a".repeat(65);
        for name in [
            "",
            "../x",
            "a/b",
            "no space",
            ".hidden",
            "-flag",
            "é",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    issue(dir.path(), Role::Node, name, dir.path()),
                    Err(PkiError::BadName(_))
                ),
                "{name:?} accepted"
            );
        }
        for name in ["a", "node_1.site-2", &"a".repeat(64)] {
            validate_name(name).unwrap();
        }
        assert!(matches!(
            init_ca(&dir.path().join("x"), "a b"),
            Err(PkiError::BadName(_))
        ));
    }

    #[test]
    fn issuing_without_a_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), Role::Node, "n", dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init_ca(a.path(), "a").unwrap();
        init_ca(b.path(), "b").unwrap();
        std::fs::remove_file(a.path().join("ca.key")).unwrap();
        std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
        let err = issue(a.path(), Role::Node, "n", a.path()).unwrap_err();
        assert!(err.to_string().contains("is not the key of"), "{err}");
    }
}
