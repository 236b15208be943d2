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
//! top manager. This module holds the data and the one comparison both
//! parents make ([`verify`]); sending, deadlines and what to do about a
//! mismatch belong to the managers.
//!
//! [`Control::Attest`]: crate::wire::Control::Attest
//! [`Control::Attestation`]: crate::wire::Control::Attestation

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}
