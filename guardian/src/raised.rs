//! The integrity alarms a manager raised about its children and has not
//! cleared yet, on disk: a manager restarted while one is raised clears it
//! when that child next proves its code intact, instead of forgetting it
//! (and leaving it raised in BIG for good).

use agad_storage::{Database, StorageError, Tree};

/// Element → the text of its raised alarm.
#[derive(Debug, Clone)]
pub struct Raised {
    tree: Tree,
}

impl Raised {
    /// The record in tree `tree` of `db`.
    pub fn open(db: &Database, tree: &str) -> Result<Raised, StorageError> {
        Ok(Raised {
            tree: db.tree(tree)?,
        })
    }

    /// Every raised alarm: (element, text).
    pub fn all(&self) -> Vec<(String, String)> {
        match self.tree.scan_prefix(b"") {
            Ok(entries) => entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect(),
            Err(e) => {
                tracing::error!("cannot read the raised integrity alarms: {e}");
                Vec::new()
            }
        }
    }

    /// Records that `element`'s alarm is raised with `text`, or cleared
    /// (`None`); on disk before it returns.
    pub fn set(&self, element: &str, text: Option<&str>) {
        let written = match text {
            Some(text) => self.tree.insert(element.as_bytes(), text.as_bytes()),
            None => self.tree.remove(element.as_bytes()),
        }
        .and_then(|()| self.tree.flush());
        if let Err(e) = written {
            tracing::error!(element, "cannot record the integrity alarm: {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn raised_alarms_outlive_a_reopening_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("db")).unwrap();
        let raised = Raised::open(&db, "raised").unwrap();
        raised.set("n1", Some("cpu-mem: proof mismatch"));
        raised.set("n2", Some("disk-space: proof mismatch"));
        raised.set("n2", None);
        let reopened = Raised::open(&db, "raised").unwrap();
        assert_eq!(
            reopened.all(),
            vec![("n1".to_owned(), "cpu-mem: proof mismatch".to_owned())]
        );
    }
}
