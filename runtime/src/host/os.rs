//! The `os` capability: metrics of the node a module runs on.
//!
//! One [`OsProbe`] lives in every module's store, so "since the previous call"
//! (CPU and per-process CPU) is measured per module: two inspectors ticking at
//! different periods each see utilisation over their own period.
//!
//! Inspectors call this every period on every node, so each call refreshes
//! only what it returns: no `refresh_all`, no full process scan when the
//! module names the processes it watches, and interface counters straight
//! from `/proc/net/dev` (one read for every interface). The mount list is
//! read from `/proc/self/mountinfo` (not sysinfo, which drops tmpfs and
//! everything under `/run`): see [`default_filesystem`] for the set a module
//! gets when it names no mount point.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::Instant;

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate,
    System, UpdateKind,
};
use tracing::{debug, debug_span};

use crate::bindings::os;
use crate::host::blocking::Offloaded;

/// Host side of the `os` interface for one module instance.
pub struct OsProbe {
    /// Label for tracing: the module this probe serves.
    module: String,
    /// CPU and memory. Kept apart from `procs` because refreshing process CPU
    /// also advances sysinfo's global CPU baseline, which would shorten the
    /// window `cpu()` reports over.
    sys: System,
    /// Processes this probe has listed.
    procs: System,
    /// CPU time of each listed process when this probe last listed it.
    /// sysinfo's own per-process figure reads 0% for a process whose
    /// previous sample had no CPU tick yet, so the share is computed here.
    cpu_samples: HashMap<Pid, CpuSample>,
}

impl std::fmt::Debug for OsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OsProbe")
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

impl Default for OsProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl OsProbe {
    /// A probe whose first `cpu()` reports utilisation since this call.
    pub fn new() -> OsProbe {
        const SUPPORTED: &str = "sysinfo supports every platform the node runs on";
        let mut sys = System::new().expect(SUPPORTED);
        // Baseline for the first `cpu()` call; also fills the CPU list.
        sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        OsProbe {
            module: String::new(),
            sys,
            procs: System::new().expect(SUPPORTED),
            cpu_samples: HashMap::new(),
        }
    }

    /// Names the module in this probe's tracing spans.
    pub fn with_module(mut self, module: impl Into<String>) -> OsProbe {
        self.module = module.into();
        self
    }
}

/// The `os` calls, run on the blocking pool by [`Offloaded`].
impl OsProbe {
    pub fn cpu(&mut self) -> os::CpuUsage {
        let _span = debug_span!("os.cpu", module = %self.module).entered();
        self.sys
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        os::CpuUsage {
            total_percent: self.sys.global_cpu_usage(),
            per_core_percent: self.sys.cpus().iter().map(|c| c.usage()).collect(),
        }
    }

    pub fn memory(&mut self) -> os::MemoryUsage {
        let _span = debug_span!("os.memory", module = %self.module).entered();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        os::MemoryUsage {
            total_bytes: self.sys.total_memory(),
            used_bytes: self.sys.used_memory(),
            available_bytes: self.sys.available_memory(),
            swap_total_bytes: self.sys.total_swap(),
            swap_used_bytes: self.sys.used_swap(),
        }
    }

    pub fn load_average(&mut self) -> os::LoadAverages {
        let _span = debug_span!("os.load_average", module = %self.module).entered();
        match System::load_average() {
            Ok(l) => os::LoadAverages {
                one: l.one,
                five: l.five,
                fifteen: l.fifteen,
            },
            Err(e) => {
                debug!(error = %e, "load average unavailable");
                os::LoadAverages {
                    one: 0.0,
                    five: 0.0,
                    fifteen: 0.0,
                }
            }
        }
    }

    /// The filesystems mounted at `mount_points` (any type), or the
    /// [default set](default_filesystem) when it is empty. Sizes come from
    /// one statvfs per mount, because "used" must match what `df` shows.
    pub fn filesystems(&mut self, mount_points: Vec<String>) -> Vec<os::Filesystem> {
        let _span = debug_span!(
            "os.filesystems",
            module = %self.module,
            named = mount_points.len()
        )
        .entered();
        let mounts = match fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => parse_mountinfo(&text),
            Err(e) => {
                debug!(error = %e, "cannot read /proc/self/mountinfo");
                return Vec::new();
            }
        };
        let chosen = if mount_points.is_empty() {
            default_filesystems(mounts)
        } else {
            named_filesystems(mounts, &mount_points)
        };
        let mut out = Vec::with_capacity(chosen.len());
        for mount in chosen {
            let Some(space) = space_of(Path::new(&mount.mount_point)) else {
                continue;
            };
            if space.total == 0 {
                continue;
            }
            out.push(os::Filesystem {
                used_bytes: space.total.saturating_sub(space.free),
                total_bytes: space.total,
                free_bytes: space.available,
                mount_point: mount.mount_point,
                device: mount.source,
                fs_type: mount.fs_type,
            });
        }
        debug!(count = out.len(), "filesystems");
        out
    }

    pub fn interfaces(&mut self) -> Vec<os::NetInterface> {
        let _span = debug_span!("os.interfaces", module = %self.module).entered();
        let text = match fs::read_to_string("/proc/net/dev") {
            Ok(text) => text,
            Err(e) => {
                debug!(error = %e, "cannot read /proc/net/dev");
                return Vec::new();
            }
        };
        parse_net_dev(&text)
            .into_iter()
            .map(|c| {
                let sys = Path::new("/sys/class/net").join(&c.name);
                os::NetInterface {
                    oper_state: oper_state(&sys),
                    // Unreadable flags count as up, as IF-MIB readers do
                    // with an unknown ifAdminStatus: better an alarm too
                    // many than a silent dead link.
                    admin_up: admin_up(&sys).unwrap_or(true),
                    speed_bps: speed_bps(&sys),
                    duplex: duplex(&sys),
                    name: c.name,
                    in_octets: c.in_octets,
                    out_octets: c.out_octets,
                    in_packets: c.in_packets,
                    out_packets: c.out_packets,
                    in_errors: c.in_errors,
                    out_errors: c.out_errors,
                    in_drops: c.in_drops,
                    out_drops: c.out_drops,
                }
            })
            .collect()
    }

    pub fn processes(&mut self, names: Vec<String>) -> Vec<os::Process> {
        let _span =
            debug_span!("os.processes", module = %self.module, names = names.len()).entered();
        let kind = ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_cmd(UpdateKind::OnlyIfNotSet)
            .without_tasks();
        let wanted: Vec<Pid> = if names.is_empty() {
            self.procs
                .refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
            self.procs.processes().keys().copied().collect()
        } else {
            let (matching, alive) = scan_proc_names(&names);
            // Refreshing a pid that has gone away removes it from sysinfo's
            // table; without this the table would keep every process this
            // probe ever watched.
            let mut update: Vec<Pid> = matching.clone();
            update.extend(
                self.procs
                    .processes()
                    .keys()
                    .filter(|p| !alive.contains(p))
                    .copied(),
            );
            self.procs
                .refresh_processes_specifics(ProcessesToUpdate::Some(&update), true, kind);
            matching
        };
        let now = Instant::now();
        let procs = &self.procs;
        self.cpu_samples
            .retain(|pid, _| procs.process(*pid).is_some());
        let samples = &mut self.cpu_samples;
        let mut out: Vec<os::Process> = wanted
            .iter()
            .filter_map(|pid| procs.process(*pid))
            .map(|p| os::Process {
                cpu_percent: cpu_share(samples, p, now),
                pid: p.pid().as_u32(),
                name: display_name(p, &names),
                cmdline: p
                    .cmd()
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                rss_bytes: p.memory(),
                state: status_name(p.status()).to_owned(),
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        debug!(count = out.len(), "processes");
        out
    }

    pub fn uptime_secs(&mut self) -> u64 {
        let _span = debug_span!("os.uptime_secs", module = %self.module).entered();
        System::uptime().unwrap_or(0)
    }

    pub fn hostname(&mut self) -> String {
        let _span = debug_span!("os.hostname", module = %self.module).entered();
        System::host_name().unwrap_or_default()
    }
}

impl os::Host for Offloaded<OsProbe> {
    async fn cpu(&mut self) -> wasmtime::Result<os::CpuUsage> {
        self.run("os.cpu", OsProbe::cpu).await
    }
    async fn memory(&mut self) -> wasmtime::Result<os::MemoryUsage> {
        self.run("os.memory", OsProbe::memory).await
    }
    async fn load_average(&mut self) -> wasmtime::Result<os::LoadAverages> {
        self.run("os.load-average", OsProbe::load_average).await
    }
    async fn filesystems(
        &mut self,
        mount_points: Vec<String>,
    ) -> wasmtime::Result<Vec<os::Filesystem>> {
        self.run("os.filesystems", move |p| p.filesystems(mount_points))
            .await
    }
    async fn interfaces(&mut self) -> wasmtime::Result<Vec<os::NetInterface>> {
        self.run("os.interfaces", OsProbe::interfaces).await
    }
    async fn processes(&mut self, names: Vec<String>) -> wasmtime::Result<Vec<os::Process>> {
        self.run("os.processes", move |p| p.processes(names)).await
    }
    async fn uptime_secs(&mut self) -> wasmtime::Result<u64> {
        self.run("os.uptime-secs", OsProbe::uptime_secs).await
    }
    async fn hostname(&mut self) -> wasmtime::Result<String> {
        self.run("os.hostname", OsProbe::hostname).await
    }
}

/// A process's accumulated CPU time at one listing.
struct CpuSample {
    cpu_ms: u64,
    /// Tells a reused pid from the process that had it before.
    start_time: u64,
    at: Instant,
}

/// Share of one core `p` used since the previous sample, in percent; 0 for
/// a process seen for the first time. Records the new sample.
fn cpu_share(samples: &mut HashMap<Pid, CpuSample>, p: &sysinfo::Process, now: Instant) -> f32 {
    let sample = CpuSample {
        cpu_ms: p.accumulated_cpu_time(),
        start_time: p.start_time(),
        at: now,
    };
    let share = match samples.get(&p.pid()) {
        Some(prev) if prev.start_time == sample.start_time => {
            let wall_ms = now.duration_since(prev.at).as_secs_f64() * 1000.0;
            let cpu_ms = sample.cpu_ms.saturating_sub(prev.cpu_ms) as f64;
            if wall_ms > 0.0 {
                (cpu_ms / wall_ms * 100.0) as f32
            } else {
                0.0
            }
        }
        _ => 0.0,
    };
    samples.insert(p.pid(), sample);
    share
}

struct Space {
    total: u64,
    free: u64,
    available: u64,
}

fn space_of(mount: &Path) -> Option<Space> {
    match rustix::fs::statvfs(mount) {
        Ok(s) => Some(Space {
            total: s.f_blocks.saturating_mul(s.f_frsize),
            free: s.f_bfree.saturating_mul(s.f_frsize),
            available: s.f_bavail.saturating_mul(s.f_frsize),
        }),
        Err(e) => {
            debug!(mount = %mount.display(), error = %e, "statvfs failed");
            None
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// `major:minor` of the filesystem: bind mounts of one filesystem share it.
    device_id: String,
    /// The directory of the filesystem mounted here (`/` unless a bind mount
    /// of a subdirectory).
    root: String,
    mount_point: String,
    read_only: bool,
    fs_type: String,
    /// What was mounted: a device path, or a name such as `tmpfs`.
    source: String,
}

/// Parses `/proc/self/mountinfo` (proc(5)); lines that do not parse are
/// skipped. Later lines are later mounts, so of two mounts at one point the
/// last is the visible one.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            let (fs_type, source) = (tail.next()?, tail.next()?);
            if head.len() < 6 {
                return None;
            }
            Some(Mount {
                device_id: head[2].to_owned(),
                root: unescape_mount(head[3]),
                mount_point: unescape_mount(head[4]),
                read_only: head[5].split(',').any(|o| o == "ro"),
                fs_type: fs_type.to_owned(),
                source: unescape_mount(source),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount paths as
/// three octal digits after a backslash (`\040`).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/var/` and `/var` name the same mount point; `/` stays `/`.
fn normalize_mount_point(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// The visible mount at each of `wanted`, whatever its type: an operator who
/// names a mount point wants it watched. (A network filesystem whose server
/// is gone can block its statvfs; that call is bounded like every host call
/// by the module's deadline and the node's blocking pool, and only the module
/// that named it waits.)
fn named_filesystems(mounts: Vec<Mount>, wanted: &[String]) -> Vec<Mount> {
    let wanted: HashSet<&str> = wanted.iter().map(|w| normalize_mount_point(w)).collect();
    let mut visible: HashMap<String, Mount> = HashMap::new();
    for mount in mounts {
        if wanted.contains(mount.mount_point.as_str()) {
            visible.insert(mount.mount_point.clone(), mount);
        }
    }
    let mut out: Vec<Mount> = visible.into_values().collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

/// Kernel and pseudo filesystems: no space of their own to run out of.
const PSEUDO_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tracefs",
];
/// Read-only images, full by construction (snaps, ISO images).
const IMAGE_FS_TYPES: &[&str] = &["squashfs", "iso9660", "udf", "cramfs", "erofs"];
/// Filesystems served over the network (or by a user-space process, `fuse.*`):
/// their statvfs blocks while the server is unreachable.
const NETWORK_FS_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "lustre",
    "gpfs",
    "davfs",
    "coda",
    "sshfs",
    "fuse",
];
/// Directories whose mounts belong to the kernel or to containers, not to
/// the host's own storage.
const SKIPPED_TREES: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run/credentials",
    "/run/containerd",
    "/run/docker",
    "/run/netns",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/kubelet",
];

fn under(path: &str, tree: &str) -> bool {
    path.strip_prefix(tree)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `mount` is in the default set, what a module that names no mount
/// point gets: every local filesystem with space of its own that can fill
/// up. That is the block-backed filesystems (ext4, xfs, btrfs, zfs, vfat,
/// overlay roots, ...) and tmpfs (`/tmp`, `/run`, `/dev/shm`, `/run/user/*`),
/// but not:
/// - pseudo filesystems ([`PSEUDO_FS_TYPES`]: proc, sysfs, cgroup, devpts,
///   devtmpfs, ...) nor anything mounted under `/proc`, `/sys` or `/dev`
///   (except `/dev/shm`);
/// - read-only images ([`IMAGE_FS_TYPES`]) and read-only tmpfs (nothing can
///   fill them);
/// - network and FUSE filesystems ([`NETWORK_FS_TYPES`], `fuse.*` but
///   `fuseblk`): their statvfs hangs while the server is away, so they are
///   watched only when named;
/// - mounts of container runtimes and network namespaces (`/var/lib/docker`,
///   `/run/containerd`, `/run/netns`, ... see [`SKIPPED_TREES`]);
/// - a second mount of one filesystem (bind mounts): it is listed once.
fn default_filesystem(mount: &Mount) -> bool {
    let fs_type = mount.fs_type.as_str();
    let network = NETWORK_FS_TYPES.contains(&fs_type)
        || (fs_type.starts_with("fuse.") && fs_type != "fuseblk");
    let skipped_tree = SKIPPED_TREES
        .iter()
        .any(|tree| under(&mount.mount_point, tree))
        && !(fs_type == "tmpfs" && mount.mount_point == "/dev/shm");
    !(PSEUDO_FS_TYPES.contains(&fs_type)
        || IMAGE_FS_TYPES.contains(&fs_type)
        || network
        || skipped_tree
        || (fs_type == "tmpfs" && mount.read_only))
}

/// The default set (see [`default_filesystem`]), one mount per filesystem:
/// of a filesystem's mounts, the one of its whole tree (root `/`) at the
/// shortest path, as `df` does; the last mount at each point (the visible
/// one).
fn default_filesystems(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut at_point: HashMap<String, Mount> = HashMap::new();
    for mount in mounts {
        at_point.insert(mount.mount_point.clone(), mount);
    }
    let mut by_device: HashMap<String, Mount> = HashMap::new();
    for mount in at_point.into_values().filter(default_filesystem) {
        let rank = |m: &Mount| (m.root != "/", m.mount_point.len(), m.mount_point.clone());
        match by_device.get(&mount.device_id) {
            Some(kept) if rank(kept) <= rank(&mount) => {}
            _ => {
                by_device.insert(mount.device_id.clone(), mount);
            }
        }
    }
    let mut out: Vec<Mount> = by_device.into_values().collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

/// Counters of one interface as `/proc/net/dev` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetDevCounters {
    name: String,
    in_octets: u64,
    in_packets: u64,
    in_errors: u64,
    in_drops: u64,
    out_octets: u64,
    out_packets: u64,
    out_errors: u64,
    out_drops: u64,
}

/// Parses `/proc/net/dev`. Lines that do not parse are skipped, not fatal:
/// one odd driver must not hide every other interface.
fn parse_net_dev(text: &str) -> Vec<NetDevCounters> {
    text.lines()
        .filter_map(|line| {
            // Names cannot contain ':' (the kernel refuses them), and a large
            // byte count may follow the colon without a space: "eth0:1234".
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name.contains('|') {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast;
            // transmit: bytes packets errs drop fifo colls carrier compressed.
            if f.len() < 16 {
                return None;
            }
            Some(NetDevCounters {
                name: name.to_owned(),
                in_octets: f[0],
                in_packets: f[1],
                in_errors: f[2],
                in_drops: f[3],
                out_octets: f[8],
                out_packets: f[9],
                out_errors: f[10],
                out_drops: f[11],
            })
        })
        .collect()
}

fn oper_state(sys: &Path) -> os::OperState {
    let state = fs::read_to_string(sys.join("operstate")).unwrap_or_default();
    match state.trim() {
        "up" => os::OperState::Up,
        "down" => os::OperState::Down,
        "dormant" => os::OperState::Dormant,
        "lowerlayerdown" => os::OperState::LowerLayerDown,
        "notpresent" => os::OperState::NotPresent,
        "testing" => os::OperState::Testing,
        // Drivers that do not track carrier (loopback, dummy, many tunnels)
        // report "unknown" forever. Like net-snmp's ifOperStatus, fall back
        // to the administrative flag so that `lo` reads up and a downed
        // dummy reads down.
        _ => match admin_up(sys) {
            Some(true) => os::OperState::Up,
            Some(false) => os::OperState::Down,
            None => os::OperState::Unknown,
        },
    }
}

fn admin_up(sys: &Path) -> Option<bool> {
    const IFF_UP: u32 = 0x1;
    let flags = fs::read_to_string(sys.join("flags")).ok()?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    Some(flags & IFF_UP != 0)
}

/// `/sys/class/net/<if>/speed` is Mb/s; it is unreadable (EINVAL) or -1
/// when the driver does not know.
fn speed_bps(sys: &Path) -> Option<u64> {
    let text = fs::read_to_string(sys.join("speed")).ok()?;
    let mbps: i64 = text.trim().parse().ok()?;
    u64::try_from(mbps)
        .ok()
        .filter(|m| *m > 0)
        .map(|m| m.saturating_mul(1_000_000))
}

/// `/sys/class/net/<if>/duplex`: `full`, `half`, or `unknown` (also
/// unreadable, EINVAL, when the link is down or the driver does not say).
fn duplex(sys: &Path) -> os::Duplex {
    match fs::read_to_string(sys.join("duplex"))
        .as_deref()
        .map(str::trim)
    {
        Ok("full") => os::Duplex::Full,
        Ok("half") => os::Duplex::Half,
        _ => os::Duplex::Unknown,
    }
}

/// Pids whose `comm` matches one of `names`, and every live pid (so the
/// caller can forget dead ones). Reading `comm` (one short line per process)
/// is much cheaper than letting sysinfo parse every process's stat.
pub(crate) fn scan_proc_names(names: &[String]) -> (Vec<Pid>, HashSet<Pid>) {
    let mut matching = Vec::new();
    let mut alive = HashSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return (matching, alive);
    };
    for entry in dir.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let pid = Pid::from_u32(pid);
        alive.insert(pid);
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end_matches('\n');
        if names.iter().any(|n| name_matches(n, comm, &entry.path())) {
            matching.push(pid);
        }
    }
    (matching, alive)
}

/// The kernel keeps at most this many bytes of a process name (`comm`).
const COMM_MAX: usize = 15;

/// The kernel truncates `comm` to 15 bytes; a longer wanted name matches
/// when `comm` is its prefix and argv[0]'s file name is the whole name.
fn name_matches(wanted: &str, comm: &str, proc_dir: &Path) -> bool {
    if wanted == comm {
        return true;
    }
    if wanted.len() <= COMM_MAX || comm.len() != COMM_MAX || !wanted.starts_with(comm) {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    base == wanted.as_bytes()
}

/// The name to report: `comm`, or the full name from argv[0] when `comm`
/// is its truncation and the module asked for that full name (or for every
/// process), so that a module finds in the answer the name it asked for.
fn display_name(p: &sysinfo::Process, names: &[String]) -> String {
    let comm = p.name().to_string_lossy();
    if comm.len() != COMM_MAX {
        return comm.into_owned();
    }
    let full = p
        .cmd()
        .first()
        .and_then(|argv0| Path::new(argv0).file_name())
        .map(|base| base.to_string_lossy());
    match full {
        Some(full)
            if full.len() > COMM_MAX
                && full.starts_with(&*comm)
                && (names.is_empty() || names.iter().any(|n| *n == *full)) =>
        {
            full.into_owned()
        }
        _ => comm.into_owned(),
    }
}

fn status_name(status: ProcessStatus) -> &'static str {
    match status {
        ProcessStatus::Idle => "idle",
        ProcessStatus::Run => "run",
        ProcessStatus::Sleep => "sleep",
        ProcessStatus::Stop => "stop",
        ProcessStatus::Zombie => "zombie",
        ProcessStatus::Tracing => "tracing",
        ProcessStatus::Dead => "dead",
        ProcessStatus::Wakekill => "wakekill",
        ProcessStatus::Waking => "waking",
        ProcessStatus::Parked => "parked",
        ProcessStatus::LockBlocked => "lock-blocked",
        ProcessStatus::UninterruptibleDiskSleep => "disk-sleep",
        ProcessStatus::Suspended => "suspended",
        ProcessStatus::Unknown(_) => "unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  104476     1024    0    0    0     0          0         0   104476     1024    0    0    0     0       0          0
  eth0:18446744073709551615 7 1 2 0 0 0 0 5000 6 3 4 0 0 0 0
enp0s31f6:12345678901 99 0 0 0 0 0 0 42 1 0 9 0 0 0 0
 broken: 1 2 3
";

    #[test]
    fn parses_every_interface_line() {
        let parsed = parse_net_dev(SAMPLE);
        let names: Vec<&str> = parsed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "enp0s31f6"]);
        assert_eq!(
            parsed[0],
            NetDevCounters {
                name: "lo".into(),
                in_octets: 104_476,
                in_packets: 1024,
                in_errors: 0,
                in_drops: 0,
                out_octets: 104_476,
                out_packets: 1024,
                out_errors: 0,
                out_drops: 0,
            }
        );
    }

    #[test]
    fn keeps_64_bit_counters_and_maps_columns() {
        let parsed = parse_net_dev(SAMPLE);
        let eth0 = &parsed[1];
        assert_eq!(eth0.in_octets, u64::MAX);
        assert_eq!((eth0.in_packets, eth0.in_errors, eth0.in_drops), (7, 1, 2));
        assert_eq!(
            (
                eth0.out_octets,
                eth0.out_packets,
                eth0.out_errors,
                eth0.out_drops
            ),
            (5000, 6, 3, 4)
        );
        // No space between the colon and a wide byte count.
        assert_eq!(parsed[2].in_octets, 12_345_678_901);
        assert_eq!(parsed[2].out_drops, 9);
    }

    #[test]
    fn skips_headers_and_short_lines() {
        assert!(parse_net_dev("Inter-| Receive\n face |bytes\n").is_empty());
        assert!(parse_net_dev("x: 1 2 3\n").is_empty());
        assert!(parse_net_dev("").is_empty());
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /mnt/tools ro,nosuid - tmpfs unavailable ro,size=4k
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
43 27 254:0 /srv/data /data rw,relatime - ext4 /dev/vda rw
44 27 0:40 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,size=1g
45 44 0:41 / /run/user/1000 rw,nosuid - tmpfs tmpfs rw,size=1g
46 27 0:42 / /mnt/nas rw - nfs4 nas:/export rw
47 27 0:43 / /mnt/my\\040files rw - fuse.sshfs me@host: rw
48 27 259:1 / /boot rw - vfat /dev/nvme0n1p1 rw
49 27 7:0 / /snap/core/1 ro - squashfs /dev/loop0 ro
50 27 0:44 / /tmp rw - tmpfs tmpfs rw
51 27 0:45 / /tmp rw - tmpfs tmpfs rw,size=2g
broken line
";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 18);
        let sshfs = mounts.iter().find(|m| m.fs_type == "fuse.sshfs").unwrap();
        assert_eq!(sshfs.mount_point, "/mnt/my files");
        let netns = &mounts[8];
        assert_eq!(
            (
                netns.device_id.as_str(),
                netns.root.as_str(),
                netns.source.as_str()
            ),
            ("254:0", "/run/netns", "/dev/vda")
        );
        assert!(mounts[5].read_only && !mounts[4].read_only);
        assert_eq!(unescape_mount("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_mount("trailing\\"), "trailing\\");
    }

    #[test]
    fn default_set_is_local_filesystems_with_tmpfs_once_each() {
        let chosen = default_filesystems(parse_mountinfo(MOUNTINFO));
        let points: Vec<&str> = chosen.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(
            points,
            ["/", "/boot", "/dev/shm", "/run", "/run/user/1000", "/tmp"]
        );
        let tmp = chosen.iter().find(|m| m.mount_point == "/tmp").unwrap();
        assert_eq!(tmp.device_id, "0:45", "the visible mount of /tmp");
    }

    #[test]
    fn named_mounts_are_returned_whatever_their_type() {
        let named = |wanted: &[&str]| -> Vec<(String, String)> {
            let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
            named_filesystems(parse_mountinfo(MOUNTINFO), &wanted)
                .into_iter()
                .map(|m| (m.mount_point, m.fs_type))
                .collect()
        };
        assert_eq!(
            named(&["/mnt/nas/", "/run/netns", "/mnt/tools", "/nowhere", "/data"]),
            [
                ("/data".to_owned(), "ext4".to_owned()),
                ("/mnt/nas".to_owned(), "nfs4".to_owned()),
                ("/mnt/tools".to_owned(), "tmpfs".to_owned()),
                ("/run/netns".to_owned(), "ext4".to_owned()),
            ]
        );
    }

    #[test]
    fn long_names_match_truncated_comm_only_with_argv0() {
        let dir = Path::new("/nonexistent");
        assert!(name_matches("sshd", "sshd", dir));
        assert!(!name_matches("ssh", "sshd", dir));
        // 16-char name, 15-char comm, but no cmdline to confirm it.
        assert!(!name_matches("systemd-resolved", "systemd-resolve", dir));
    }
}
