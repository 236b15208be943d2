//! A throw-away net-snmp agent for tests and benchmarks.
//!
//! [`Snmpd::start`] writes a configuration into a temporary directory, runs
//! Debian's `snmpd` in the foreground on a free loopback UDP port, and
//! returns once the agent answers a v2c GET. The agent reads no system
//! configuration (`-C`, `SNMPCONFPATH`) and keeps its persistent state
//! (engine boots, the localized v3 user) in the temporary directory, so
//! tests never touch `/etc/snmp` or `/var/lib/snmp` and can run in parallel.
//! Dropping the [`Snmpd`] kills the agent.
//!
//! ```no_run
//! use agad_tests::snmpd::Snmpd;
//! let snmpd = Snmpd::start();
//! let agents = vec![snmpd.v2c_agent(), snmpd.v3_agent()];
//! # drop(agents);
//! ```

use std::env;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agad_runtime::host::snmp::{AgentConfig, AuthProtocol, PrivProtocol};
use tempfile::TempDir;

/// Read-only v2c community the agent accepts.
pub const V2C_COMMUNITY: &str = "agad-test";
/// v3 authPriv user (SHA, AES) the agent accepts.
pub const V3_USER: &str = "agad";
/// Authentication passphrase of [`V3_USER`].
pub const V3_AUTH_PASSWORD: &str = "agad-auth-secret";
/// Privacy passphrase of [`V3_USER`].
pub const V3_PRIV_PASSWORD: &str = "agad-priv-secret";

/// How long [`Snmpd::start`] waits for the first answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// MIB modules left out: `smux` listens on TCP 199 (one agent per host, and
/// root only); the DisMan event MIB wakes up periodically and logs.
const DISABLED_MODULES: &str = "-smux,mteTrigger,mteTriggerConf";

/// Where and how to run the agent.
#[derive(Debug, Clone)]
pub struct SnmpdOptions {
    /// Run inside this network namespace (`ip netns exec <ns> snmpd ...`;
    /// needs root). The agent is polled from the calling process, so
    /// `listen_ip` must then be an address the caller can reach (the
    /// namespace end of a veth pair, say), not the namespace's loopback.
    pub netns: Option<String>,
    /// Address the agent listens on.
    pub listen_ip: IpAddr,
    /// UDP port; `None` picks a free one.
    pub port: Option<u16>,
    /// Extra `snmpd.conf` lines, appended after the harness's own.
    pub extra_config: String,
}

impl Default for SnmpdOptions {
    fn default() -> Self {
        SnmpdOptions {
            netns: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            extra_config: String::new(),
        }
    }
}

/// A running `snmpd`, killed on drop.
pub struct Snmpd {
    child: Child,
    address: SocketAddr,
    dir: TempDir,
}

impl std::fmt::Debug for Snmpd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snmpd")
            .field("pid", &self.child.id())
            .field("address", &self.address)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Why a start attempt failed in a way worth retrying.
enum StartError {
    /// Someone took the probed port before snmpd bound it.
    PortTaken(String),
}

impl Snmpd {
    /// Starts an agent on a free loopback port; panics with the agent's log
    /// if it does not answer within 10 s.
    pub fn start() -> Snmpd {
        Snmpd::start_with(SnmpdOptions::default())
    }

    /// Starts an agent inside network namespace `netns`, listening on
    /// `listen_ip` (which the caller must be able to reach).
    pub fn start_in_netns(netns: &str, listen_ip: IpAddr) -> Snmpd {
        Snmpd::start_with(SnmpdOptions {
            netns: Some(netns.to_owned()),
            listen_ip,
            ..SnmpdOptions::default()
        })
    }

    /// Starts an agent as `options` say.
    pub fn start_with(options: SnmpdOptions) -> Snmpd {
        let binary = snmpd_binary();
        let mut last = String::new();
        // A probed free port can be taken before snmpd binds it; try again
        // with another. A fixed port is not retried.
        let tries = if options.port.is_some() { 1 } else { 3 };
        for _ in 0..tries {
            let port = options.port.unwrap_or_else(|| {
                // The namespace's addresses do not exist here; any port free
                // on this side is almost surely free in a fresh namespace,
                // and a clash is retried like any other.
                let probe_ip = match (&options.netns, options.listen_ip) {
                    (None, ip) => ip,
                    (Some(_), IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    (Some(_), IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                };
                free_udp_port(probe_ip)
            });
            let mut snmpd = Snmpd::spawn(&binary, &options, port);
            match snmpd.wait_ready() {
                Ok(()) => return snmpd,
                Err(StartError::PortTaken(log)) => last = log,
            }
        }
        panic!("snmpd could not bind a free UDP port in {tries} tries; last log:\n{last}");
    }

    fn spawn(binary: &Path, options: &SnmpdOptions, port: u16) -> Snmpd {
        let dir = tempfile::Builder::new()
            .prefix("agad-snmpd-")
            .tempdir()
            .expect("create a temporary directory for snmpd");
        let conf_dir = dir.path().join("conf");
        // Separate from the configuration: snmpd rewrites
        // `<persistent dir>/snmpd.conf` on exit.
        let persist_dir = dir.path().join("persist");
        for d in [&conf_dir, &persist_dir] {
            fs::create_dir(d).expect("create snmpd directories");
        }
        let address = SocketAddr::new(options.listen_ip, port);
        let listen = match options.listen_ip {
            IpAddr::V4(ip) => format!("udp:{ip}:{port}"),
            IpAddr::V6(ip) => format!("udp6:[{ip}]:{port}"),
        };
        let conf = format!(
            "# Written by agad-tests; this agent reads no other configuration.\n\
             agentAddress {listen}\n\
             rocommunity {V2C_COMMUNITY} default\n\
             rocommunity6 {V2C_COMMUNITY} default\n\
             createUser {V3_USER} SHA \"{V3_AUTH_PASSWORD}\" AES \"{V3_PRIV_PASSWORD}\"\n\
             rouser {V3_USER} priv\n\
             sysLocation agad test harness\n\
             sysContact agad-tests\n\
             sysServices 72\n\
             dontLogTCPWrappersConnects yes\n\
             {}\n",
            options.extra_config
        );
        let conf_file = conf_dir.join("snmpd.conf");
        fs::write(&conf_file, conf).expect("write snmpd.conf");
        // Load no MIB files: the agent does not need them, and Debian ships
        // only a few, so loading the defaults fills the log with warnings.
        fs::write(conf_dir.join("snmp.conf"), "mibs :\n").expect("write snmp.conf");
        let log = dir.path().join("snmpd.log");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("create stderr.log");

        let mut command = match &options.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("-f")
            .arg("-Lf")
            .arg(&log)
            .arg("-C")
            .arg("-c")
            .arg(&conf_file)
            .arg("-p")
            .arg(dir.path().join("snmpd.pid"))
            .arg("-I")
            .arg(DISABLED_MODULES)
            .env("SNMPCONFPATH", &conf_dir)
            .env("SNMP_PERSISTENT_DIR", &persist_dir)
            .env("MIBS", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Snmpd {
            child,
            address,
            dir,
        }
    }

    /// Polls until the agent answers; panics (killing it) if it never does.
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let log = self.log();
                    if log.contains("Error opening specified endpoint") {
                        return Err(StartError::PortTaken(log));
                    }
                    panic!("snmpd exited ({status}) before answering; log:\n{log}");
                }
                Ok(None) => {}
                Err(e) => panic!("cannot wait for snmpd: {e}"),
            }
            if answers_v2c(self.address) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "snmpd did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.address,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the agent listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Process id of the agent (of `ip netns exec`, which execs into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log so far, and anything it wrote to stderr.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let (log, stderr) = (read("snmpd.log"), read("stderr.log"));
        if stderr.trim().is_empty() {
            log
        } else {
            format!("{log}\n--- stderr ---\n{stderr}")
        }
    }

    /// The agent as a v2c [`AgentConfig`] named `snmpd-v2c` (community
    /// [`V2C_COMMUNITY`], 1 s timeout, 1 retry).
    pub fn v2c_agent(&self) -> AgentConfig {
        AgentConfig::v2c("snmpd-v2c", &self.address.to_string(), V2C_COMMUNITY)
    }

    /// The agent as a v3 authPriv [`AgentConfig`] named `snmpd-v3`
    /// ([`V3_USER`], SHA and AES, 1 s timeout, 1 retry).
    pub fn v3_agent(&self) -> AgentConfig {
        AgentConfig::v3_auth_priv(
            "snmpd-v3",
            &self.address.to_string(),
            V3_USER,
            (AuthProtocol::Sha, V3_AUTH_PASSWORD),
            (PrivProtocol::Aes, V3_PRIV_PASSWORD),
        )
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        // SIGKILL: nothing the agent would save on a clean exit matters, and
        // the temporary directory goes away with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One v2c GET of sysUpTime.0 with a short timeout.
fn answers_v2c(address: SocketAddr) -> bool {
    let Ok(oid) = snmp2::Oid::from(&[1, 3, 6, 1, 2, 1, 1, 3, 0]) else {
        return false;
    };
    let Ok(mut session) = snmp2::SyncSession::new_v2c(
        address,
        V2C_COMMUNITY.as_bytes(),
        Some(Duration::from_millis(200)),
        1,
    ) else {
        return false;
    };
    session.get(&oid).is_ok_and(|pdu| pdu.error_status == 0)
}

/// A UDP port nobody is bound to on `ip` right now.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {ip}: {e}"))
}

/// The `snmpd` binary, installed with apt when missing and we are root.
fn snmpd_binary() -> PathBuf {
    // Tests run in parallel; only one of them may run apt-get.
    static FOUND: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = FOUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = &*found {
        return path.clone();
    }
    let path = find_snmpd().unwrap_or_else(install_snmpd);
    *found = Some(path.clone());
    path
}

fn find_snmpd() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    // Not on a normal user's PATH on Debian.
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("snmpd"))
        .find(|p| p.is_file())
}

fn install_snmpd() -> PathBuf {
    if !crate::netns::running_as_root() {
        panic!(
            "these tests need net-snmp's agent, `snmpd`, which is not installed.\n\
             Install it with `sudo apt-get install -y snmpd` (Debian/Ubuntu) and run the tests \
             again; they start their own agent on a free port, so the snmpd service need not \
             run (`sudo systemctl disable --now snmpd` if you do not want it)."
        );
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = ["install", "-y", "--no-install-recommends", "snmpd"];
    // The package lists may be missing (fresh container) or stale.
    let installed = apt(&install) || (apt(&["update"]) && apt(&install));
    if !installed {
        panic!("`apt-get install -y snmpd` failed; install snmpd by hand and run again");
    }
    find_snmpd().unwrap_or_else(|| panic!("snmpd was installed but is not in /usr/sbin or on PATH"))
}
