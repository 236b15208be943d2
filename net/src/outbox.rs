//! The durable outbox: every alarm and report a process sends upward waits
//! here until its receiver acknowledges it, across restarts and partitions.
//!
//! Alarms and reports live in two trees sharing one sequence space, so a
//! sender can always drain alarms first (they jump the queue) while each
//! class keeps its own order. An entry is on disk before `push` returns.

use agad_protocol::wire::{self, Upward};
use agad_storage::{Database, StorageError, Tree};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Alarm,
    Report,
}

impl Class {
    pub fn of(body: &Upward) -> Class {
        match body {
            // Urgent like alarms: a diagnosis is what the operator waits for.
            Upward::Alarm(_) | Upward::RunResult(_) | Upward::Case(_) => Class::Alarm,
            Upward::NodeReport(_) | Upward::DomainReport(_) => Class::Report,
        }
    }
}

#[derive(Clone)]
pub struct Outbox {
    db: Database,
    alarms: Tree,
    reports: Tree,
    /// Wakes the sender when something new is queued.
    queued: Arc<Notify>,
    /// Held from numbering an entry until it is in its tree: the sender
    /// reads entries *after* the last one it sent, so an entry must never
    /// become visible after one numbered later (it would be skipped until
    /// the next reconnection).
    numbering: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("alarms", &self.alarms.len())
            .field("reports", &self.reports.len())
            .finish()
    }
}

/// One queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub class: Class,
    pub body: Upward,
}

impl Outbox {
    pub fn open(db: &Database) -> Result<Outbox, StorageError> {
        Ok(Outbox {
            db: db.clone(),
            alarms: db.tree("outbox-alarms")?,
            reports: db.tree("outbox-reports")?,
            queued: Arc::new(Notify::new()),
            numbering: Arc::default(),
        })
    }

    fn tree(&self, class: Class) -> &Tree {
        match class {
            Class::Alarm => &self.alarms,
            Class::Report => &self.reports,
        }
    }

    /// Queues `body` durably and returns its sequence number.
    pub fn push(&self, body: &Upward) -> Result<u64, StorageError> {
        let value = wire::encode_value(body);
        let tree = self.tree(Class::of(body));
        let seq = {
            let _order = self.numbering.lock().unwrap_or_else(|p| p.into_inner());
            // Never 0: senders ask for entries *after* the last one sent, starting at 0.
            let seq = self.db.next_id()? + 1;
            tree.insert(&seq.to_be_bytes(), &value)?;
            seq
        };
        // On disk before the caller acknowledges what it pushed (outside
        // the lock: concurrent pushers share their fsyncs).
        tree.flush()?;
        self.queued.notify_one();
        Ok(seq)
    }

    /// Entries of `class` after sequence `after`, oldest first.
    pub fn after(
        &self,
        class: Class,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        for (key, value) in self
            .tree(class)
            .entries_after(&after.to_be_bytes(), limit)?
        {
            let Ok(seq) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
                continue;
            };
            match wire::decode_value(&value) {
                Ok(body) => out.push(Entry { seq, class, body }),
                // Written by this process's own encoder; a failure means a
                // version change or disk damage. Skip it rather than block
                // everything queued behind it forever.
                Err(e) => {
                    tracing::error!(seq, "dropping unreadable outbox entry: {e}");
                    self.tree(class).remove(&key)?;
                }
            }
        }
        Ok(out)
    }

    /// Forgets acknowledged entries (unknown numbers are ignored: an ack may
    /// arrive twice after a reconnection).
    pub fn ack(&self, seqs: &[u64]) -> Result<(), StorageError> {
        for seq in seqs {
            let key = seq.to_be_bytes();
            self.alarms.remove(&key)?;
            self.reports.remove(&key)?;
        }
        Ok(())
    }

    /// Messages waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.alarms.len() + self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something is pushed after the last wake-up.
    pub async fn wait_queued(&self) {
        self.queued.notified().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::Area;
    use agad_protocol::message::Report;

    fn report(n: u64) -> Upward {
        Upward::NodeReport(Report {
            node: "n".into(),
            module: "m".into(),
            provenance: Default::default(),
            area: Area::Performance,
            summaries: vec![],
            time_ms: n,
        })
    }

    fn alarm(n: u64) -> Upward {
        Upward::Alarm(agad_protocol::message::Alarm {
            id: format!("n/m/{n}"),
            node: "n".into(),
            module: "m".into(),
            provenance: Default::default(),
            area: Area::Fault,
            key: "k".into(),
            metric: "x".into(),
            subject: String::new(),
            severity: agad_protocol::message::Severity::Major,
            raised: true,
            value: 1.0,
            threshold: 0.0,
            comparison: agad_protocol::message::Comparison::Above,
            message: String::new(),
            time_ms: n,
        })
    }

    /// A sender reads "entries after the last one sent" while several
    /// threads push (a domain manager's sessions and its guardian): every
    /// entry must be read, none skipped because a later number landed first.
    #[test]
    fn a_sender_misses_nothing_pushed_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db).unwrap();
        const THREADS: u64 = 8;
        const EACH: u64 = 300;
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        outbox.push(&alarm(t * EACH + i)).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut last = 0;
        let mut done = false;
        while !done {
            done = pushers.iter().all(|p| p.is_finished());
            for e in outbox.after(Class::Alarm, last, 64).unwrap() {
                last = e.seq;
                let Upward::Alarm(a) = e.body else { panic!() };
                seen.insert(a.time_ms);
            }
        }
        // Drained once more after every pusher finished.
        for e in outbox.after(Class::Alarm, last, usize::MAX).unwrap() {
            let Upward::Alarm(a) = e.body else { panic!() };
            seen.insert(a.time_ms);
        }
        assert_eq!(
            seen.len() as u64,
            THREADS * EACH,
            "entries skipped by the sender"
        );
    }

    #[test]
    fn entries_survive_reopening_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let db = Database::open(dir.path()).unwrap();
            let outbox = Outbox::open(&db).unwrap();
            a = outbox.push(&report(1)).unwrap();
            assert_ne!(a, 0, "senders resume after 0, so 0 would never be sent");
            b = outbox.push(&report(2)).unwrap();
            outbox.push(&alarm(3)).unwrap();
            outbox.ack(&[a]).unwrap();
        }
        let db = Database::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db).unwrap();
        let reports = outbox.after(Class::Report, 0, 10).unwrap();
        assert_eq!(reports.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![b]);
        assert_eq!(reports[0].body, report(2));
        let alarms = outbox.after(Class::Alarm, 0, 10).unwrap();
        assert_eq!(alarms.len(), 1);
        assert!(alarms[0].seq > b, "one sequence space across classes");
        assert_eq!(outbox.len(), 2);
    }
}
