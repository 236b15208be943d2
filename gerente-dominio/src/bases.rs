//! The domain manager's bases in its own database: BC (module bundles by
//! hash), BTPD/BCN (the replica last acknowledged) and BICD (every alarm and
//! report received from the domain's nodes, and which reports arrived after
//! their window was consolidated).
//!
//! A replica is stored only if every module in it (and in its sub-domain
//! replicas) is signed by one of the deployment's trusted publishers and
//! matches its bytes, sent or held: a compromised top manager alone cannot
//! push code through this station.

use agad_net::fence::Activations;
use agad_protocol::bundle::{BundleError, verify_parts};
use agad_protocol::message::{Alarm, Report};
use agad_protocol::wire::{self, Activation, Replica};
use agad_protocol::{Bundle, PublicKey};
use agad_storage::{Database, StorageError, Tree};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

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
    #[error("replica {version}: domain `{domain}`: {reason}")]
    Untrusted {
        version: u64,
        domain: String,
        reason: BundleError,
    },
}

#[derive(Clone, Debug)]
pub struct Bases {
    db: Database,
    bc: Tree,
    btpd: Tree,
    bicd_alarms: Tree,
    bicd_reports: Tree,
    /// Keys of reports that arrived for a window already consolidated (a
    /// node that buffered through an outage, a restart of this station):
    /// their windows are consolidated again.
    late_reports: Tree,
    meta: Tree,
    /// The sub-domains' activations this station issued.
    pub sub_activations: Activations,
    /// Publisher keys whose signatures a replica's modules must carry.
    trusted: Vec<PublicKey>,
    /// Held while reports are recorded and while windows are consolidated,
    /// so a report is either in a window's consolidation or marked late.
    windows: Arc<Mutex<()>>,
}

/// What one consolidation pass has to do (see [`Bases::consolidation`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Starts of windows to consolidate (new or with late reports), oldest first.
    pub windows: Vec<u64>,
    /// Late-report marks the pass clears once its reports are queued.
    late: Vec<Vec<u8>>,
}

const CURRENT: &[u8] = b"current";
const REMOVED: &[u8] = b"removed";
const ACTIVATION: &[u8] = b"activation";
/// Most windows with late reports one consolidation pass sends again.
const MAX_LATE_WINDOWS: usize = 64;
const CONSOLIDATED_UNTIL: &[u8] = b"consolidated-until";

impl Bases {
    /// The bases in `db`; replicas are accepted only with modules signed by
    /// one of `trusted`.
    pub fn open(db: &Database, trusted: Vec<PublicKey>) -> Result<Bases, StorageError> {
        Ok(Bases {
            db: db.clone(),
            bc: db.tree("bc")?,
            btpd: db.tree("btpd")?,
            bicd_alarms: db.tree("bicd-alarms")?,
            bicd_reports: db.tree("bicd-reports")?,
            late_reports: db.tree("bicd-late-reports")?,
            meta: db.tree("meta")?,
            sub_activations: Activations::open(db, "sub-activations")?,
            trusted,
            windows: Arc::default(),
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
    /// itself. Refused, with nothing changed, if a module is neither sent
    /// nor held, or if any module fails [`verify_parts`] (trusted signer,
    /// signature, bytes matching the signed hash, validity window) against
    /// the bytes sent or, for a manifest alone, the bytes held in BC.
    /// Sub-domain replicas ride along: their modules go to BC too, since
    /// this station hands them down.
    pub fn store_replica(&self, replica: Replica) -> Result<Replica, BaseError> {
        let modules = || replica.all().into_iter().flat_map(|r| &r.modules);
        let sent: HashMap<String, &[u8]> = modules()
            .filter(|m| m.has_bytes())
            .map(|m| (m.manifest.sha256_hex(), m.wasm.as_slice()))
            .collect();
        // Bytes of modules named by hash only, read once each from BC.
        let mut held: HashMap<String, Vec<u8>> = HashMap::new();
        let now_secs = crate::now_ms() / 1000;
        for r in replica.all() {
            for module in &r.modules {
                let hash = module.manifest.sha256_hex();
                let sent_here = module.has_bytes().then_some(module.wasm.as_slice());
                let wasm = match sent_here.or(sent.get(&hash).copied()) {
                    Some(wasm) => wasm,
                    None => {
                        if !held.contains_key(&hash) {
                            let bytes = self.held_bytes(&hash)?.ok_or_else(|| {
                                BaseError::MissingModule {
                                    version: replica.version,
                                    module: module.manifest.name.clone(),
                                    hash: hash.clone(),
                                }
                            })?;
                            held.insert(hash.clone(), bytes);
                        }
                        &held[&hash]
                    }
                };
                verify_parts(
                    &module.manifest,
                    &module.signature,
                    wasm,
                    &self.trusted,
                    now_secs,
                )
                .map_err(|reason| BaseError::Untrusted {
                    version: replica.version,
                    domain: r.topology.domain.name.clone(),
                    reason,
                })?;
            }
        }
        for module in modules().filter(|m| m.has_bytes()) {
            let hash = module.manifest.sha256_hex();
            self.bc.insert(hash.as_bytes(), &module.to_bytes())?;
        }
        let mut stored = replica.without_bytes();
        restore_versions(&mut stored, &replica);
        self.btpd.insert(CURRENT, &wire::encode_value(&stored))?;
        self.btpd.remove(REMOVED)?;
        self.db.flush()?;
        Ok(stored)
    }

    /// Marks the replica in force as that of a domain removed from the
    /// topology (kept: its members are still known, and get an empty
    /// deployment); a new replica clears the mark.
    pub fn mark_removed(&self) -> Result<(), StorageError> {
        self.btpd.insert(REMOVED, &[])?;
        self.db.flush()
    }

    /// The activation this station last received for its domain, and
    /// whether it was told to step down since (another station took over).
    pub fn activation(&self) -> Result<Option<(Activation, bool)>, StorageError> {
        Ok(self
            .meta
            .get(ACTIVATION)?
            .and_then(|v| wire::decode_value(&v).ok()))
    }

    /// Records an activation (on disk before the station serves under it)
    /// or a step-down (`stepped_down`).
    pub fn record_activation(
        &self,
        activation: &Activation,
        stepped_down: bool,
    ) -> Result<(), StorageError> {
        self.meta
            .insert(ACTIVATION, &wire::encode_value(&(activation, stepped_down)))?;
        self.db.flush()
    }

    /// Whether the replica in force is that of a removed domain.
    pub fn is_removed(&self) -> Result<bool, StorageError> {
        Ok(self.btpd.get(REMOVED)?.is_some())
    }

    /// The wasm bytes BC holds under `hash`, if any.
    fn held_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>, BaseError> {
        Ok(self.module(hash)?.map(|m| m.wasm))
    }

    /// A module with its bytes, by hash. BC keeps bundles in the same form
    /// as BGC and a node's store ([`Bundle::to_bytes`]); entries an earlier
    /// version wrote (the bincode of a manifest, a signature and optional
    /// bytes) are still read.
    pub fn module(&self, hash: &str) -> Result<Option<Bundle>, BaseError> {
        let Some(bytes) = self.bc.get(hash.as_bytes())? else {
            return Ok(None);
        };
        let corrupt = |reason: String| BaseError::Corrupt {
            what: "module",
            reason,
        };
        match Bundle::from_bytes(&bytes) {
            Ok(bundle) => Ok(Some(bundle)),
            Err(BundleError::NotABundle) => {
                #[derive(serde::Deserialize)]
                struct Earlier {
                    manifest: agad_protocol::Manifest,
                    #[serde(with = "serde_bytes")]
                    signature: Vec<u8>,
                    #[serde(with = "serde_bytes")]
                    wasm: Option<Vec<u8>>,
                }
                let earlier: Earlier =
                    wire::decode_value(&bytes).map_err(|e| corrupt(e.to_string()))?;
                Ok(earlier.wasm.map(|wasm| Bundle {
                    manifest: earlier.manifest,
                    signature: earlier.signature,
                    wasm,
                }))
            }
            Err(e) => Err(corrupt(e.to_string())),
        }
    }

    /// Deletes a module from BC (its bytes failed a check): the top manager
    /// sends them again once it learns of it.
    pub fn remove_module(&self, hash: &str) -> Result<(), StorageError> {
        self.bc.remove(hash.as_bytes())?;
        self.db.flush()
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

    /// The alarm of this id in BICD.
    pub fn alarm(&self, id: &str) -> Result<Option<Alarm>, StorageError> {
        Ok(self
            .bicd_alarms
            .get(id.as_bytes())?
            .and_then(|v| wire::decode_value(&v).ok()))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()
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
    /// lands on itself. A report older than what was consolidated is also
    /// marked late, so its window is consolidated again.
    pub fn record_reports(&self, reports: &[(Report, u64)]) -> Result<(), StorageError> {
        let _windows = self.windows();
        let until = self.consolidated_until()?;
        for (report, seq) in reports {
            let key = report_key(report.time_ms, &report.node, *seq);
            self.bicd_reports
                .insert(&key, &wire::encode_value(report))?;
            if until.is_some_and(|until| report.time_ms < until) {
                self.late_reports.insert(&key, &[])?;
            }
        }
        self.db.flush()
    }

    fn windows(&self) -> MutexGuard<'_, ()> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one consolidation pass of windows `window_ms` long, up to the
    /// window that contains `now_ms` (excluded): `send` gets the start of
    /// each window that completed since the last pass or received late
    /// reports, oldest first, and queues its consolidation. Reports
    /// recorded meanwhile wait (they would otherwise fall between the pass
    /// and its bookkeeping). On the first pass ever, history before the
    /// current window is left alone.
    pub fn consolidate(
        &self,
        window_ms: u64,
        now_ms: u64,
        mut send: impl FnMut(u64) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let _windows = self.windows();
        let pending = self.pending(window_ms, now_ms)?;
        for start in &pending.windows {
            send(*start)?;
        }
        for key in &pending.late {
            self.late_reports.remove(key)?;
        }
        let current = now_ms - now_ms % window_ms;
        self.meta
            .insert(CONSOLIDATED_UNTIL, &current.to_be_bytes())?;
        self.db.flush()
    }

    /// The windows a pass at `now_ms` consolidates.
    fn pending(&self, window_ms: u64, now_ms: u64) -> Result<Pending, StorageError> {
        let current = now_ms - now_ms % window_ms;
        let mut windows = BTreeSet::new();
        let mut late = Vec::new();
        // Keys sort by time: the oldest late windows first, and at most
        // MAX_LATE_WINDOWS a pass (a node that sends reports dated all over
        // the past costs a bounded amount of work and upward traffic each
        // window; the rest stay marked for the next passes).
        for (key, _) in self.late_reports.scan_prefix(b"")? {
            if let Some(time) = key.get(..8).and_then(|t| t.try_into().ok()) {
                let time = u64::from_be_bytes(time);
                if time >= current {
                    // Its window is still open: consolidated in due course.
                    continue;
                }
                let window = time - time % window_ms;
                if !windows.contains(&window) {
                    if windows.len() == MAX_LATE_WINDOWS {
                        break;
                    }
                    windows.insert(window);
                }
            }
            late.push(key);
        }
        if let Some(until) = self.consolidated_until()? {
            let mut start = until - until % window_ms;
            while start < current {
                windows.insert(start);
                start += window_ms;
            }
        }
        Ok(Pending {
            windows: windows.into_iter().collect(),
            late,
        })
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

    fn consolidated_until(&self) -> Result<Option<u64>, StorageError> {
        Ok(self
            .meta
            .get(CONSOLIDATED_UNTIL)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes)))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::topology::{Domain, DomainTopology};
    use agad_protocol::{Bundle, ManifestSpec, SecretKey};

    fn spec(name: &str) -> ManifestSpec {
        ManifestSpec::from_toml(&format!(
            "name = \"{name}\"\nversion = \"0.1.0\"\nsequence = 1\nkind = \"inspector\"\narea = \"performance\"\n"
        ))
        .unwrap()
    }

    fn copy(bundle: &Bundle, with_bytes: bool) -> Bundle {
        Bundle {
            manifest: bundle.manifest.clone(),
            signature: bundle.signature.clone(),
            wasm: if with_bytes {
                bundle.wasm.clone()
            } else {
                Vec::new()
            },
        }
    }

    fn replica(domain: &str, version: u64, modules: Vec<Bundle>) -> Replica {
        Replica {
            version,
            topology: DomainTopology {
                domain: Domain {
                    name: domain.into(),
                    parent: None,
                    stations: vec![],
                    report_window_ms: 1000,
                },
                nodes: vec![],
                links: vec![],
                assignments: vec![],
                subdomains: vec![],
            },
            modules,
            rules: vec![],
            members: vec![],
            subdomains: vec![],
            moved: vec![],
        }
    }

    struct Fixture {
        bases: Bases,
        publisher: SecretKey,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("db")).unwrap();
        let publisher = SecretKey::generate();
        let bases = Bases::open(&db, vec![publisher.public()]).unwrap();
        Fixture {
            bases,
            publisher,
            _dir: dir,
        }
    }

    fn now() -> u64 {
        crate::now_ms() / 1000
    }

    fn node_report(node: &str, time_ms: u64) -> Report {
        Report {
            node: node.into(),
            module: "cpu-mem".into(),
            provenance: Default::default(),
            area: agad_protocol::Area::Performance,
            summaries: vec![],
            time_ms,
        }
    }

    fn pass(bases: &Bases, now_ms: u64) -> Vec<u64> {
        let mut sent = Vec::new();
        bases
            .consolidate(10, now_ms, |start| {
                sent.push(start);
                Ok(())
            })
            .unwrap();
        sent
    }

    #[test]
    fn a_report_for_a_window_already_consolidated_has_its_window_sent_again() {
        let f = fixture();
        // The first pass ever starts with the window in progress.
        assert_eq!(pass(&f.bases, 105), Vec::<u64>::new());
        f.bases
            .record_reports(&[(node_report("a", 101), 1)])
            .unwrap();
        assert_eq!(pass(&f.bases, 112), vec![100]);
        // The station was down from 112 to 145: windows 110..140 are
        // consolidated empty, then the node replays what it buffered.
        assert_eq!(pass(&f.bases, 145), vec![110, 120, 130]);
        f.bases
            .record_reports(&[
                (node_report("a", 111), 2),
                (node_report("a", 125), 3),
                (node_report("a", 142), 4),
            ])
            .unwrap();
        assert_eq!(pass(&f.bases, 151), vec![110, 120, 140]);
        assert_eq!(f.bases.reports_between(110, 130).unwrap().len(), 2);
        // Sent once: the marks are cleared with the pass.
        assert_eq!(pass(&f.bases, 161), vec![150]);
        // Marks survive a restart of the station.
        f.bases
            .record_reports(&[(node_report("b", 103), 1)])
            .unwrap();
        let reopened = Bases::open(&f.bases.db, vec![]).unwrap();
        assert_eq!(pass(&reopened, 171), vec![100, 160]);

        // Reports dated all over the past: a bounded number of windows a
        // pass, oldest first, until every one was sent.
        assert_eq!(pass(&reopened, 2001).len(), 183, "170 to 1990, empty");
        let scattered: Vec<(Report, u64)> = (0..100)
            .map(|i| (node_report("c", i * 10 + 1), i))
            .collect();
        reopened.record_reports(&scattered).unwrap();
        let first = pass(&reopened, 2011);
        assert_eq!(
            first.len(),
            MAX_LATE_WINDOWS + 1,
            "the oldest late ones and 2000"
        );
        assert_eq!(first[..3], [0, 10, 20]);
        let second = pass(&reopened, 2021);
        assert_eq!(second.len(), 100 - MAX_LATE_WINDOWS + 1);
        assert_eq!(second.last(), Some(&2010));
        assert_eq!(pass(&reopened, 2031), vec![2020]);
    }

    #[test]
    fn bc_holds_bundles_as_every_base_does_and_still_reads_the_earlier_form() {
        let f = fixture();
        let cpu = Bundle::sign(spec("cpu-mem"), b"cpu wasm".to_vec(), &f.publisher, now());
        f.bases
            .store_replica(replica("lab", 1, vec![copy(&cpu, true)]))
            .unwrap();
        let hash = cpu.manifest.sha256_hex();
        let stored = f.bases.bc.get(hash.as_bytes()).unwrap().unwrap();
        assert_eq!(Bundle::from_bytes(&stored).unwrap(), cpu);

        // What an earlier version wrote: manifest, signature, optional bytes.
        #[derive(serde::Serialize)]
        struct Earlier<'a> {
            manifest: &'a agad_protocol::Manifest,
            #[serde(with = "serde_bytes")]
            signature: &'a [u8],
            #[serde(with = "serde_bytes")]
            wasm: Option<&'a [u8]>,
        }
        let disk = Bundle::sign(spec("disk"), b"disk wasm".to_vec(), &f.publisher, now());
        let earlier = Earlier {
            manifest: &disk.manifest,
            signature: &disk.signature,
            wasm: Some(&disk.wasm),
        };
        let disk_hash = disk.manifest.sha256_hex();
        f.bases
            .bc
            .insert(disk_hash.as_bytes(), &wire::encode_value(&earlier))
            .unwrap();
        assert_eq!(f.bases.module(&disk_hash).unwrap(), Some(disk));
        assert_eq!(f.bases.module(&hash).unwrap(), Some(cpu));
    }

    #[test]
    fn a_replica_with_a_tampered_module_is_refused_whole_and_the_last_one_stays() {
        let f = fixture();
        let cpu = Bundle::sign(spec("cpu-mem"), b"cpu wasm".to_vec(), &f.publisher, now());
        let disk = Bundle::sign(spec("disk"), b"disk wasm".to_vec(), &f.publisher, now());
        f.bases
            .store_replica(replica("lab", 1, vec![copy(&cpu, true)]))
            .unwrap();

        // Version 2: a good new module for the domain, and a sub-domain
        // whose module's bytes were swapped after signing.
        let mut tampered = copy(&disk, true);
        tampered.wasm = b"evil wasm".to_vec();
        let mut v2 = replica("lab", 2, vec![copy(&cpu, false), copy(&disk, true)]);
        let mut sub = replica("lab-east", 2, vec![copy(&cpu, false)]);
        sub.modules.push(tampered);
        v2.subdomains.push(sub);
        let err = f.bases.store_replica(v2).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                &err,
                BaseError::Untrusted { version: 2, domain, reason: BundleError::HashMismatch { module, .. } }
                    if domain == "lab-east" && module == "disk"
            ),
            "{text}"
        );
        assert!(
            text.contains("replica 2: domain `lab-east`: module `disk`"),
            "{text}"
        );

        // Nothing of version 2 was kept: not the replica, not even the
        // good module's bytes.
        let kept = f.bases.replica().unwrap().unwrap();
        assert_eq!(kept.version, 1);
        assert_eq!(kept.modules.len(), 1);
        assert_eq!(f.bases.held().unwrap(), vec![cpu.manifest.sha256_hex()]);
    }

    #[test]
    fn modules_signed_by_an_unknown_key_or_forged_are_refused() {
        let f = fixture();
        let stranger = SecretKey::generate();
        let foreign = Bundle::sign(spec("cpu-mem"), b"cpu wasm".to_vec(), &stranger, now());
        let err = f
            .bases
            .store_replica(replica("lab", 1, vec![copy(&foreign, true)]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                BaseError::Untrusted {
                    reason: BundleError::UntrustedSigner { .. },
                    ..
                }
            ),
            "{err}"
        );

        // A manifest edited after signing (more capabilities), bytes intact.
        let good = Bundle::sign(spec("cpu-mem"), b"cpu wasm".to_vec(), &f.publisher, now());
        let mut forged = copy(&good, true);
        forged
            .manifest
            .capabilities
            .push(agad_protocol::Capability::Snmp);
        let err = f
            .bases
            .store_replica(replica("lab", 1, vec![forged]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                BaseError::Untrusted {
                    reason: BundleError::BadSignature { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(f.bases.replica().unwrap().is_none());
        assert!(f.bases.held().unwrap().is_empty());
    }

    #[test]
    fn a_manifest_without_bytes_is_checked_against_the_bytes_held() {
        let f = fixture();
        let cpu = Bundle::sign(spec("cpu-mem"), b"cpu wasm".to_vec(), &f.publisher, now());
        f.bases
            .store_replica(replica("lab", 1, vec![copy(&cpu, true)]))
            .unwrap();
        // Held and signed: a manifest alone is enough.
        f.bases
            .store_replica(replica("lab", 2, vec![copy(&cpu, false)]))
            .unwrap();
        // A forged signature on a manifest alone is refused too.
        let mut forged = copy(&cpu, false);
        forged.signature[0] ^= 1;
        let err = f
            .bases
            .store_replica(replica("lab", 3, vec![forged]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                BaseError::Untrusted {
                    reason: BundleError::BadSignature { .. },
                    ..
                }
            ),
            "{err}"
        );
        // Bytes in BC that no longer match their hash are not handed down.
        let hash = cpu.manifest.sha256_hex();
        let mut damaged = copy(&cpu, true);
        damaged.wasm = b"rotten".to_vec();
        f.bases
            .bc
            .insert(hash.as_bytes(), &damaged.to_bytes())
            .unwrap();
        let err = f
            .bases
            .store_replica(replica("lab", 4, vec![copy(&cpu, false)]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                BaseError::Untrusted {
                    reason: BundleError::HashMismatch { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(f.bases.replica().unwrap().unwrap().version, 2);
    }
}
