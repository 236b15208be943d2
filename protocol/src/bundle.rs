//! Signed module bundles (`.agad` files): manifest + signature + exact wasm bytes.
//!
//! A receiver calls [`Bundle::from_bytes`] then [`Bundle::verify`] before it
//! compiles anything; rollback protection needs persistent state and lives
//! with the receiver.

use crate::keys::{KeyId, PublicKey, SecretKey};
use crate::manifest::{Manifest, ManifestSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"AGADBNDL";
/// 2: manifests carry their configuration keys (`Manifest::config`).
const FORMAT_VERSION: u16 = 2;
/// No module needs more; anything larger is refused before decoding.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("not an AGAD module bundle (bad magic bytes)")]
    NotABundle,
    #[error(
        "bundle format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedFormat(u16),
    #[error("bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("bundle is corrupt: {0}")]
    Corrupt(String),
    #[error("module `{module}` is signed by key {signer}, which this node does not trust")]
    UntrustedSigner { module: String, signer: KeyId },
    #[error("module `{module}`: signature does not verify")]
    BadSignature { module: String },
    #[error(
        "module `{module}`: wasm bytes do not match the signed SHA-256 (signed {signed}, got {actual})"
    )]
    HashMismatch {
        module: String,
        signed: String,
        actual: String,
    },
    #[error(
        "module `{module}`: signature expired at {} (now {})",
        crate::text::utc_seconds(*expires_at),
        crate::text::utc_seconds(*now)
    )]
    Expired {
        module: String,
        expires_at: u64,
        now: u64,
    },
    #[error("module {escaped}: {reason}")]
    BadName {
        /// The name as Rust escapes it (`\n`, `\u{1b}`), cut to a few dozen
        /// characters: safe to print.
        escaped: String,
        reason: crate::manifest::NameError,
    },
    #[error(
        "module `{module}`: expires at {}, more than 100 years after now ({})",
        crate::text::utc_seconds(*expires_at),
        crate::text::utc_seconds(*now)
    )]
    AbsurdExpiry {
        module: String,
        expires_at: u64,
        now: u64,
    },
    #[error(
        "module `{module}`: issued at {}, which is in the future (now {})",
        crate::text::utc_seconds(*issued_at),
        crate::text::utc_seconds(*now)
    )]
    NotYetValid {
        module: String,
        issued_at: u64,
        now: u64,
    },
}

/// Clock skew tolerated on `issued_at` between signer and node.
const ALLOWED_SKEW_SECS: u64 = 300;

/// An expiry further ahead than this is refused: no signature should
/// outlive its key's owner, and `u64::MAX` means "never checked".
const MAX_VALIDITY_SECS: u64 = crate::manifest::MAX_VALID_FOR_DAYS * 86_400 + 86_400;

/// One module, the one type for it at rest (BGC, a domain's BC, a node's
/// store: all as [`Bundle::to_bytes`]) and in transit (deployments and
/// replicas). In transit `wasm` is empty when the receiver already holds
/// that hash ([`Bundle::without_bytes`]); an empty module never verifies,
/// so it cannot be mistaken for the real bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Ed25519 signature (64 bytes) over `manifest.canonical_bytes()`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub wasm: Vec<u8>,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Bundle {
    /// Fills in the manifest from the author's spec and signs it.
    pub fn sign(spec: ManifestSpec, wasm: Vec<u8>, key: &SecretKey, now_secs: u64) -> Bundle {
        let config = spec.config_keys();
        let emits = spec.emitted();
        let mut capabilities = spec.capabilities;
        capabilities.sort();
        capabilities.dedup();
        let manifest = Manifest {
            config,
            emits,
            name: spec.name,
            version: spec.version,
            sequence: spec.sequence,
            kind: spec.kind,
            area: spec.area,
            capabilities,
            limits: spec.limits,
            sha256: sha256(&wasm),
            issued_at: now_secs,
            expires_at: now_secs.saturating_add(spec.valid_for_days.saturating_mul(86_400)),
            signer: key.public().id(),
        };
        let signature = key.sign(&manifest.canonical_bytes()).to_vec();
        Bundle {
            manifest,
            signature,
            wasm,
        }
    }

    /// The signed manifest alone, for a receiver that holds the bytes.
    pub fn without_bytes(&self) -> Bundle {
        Bundle {
            manifest: self.manifest.clone(),
            signature: self.signature.clone(),
            wasm: Vec::new(),
        }
    }

    /// Whether the wasm bytes travel with it.
    pub fn has_bytes(&self) -> bool {
        !self.wasm.is_empty()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a bundle holds only plain data, so encoding cannot fail");
        out.extend_from_slice(&body);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            return Err(BundleError::NotABundle);
        };
        let (version, body) = rest.split_at_checked(2).ok_or(BundleError::NotABundle)?;
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(version));
        }
        let config = bincode::config::standard().with_limit::<MAX_BUNDLE_BYTES>();
        let (bundle, used): (Bundle, usize) = bincode::serde::decode_from_slice(body, config)
            .map_err(|e| BundleError::Corrupt(e.to_string()))?;
        if used != body.len() {
            return Err(BundleError::Corrupt(format!(
                "{} trailing bytes after the bundle",
                body.len() - used
            )));
        }
        Ok(bundle)
    }

    /// Signature by a trusted key, hash of the exact bytes, validity window.
    pub fn verify(&self, trusted: &[PublicKey], now_secs: u64) -> Result<(), BundleError> {
        verify_parts(
            &self.manifest,
            &self.signature,
            &self.wasm,
            trusted,
            now_secs,
        )
    }
}

/// [`Bundle::verify`] for a module whose parts are held apart (a manager's
/// replica and its store of bytes), without copying the bytes.
pub fn verify_parts(
    m: &Manifest,
    signature: &[u8],
    wasm: &[u8],
    trusted: &[PublicKey],
    now_secs: u64,
) -> Result<(), BundleError> {
    // First: every error below prints the name.
    if let Err(reason) = crate::manifest::validate_module_name(&m.name) {
        let escaped: String = format!("{:?}", m.name).chars().take(80).collect();
        return Err(BundleError::BadName { escaped, reason });
    }
    let module = m.name.clone();
    let key = trusted.iter().find(|k| k.id() == m.signer).ok_or_else(|| {
        BundleError::UntrustedSigner {
            module: module.clone(),
            signer: m.signer,
        }
    })?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| BundleError::BadSignature {
            module: module.clone(),
        })?;
    if !key.verify(&m.canonical_bytes(), &signature) {
        return Err(BundleError::BadSignature { module });
    }
    let actual = sha256(wasm);
    if actual != m.sha256 {
        return Err(BundleError::HashMismatch {
            module,
            signed: hex::encode(m.sha256),
            actual: hex::encode(actual),
        });
    }
    if now_secs >= m.expires_at {
        return Err(BundleError::Expired {
            module,
            expires_at: m.expires_at,
            now: now_secs,
        });
    }
    if m.expires_at > now_secs.saturating_add(MAX_VALIDITY_SECS) {
        return Err(BundleError::AbsurdExpiry {
            module,
            expires_at: m.expires_at,
            now: now_secs,
        });
    }
    if m.issued_at > now_secs + ALLOWED_SKEW_SECS {
        return Err(BundleError::NotYetValid {
            module,
            issued_at: m.issued_at,
            now: now_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest::{Area, Capability, Kind, Limits};

    fn spec() -> ManifestSpec {
        ManifestSpec {
            name: "cpu-mem".into(),
            version: semver::Version::new(0, 1, 0),
            sequence: 1,
            kind: Kind::Inspector,
            area: Area::Performance,
            capabilities: vec![Capability::State, Capability::Os, Capability::Os],
            limits: Limits::default(),
            valid_for_days: 1,
            config: Default::default(),
            emits: Default::default(),
        }
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signed_bundle_round_trips_and_verifies() {
        let key = SecretKey::generate();
        let bundle = Bundle::sign(spec(), b"\0asm wasm".to_vec(), &key, NOW);
        assert_eq!(
            bundle.manifest.capabilities,
            vec![Capability::Os, Capability::State]
        );
        let again = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
        assert_eq!(again, bundle);
        again.verify(&[key.public()], NOW + 10).unwrap();
    }

    #[test]
    fn untrusted_signer_is_refused() {
        let bundle = Bundle::sign(spec(), b"wasm".to_vec(), &SecretKey::generate(), NOW);
        let other = SecretKey::generate().public();
        assert!(matches!(
            bundle.verify(&[other], NOW),
            Err(BundleError::UntrustedSigner { .. })
        ));
    }

    #[test]
    fn tampered_manifest_fails_the_signature() {
        let key = SecretKey::generate();
        let mut bundle = Bundle::sign(spec(), b"wasm".to_vec(), &key, NOW);
        bundle.manifest.limits.max_memory_bytes *= 2;
        assert!(matches!(
            bundle.verify(&[key.public()], NOW),
            Err(BundleError::BadSignature { .. })
        ));
    }

    #[test]
    fn tampered_wasm_fails_the_hash() {
        let key = SecretKey::generate();
        let mut bundle = Bundle::sign(spec(), b"wasm".to_vec(), &key, NOW);
        bundle.wasm.push(0);
        assert!(matches!(
            bundle.verify(&[key.public()], NOW),
            Err(BundleError::HashMismatch { .. })
        ));
    }

    #[test]
    fn an_expiry_more_than_100_years_ahead_is_refused() {
        let key = SecretKey::generate();
        let forever = ManifestSpec {
            valid_for_days: u64::MAX,
            ..spec()
        };
        let bundle = Bundle::sign(forever, b"wasm".to_vec(), &key, NOW);
        assert_eq!(bundle.manifest.expires_at, u64::MAX);
        assert!(matches!(
            bundle.verify(&[key.public()], NOW),
            Err(BundleError::AbsurdExpiry { .. })
        ));
        let century = ManifestSpec {
            valid_for_days: 36_500,
            ..spec()
        };
        let bundle = Bundle::sign(century, b"wasm".to_vec(), &key, NOW);
        bundle.verify(&[key.public()], NOW).unwrap();
    }

    #[test]
    fn a_forged_name_is_refused_and_never_printed_raw() {
        let key = SecretKey::generate();
        let forged = ManifestSpec {
            name: "x\n2026-01-01T00:00:00Z INFO forged \u{1b}[31m".into(),
            ..spec()
        };
        let bundle = Bundle::sign(forged, b"wasm".to_vec(), &key, NOW);
        let err = bundle.verify(&[key.public()], NOW).unwrap_err();
        assert!(matches!(err, BundleError::BadName { .. }), "{err}");
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("\\n"), "{text}");
        // Even from a stranger: the name is checked before anything prints it.
        let stranger = SecretKey::generate();
        assert!(matches!(
            bundle.verify(&[stranger.public()], NOW),
            Err(BundleError::BadName { .. })
        ));
    }

    #[test]
    fn expired_and_future_bundles_are_refused() {
        let key = SecretKey::generate();
        let bundle = Bundle::sign(spec(), b"wasm".to_vec(), &key, NOW);
        assert!(matches!(
            bundle.verify(&[key.public()], NOW + 86_400),
            Err(BundleError::Expired { .. })
        ));
        assert!(matches!(
            bundle.verify(&[key.public()], NOW - 3_600),
            Err(BundleError::NotYetValid { .. })
        ));
    }

    #[test]
    fn garbage_is_not_a_bundle() {
        assert_eq!(Bundle::from_bytes(b"hello"), Err(BundleError::NotABundle));
        let mut bytes =
            Bundle::sign(spec(), b"wasm".to_vec(), &SecretKey::generate(), NOW).to_bytes();
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(
            Bundle::from_bytes(&bytes),
            Err(BundleError::Corrupt(_))
        ));
    }
}
