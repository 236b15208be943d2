//! The top manager's bases in its database: BGC (signed bundles by module
//! name), BTPG (the topology in force, with a version), the enrollment
//! registry, and BIG (every alarm and domain report received, indexed;
//! see [`big`]).
//!
//! BTPG also keeps each node's last move between domains ([`orphans::Move`])
//! and the knowledge-base rule set in force (BCN, [`bcn`]).
//!
//! One version number covers everything replicated: any change to BGC,
//! BTPG (rules included) or enrollment bumps it, and replicas carry it.

pub mod bcn;
pub mod big;
pub mod orphans;

use agad_net::fence::Activations;
use agad_protocol::message::{Alarm, Provenance};
use agad_protocol::topology::Topology;
use agad_protocol::wire::{self, DomainReport, Enrollment, Member, Role};
use agad_protocol::{Bundle, PublicKey};
use agad_storage::{Database, StorageError, Tree};
use big::AlarmIndex;
use orphans::{Move, Orphans};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("{0}")]
    Refused(String),
    /// A query named a domain or node that neither the topology nor the
    /// history knows (a typo, most likely): said, not answered empty.
    #[error("{0}")]
    Unknown(String),
}

type Result<T> = std::result::Result<T, BaseError>;

/// Fewest hex digits of a fingerprint or ticket that name it (when no
/// other one starts the same): four, enough among a deployment's members
/// and short enough to type.
pub const MIN_PREFIX: usize = 4;

#[derive(Clone, Debug)]
pub struct Bases {
    db: Database,
    bgc: Tree,
    btpg: Tree,
    /// node → its last [`Move`].
    moves: Tree,
    members: Tree,
    tickets: Tree,
    /// Each top-level domain's last activation.
    activations: Activations,
    pub big: big::Big,
}

/// The last activation of a top-level domain's manager: which station, as
/// which generation. Generations only grow, also across restarts, so a
/// station and a node can tell a newer manager of a domain from an older.
pub type DomainActivation = agad_net::fence::ActivationRecord;

const TOPOLOGY: &[u8] = b"topology";
const VERSION: &[u8] = b"version";

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    wire::decode_value(bytes).map_err(|e| BaseError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// What `publish` did (`new`, `replaced`, `already-there` in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Published {
    New,
    Replaced { previous_sequence: u64 },
    AlreadyThere,
}

/// Why the top manager refuses a bundle, with what the operator can do.
fn refusal(e: &agad_protocol::bundle::BundleError) -> String {
    use agad_protocol::bundle::BundleError;
    let date = agad_protocol::text::utc_seconds;
    match e {
        BundleError::UntrustedSigner { module, signer } => format!(
            "module `{module}` is signed by key {signer}, which the top manager does not trust; \
             to trust it, restart `agad mor` with `--trust FILE.pub` (the public key \
             `agad module keygen` wrote beside the secret key that signed it; repeat \
             `--trust` for several keys), and give the same file to the domain managers and nodes"
        ),
        BundleError::Expired {
            module,
            expires_at,
            now,
        } => format!(
            "module `{module}`: its signature expired at {} (now {}): sign it again",
            date(*expires_at),
            date(*now)
        ),
        other => other.to_string(),
    }
}

impl Bases {
    pub fn open(db: &Database) -> Result<Bases> {
        Ok(Bases {
            db: db.clone(),
            bgc: db.tree("bgc")?,
            btpg: db.tree("btpg")?,
            moves: db.tree("btpg-moves")?,
            members: db.tree("members")?,
            tickets: db.tree("tickets")?,
            activations: Activations::open(db, "btpg-activations")?,
            big: big::Big::open(db)?,
        })
    }

    pub fn version(&self) -> Result<u64> {
        Ok(self
            .btpg
            .get(VERSION)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn bump(&self) -> Result<u64> {
        let next = self.version()? + 1;
        self.btpg.insert(VERSION, &next.to_be_bytes())?;
        Ok(next)
    }

    // ---- BGC

    /// Verifies a bundle against the trusted keys and keeps it as the
    /// module's current version; a lower sequence than the one held is refused.
    pub fn publish(
        &self,
        bundle: &Bundle,
        trusted: &[PublicKey],
        now_secs: u64,
    ) -> Result<Published> {
        bundle
            .verify(trusted, now_secs)
            .map_err(|e| BaseError::Refused(format!("bundle refused: {}", refusal(&e))))?;
        let name = &bundle.manifest.name;
        let outcome = match self.bundle(name)? {
            Some(old)
                if old.manifest.sha256 == bundle.manifest.sha256
                    && old.manifest == bundle.manifest =>
            {
                return Ok(Published::AlreadyThere);
            }
            Some(old) if old.manifest.sequence >= bundle.manifest.sequence => {
                return Err(BaseError::Refused(format!(
                    "module `{name}` sequence {} is not above the published {} (raise `sequence` in its manifest)",
                    bundle.manifest.sequence, old.manifest.sequence
                )));
            }
            Some(old) => Published::Replaced {
                previous_sequence: old.manifest.sequence,
            },
            None => Published::New,
        };
        self.bgc.insert(name.as_bytes(), &bundle.to_bytes())?;
        self.bump()?;
        self.db.flush()?;
        Ok(outcome)
    }

    pub fn bundle(&self, name: &str) -> Result<Option<Bundle>> {
        self.bgc
            .get(name.as_bytes())?
            .map(|b| {
                Bundle::from_bytes(&b).map_err(|e| BaseError::Corrupt {
                    what: "bundle",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    pub fn bundles(&self) -> Result<Vec<Bundle>> {
        self.bgc
            .scan_prefix(b"")?
            .into_iter()
            .map(|(_, b)| {
                Bundle::from_bytes(&b).map_err(|e| BaseError::Corrupt {
                    what: "bundle",
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    // ---- BTPG

    pub fn topology(&self) -> Result<Topology> {
        Ok(match self.btpg.get(TOPOLOGY)? {
            Some(bytes) => decode("topology", &bytes)?,
            None => Topology::default(),
        })
    }

    /// Replaces the topology in force (one key: all or nothing), records
    /// the nodes it moves to another domain, and closes in BIG every raise
    /// it leaves unable to clear ([`Bases::close_orphans`]).
    pub fn apply_topology(&self, topology: &Topology) -> Result<u64> {
        let old = self.topology()?;
        let now = crate::now_ms();
        for (node, to) in orphans::moves(&old, topology, now) {
            self.moves
                .insert(node.as_bytes(), &wire::encode_value(&to))?;
        }
        for gone in old
            .nodes
            .iter()
            .filter(|n| topology.domain_of(&n.name).is_none())
        {
            self.moves.remove(gone.name.as_bytes())?;
        }
        self.btpg.insert(TOPOLOGY, &wire::encode_value(topology))?;
        let version = self.bump()?;
        self.db.flush()?;
        self.close_orphans(Some(&old), topology, now)?;
        Ok(version)
    }

    /// The last activation of `domain`'s manager.
    pub fn activation(&self, domain: &str) -> Result<Option<DomainActivation>> {
        Ok(self.activations.last(domain)?)
    }

    /// Records that `station` now serves `domain`, as the next generation
    /// (on disk before the station is told; newer than any a candidate
    /// said it holds, `known`, which a domain that was a sub-domain may).
    pub fn activate_domain(
        &self,
        domain: &str,
        station: &str,
        at_ms: u64,
        known: u64,
    ) -> Result<u64> {
        Ok(self
            .activations
            .activate(domain, station, at_ms, known)?
            .generation)
    }

    /// Every node's last move between domains.
    pub fn moves(&self) -> Result<BTreeMap<String, Move>> {
        self.moves
            .scan_prefix(b"")?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("move", &v)?,
                ))
            })
            .collect()
    }

    /// Closes, with a closing event that says why, every raise in BIG
    /// that can never clear under `new` (see [`orphans`]); `old` is the
    /// topology it replaced, if known. Run at each apply and at start (a
    /// stop between an apply and its closings is finished then).
    pub fn close_orphans(
        &self,
        old: Option<&Topology>,
        new: &Topology,
        now_ms: u64,
    ) -> Result<usize> {
        let moves = self.moves()?;
        let orphans = Orphans::new(old, new, &moves);
        let mut active = Vec::new();
        self.big
            .alarms_newest_first(AlarmIndex::Active(None), 0, u64::MAX, |a| {
                active.push(a);
                ControlFlow::Continue(())
            })?;
        let by = Provenance::runtime(env!("CARGO_PKG_VERSION"));
        let mut closed = 0;
        for alarm in active {
            if let Some(reason) = orphans.reason(&alarm) {
                self.big
                    .record_alarm(&alarm.closing(&reason, now_ms, closed, by.clone()))?;
                tracing::debug!(id = %alarm.id, "alarm closed: {reason}");
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::info!(closed, "alarms closed that could no longer clear");
        }
        Ok(closed)
    }

    // ---- enrollment

    pub fn members(&self) -> Result<Vec<Member>> {
        self.members
            .scan_prefix(b"")?
            .into_iter()
            .map(|(_, v)| decode("member", &v))
            .collect()
    }

    pub fn member(&self, name: &str) -> Result<Option<Member>> {
        self.members
            .get(name.as_bytes())?
            .map(|v| decode("member", &v))
            .transpose()
    }

    fn put_member(&self, member: &Member) -> Result<()> {
        self.members
            .insert(member.name.as_bytes(), &wire::encode_value(member))?;
        self.bump()?;
        self.db.flush()?;
        Ok(())
    }

    /// A peer with a CA certificate asks to join. Returns its state and
    /// whether the registry changed.
    pub fn enroll(
        &self,
        name: &str,
        role: Role,
        fingerprint: &str,
        ticket: Option<&str>,
    ) -> Result<(Enrollment, bool)> {
        if let Some(m) = self.member(name)? {
            if m.fingerprint != fingerprint || m.role != role {
                return Err(BaseError::Refused(format!(
                    "`{name}` is enrolled with another certificate or role; remove it before enrolling {fingerprint}"
                )));
            }
            return Ok((m.state, false));
        }
        let by_ticket = match ticket {
            Some(t) => match self.tickets.get(t.as_bytes())? {
                Some(owner) if owner == name.as_bytes() => {
                    self.tickets.remove(t.as_bytes())?;
                    true
                }
                _ => {
                    tracing::warn!(%name, "enrollment ticket refused (unknown, used, or issued for another name)");
                    false
                }
            },
            None => false,
        };
        let state = if by_ticket {
            Enrollment::Inactive
        } else {
            Enrollment::Pending
        };
        self.put_member(&Member {
            name: name.to_owned(),
            role,
            fingerprint: fingerprint.to_owned(),
            state,
        })?;
        Ok((state, true))
    }

    /// The member `who` names: its exact name, else its certificate
    /// fingerprint or a prefix of it (at least [`MIN_PREFIX`] hex digits)
    /// that no other member shares.
    pub fn find_member(&self, who: &str) -> Result<Member> {
        let members = self.members()?;
        if let Some(m) = members.iter().find(|m| m.name == who) {
            return Ok(m.clone());
        }
        let who = who.to_ascii_lowercase();
        if let Some(m) = members.iter().find(|m| m.fingerprint == who) {
            return Ok(m.clone());
        }
        if who.len() < MIN_PREFIX {
            return Err(BaseError::Refused(format!(
                "`{who}` names no member, and a fingerprint prefix needs at least {MIN_PREFIX} hex digits (see `agad enroll list`)"
            )));
        }
        let mut found = members
            .into_iter()
            .filter(|m| m.fingerprint.starts_with(&who));
        match (found.next(), found.next()) {
            (Some(m), None) => Ok(m),
            (None, _) => Err(BaseError::Refused(format!(
                "no member or enrollment request `{who}` (see `agad enroll list`)"
            ))),
            (Some(a), Some(b)) => Err(BaseError::Refused(format!(
                "fingerprint prefix `{who}` is ambiguous ({} and {} at least): give more digits",
                a.name, b.name
            ))),
        }
    }

    /// Operator approval of a pending request, by certificate fingerprint
    /// (or a unique prefix of it); whether anything changed.
    pub fn approve(&self, fingerprint: &str) -> Result<(Member, bool)> {
        let mut m = self.find_member(fingerprint)?;
        if m.state != Enrollment::Pending {
            return Ok((m, false));
        }
        m.state = Enrollment::Inactive;
        self.put_member(&m)?;
        Ok((m, true))
    }

    /// Lets an approved identity work; whether anything changed.
    pub fn activate(&self, name: &str) -> Result<(Member, bool)> {
        let mut m = self.member(name)?.ok_or_else(|| {
            BaseError::Refused(format!(
                "`{name}` has not asked to enroll (see `agad enroll list`)"
            ))
        })?;
        match m.state {
            Enrollment::Pending => Err(BaseError::Refused(format!(
                "`{name}` is not approved yet: `agad enroll approve {}` first",
                m.fingerprint
            ))),
            Enrollment::Active => Ok((m, false)),
            Enrollment::Inactive => {
                m.state = Enrollment::Active;
                self.put_member(&m)?;
                Ok((m, true))
            }
        }
    }

    /// Forgets a member or a request (a stale one, or a name whose
    /// certificate was re-issued): by name, or by fingerprint or a unique
    /// prefix of it. Its next connection is a new request.
    pub fn remove_member(&self, who: &str) -> Result<Member> {
        let m = self.find_member(who)?;
        self.members.remove(m.name.as_bytes())?;
        self.bump()?;
        self.db.flush()?;
        Ok(m)
    }

    /// A one-time ticket that approves `name` when it first connects.
    pub fn ticket(&self, name: &str) -> Result<String> {
        let mut bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        let ticket = hex::encode(bytes);
        self.tickets.insert(ticket.as_bytes(), name.as_bytes())?;
        self.db.flush()?;
        Ok(ticket)
    }

    /// Tickets not used yet, as (name, ticket), by name.
    pub fn tickets(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = self
            .tickets
            .scan_prefix(b"")?
            .into_iter()
            .map(|(t, n)| {
                (
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&t).into_owned(),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Cancels unused tickets: every one issued for the name `who`, or
    /// the one `who` starts (at least [`MIN_PREFIX`] hex digits, unique).
    /// Returns the cancelled ones as (name, ticket).
    pub fn revoke(&self, who: &str) -> Result<Vec<(String, String)>> {
        let tickets = self.tickets()?;
        let mut gone: Vec<(String, String)> =
            tickets.iter().filter(|(n, _)| n == who).cloned().collect();
        if gone.is_empty() && who.len() >= MIN_PREFIX {
            gone = tickets
                .iter()
                .filter(|(_, t)| t.starts_with(&who.to_ascii_lowercase()))
                .cloned()
                .collect();
            if gone.len() > 1 {
                return Err(BaseError::Refused(format!(
                    "ticket prefix `{who}` is ambiguous: give more digits, or the name to cancel all of its tickets"
                )));
            }
        }
        if gone.is_empty() {
            return Err(BaseError::Refused(format!(
                "no unused ticket for `{who}` (see `agad enroll tickets`)"
            )));
        }
        for (_, t) in &gone {
            self.tickets.remove(t.as_bytes())?;
        }
        self.db.flush()?;
        Ok(gone)
    }

    // ---- BIG

    /// Stores a knowledge-base case if newer than the one held.
    pub fn record_case(&self, case: &agad_protocol::run::Case) -> Result<bool> {
        self.big.record_case(case)
    }

    /// Stores an alarm once per id, durably; false if already there.
    pub fn record_alarm(&self, alarm: &Alarm) -> Result<bool> {
        self.big.record_alarm(alarm)
    }

    /// Stores a domain report once per id, durably; false if already there.
    pub fn record_report(&self, report: &DomainReport) -> Result<bool> {
        self.big.record_report(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_protocol::{ManifestSpec, SecretKey};

    fn bases() -> Bases {
        Bases::open(&Database::temporary().unwrap()).unwrap()
    }

    fn bundle(key: &SecretKey, sequence: u64, wasm: &[u8]) -> Bundle {
        let spec = ManifestSpec::from_toml(&format!(
            "name = \"m\"\nversion = \"0.1.0\"\nsequence = {sequence}\nkind = \"inspector\"\narea = \"fault\"\ncapabilities = []\n"
        ))
        .unwrap();
        Bundle::sign(spec, wasm.to_vec(), key, crate::now_secs())
    }

    #[test]
    fn bgc_takes_only_trusted_bundles_and_never_rolls_back() {
        let b = bases();
        let key = SecretKey::generate();
        let trusted = [key.public()];
        let stranger = SecretKey::generate();
        let now = crate::now_secs();
        assert!(matches!(
            b.publish(&bundle(&stranger, 1, b"x"), &trusted, now),
            Err(BaseError::Refused(_))
        ));
        assert_eq!(
            b.publish(&bundle(&key, 2, b"v2"), &trusted, now).unwrap(),
            Published::New
        );
        let v = b.version().unwrap();
        let err = b
            .publish(&bundle(&key, 1, b"v1"), &trusted, now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sequence 1 is not above the published 2"),
            "{err}"
        );
        let again = b.bundle("m").unwrap().unwrap();
        assert_eq!(
            b.publish(&again, &trusted, now).unwrap(),
            Published::AlreadyThere
        );
        assert_eq!(
            b.version().unwrap(),
            v,
            "refusals and repeats change nothing"
        );
        assert_eq!(
            b.publish(&bundle(&key, 3, b"v3"), &trusted, now).unwrap(),
            Published::Replaced {
                previous_sequence: 2
            }
        );
        assert_eq!(b.bundle("m").unwrap().unwrap().wasm, b"v3");
    }

    #[test]
    fn enrollment_goes_pending_approved_active() {
        let b = bases();
        assert_eq!(
            b.enroll("n1", Role::Node, "ab12cd34ef", None).unwrap(),
            (Enrollment::Pending, true)
        );
        let err = b.activate("n1").unwrap_err().to_string();
        assert!(err.contains("agad enroll approve ab12cd34ef"), "{err}");
        assert_eq!(
            b.enroll("n2", Role::Node, "ab13ffff", None).unwrap(),
            (Enrollment::Pending, true)
        );
        let err = b.approve("ab1").unwrap_err().to_string();
        assert!(err.contains("at least 4 hex digits"), "{err}");
        assert!(b.approve("ab1c").is_err(), "no such prefix");
        assert!(
            b.approve("ab12").is_ok() && b.approve("AB12").is_ok(),
            "a unique 4-digit prefix approves, in either case"
        );
        let (m, changed) = b.approve("ab12cd34").unwrap();
        assert_eq!(
            (m.state, changed),
            (Enrollment::Inactive, false),
            "approving twice changes nothing"
        );
        b.enroll("n3", Role::Node, "ab12cd99", None).unwrap();
        let err = b.approve("ab12").unwrap_err().to_string();
        assert!(err.contains("ambiguous"), "{err}");
        assert_eq!(
            b.activate("n1").unwrap(),
            (b.member("n1").unwrap().unwrap(), true)
        );
        assert_eq!(b.activate("n1").unwrap().0.state, Enrollment::Active);
        assert!(
            !b.activate("n1").unwrap().1,
            "activating twice changes nothing"
        );
        // A stale request goes, by name or fingerprint; its next
        // connection asks again.
        assert_eq!(b.remove_member("ab13").unwrap().name, "n2");
        assert_eq!(b.remove_member("n3").unwrap().name, "n3");
        assert!(b.remove_member("n3").is_err());
        assert_eq!(
            b.enroll("n2", Role::Node, "ab13ffff", None).unwrap(),
            (Enrollment::Pending, true)
        );
        assert_eq!(
            b.enroll("n1", Role::Node, "ab12cd34ef", None).unwrap(),
            (Enrollment::Active, false)
        );
        assert!(
            b.enroll("n1", Role::Node, "ffff", None).is_err(),
            "another certificate under the same name"
        );
        assert!(b.activate("ghost").is_err());
    }

    #[test]
    fn a_ticket_approves_once_and_only_its_own_name() {
        let b = bases();
        let t = b.ticket("n2").unwrap();
        assert_eq!(
            b.enroll("other", Role::Node, "01", Some(&t)).unwrap().0,
            Enrollment::Pending
        );
        assert_eq!(
            b.enroll("n2", Role::Node, "02", Some(&t)).unwrap().0,
            Enrollment::Inactive
        );
        let t2 = b.ticket("n3").unwrap();
        b.enroll("n3", Role::Node, "03", Some(&t2)).unwrap();
        b.members.remove(b"n3").unwrap();
        assert_eq!(
            b.enroll("n3", Role::Node, "03", Some(&t2)).unwrap().0,
            Enrollment::Pending,
            "used up"
        );
    }

    #[test]
    fn unused_tickets_are_listed_and_revoked_by_name_or_prefix() {
        let b = bases();
        let a = b.ticket("n1").unwrap();
        let c = b.ticket("n2").unwrap();
        let d = b.ticket("n2").unwrap();
        let listed = b.tickets().unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.contains(&("n1".into(), a.clone())));
        b.enroll("n1", Role::Node, "01", Some(&a)).unwrap();
        assert_eq!(b.tickets().unwrap().len(), 2, "a used ticket is gone");
        assert!(b.revoke("n1").is_err(), "nothing left for n1");
        assert_eq!(b.revoke(&c[..8]).unwrap(), [("n2".to_owned(), c.clone())]);
        assert!(b.revoke(&c[..8]).is_err());
        assert_eq!(b.revoke("n2").unwrap(), [("n2".to_owned(), d.clone())]);
        assert!(b.tickets().unwrap().is_empty());
        assert_eq!(
            b.enroll("n2", Role::Node, "02", Some(&d)).unwrap().0,
            Enrollment::Pending,
            "a revoked ticket approves nothing"
        );
    }
}
