//! Which bundles a node accepts: signed by a trusted key, intact, in date,
//! and not older than what it already accepted (no rollback, persisted).

use agad_protocol::{Bundle, BundleError, PublicKey};
use agad_storage::Tree;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(
        "module `{module}`: sequence {offered} is lower than {accepted}, already accepted (rollback refused)"
    )]
    Rollback {
        module: String,
        offered: u64,
        accepted: u64,
    },
    #[error(
        "module `{module}`: sequence {sequence} was already accepted with different bytes (a new release needs a new sequence)"
    )]
    SequenceReused { module: String, sequence: u64 },
    #[error(transparent)]
    Storage(#[from] agad_storage::StorageError),
}

/// The node's trusted publisher keys and the highest sequence accepted per module.
#[derive(Debug, Clone)]
pub struct TrustStore {
    keys: Vec<PublicKey>,
    accepted: Tree,
}

impl TrustStore {
    pub fn new(keys: Vec<PublicKey>, accepted: Tree) -> TrustStore {
        TrustStore { keys, accepted }
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `bundle` and, if it passes, records its sequence so nothing
    /// older is accepted afterwards, even after a restart.
    pub fn admit(&self, bundle: &Bundle, now_secs: u64) -> Result<(), TrustError> {
        bundle.verify(&self.keys, now_secs)?;
        let m = &bundle.manifest;
        if let Some(record) = self.accepted.get(m.name.as_bytes())? {
            let (sequence, sha256) = decode_record(&record);
            if m.sequence < sequence {
                return Err(TrustError::Rollback {
                    module: m.name.clone(),
                    offered: m.sequence,
                    accepted: sequence,
                });
            }
            if m.sequence == sequence && sha256 != m.sha256 {
                return Err(TrustError::SequenceReused {
                    module: m.name.clone(),
                    sequence,
                });
            }
            if m.sequence == sequence {
                return Ok(());
            }
        }
        let mut record = m.sequence.to_be_bytes().to_vec();
        record.extend_from_slice(&m.sha256);
        self.accepted.insert(m.name.as_bytes(), &record)?;
        self.accepted.flush()?;
        Ok(())
    }
}

fn decode_record(record: &[u8]) -> (u64, [u8; 32]) {
    let mut sequence = [0u8; 8];
    let mut sha256 = [0u8; 32];
    if record.len() == 40 {
        sequence.copy_from_slice(&record[..8]);
        sha256.copy_from_slice(&record[8..]);
    }
    (u64::from_be_bytes(sequence), sha256)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::{Area, Kind, Limits, ManifestSpec, SecretKey};

    fn bundle(key: &SecretKey, sequence: u64, wasm: &[u8]) -> Bundle {
        let spec = ManifestSpec {
            name: "m".into(),
            version: semver::Version::new(1, 0, sequence),
            sequence,
            kind: Kind::Inspector,
            area: Area::Fault,
            capabilities: vec![],
            limits: Limits::default(),
            valid_for_days: 1,
            config: Default::default(),
            emits: Default::default(),
        };
        Bundle::sign(spec, wasm.to_vec(), key, 1_800_000_000)
    }

    #[test]
    fn rollback_and_reused_sequences_are_refused_across_reopen() {
        let key = SecretKey::generate();
        let db = agad_storage::Database::temporary().unwrap();
        let store = TrustStore::new(vec![key.public()], db.tree("accepted").unwrap());
        let now = 1_800_000_100;
        store.admit(&bundle(&key, 2, b"v2"), now).unwrap();
        store.admit(&bundle(&key, 2, b"v2"), now).unwrap();
        assert!(matches!(
            store.admit(&bundle(&key, 1, b"v1"), now),
            Err(TrustError::Rollback {
                offered: 1,
                accepted: 2,
                ..
            })
        ));
        assert!(matches!(
            store.admit(&bundle(&key, 2, b"other"), now),
            Err(TrustError::SequenceReused { .. })
        ));
        store.admit(&bundle(&key, 3, b"v3"), now).unwrap();
        let reopened = TrustStore::new(vec![key.public()], db.tree("accepted").unwrap());
        assert!(matches!(
            reopened.admit(&bundle(&key, 2, b"v2"), now),
            Err(TrustError::Rollback { accepted: 3, .. })
        ));
    }
}
