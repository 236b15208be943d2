//! Browser logins: a form posts a name and password once; the answer sets
//! a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS)
//! naming a random 256-bit token this process keeps in memory. Tools use
//! HTTP Basic instead; both end at the same users file.
//!
//! Bounded: at most [`MAX_SESSIONS`] at once (expired ones go first), each
//! for [`LIFETIME`]; a restart of the top manager logs everyone out.

use super::users::Role;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 1024;
/// How long a login lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The cookie's name.
pub const COOKIE: &str = "agad_session";

#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub role: Role,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `name`: its token, or `None` when
    /// [`MAX_SESSIONS`] live ones are held.
    pub fn open(&self, name: &str, role: Role) -> Option<String> {
        let mut all = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_SESSIONS {
            let now = Instant::now();
            all.retain(|_, s| s.expires > now);
            if all.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        all.insert(
            token.clone(),
            Session {
                name: name.to_owned(),
                role,
                expires: Instant::now() + LIFETIME,
            },
        );
        Some(token)
    }

    /// The live session of `token`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let all = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        all.get(token)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn close(&self, token: &str) {
        let mut all = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(token);
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_bounded_and_closable() {
        let sessions = Sessions::default();
        let a = sessions.open("alice", Role::Admin).unwrap();
        let b = sessions.open("alice", Role::Admin).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(sessions.get(&a).unwrap().name, "alice");
        sessions.close(&a);
        assert!(sessions.get(&a).is_none());
        assert!(sessions.get("nosuch").is_none());
        for _ in 1..MAX_SESSIONS {
            sessions.open("bob", Role::ReadOnly).unwrap();
        }
        assert!(sessions.open("bob", Role::ReadOnly).is_none(), "bounded");
        assert_eq!(token(&format!("x=1; {COOKIE}={b}; y=2")), Some(b.as_str()));
        assert_eq!(token("x=1"), None);
    }
}
