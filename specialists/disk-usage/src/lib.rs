//! `disk-usage`: what fills a filesystem.
//!
//! Sizes the directories under `path` (the `disk` capability: allocated
//! blocks, like `du`, on `path`'s filesystem only) and names the one to
//! look at: starting from `path`, it descends into the largest child as
//! long as that child holds at least half of its parent, so a full
//! `/var/log/app/debug` is named rather than `/var`.
//!
//! | arg     | default  | meaning                                             |
//! |---------|----------|-----------------------------------------------------|
//! | `path`  | required | directory to look into (the node's policy allows it) |
//! | `depth` | 3        | levels below `path` to size, 1 to 8                 |
//! | `count` | 10       | largest directories listed, 1 to 100                |
//!
//! Facts: `path` (the directory named), `bytes` (its size), `cause`
//! (`runaway-log` when the directory named is a log directory, with
//! `service`, the name of the service whose logs they are, so a rule can
//! restart it; else `directory`, or `files` when `path` itself holds the
//! bytes), `scanned`,
//! `total_bytes`, `files`, `complete` (false: the node's scan bound was
//! reached and sizes are lower bounds), then `largest.<rank>` lines
//! (`bytes path`).

use agad_sdk::disk::{DirectorySize, DiskError};
use agad_sdk::{Config, Diagnosis};

pub const ARGS: &[&str] = &["path", "depth", "count"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub path: String,
    pub depth: u32,
    pub count: u32,
}

pub fn parse_args(config: &Config) -> Result<Args, String> {
    let path: String = config.require("path")?;
    if !path.starts_with('/') {
        return Err(format!("path: \"{path}\" is not an absolute path"));
    }
    let depth: u32 = config.get_or("depth", 3)?;
    if !(1..=8).contains(&depth) {
        return Err(format!("depth: \"{depth}\" is not between 1 and 8"));
    }
    let count: u32 = config.get_or("count", 10)?;
    if !(1..=100).contains(&count) {
        return Err(format!("count: \"{count}\" is not between 1 and 100"));
    }
    Ok(Args { path, depth, count })
}

/// The directory to name: from the root (depth 0) down through the largest
/// child while it holds at least half of its parent.
pub fn culprit(directories: &[DirectorySize]) -> Option<&DirectorySize> {
    let mut current = directories.iter().find(|d| d.depth == 0)?;
    loop {
        let prefix = format!("{}/", current.path.trim_end_matches('/'));
        let child = directories
            .iter()
            .filter(|d| d.depth == current.depth + 1 && d.path.starts_with(&prefix))
            .max_by(|a, b| a.bytes.cmp(&b.bytes).then(b.path.cmp(&a.path)));
        match child {
            Some(child) if child.bytes.saturating_mul(2) >= current.bytes && child.bytes > 0 => {
                current = child;
            }
            _ => return Some(current),
        }
    }
}

/// The service a log directory belongs to: the component after a `log` or
/// `logs` component (`/var/log/nginx` → `nginx`), else the one before it
/// (`/srv/app/logs` → `app`); `None` for a path that is no log directory.
pub fn log_service(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let at = parts.iter().position(|p| matches!(*p, "log" | "logs"))?;
    let name = match parts.get(at + 1) {
        Some(next) => *next,
        // `/var/log` itself says nothing about a service.
        None if at > 0 && !matches!(parts[at - 1], "var" | "tmp" | "srv" | "opt") => parts[at - 1],
        None => return None,
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    (name.chars().all(ok) && !name.starts_with('.')).then(|| name.to_owned())
}

pub fn diagnose(
    args: &Args,
    directories: &[DirectorySize],
    files: u64,
    complete: bool,
) -> Result<Diagnosis, String> {
    let root = directories
        .iter()
        .find(|d| d.depth == 0)
        .ok_or("the node returned no size for the path itself")?;
    let named = culprit(directories).unwrap_or(root);
    let service = (named.depth > 0)
        .then(|| log_service(&named.path))
        .flatten();
    let cause = match (&service, named.depth) {
        (Some(_), _) => "runaway-log",
        (None, 0) => "files",
        (None, _) => "directory",
    };
    let mut d = Diagnosis::new(format!(
        "{} holds {} MiB of the {} MiB under {}{}",
        named.path,
        named.bytes / (1024 * 1024),
        root.bytes / (1024 * 1024),
        root.path,
        if complete {
            ""
        } else {
            " (scan cut short: sizes are lower bounds)"
        }
    ))
    .fact("path", &named.path)
    .fact("bytes", named.bytes)
    .fact("cause", cause);
    if let Some(service) = &service {
        d = d.fact("service", service);
    }
    d = d
        .fact("scanned", &root.path)
        .fact("total_bytes", root.bytes)
        .fact("files", files)
        .fact("complete", complete);
    for (rank, dir) in directories
        .iter()
        .filter(|d| d.depth > 0)
        .take(args.count as usize)
        .enumerate()
    {
        d = d.fact(
            &format!("largest.{}", rank + 1),
            format!("{} {}", dir.bytes, dir.path),
        );
    }
    Ok(d)
}

pub struct DiskUsage;

impl agad_sdk::Specialist for DiskUsage {
    const ARGS: &'static [&'static str] = ARGS;

    fn run(config: &Config) -> Result<Diagnosis, String> {
        let args = parse_args(config)?;
        // One more than listed: the root comes first in the answer and
        // is not one of the `count` largest below it.
        match agad_sdk::disk::directory_sizes(&args.path, args.depth, (args.count + 1).min(100)) {
            Ok(usage) => diagnose(&args, &usage.directories, usage.files, usage.complete),
            Err(DiskError::NotAllowed(why)) => Err(format!("refused: {why}")),
            Err(DiskError::NotFound(why)) => Err(format!("path: {why}")),
            Err(DiskError::BadRequest(why)) => Err(format!("bad request: {why}")),
            Err(DiskError::Io(why)) => Err(format!("cannot read the tree: {why}")),
        }
    }
}

agad_sdk::specialist!(DiskUsage);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agad_sdk::config::pairs;

    fn args(items: &[(&str, &str)]) -> Result<Args, String> {
        let config = Config::parse_strict(&pairs(items), ARGS).map_err(String::from)?;
        parse_args(&config)
    }

    #[test]
    fn arguments_are_checked() {
        assert!(args(&[]).unwrap_err().contains("path: required"));
        assert!(args(&[("path", "var")]).unwrap_err().contains("absolute"));
        assert!(args(&[("path", "/var"), ("depth", "9")]).is_err());
        assert!(args(&[("path", "/var"), ("count", "x")]).is_err());
        assert_eq!(
            args(&[("path", "/var")]).unwrap(),
            Args {
                path: "/var".into(),
                depth: 3,
                count: 10
            }
        );
    }

    fn dir(path: &str, bytes: u64, depth: u32) -> DirectorySize {
        DirectorySize {
            path: path.into(),
            bytes,
            depth,
        }
    }

    #[test]
    fn a_log_directory_names_its_service() {
        assert_eq!(log_service("/var/log/nginx").as_deref(), Some("nginx"));
        assert_eq!(log_service("/var/log/nginx/old").as_deref(), Some("nginx"));
        assert_eq!(log_service("/srv/app/logs").as_deref(), Some("app"));
        assert_eq!(log_service("/var/log"), None);
        assert_eq!(log_service("/var/lib/mysql"), None);
        assert_eq!(log_service("/var/log/.hidden"), None);
        let dirs = [
            dir("/v", 1000, 0),
            dir("/v/log", 900, 1),
            dir("/v/log/web", 880, 2),
        ];
        let a = args(&[("path", "/v")]).unwrap();
        let d = diagnose(&a, &dirs, 1, true).unwrap();
        assert_eq!(d.get("cause"), Some("runaway-log"));
        assert_eq!(d.get("service"), Some("web"));
    }

    #[test]
    fn the_deepest_directory_holding_most_is_named() {
        let dirs = [
            dir("/v", 1000, 0),
            dir("/v/data", 900, 1),
            dir("/v/lib", 90, 1),
            dir("/v/data/app", 800, 2),
            dir("/v/data/other", 100, 2),
            // Not a child of /v/data even though its name starts so.
            dir("/v/datas", 0, 1),
        ];
        assert_eq!(culprit(&dirs).unwrap().path, "/v/data/app");
        let a = args(&[("path", "/v")]).unwrap();
        let d = diagnose(&a, &dirs, 3, true).unwrap();
        assert_eq!(d.get("path"), Some("/v/data/app"));
        assert_eq!(d.get("cause"), Some("directory"));
        assert_eq!(d.get("largest.1"), Some("900 /v/data"));
        // Spread evenly: the root itself is named.
        let even = [dir("/v", 100, 0), dir("/v/a", 40, 1), dir("/v/b", 40, 1)];
        assert_eq!(culprit(&even).unwrap().path, "/v");
    }
}
