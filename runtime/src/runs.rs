//! Specialist runs a domain manager asks a node for: each run id at most
//! once, whoever asks (a restarted manager, its standby), and every result
//! through the durable outbox.
//!
//! A run's id is marked on disk before the specialist starts; a second
//! request with that id is refused, and a run the node was in the middle of
//! when it stopped is reported as failed when it starts again, so every
//! accepted run ends in exactly one result.

use crate::engine::LinkedModule;
use agad_net::outbox::Outbox;
use agad_protocol::message::{Alarm, Provenance};
use agad_protocol::run::{RunOutcome, RunResult};
use agad_protocol::wire::{self, Upward};
use agad_storage::{Database, StorageError, Tree};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Specialists running at once on a node; more wait for a slot.
pub const PARALLEL_RUNS: usize = 2;
/// Runs waiting for a slot; past this a request is refused at once.
pub const QUEUED_RUNS: usize = 32;
/// Run ids remembered; the oldest are forgotten past this (a manager
/// retries a run within minutes, not after thousands of others).
pub const REMEMBERED_RUNS: usize = 10_000;
/// Compiled specialists kept linked in memory, so a warm run starts in
/// milliseconds.
const LINKED_CACHE: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mark {
    specialist: String,
    started_ms: u64,
    finished: bool,
    /// The alarm the run answers, for the result of a run a restart cut.
    alarm: Alarm,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum NotAccepted {
    #[error("run `{0}` was already accepted by this node: a second run is refused")]
    Duplicate(String),
    #[error("{QUEUED_RUNS} runs are already waiting on this node")]
    Busy,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct Runs {
    node: String,
    db: Database,
    /// Run id → [`Mark`].
    marks: Tree,
    outbox: Outbox,
    slots: Arc<Semaphore>,
    /// Accepted runs without a result yet (running or waiting for a slot).
    in_flight: AtomicUsize,
    linked: Mutex<VecDeque<(String, LinkedModule)>>,
}

impl Runs {
    /// Opens the marks and reports every run that was accepted but never
    /// finished (the node stopped during it) as failed.
    pub fn open(node: &str, db: &Database, outbox: Outbox) -> Result<Runs, StorageError> {
        let runs = Runs {
            node: node.to_owned(),
            db: db.clone(),
            marks: db.tree("specialist-runs")?,
            outbox,
            slots: Arc::new(Semaphore::new(PARALLEL_RUNS)),
            in_flight: AtomicUsize::new(0),
            linked: Mutex::default(),
        };
        for (key, value) in runs.marks.scan_prefix(b"")? {
            let Ok(mark) = wire::decode_value::<Mark>(&value) else {
                continue;
            };
            if !mark.finished {
                let id = String::from_utf8_lossy(&key).into_owned();
                tracing::warn!(%id, "a specialist run was interrupted by a restart of the node");
                runs.finish(RunResult {
                    id,
                    node: runs.node.clone(),
                    specialist: mark.specialist,
                    provenance: Provenance::default(),
                    outcome: RunOutcome::Failed {
                        reason: "the node restarted during the run".into(),
                    },
                    started_ms: mark.started_ms,
                    finished_ms: crate::host::clock::now_ms(),
                    alarm: mark.alarm,
                })?;
            }
        }
        Ok(runs)
    }

    /// Accepts run `id` (marked on disk before this returns) and waits for
    /// a slot, or says why not: a run id is accepted once, ever.
    pub async fn accept(
        &self,
        id: &str,
        specialist: &str,
        alarm: &Alarm,
    ) -> Result<OwnedSemaphorePermit, NotAccepted> {
        if self.marks.get(id.as_bytes())?.is_some() {
            return Err(NotAccepted::Duplicate(id.to_owned()));
        }
        if self.in_flight.load(Ordering::Relaxed) >= PARALLEL_RUNS + QUEUED_RUNS {
            return Err(NotAccepted::Busy);
        }
        let mark = Mark {
            specialist: specialist.to_owned(),
            started_ms: crate::host::clock::now_ms(),
            finished: false,
            alarm: alarm.clone(),
        };
        if !self
            .marks
            .insert_new(id.as_bytes(), &wire::encode_value(&mark))?
        {
            return Err(NotAccepted::Duplicate(id.to_owned()));
        }
        self.db.flush()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.forget_oldest()?;
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NotAccepted::Busy)
    }

    /// Queues the result of an accepted run (see [`Runs::finish`]).
    pub fn finished(&self, result: RunResult) -> Result<(), StorageError> {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.finish(result)
    }

    /// Queues `result` for the manager and marks its run finished (in that
    /// order: a crash in between reports it twice, and the manager keeps
    /// the first).
    fn finish(&self, result: RunResult) -> Result<(), StorageError> {
        let id = result.id.clone();
        let mark = Mark {
            specialist: result.specialist.clone(),
            started_ms: result.started_ms,
            finished: true,
            alarm: result.alarm.clone(),
        };
        let seq = self.outbox.push(&Upward::RunResult(Box::new(result)))?;
        self.marks
            .insert(id.as_bytes(), &wire::encode_value(&mark))?;
        self.db.flush()?;
        // Tests count these lines.
        tracing::info!(%id, seq, "specialist result queued");
        Ok(())
    }

    /// A linked specialist of this hash, if one is cached.
    pub fn cached(&self, hash: &str) -> Option<LinkedModule> {
        let cache = self.linked.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .find(|(h, _)| h == hash)
            .map(|(_, m)| m.clone())
    }

    pub fn cache(&self, hash: String, module: LinkedModule) {
        let mut cache = self.linked.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(h, _)| *h != hash);
        if cache.len() >= LINKED_CACHE {
            cache.pop_front();
        }
        cache.push_back((hash, module));
    }

    /// Keeps at most [`REMEMBERED_RUNS`] marks: the oldest finished ones go.
    fn forget_oldest(&self) -> Result<(), StorageError> {
        let excess = self.marks.len().saturating_sub(REMEMBERED_RUNS);
        if excess == 0 {
            return Ok(());
        }
        let mut finished: Vec<(u64, Vec<u8>)> = self
            .marks
            .scan_prefix(b"")?
            .into_iter()
            .filter_map(|(k, v)| {
                let mark = wire::decode_value::<Mark>(&v).ok()?;
                mark.finished.then_some((mark.started_ms, k))
            })
            .collect();
        finished.sort();
        for (_, key) in finished.into_iter().take(excess) {
            self.marks.remove(&key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::message::{RuntimeAlarm, Severity};

    fn alarm(serial: &str) -> Alarm {
        RuntimeAlarm {
            node: "n1",
            module: "cpu-mem",
            serial,
            area: agad_protocol::Area::Performance,
            key: "cpu.total",
            metric: "cpu.total-percent",
            subject: "",
            severity: Severity::Major,
            message: "CPU high",
            time_ms: 1,
        }
        .alarm(true)
    }

    fn result(id: &str) -> RunResult {
        RunResult {
            alarm: alarm(id.split(['/', '#']).nth(2).unwrap()),
            id: id.into(),
            node: "n1".into(),
            specialist: "top-cpu".into(),
            provenance: Provenance::default(),
            outcome: RunOutcome::Diagnosed {
                summary: "s".into(),
                facts: vec![],
            },
            started_ms: 1,
            finished_ms: 2,
        }
    }

    #[tokio::test]
    async fn a_run_id_is_accepted_once_even_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = "n1/cpu-mem/1#web-cpu#diagnose";
        {
            let db = Database::open(dir.path()).unwrap();
            let runs = Runs::open("n1", &db, Outbox::open(&db).unwrap()).unwrap();
            let permit = runs.accept(id, "top-cpu", &alarm("1")).await.unwrap();
            assert!(matches!(
                runs.accept(id, "top-cpu", &alarm("1")).await,
                Err(NotAccepted::Duplicate(_))
            ));
            drop(permit);
            // Stopped before its result: nothing queued yet.
            assert_eq!(Outbox::open(&db).unwrap().len(), 0);
        }
        let db = Database::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db).unwrap();
        let runs = Runs::open("n1", &db, outbox.clone()).unwrap();
        // The interrupted run is reported failed, once.
        assert_eq!(outbox.len(), 1);
        assert!(matches!(
            runs.accept(id, "top-cpu", &alarm("1")).await,
            Err(NotAccepted::Duplicate(_))
        ));
        drop(runs);
        let runs = Runs::open("n1", &db, outbox.clone()).unwrap();
        assert_eq!(outbox.len(), 1, "reported once, not at every start");
        let other = "n1/cpu-mem/2#web-cpu#diagnose";
        let _permit = runs.accept(other, "top-cpu", &alarm("2")).await.unwrap();
        runs.finished(result(other)).unwrap();
        assert_eq!(outbox.len(), 2);
    }
}
