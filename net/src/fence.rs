//! Fencing on the child's side: an element remembers, per domain, the
//! highest activation generation of a domain manager it accepted as its
//! parent, and refuses a manager with an older one. A manager that comes
//! back after its domain failed over to a standby (a restart, a healed
//! partition) therefore finds no child to serve beside the new one, even
//! before the top manager tells it to step down.
//!
//! The generation is on disk before the element sends its first frame to
//! the new parent: a node that restarts keeps refusing the old manager.
//!
//! On the parent's side, [`Activations`] issues the generations. They are
//! activation times in ms (one more than the last where the clock says
//! less), so a domain's next activation is newer than every earlier one
//! even when another manager issues it: the top manager for its domains,
//! and for a sub-domain whichever station serves the parent domain now —
//! after a fail-over of the parent, one that never saw the sub-domain's
//! earlier activations. That asks of the managers' clocks only to agree
//! (NTP) to better than the time between two activations of one domain.

use agad_protocol::wire::{self, Activation};
use agad_storage::{Database, StorageError, Tree};
use serde::{Deserialize, Serialize};

/// Domains remembered at most: an element belongs to one domain at a time
/// and moves rarely; a parent that names ever new domains is refused.
const MAX_DOMAINS: usize = 64;

/// The highest generation accepted per domain, in the element's database.
#[derive(Clone)]
pub struct Fence {
    db: Database,
    seen: Tree,
}

impl Fence {
    pub fn open(db: &Database) -> Result<Fence, StorageError> {
        Ok(Fence {
            db: db.clone(),
            seen: db.tree("fence")?,
        })
    }

    /// The highest generation of `domain` accepted so far (0: none).
    pub fn seen(&self, domain: &str) -> u64 {
        self.seen
            .get(domain.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// Accepts a parent serving under `activation` (none: a parent that is
    /// no domain manager) unless this element saw a newer activation of
    /// that domain; remembers a newer one durably first.
    pub fn accept(&self, activation: Option<&Activation>) -> Result<(), String> {
        let Some(Activation { domain, generation }) = activation else {
            return Ok(());
        };
        if !agad_protocol::text::is_name(domain) {
            return Err("it names its domain with something that is not a name".into());
        }
        let seen = self.seen(domain);
        if seen == 0 && self.seen.len() >= MAX_DOMAINS {
            return Err(format!(
                "this element already remembers {MAX_DOMAINS} domains' activations"
            ));
        }
        // An activation time a day ahead is no activation: remembered, it
        // would fence off every real manager of the domain until then.
        if *generation > now_ms().saturating_add(MAX_AHEAD_MS) {
            return Err(format!(
                "it serves domain `{}` as activation {generation}, which lies in the future",
                agad_protocol::text::excerpt(domain, 64)
            ));
        }
        if *generation < seen {
            // The domain name is the parent's word: short in the message.
            return Err(format!(
                "it serves domain `{}` as activation {generation}, but activation {seen} took over since (fenced)",
                agad_protocol::text::excerpt(domain, 64)
            ));
        }
        if *generation > seen {
            self.seen
                .insert(domain.as_bytes(), &generation.to_be_bytes())
                .and_then(|()| self.db.flush())
                .map_err(|e| format!("cannot remember activation {generation}: {e}"))?;
        }
        Ok(())
    }
}

/// How far ahead of this manager's clock a claimed generation may be (clocks
/// that disagree by a day are broken, not skewed).
const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A domain's last activation, as the manager that issued it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    pub generation: u64,
    /// The station activated.
    pub station: String,
    pub at_ms: u64,
}

/// The activations a parent manager issued, per domain, on disk.
#[derive(Clone, Debug)]
pub struct Activations {
    db: Database,
    last: Tree,
}

impl Activations {
    /// The record in tree `tree` of `db`.
    pub fn open(db: &Database, tree: &str) -> Result<Activations, StorageError> {
        Ok(Activations {
            db: db.clone(),
            last: db.tree(tree)?,
        })
    }

    /// The last activation of `domain` issued here.
    pub fn last(&self, domain: &str) -> Result<Option<ActivationRecord>, StorageError> {
        Ok(self.last.get(domain.as_bytes())?.and_then(|v| {
            // Unreadable: the next generation still outgrows it (a time).
            wire::decode_value(&v)
                .map_err(|e| tracing::error!(domain, "unreadable activation record: {e}"))
                .ok()
        }))
    }

    /// Activates `station` for `domain` at `at_ms`, as a generation newer
    /// than the last issued here and than `known` (one a candidate said it
    /// holds); on disk before it is returned, so before anyone hears of it.
    pub fn activate(
        &self,
        domain: &str,
        station: &str,
        at_ms: u64,
        known: u64,
    ) -> Result<ActivationRecord, StorageError> {
        let last = self.last(domain)?.map_or(0, |a| a.generation);
        // A generation from the future is no activation time: a candidate
        // claiming one would freeze the domain's generations at its value.
        let known = if known > at_ms.saturating_add(MAX_AHEAD_MS) {
            tracing::warn!(
                domain,
                known,
                "ignoring a claimed activation from the future"
            );
            0
        } else {
            known
        };
        let record = ActivationRecord {
            generation: last.max(known).saturating_add(1).max(at_ms),
            station: station.to_owned(),
            at_ms,
        };
        self.last
            .insert(domain.as_bytes(), &wire::encode_value(&record))?;
        self.db.flush()?;
        Ok(record)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generations_outgrow_the_last_issued_and_every_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("db")).unwrap();
        let issued = Activations::open(&db, "activations").unwrap();
        assert_eq!(issued.last("d1").unwrap(), None);
        // A time, normally.
        let first = issued.activate("d1", "s1", 1_000, 0).unwrap();
        assert_eq!(first.generation, 1_000);
        // A clock that went back still gives a newer generation.
        let second = issued.activate("d1", "s2", 900, 0).unwrap();
        assert_eq!(second.generation, 1_001);
        // One a candidate holds from another issuer (the parent domain's
        // previous manager) is outgrown too.
        let third = issued.activate("d1", "s1", 1_002, 5_000).unwrap();
        assert_eq!(third.generation, 5_001);
        // Not one from the future, though.
        let far = issued.activate("d9", "s1", 1_000, u64::MAX).unwrap();
        assert_eq!(far.generation, 1_000);
        assert_eq!(issued.last("d1").unwrap(), Some(third));
        // Kept across a reopening.
        drop(issued);
        let reopened = Activations::open(&db, "activations").unwrap();
        assert_eq!(reopened.last("d1").unwrap().unwrap().station, "s1");
        assert_eq!(reopened.last("d2").unwrap(), None);
    }

    fn activation(domain: &str, generation: u64) -> Activation {
        Activation {
            domain: domain.into(),
            generation,
        }
    }

    #[test]
    fn an_older_activation_of_the_same_domain_is_refused_for_good() {
        let db = Database::temporary().unwrap();
        let fence = Fence::open(&db).unwrap();
        fence.accept(Some(&activation("d1", 3))).unwrap();
        fence.accept(Some(&activation("d1", 3))).unwrap();
        fence.accept(Some(&activation("d1", 5))).unwrap();
        let refused = fence.accept(Some(&activation("d1", 4))).unwrap_err();
        assert!(refused.contains("activation 5 took over"), "{refused}");
        // Nor is one from the future remembered (it would fence off every
        // real manager until then).
        let future = fence.accept(Some(&activation("d1", u64::MAX))).unwrap_err();
        assert!(future.contains("in the future"), "{future}");
        fence.accept(Some(&activation("d1", 5))).unwrap();
        // Per domain (a node that moved starts over), and remembered.
        fence.accept(Some(&activation("d2", 1))).unwrap();
        fence.accept(None).unwrap();
        // What a parent says is bounded: a name, and a bounded number of them.
        assert!(fence.accept(Some(&activation("no\nname", 1))).is_err());
        for i in 0..MAX_DOMAINS {
            let _ = fence.accept(Some(&activation(&format!("x{i}"), 1)));
        }
        assert!(fence.accept(Some(&activation("one-too-many", 1))).is_err());
        fence.accept(Some(&activation("d1", 6))).unwrap();
        let reopened = Fence::open(&db).unwrap();
        assert_eq!(reopened.seen("d1"), 6);
        assert!(reopened.accept(Some(&activation("d1", 5))).is_err());
    }
}
