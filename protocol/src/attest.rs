//! Attestation: a parent proves that a child still holds the exact code it
//! was given. The parent sends a fresh random nonce ([`Control::Attest`]);
//! the child answers with, for each module it holds, `SHA-256(nonce ‖
//! bytes)` of the bytes as it reads them from its disk now
//! ([`Control::Attestation`]). The parent computes the same digests from its
//! own copy (BC at a domain manager, BGC at the top manager): a child that
//! kept only the hashes, or an answer recorded earlier, cannot produce them
//! for a nonce it has never seen.
//!
//! The same messages serve both levels: a node attests the modules it runs
//! to its domain manager, a domain manager attests its BC replica to the
//! top manager. This module holds the data, the one comparison both
//! parents make ([`verify`]) and what both keep per child ([`Ledger`]: the
//! nonce outstanding, the last result, whether the alarm is raised);
//! sending, deadlines and what to do about a mismatch belong to the
//! managers.
//!
//! [`Control::Attest`]: crate::wire::Control::Attest
//! [`Control::Attestation`]: crate::wire::Control::Attestation

use crate::status::{Component, ComponentStatus, State};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Most modules one answer may list: far above what a node runs or a domain
/// uses, and it bounds what a parent verifies per answer.
pub const MAX_ATTESTED: usize = 1024;

pub type Nonce = [u8; NONCE_LEN];

/// A fresh random nonce (the OS's generator, through `rand`).
pub fn nonce() -> Nonce {
    rand::random()
}

/// `SHA-256(nonce ‖ bytes)`: what proves that `bytes` are held now.
pub fn proof(nonce: &Nonce, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(bytes);
    h.finalize().into()
}

/// A child's answer to one nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The nonce answered; anything but the one outstanding is refused.
    pub nonce: Nonce,
    /// Every module held, as read from disk when the nonce came.
    pub modules: Vec<AttestedModule>,
    /// Modules the child itself found altered and took out of service
    /// since it was last given their code (their bytes are gone).
    pub quarantined: Vec<Quarantine>,
}

/// One module in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedModule {
    pub name: String,
    /// SHA-256 (hex) of the module as its signed manifest states it.
    pub sha256: String,
    /// [`proof`] of the nonce and the bytes read now.
    pub proof: [u8; 32],
    /// The compiled artefact of this module in the child's cache (a node;
    /// a station compiles nothing and says [`Artefact::Absent`]).
    pub artefact: Artefact,
}

/// What a child found of a module's compiled artefact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Artefact {
    /// None cached (compiled in memory, or not compiled here).
    Absent,
    /// Its SHA-256 equals the one recorded when it was written.
    Intact,
    /// Its SHA-256 differs: it was removed and is never loaded.
    Altered,
}

/// A module a child quarantined, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub name: String,
    pub sha256: String,
    pub reason: String,
}

/// Why an answer was not even looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no attestation was asked of this element")]
    NotAsked,
    #[error("the answer is for another nonce (stale or replayed)")]
    WrongNonce,
    #[error("the answer lists {0} modules (at most {MAX_ATTESTED})")]
    TooMany(usize),
}

/// What a parent concluded from one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Modules whose proof matched the parent's copy.
    pub intact: Vec<String>,
    /// Modules whose proof did not match: the child holds other bytes
    /// under that hash (name, hash).
    pub mismatched: Vec<(String, String)>,
    /// Modules the parent expected and the answer does not list (name, hash).
    pub missing: Vec<(String, String)>,
    /// Modules the child quarantined, or whose artefact it found altered.
    pub quarantined: Vec<(String, String, String)>,
}

impl Verdict {
    /// Nothing held was found altered. A module expected and not held is
    /// not a failure of integrity: a deployment may be on its way, or the
    /// child's policy refused the module (and said so with an alarm).
    pub fn is_clean(&self) -> bool {
        self.mismatched.is_empty() && self.quarantined.is_empty()
    }

    /// Hashes whose good bytes the child must be sent again.
    pub fn to_resend(&self) -> Vec<String> {
        self.mismatched
            .iter()
            .map(|(_, h)| h.clone())
            .chain(self.quarantined.iter().map(|(_, h, _)| h.clone()))
            .collect()
    }

    /// One line for logs and status: what failed, names only.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let names = |v: &mut dyn Iterator<Item = &String>| {
            v.map(String::as_str).collect::<Vec<_>>().join(", ")
        };
        if !self.mismatched.is_empty() {
            parts.push(format!(
                "proof mismatch: {}",
                names(&mut self.mismatched.iter().map(|(n, _)| n))
            ));
        }
        if !self.quarantined.is_empty() {
            parts.push(format!(
                "quarantined: {}",
                names(&mut self.quarantined.iter().map(|(n, _, _)| n))
            ));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "not held: {}",
                names(&mut self.missing.iter().map(|(n, _)| n))
            ));
        }
        if self.is_clean() {
            parts.insert(0, format!("{} modules intact", self.intact.len()));
        }
        parts.join("; ")
    }
}

/// Checks `answer` against the nonce the parent sent (`asked`, `None` if
/// none is outstanding) and its own copies: `expected` lists (name, hash)
/// the child should hold, and `bytes_of(hash)` gives the parent's bytes.
/// A module the child lists but was not expected is ignored (it may keep
/// bundles it no longer runs).
pub fn verify(
    asked: Option<&Nonce>,
    answer: &Attestation,
    expected: &[(String, String)],
    mut bytes_of: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Verdict, Refused> {
    let asked = asked.ok_or(Refused::NotAsked)?;
    // Compared whole; a nonce is no secret once sent, so timing leaks nothing.
    if &answer.nonce != asked {
        return Err(Refused::WrongNonce);
    }
    let listed = answer.modules.len() + answer.quarantined.len();
    if listed > MAX_ATTESTED {
        return Err(Refused::TooMany(listed));
    }
    let mut verdict = Verdict::default();
    for q in &answer.quarantined {
        // Named as the parent knows it: the child's text is only the reason,
        // and that is cut short and made printable (it is logged).
        if let Some((name, hash)) = expected.iter().find(|(_, h)| *h == q.sha256) {
            verdict.quarantined.push((
                name.clone(),
                hash.clone(),
                crate::text::excerpt(&q.reason, 200),
            ));
        }
    }
    for (name, hash) in expected {
        if verdict.quarantined.iter().any(|(_, h, _)| h == hash) {
            continue;
        }
        let Some(held) = answer.modules.iter().find(|m| m.sha256 == *hash) else {
            verdict.missing.push((name.clone(), hash.clone()));
            continue;
        };
        if held.artefact == Artefact::Altered {
            verdict.quarantined.push((
                name.clone(),
                hash.clone(),
                "its compiled artefact was altered".into(),
            ));
            continue;
        }
        match bytes_of(hash) {
            Some(bytes) if proof(asked, &bytes) == held.proof => verdict.intact.push(name.clone()),
            // Without our own copy we cannot judge; it is not the child's fault.
            None => verdict.intact.push(name.clone()),
            Some(_) => verdict.mismatched.push((name.clone(), hash.clone())),
        }
    }
    Ok(verdict)
}

/// What a parent keeps about the attestation of each of its children (by
/// name): at most one nonce outstanding, on one session; the last result
/// and when; and the text of the integrity alarm while it is raised.
#[derive(Debug, Default)]
pub struct Ledger {
    children: Mutex<HashMap<String, Attested>>,
}

#[derive(Debug, Default)]
struct Attested {
    outstanding: Option<Outstanding>,
    /// When (ms since the epoch) and how the last attestation ended: the
    /// modules found intact, or why it failed.
    last: Option<(u64, Result<u64, String>)>,
    /// The alarm is raised, with this text.
    alarm: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    nonce: Nonce,
    session: u64,
    sent: Instant,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Attested>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks `child` (on `session`) for a fresh proof unless its nonce is
    /// outstanding for less than `due`; one overdue on the same session is
    /// recorded as a failure at `now_ms` first (then true: worth a log
    /// line). `send` delivers the nonce; if it cannot, nothing is
    /// outstanding.
    pub fn ask(
        &self,
        child: &str,
        session: u64,
        due: Duration,
        now_ms: u64,
        send: impl FnOnce(Nonce) -> bool,
    ) -> bool {
        let mut children = self.lock();
        let c = children.entry(child.to_owned()).or_default();
        let mut overdue = false;
        if let Some(o) = &c.outstanding
            && o.session == session
        {
            if o.sent.elapsed() < due {
                return false;
            }
            overdue = true;
            c.last = Some((now_ms, Err(format!("no answer within {} s", due.as_secs()))));
        }
        let nonce = nonce();
        c.outstanding = send(nonce).then(|| Outstanding {
            nonce,
            session,
            sent: Instant::now(),
        });
        overdue
    }

    /// `child`'s alarm was raised with `text` before this manager restarted:
    /// its next clean answer clears it.
    pub fn restore_alarm(&self, child: &str, text: String) {
        self.lock().entry(child.to_owned()).or_default().alarm = Some(text);
    }

    /// The nonce outstanding for `child` on `session`, if any.
    pub fn asked(&self, child: &str, session: u64) -> Option<Nonce> {
        self.lock()
            .get(child)
            .and_then(|c| c.outstanding)
            .filter(|o| o.session == session)
            .map(|o| o.nonce)
    }

    /// No nonce outstanding for a child gone (its `session` ended, or, with
    /// `None`, any session): a late answer is refused. Its last result stays.
    pub fn forget_nonce(&self, child: &str, session: Option<u64>) {
        if let Some(c) = self.lock().get_mut(child)
            && c.outstanding
                .is_some_and(|o| session.is_none_or(|s| s == o.session))
        {
            c.outstanding = None;
        }
    }

    /// Only children for which `keep` holds keep a nonce outstanding.
    pub fn retain_nonces(&self, keep: impl Fn(&str) -> bool) {
        for (name, c) in self.lock().iter_mut() {
            if !keep(name) {
                c.outstanding = None;
            }
        }
    }

    /// Spends the nonce outstanding for `child`, recording the refusal of
    /// its answer.
    pub fn refused(&self, child: &str, refused: &Refused, now_ms: u64) {
        if let Some(c) = self.lock().get_mut(child) {
            c.outstanding = None;
            c.last = Some((now_ms, Err(format!("answer refused: {refused}"))));
        }
    }

    /// Records `verdict` on `child`'s answer (its nonce spent). The alarm
    /// is raised by a verdict for which `raises` holds and cleared by a
    /// clean one: returns `(raised, text)` when it changes.
    pub fn judged(
        &self,
        child: &str,
        verdict: &Verdict,
        raises: bool,
        now_ms: u64,
    ) -> Option<(bool, String)> {
        let summary = verdict.describe();
        let mut children = self.lock();
        let c = children.entry(child.to_owned()).or_default();
        c.outstanding = None;
        c.last = Some((
            now_ms,
            if verdict.is_clean() {
                Ok(verdict.intact.len() as u64)
            } else {
                Err(summary.clone())
            },
        ));
        if raises {
            let raise = c.alarm.is_none();
            c.alarm = Some(summary.clone());
            raise.then_some((true, summary))
        } else if verdict.is_clean() {
            c.alarm.take().map(|was| (false, was))
        } else {
            None
        }
    }

    /// The last attestation of `child`, as `agad status` shows it.
    pub fn status(&self, child: &str) -> Option<ComponentStatus> {
        let (at_ms, last) = self.lock().get(child)?.last.clone()?;
        Some(ComponentStatus::new(
            Component::Attestation {
                element: child.to_owned(),
            },
            match last {
                Ok(modules) => State::Attested { at_ms, modules },
                Err(reason) => State::AttestationFailed { at_ms, reason },
            },
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        hex::encode(crate::bundle::sha256(b))
    }

    fn answer(nonce: Nonce, held: &[(&str, &[u8])]) -> Attestation {
        Attestation {
            nonce,
            modules: held
                .iter()
                .map(|(name, bytes)| AttestedModule {
                    name: name.to_string(),
                    sha256: hex(bytes),
                    proof: proof(&nonce, bytes),
                    artefact: Artefact::Intact,
                })
                .collect(),
            quarantined: Vec::new(),
        }
    }

    #[test]
    fn an_answer_for_the_nonce_asked_with_the_right_bytes_is_clean() {
        let good: &[u8] = b"\0asm good";
        let expected = vec![("m".to_owned(), hex(good))];
        let n = nonce();
        let v = verify(Some(&n), &answer(n, &[("m", good)]), &expected, |_| {
            Some(good.to_vec())
        })
        .unwrap();
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.intact, vec!["m".to_owned()]);
    }

    #[test]
    fn a_replayed_or_stale_answer_is_refused() {
        let good: &[u8] = b"\0asm good";
        let expected = vec![("m".to_owned(), hex(good))];
        let old = nonce();
        let recorded = answer(old, &[("m", good)]);
        let fresh = nonce();
        assert_ne!(old, fresh);
        // The answer to an earlier nonce, sent again for the new one.
        assert_eq!(
            verify(Some(&fresh), &recorded, &expected, |_| Some(good.to_vec())),
            Err(Refused::WrongNonce)
        );
        // An answer nobody asked for.
        assert_eq!(
            verify(None, &recorded, &expected, |_| Some(good.to_vec())),
            Err(Refused::NotAsked)
        );
        // A forged answer that copies the fresh nonce but keeps the old
        // proofs proves nothing either.
        let mut forged = recorded.clone();
        forged.nonce = fresh;
        let v = verify(Some(&fresh), &forged, &expected, |_| Some(good.to_vec())).unwrap();
        assert_eq!(v.mismatched, vec![("m".to_owned(), hex(good))]);
    }

    #[test]
    fn altered_bytes_missing_modules_and_quarantines_are_told_apart() {
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"a-bytes", b"b-bytes", b"c-bytes");
        let expected = vec![
            ("a".to_owned(), hex(a)),
            ("b".to_owned(), hex(b)),
            ("c".to_owned(), hex(c)),
        ];
        let n = nonce();
        let mut ans = answer(n, &[("a", a)]);
        // The child holds other bytes under a's hash.
        ans.modules[0].proof = proof(&n, b"tampered");
        ans.quarantined.push(Quarantine {
            name: "b".into(),
            sha256: hex(b),
            reason: "bytes altered on disk".into(),
        });
        let v = verify(Some(&n), &ans, &expected, |h| {
            [a, b, c].iter().find(|x| hex(x) == h).map(|x| x.to_vec())
        })
        .unwrap();
        assert_eq!(v.mismatched, vec![("a".to_owned(), hex(a))]);
        assert_eq!(v.quarantined.len(), 1);
        assert_eq!(v.missing, vec![("c".to_owned(), hex(c))]);
        assert!(!v.is_clean());
        let mut resend = v.to_resend();
        resend.sort();
        let mut altered = vec![hex(a), hex(b)];
        altered.sort();
        assert_eq!(resend, altered);
        assert!(
            v.describe().contains("proof mismatch: a"),
            "{}",
            v.describe()
        );
    }

    #[test]
    fn too_long_an_answer_is_refused() {
        let n = nonce();
        let mut ans = answer(n, &[]);
        ans.quarantined = vec![
            Quarantine {
                name: "x".into(),
                sha256: String::new(),
                reason: String::new(),
            };
            MAX_ATTESTED + 1
        ];
        assert_eq!(
            verify(Some(&n), &ans, &[], |_| None),
            Err(Refused::TooMany(MAX_ATTESTED + 1))
        );
    }

    #[test]
    fn an_alarm_raised_before_a_restart_is_cleared_by_the_next_clean_answer() {
        let ledger = Ledger::default();
        ledger.restore_alarm("n1", "m: proof mismatch".into());
        let bad = Verdict {
            mismatched: vec![("m".into(), "h".into())],
            ..Verdict::default()
        };
        let good = Verdict {
            intact: vec!["m".into()],
            ..Verdict::default()
        };
        assert_eq!(
            ledger.judged("n1", &good, false, 2),
            Some((false, "m: proof mismatch".into()))
        );
        // Restored, then found failing again: not raised a second time.
        ledger.restore_alarm("n2", "m: proof mismatch".into());
        assert_eq!(ledger.judged("n2", &bad, true, 3), None, "already raised");
    }

    #[test]
    fn the_ledger_keeps_one_nonce_per_session_and_raises_and_clears_once() {
        let ledger = Ledger::default();
        let due = Duration::from_secs(60);
        let mut sent = Vec::new();
        assert!(!ledger.ask("n1", 1, due, 1, |n| {
            sent.push(n);
            true
        }));
        // Outstanding and not due: not asked again.
        assert!(!ledger.ask("n1", 1, due, 2, |_| panic!("asked twice")));
        assert_eq!(ledger.asked("n1", 1), Some(sent[0]));
        assert_eq!(ledger.asked("n1", 2), None, "another session's answer");
        assert!(ledger.status("n1").is_none(), "nothing known yet");

        // Overdue on the same session: recorded, and a fresh nonce.
        assert!(ledger.ask("n1", 1, Duration::ZERO, 3, |n| {
            sent.push(n);
            true
        }));
        assert_ne!(sent[0], sent[1]);
        assert!(matches!(
            ledger.status("n1").unwrap().state,
            State::AttestationFailed { at_ms: 3, .. }
        ));

        let bad = Verdict {
            mismatched: vec![("m".into(), "h".into())],
            ..Verdict::default()
        };
        let good = Verdict {
            intact: vec!["m".into()],
            ..Verdict::default()
        };
        let raised = ledger.judged("n1", &bad, true, 4).unwrap();
        assert!(raised.0 && raised.1.contains('m'), "{raised:?}");
        assert_eq!(ledger.asked("n1", 1), None, "the nonce is spent");
        assert_eq!(ledger.judged("n1", &bad, true, 5), None, "raised once");
        assert_eq!(
            ledger.judged("n1", &good, false, 6),
            Some((false, raised.1))
        );
        assert_eq!(ledger.judged("n1", &good, false, 7), None, "cleared once");
        assert!(matches!(
            ledger.status("n1").unwrap().state,
            State::Attested {
                at_ms: 7,
                modules: 1
            }
        ));

        // A refused answer spends the nonce; a child gone keeps its result.
        ledger.ask("n1", 2, due, 8, |_| true);
        ledger.refused("n1", &Refused::WrongNonce, 9);
        assert_eq!(ledger.asked("n1", 2), None);
        ledger.ask("n1", 3, due, 10, |_| true);
        ledger.forget_nonce("n1", Some(2));
        assert!(
            ledger.asked("n1", 3).is_some(),
            "another session's nonce stays"
        );
        ledger.retain_nonces(|_| false);
        assert_eq!(ledger.asked("n1", 3), None);
        assert!(ledger.status("n1").is_some());
        // Not sent: nothing outstanding.
        ledger.ask("n2", 1, due, 11, |_| false);
        assert_eq!(ledger.asked("n2", 1), None);
    }
}
