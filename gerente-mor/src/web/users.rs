//! The people who may use the top manager's web port: a TOML file of users
//! with Argon2id password hashes (PHC strings, never the passwords) and a
//! role each. `agad web user add` writes it.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! role = "admin"          # or "read-only"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! ```

use agad_protocol::source::{Source, SourceError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read everything.
    ReadOnly,
    /// Read and change (acknowledge, apply, publish).
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<User>,
}

/// The users of a file, and the passwords lately checked.
pub struct Users {
    users: Vec<User>,
    /// (name, SHA-256 of the password) → when it was last found right:
    /// Argon2 costs tens of milliseconds by design, which a page or a
    /// Prometheus scrape should not pay at every request.
    recent: Mutex<HashMap<(String, [u8; 32]), Instant>>,
}

/// How long a checked password is taken without Argon2 again.
const RECENT: Duration = Duration::from_secs(300);
/// Most passwords remembered as checked.
const MAX_RECENT: usize = 1024;

impl Users {
    /// Reads `path`: every error as `file:line:column: reason`.
    pub fn load(path: &Path) -> Result<Users, SourceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SourceError {
            file: file.clone(),
            line: 1,
            column: 1,
            reason: format!("cannot read: {e} (add a user with `agad web user add`)"),
        })?;
        Users::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Users, SourceError> {
        let source = Source::new(file, text);
        let parsed: File = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        for (i, u) in parsed.user.iter().enumerate() {
            if PasswordHash::new(&u.password_hash).is_err() {
                return Err(SourceError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    reason: format!("user `{}`: password_hash is not a PHC string", u.name),
                });
            }
            if parsed.user[..i].iter().any(|o| o.name == u.name) {
                return Err(SourceError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    reason: format!("a second user `{}`", u.name),
                });
            }
        }
        Ok(Users {
            users: parsed.user,
            recent: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user `name` if `password` is theirs. Blocking (Argon2).
    pub fn check(&self, name: &str, password: &str) -> Option<&User> {
        use sha2::Digest;
        let user = self.users.iter().find(|u| u.name == name)?;
        let key = (
            name.to_owned(),
            sha2::Sha256::digest(password.as_bytes()).into(),
        );
        {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.get(&key).is_some_and(|at| at.elapsed() < RECENT) {
                return Some(user);
            }
        }
        let hash = PasswordHash::new(&user.password_hash).ok()?;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= MAX_RECENT {
            recent.retain(|_, at| at.elapsed() < RECENT);
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
        }
        recent.insert(key, Instant::now());
        Some(user)
    }
}

/// The PHC string of `password` (Argon2id, a fresh salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Adds `name` to the file at `path` (created if missing), or replaces its
/// role and password; whether it was already there.
pub fn add_user(path: &Path, name: &str, role: Role, password: &str) -> anyhow::Result<bool> {
    if !agad_protocol::text::is_name(name) {
        anyhow::bail!("user name `{name}`: expected letters, digits, `-`, `_` or `.`");
    }
    if password.chars().count() < 8 {
        anyhow::bail!("a password of at least 8 characters");
    }
    let mut file: File = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                Source::new(&path.display().to_string(), &text).toml_error(&e)
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let user = User {
        name: name.to_owned(),
        role,
        password_hash: hash_password(password).map_err(anyhow::Error::msg)?,
    };
    let existed = file.user.iter().any(|u| u.name == name);
    file.user.retain(|u| u.name != name);
    file.user.push(user);
    let text = toml::to_string(&file)?;
    // Written aside and renamed: a crash leaves the old file or the new.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(existed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_and_checked_by_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(!add_user(&path, "alice", Role::Admin, "correct horse").unwrap());
        assert!(!add_user(&path, "bob", Role::ReadOnly, "battery staple").unwrap());
        assert!(add_user(&path, "bob", Role::ReadOnly, "new password").unwrap());
        assert!(add_user(&path, "eve", Role::Admin, "short").is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse") && text.contains("$argon2id$"));
        let users = Users::load(&path).unwrap();
        assert_eq!(
            users.check("alice", "correct horse").unwrap().role,
            Role::Admin
        );
        // Twice: the second from the recent checks.
        assert!(users.check("alice", "correct horse").is_some());
        assert!(users.check("alice", "wrong").is_none());
        assert!(users.check("bob", "battery staple").is_none(), "replaced");
        assert_eq!(
            users.check("bob", "new password").unwrap().role,
            Role::ReadOnly
        );
        assert!(users.check("mallory", "correct horse").is_none());
    }

    #[test]
    fn a_bad_file_says_where() {
        let err = Users::parse(
            "u.toml",
            "[[user]]\nname = \"a\"\nrole = \"root\"\npassword_hash = \"x\"\n",
        )
        .err()
        .unwrap();
        assert_eq!((err.file.as_str(), err.line), ("u.toml", 3), "{err}");
        let err = Users::parse(
            "u.toml",
            "[[user]]\nname = \"a\"\nrole = \"admin\"\npassword_hash = \"x\"\n",
        )
        .err()
        .unwrap();
        assert!(err.reason.contains("PHC"), "{err}");
    }
}
