//! Fencing on the child's side: an element remembers, per domain, the
//! highest activation generation of a domain manager it accepted as its
//! parent, and refuses a manager with an older one. A manager that comes
//! back after its domain failed over to a standby (a restart, a healed
//! partition) therefore finds no child to serve beside the new one, even
//! before the top manager tells it to step down.
//!
//! The generation is on disk before the element sends its first frame to
//! the new parent: a node that restarts keeps refusing the old manager.

use agad_protocol::wire::Activation;
use agad_storage::{Database, StorageError, Tree};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
