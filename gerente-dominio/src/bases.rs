//! The domain manager's bases in its own database: BC (module bundles by
//! hash), BTPD/BCN (the replica last acknowledged) and BICD (every alarm and
//! report received from the domain's nodes).

use agad_protocol::message::{Alarm, Report};
use agad_protocol::wire::{self, ModuleCopy, Replica};
use agad_storage::{Database, StorageError, Tree};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "replica {version}: module `{module}` ({hash}) arrived without its bytes and is not in BC"
    )]
    MissingModule {
        version: u64,
        module: String,
        hash: String,
    },
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

#[derive(Clone, Debug)]
pub struct Bases {
    db: Database,
    bc: Tree,
    btpd: Tree,
    bicd_alarms: Tree,
    bicd_reports: Tree,
    meta: Tree,
}

const CURRENT: &[u8] = b"current";
const CONSOLIDATED_UNTIL: &[u8] = b"consolidated-until";

impl Bases {
    pub fn open(db: &Database) -> Result<Bases, StorageError> {
        Ok(Bases {
            db: db.clone(),
            bc: db.tree("bc")?,
            btpd: db.tree("btpd")?,
            bicd_alarms: db.tree("bicd-alarms")?,
            bicd_reports: db.tree("bicd-reports")?,
            meta: db.tree("meta")?,
        })
    }

    /// The replica in force (modules without their bytes; those are in BC).
    pub fn replica(&self) -> Result<Option<Replica>, BaseError> {
        self.btpd
            .get(CURRENT)?
            .map(|bytes| {
                wire::decode_value(&bytes).map_err(|e| BaseError::Corrupt {
                    what: "replica",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Stores a new replica whole: its module bytes into BC, then the replica
    /// itself. Refused (nothing changed) if a module is neither sent nor held.
    /// Sub-domain replicas ride along: their modules go to BC too, since
    /// this station hands them down.
    pub fn store_replica(&self, replica: Replica) -> Result<Replica, BaseError> {
        let modules = || replica.all().into_iter().flat_map(|r| &r.modules);
        let sent: std::collections::HashSet<String> = modules()
            .filter(|m| m.wasm.is_some())
            .map(|m| m.manifest.sha256_hex())
            .collect();
        for module in modules() {
            let hash = module.manifest.sha256_hex();
            if !sent.contains(&hash) && self.bc.get(hash.as_bytes())?.is_none() {
                return Err(BaseError::MissingModule {
                    version: replica.version,
                    module: module.manifest.name.clone(),
                    hash,
                });
            }
        }
        for module in modules().filter(|m| m.wasm.is_some()) {
            let hash = module.manifest.sha256_hex();
            self.bc
                .insert(hash.as_bytes(), &wire::encode_value(module))?;
        }
        let mut stored = replica.without_bytes();
        restore_versions(&mut stored, &replica);
        self.btpd.insert(CURRENT, &wire::encode_value(&stored))?;
        self.db.flush()?;
        Ok(stored)
    }

    /// A module with its bytes, by hash.
    pub fn module(&self, hash: &str) -> Result<Option<ModuleCopy>, BaseError> {
        self.bc
            .get(hash.as_bytes())?
            .map(|bytes| {
                wire::decode_value(&bytes).map_err(|e| BaseError::Corrupt {
                    what: "module",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Hashes of every bundle in BC.
    pub fn held(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .bc
            .scan_prefix(b"")?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// Records an alarm in BICD, durably; false if that id was already there.
    pub fn record_alarm(&self, alarm: &Alarm) -> Result<bool, StorageError> {
        let new = self
            .bicd_alarms
            .insert_new(alarm.id.as_bytes(), &wire::encode_value(alarm))?;
        self.db.flush()?;
        Ok(new)
    }

    /// Records node reports in BICD, durably (one flush for the batch).
    /// Keyed by (time, node, the node's sequence), so a replayed report
    /// lands on itself.
    pub fn record_reports(&self, reports: &[(Report, u64)]) -> Result<(), StorageError> {
        for (report, seq) in reports {
            self.bicd_reports.insert(
                &report_key(report.time_ms, &report.node, *seq),
                &wire::encode_value(report),
            )?;
        }
        self.db.flush()
    }

    /// Node reports received with times in `[start, end)`.
    pub fn reports_between(&self, start_ms: u64, end_ms: u64) -> Result<Vec<Report>, StorageError> {
        let mut out = Vec::new();
        // Keys sort by time first; start just below `start`.
        let mut after = start_ms.saturating_sub(1).to_be_bytes().to_vec();
        after.push(0xff);
        loop {
            let page = self.bicd_reports.entries_after(&after, 256)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (key, value) in &page {
                let time = u64::from_be_bytes(key[..8].try_into().unwrap_or([0xff; 8]));
                if time >= end_ms {
                    return Ok(out);
                }
                match wire::decode_value(value) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::error!("unreadable report in BICD: {e}"),
                }
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.bicd_alarms.len(), self.bicd_reports.len())
    }

    pub fn consolidated_until(&self) -> Result<Option<u64>, StorageError> {
        Ok(self
            .meta
            .get(CONSOLIDATED_UNTIL)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes)))
    }

    pub fn set_consolidated_until(&self, end_ms: u64) -> Result<(), StorageError> {
        self.meta
            .insert(CONSOLIDATED_UNTIL, &end_ms.to_be_bytes())?;
        self.db.flush()
    }
}

/// `without_bytes` zeroes versions; put the received ones back.
fn restore_versions(stored: &mut Replica, received: &Replica) {
    stored.version = received.version;
    for (s, r) in stored.subdomains.iter_mut().zip(&received.subdomains) {
        restore_versions(s, r);
    }
}

fn report_key(time_ms: u64, node: &str, seq: u64) -> Vec<u8> {
    let mut key = time_ms.to_be_bytes().to_vec();
    key.extend_from_slice(node.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}
