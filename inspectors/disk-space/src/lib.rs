//! `disk-space`: the performance inspector for used space per filesystem
//! (the "CheckDisc" hardware service).
//!
//! Every tick it lists the node's filesystems, raises an alarm for each one
//! whose used share stays above `used_percent` for `raise_after` ticks and
//! clears it after `clear_after` ticks below (or when the filesystem is
//! unmounted). Once per report window it sends the highest used share across
//! the watched filesystems, and per-mount series only when asked for
//! (`per_mount`, or implicitly when `mounts` names the filesystems to watch).
//!
//! Which filesystems: those `mounts` names, whatever their type (tmpfs and
//! network filesystems included), or else the node's default set (the `os`
//! capability's `filesystems`, documented in `wit/os.wit`): every local
//! filesystem with space of its own, block-backed or tmpfs (`/`, `/home`,
//! `/boot`, `/tmp`, `/run`, `/run/user/*`, `/dev/shm`, ...), once each; not
//! pseudo filesystems (proc, sysfs, cgroup, devpts, devtmpfs), read-only
//! images (squashfs snaps, ISO images) and read-only tmpfs, network and FUSE
//! filesystems (their size query hangs while the server is away: name them
//! in `mounts` to watch them), nor container runtimes' mounts.
//!
//! Layout: [`Settings`], [`Fs`] (one filesystem reading), [`DiskSpace`] (the
//! pure decision logic), then the WIT glue.
//!
//! | config key     | default | meaning                                              |
//! |----------------|---------|------------------------------------------------------|
//! | `used_percent` | 90      | alarm threshold, % of the space usable by users      |
//! | `mounts`       | default set | comma list of mount points to watch (any type)   |
//! | `per_mount`    | false   | one summary per filesystem (true when `mounts` set)  |
//! | `raise_after`, `clear_after`, `window_secs` | 3, 3, 60 | see `agad_sdk::Common` |

use agad_sdk::config::COMMON_KEYS;
use agad_sdk::{Alarm, Alarms, Check, Common, Comparison, Config, ConfigError, Output, Window};
use std::collections::BTreeMap;

pub const CONFIG_KEYS: &[&str] = &["used_percent", "mounts", "per_mount"];

pub const METRIC_USED: &str = "fs.used-percent";
/// Alarm keys are `fs.used:<mount point>`.
pub const KEY_PREFIX: &str = "fs.used:";

/// Filesystem types that are read-only images and always report 100 % used.
const IMAGE_FS_TYPES: &[&str] = &["squashfs", "iso9660", "udf", "cramfs", "erofs"];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Alarm threshold, percent of the space usable by unprivileged users.
    pub used_percent: f64,
    /// Mount points to watch; empty watches every real filesystem.
    pub mounts: Vec<String>,
    /// Whether each filesystem gets its own summary series.
    pub per_mount: bool,
    pub common: Common,
}

impl Settings {
    pub fn from_config(pairs: &[(String, String)]) -> Result<Settings, ConfigError> {
        let known: Vec<&str> = CONFIG_KEYS.iter().chain(COMMON_KEYS).copied().collect();
        let config = Config::parse(pairs, &known)?;
        let mounts: Vec<String> = config
            .list("mounts")
            .iter()
            .map(|m| normalize_mount(m))
            .collect();
        if let Some(relative) = mounts.iter().find(|m| !m.starts_with('/')) {
            return Err(ConfigError::invalid(
                "mounts",
                relative,
                "is not an absolute path",
            ));
        }
        Ok(Settings {
            used_percent: config.number_in("used_percent", 90.0, 0.0, 100.0)?,
            per_mount: config.get_or("per_mount", !mounts.is_empty())?,
            mounts,
            common: config.common()?,
        })
    }
}

/// `/var/` and `/var` are the same mount point; `/` stays `/`.
fn normalize_mount(mount: &str) -> String {
    let trimmed = mount.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// One filesystem as the `os` capability reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fs {
    pub mount_point: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

impl Fs {
    /// Used share as `df` shows it: of the space users can have, so the
    /// blocks reserved for root do not hide a full disk.
    pub fn used_percent(&self) -> Option<f64> {
        let usable = self.used_bytes.saturating_add(self.free_bytes);
        if usable > 0 {
            Some(self.used_bytes as f64 * 100.0 / usable as f64)
        } else if self.total_bytes > 0 {
            Some(self.used_bytes as f64 * 100.0 / self.total_bytes as f64)
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub struct DiskSpace {
    settings: Settings,
    pub alarms: Alarms,
    window: Window,
}

impl DiskSpace {
    pub fn new(settings: Settings) -> DiskSpace {
        DiskSpace {
            alarms: Alarms::new(settings.common.raise_after, settings.common.clear_after),
            window: Window::new(settings.common.window_secs),
            settings,
        }
    }

    /// The mount points to ask the host for; empty asks for its default set.
    pub fn mounts(&self) -> &[String] {
        &self.settings.mounts
    }

    /// The filesystems this inspector watches among `all`, by mount point.
    pub fn watched<'a>(&self, all: &'a [Fs]) -> BTreeMap<String, &'a Fs> {
        let mut watched = BTreeMap::new();
        for fs in all {
            let mount = normalize_mount(&fs.mount_point);
            let named = self.settings.mounts.contains(&mount);
            let wanted = if self.settings.mounts.is_empty() {
                fs.total_bytes > 0 && !IMAGE_FS_TYPES.contains(&fs.fs_type.as_str())
            } else {
                named && fs.total_bytes > 0
            };
            if wanted {
                // A mount point mounted over keeps the last (visible) one.
                watched.insert(mount, fs);
            }
        }
        watched
    }

    /// Configured mount points that are not mounted (for the log).
    pub fn missing_mounts(&self, all: &[Fs]) -> Vec<String> {
        let watched = self.watched(all);
        self.settings
            .mounts
            .iter()
            .filter(|m| !watched.contains_key(*m))
            .cloned()
            .collect()
    }

    pub fn tick(&mut self, now_ms: u64, filesystems: &[Fs]) -> Output {
        let mut out = Output::default();
        let watched = self.watched(filesystems);
        let mut highest: Option<f64> = None;
        for (mount, fs) in &watched {
            let Some(used) = fs.used_percent() else {
                continue;
            };
            let check = Check::new(format!("{KEY_PREFIX}{mount}"), METRIC_USED)
                .subject(mount.clone())
                .threshold(Comparison::Above, self.settings.used_percent)
                .unit("%");
            out.alarms.extend(self.alarms.check(&check, used));
            if self.settings.per_mount {
                self.window.record(now_ms, METRIC_USED, mount, "%", used);
            }
            highest = Some(highest.map_or(used, |h| h.max(used)));
        }
        if let Some(highest) = highest {
            self.window.record(now_ms, METRIC_USED, "", "%", highest);
        }
        let gone: Vec<Alarm> = self.alarms.retain_subjects(
            |_, subject| watched.contains_key(subject),
            "no longer mounted or watched",
        );
        out.alarms.extend(gone);
        out.summaries = self.window.take_due(now_ms);
        out
    }
}

/// The WIT glue: host reads in, [`DiskSpace::tick`] out.
mod guest {
    use super::{DiskSpace, Fs, Settings};
    use agad_sdk::types::Output;
    use agad_sdk::{Alarms, Inspector, inspector, log, os};

    struct Module {
        inspector: DiskSpace,
        /// Logged once per change, not every tick.
        missing_logged: Vec<String>,
    }

    impl Inspector for Module {
        fn configure(config: &[(String, String)]) -> Result<Self, String> {
            let settings = Settings::from_config(config)?;
            log::log(
                log::Level::Info,
                &format!("disk-space configured: {settings:?}"),
            );
            Ok(Module {
                inspector: DiskSpace::new(settings),
                missing_logged: Vec::new(),
            })
        }

        fn poll(&mut self, now_ms: u64) -> Output {
            let filesystems: Vec<Fs> = os::filesystems(self.inspector.mounts())
                .into_iter()
                .map(|fs| Fs {
                    mount_point: fs.mount_point,
                    fs_type: fs.fs_type,
                    total_bytes: fs.total_bytes,
                    used_bytes: fs.used_bytes,
                    free_bytes: fs.free_bytes,
                })
                .collect();
            let missing = self.inspector.missing_mounts(&filesystems);
            if missing != self.missing_logged {
                if !missing.is_empty() {
                    log::log(
                        log::Level::Warn,
                        &format!("configured mounts not mounted: {}", missing.join(", ")),
                    );
                }
                self.missing_logged = missing;
            }
            self.inspector.tick(now_ms, &filesystems)
        }

        fn alarms(&mut self) -> &mut Alarms {
            &mut self.inspector.alarms
        }
    }

    inspector!(Module);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use agad_sdk::config::pairs;

    fn settings(items: &[(&str, &str)]) -> Settings {
        Settings::from_config(&pairs(items)).expect("valid config")
    }

    fn fs(mount: &str, fs_type: &str, used: u64, free: u64) -> Fs {
        Fs {
            mount_point: mount.into(),
            fs_type: fs_type.into(),
            total_bytes: used + free + 5,
            used_bytes: used,
            free_bytes: free,
        }
    }

    fn host(root_used: u64) -> Vec<Fs> {
        vec![
            fs("/", "ext4", root_used, 100 - root_used),
            fs("/var", "xfs", 10, 90),
            fs("/snap/core/1", "squashfs", 100, 0),
            Fs {
                mount_point: "/proc".into(),
                fs_type: "proc".into(),
                total_bytes: 0,
                used_bytes: 0,
                free_bytes: 0,
            },
        ]
    }

    #[test]
    fn config() {
        let s = settings(&[]);
        assert_eq!(
            (s.used_percent, s.mounts.is_empty(), s.per_mount),
            (90.0, true, false)
        );
        let s = settings(&[("mounts", "/, /var/")]);
        assert_eq!(s.mounts, vec!["/", "/var"]);
        assert!(s.per_mount, "naming mounts asks for their series");
        assert!(!settings(&[("mounts", "/"), ("per_mount", "false")]).per_mount);
        let err = |items| {
            Settings::from_config(&pairs(items))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            err(&[("used_percent", "x")]),
            "used_percent: \"x\" is not a number"
        );
        assert_eq!(
            err(&[("mounts", "var")]),
            "mounts: \"var\" is not an absolute path"
        );
        assert_eq!(
            err(&[("per_mount", "maybe")]),
            "per_mount: \"maybe\" is not true or false"
        );
    }

    #[test]
    fn skips_pseudo_and_image_filesystems() {
        let inspector = DiskSpace::new(settings(&[]));
        let host = host(50);
        let watched: Vec<String> = inspector.watched(&host).into_keys().collect();
        assert_eq!(watched, vec!["/", "/var"]);
        let named = DiskSpace::new(settings(&[("mounts", "/snap/core/1,/proc,/home")]));
        assert_eq!(
            named.watched(&host).into_keys().collect::<Vec<_>>(),
            vec!["/snap/core/1"]
        );
        assert_eq!(named.missing_mounts(&host), vec!["/proc", "/home"]);
    }

    #[test]
    fn used_percent_is_of_user_space() {
        let f = Fs {
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            total_bytes: 100,
            used_bytes: 45,
            free_bytes: 45,
        };
        assert_eq!(f.used_percent(), Some(50.0));
    }

    #[test]
    fn alarm_raised_once_cleared_once_no_flood() {
        let mut inspector = DiskSpace::new(settings(&[("window_secs", "100000")]));
        let root = [95, 95, 95, 95, 50, 95, 50, 95, 50, 50, 50, 50];
        let alarms: Vec<Alarm> = root
            .iter()
            .enumerate()
            .flat_map(|(i, &used)| inspector.tick(i as u64 * 10_000, &host(used)).alarms)
            .collect();
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].raised);
        assert_eq!(
            (alarms[0].key.as_str(), alarms[0].subject.as_str()),
            ("fs.used:/", "/")
        );
        assert_eq!((alarms[0].value, alarms[0].threshold), (95.0, 90.0));
        assert!(!alarms[1].raised);
    }

    #[test]
    fn unmounted_filesystem_clears_its_alarm() {
        let mut inspector = DiskSpace::new(settings(&[("raise_after", "1")]));
        assert_eq!(inspector.tick(0, &host(99)).alarms.len(), 1);
        let without_root: Vec<Fs> = host(99)
            .into_iter()
            .filter(|f| f.mount_point != "/")
            .collect();
        let out = inspector.tick(10_000, &without_root);
        assert_eq!(out.alarms.len(), 1);
        assert!(!out.alarms[0].raised && out.alarms[0].key == "fs.used:/");
    }

    #[test]
    fn summaries_aggregate_by_default_and_per_mount_on_request() {
        let mut inspector = DiskSpace::new(settings(&[("window_secs", "20")]));
        inspector.tick(0, &host(40));
        inspector.tick(10_000, &host(60));
        let summaries = inspector.tick(20_000, &host(60)).summaries;
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!(
            (s.metric.as_str(), s.subject.as_str(), s.min, s.max, s.count),
            (METRIC_USED, "", 40.0, 60.0, 2)
        );

        let mut detailed =
            DiskSpace::new(settings(&[("window_secs", "20"), ("per_mount", "true")]));
        detailed.tick(0, &host(40));
        let subjects: Vec<String> = detailed
            .tick(20_000, &host(40))
            .summaries
            .into_iter()
            .map(|s| s.subject)
            .collect();
        assert_eq!(subjects, vec!["", "/", "/var"]);
    }
}
