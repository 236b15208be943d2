//! Peers that hold a valid certificate but are not admitted yet: waiting
//! for their hello, or for the enrollment base to say who they are.
//!
//! They are the cheapest to lose and the first place an attacker with a
//! stolen or never-enrolled certificate parks connections, so they are
//! bounded twice: per certificate (more are refused at once) and in all
//! (a newcomer sheds the oldest waiter, so a flood can delay a real node's
//! admission by one retry but never lock it out, and admitted children are
//! never touched).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Why a waiter could not wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} connections of this certificate already wait for admission")]
pub struct TooManyWaiting(pub usize);

pub struct Waiting {
    inner: Mutex<Inner>,
    max: usize,
    per_identity: usize,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Arrival order → the waiter's certificate and how to shed it.
    queue: BTreeMap<u64, (String, oneshot::Sender<()>)>,
    per_identity: HashMap<String, usize>,
}

/// A place among the waiters; leaving it (admitted, refused, gone) frees it.
pub struct Place {
    waiting: Arc<Waiting>,
    id: u64,
    identity: String,
}

impl Waiting {
    pub fn new(max: usize, per_identity: usize) -> Waiting {
        Waiting {
            inner: Mutex::default(),
            max: max.max(1),
            per_identity: per_identity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the waiters as `identity` (a certificate fingerprint). The
    /// receiver fires if a newcomer sheds this place.
    pub fn enter(
        self: &Arc<Self>,
        identity: &str,
    ) -> Result<(Place, oneshot::Receiver<()>), TooManyWaiting> {
        let mut inner = self.lock();
        let count = inner.per_identity.get(identity).copied().unwrap_or(0);
        if count >= self.per_identity {
            return Err(TooManyWaiting(count));
        }
        if inner.queue.len() >= self.max
            && let Some((_, (_, shed))) = inner.queue.pop_first()
        {
            let _ = shed.send(());
        }
        let (shed, shed_rx) = oneshot::channel();
        let id = inner.next;
        inner.next += 1;
        inner.queue.insert(id, (identity.to_owned(), shed));
        *inner.per_identity.entry(identity.to_owned()).or_default() += 1;
        Ok((
            Place {
                waiting: self.clone(),
                id,
                identity: identity.to_owned(),
            },
            shed_rx,
        ))
    }

    /// Waiters now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut inner = self.waiting.lock();
        inner.queue.remove(&self.id);
        if let Some(count) = inner.per_identity.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                inner.per_identity.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_certificate_gets_only_its_share() {
        let w = Arc::new(Waiting::new(100, 2));
        let a = w.enter("a").unwrap();
        let _b = w.enter("a").unwrap();
        assert_eq!(w.enter("a").err(), Some(TooManyWaiting(2)));
        assert!(w.enter("b").is_ok(), "another certificate still gets in");
        drop(a);
        assert!(w.enter("a").is_ok(), "a place left is a place free");
    }

    #[test]
    fn a_newcomer_sheds_the_oldest_waiter() {
        let w = Arc::new(Waiting::new(2, 5));
        let (_first, mut first_shed) = w.enter("x").unwrap();
        let (_second, mut second_shed) = w.enter("y").unwrap();
        let (_third, _) = w.enter("z").unwrap();
        assert!(first_shed.try_recv().is_ok(), "the oldest is told to go");
        assert!(second_shed.try_recv().is_err());
        assert_eq!(w.len(), 2);
    }
}
