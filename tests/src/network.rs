//! A small switched network of separate hosts, for tests and benchmarks
//! that need real failures between real machines: one network namespace per
//! host, each joined by a veth pair to a bridge that lives in a "switch"
//! namespace of its own (never the root namespace, so nothing the tests do
//! touches the machine's own interfaces). Hosts get `10.79.0.<n>/24`
//! addresses in the order they are named (`.1` for the first); every
//! network has its own namespaces, so two networks in one test binary do
//! not see each other even with the same addresses.
//!
//! Faults are real kernel ones: [`Network::link_down`] sets the host's
//! interface down (`ip link set eth0 down`), [`Network::set_loss`] drops a
//! share of its packets each way with nftables (this kernel has no `netem`,
//! so delay comes from [`jitter_relay`], a TCP relay a program runs inside a
//! host; [`Host::spawn_jitter_relay`] runs one from a test).
//!
//! Needs root. Without it, [`Network::new`] fails with an error saying so:
//! a test that needs a network fails loudly, never skips and passes.
//! Namespaces are deleted on drop; those of an earlier run that was killed
//! are deleted by the next one (their names hold the dead process id).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use agad_tests::network::Network;
//! let net = Network::new(&["mor", "s1", "n1"])?;
//! let n1 = net.host("n1")?;
//! println!("n1 is {}", n1.address());
//! net.ping("mor", "n1")?;
//! net.link_down("n1")?;
//! net.set_loss("s1", 5)?;
//! # Ok(()) }
//! ```

use crate::netns::{remove_stale_namespaces, run, running_as_root};
use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The hosts' subnet: free of the addresses other tests and benchmarks use
/// (10.78.0.0/30 in `liveness`, 10.99.0.0/24 in the if-health tests).
const SUBNET: [u8; 3] = [10, 79, 0];
/// The host's end of its veth pair, inside the host's namespace.
pub const HOST_INTERFACE: &str = "eth0";
/// nftables table holding a host's packet-loss rules.
const LOSS_TABLE: &str = "agad_loss";

/// Networks made by this process so far: part of every namespace's name, so
/// tests running in parallel threads get their own.
static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// One host of a [`Network`]: a network namespace with `lo` and
/// [`HOST_INTERFACE`] up, and one address. Cheap to clone, so a harness
/// can keep where each of its processes runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    name: String,
    namespace: String,
    address: Ipv4Addr,
}

impl Host {
    /// The name the host was given in [`Network::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace, for `ip netns exec` and `ip -n`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its address on the network (`10.79.0.<n>`).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// `program` to be run inside this host's namespace (`ip netns exec`,
    /// which execs the program: the child's process id is the program's,
    /// so signals reach it directly).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Runs `program ARGS` inside the host to completion; its stdout, or an
    /// error with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} on {}", self.name))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` on {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n <namespace> ARGS`.
    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.namespace.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

/// Hosts joined by a switch; see the module documentation. Dropping it
/// deletes every namespace (and so every veth pair and the bridge).
#[derive(Debug)]
pub struct Network {
    /// The bridge's namespace.
    switch: String,
    /// In the order they were named.
    hosts: Vec<Host>,
}

impl Network {
    /// A switch and one host per name (at most 250, each a plain name),
    /// every host able to reach every other.
    pub fn new(names: &[&str]) -> anyhow::Result<Network> {
        if !running_as_root() {
            bail!(
                "a network of separate hosts needs network namespaces, and so root: run this \
                 as root (sudo), it cannot be skipped"
            );
        }
        if names.len() > 250 {
            bail!("{} hosts: at most 250 fit in 10.79.0.0/24", names.len());
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("host name `{name}`: letters, digits, - and _ only");
            }
            if names[..i].contains(name) {
                bail!("two hosts called {name}");
            }
        }
        remove_stale_namespaces();
        // `agad-ns-<pid>-...`: the prefix and pid `netns` removes when stale.
        let prefix = format!(
            "agad-ns-{}-net{}",
            std::process::id(),
            NETWORKS.fetch_add(1, Ordering::Relaxed)
        );
        let mut network = Network {
            switch: format!("{prefix}-switch"),
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &network.switch])?;
        let switch = &network.switch;
        run(
            "ip",
            &["-n", switch, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", switch, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                namespace: format!("{prefix}-h-{name}"),
                address: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1),
            };
            run("ip", &["netns", "add", &host.namespace])?;
            // Dropped with the network from here on, even if a step fails.
            network.hosts.push(host.clone());
            let port = switch_port(i);
            run(
                "ip",
                &[
                    "-n",
                    &network.switch,
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_INTERFACE,
                    "netns",
                    &host.namespace,
                ],
            )?;
            run(
                "ip",
                &["-n", &network.switch, "link", "set", &port, "master", "br0"],
            )?;
            run("ip", &["-n", &network.switch, "link", "set", &port, "up"])?;
            host.ip(&["link", "set", "lo", "up"])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                HOST_INTERFACE,
            ])?;
            host.ip(&["link", "set", HOST_INTERFACE, "up"])?;
        }
        Ok(network)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host called {name} in this network"))
    }

    /// Every host, in the order they were named.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Pulls `host`'s cable, as far as the host can tell: its interface is
    /// set down (`ip link set eth0 down`), so it neither sends nor receives
    /// and its route to the subnet is gone until [`Network::link_up`].
    /// Its processes keep running.
    pub fn link_down(&self, host: &str) -> anyhow::Result<()> {
        self.host(host)?
            .ip(&["link", "set", HOST_INTERFACE, "down"])
    }

    /// Sets `host`'s interface up again; the kernel restores its address's
    /// route.
    pub fn link_up(&self, host: &str) -> anyhow::Result<()> {
        self.host(host)?.ip(&["link", "set", HOST_INTERFACE, "up"])
    }

    /// Drops `percent` % of `host`'s packets, independently each way
    /// (nftables `numgen random` rules on its input and output; `lo`
    /// is spared). Replaces an earlier loss; 0 removes it.
    pub fn set_loss(&self, host: &str, percent: u8) -> anyhow::Result<()> {
        if percent > 100 {
            bail!("a loss of {percent} %");
        }
        let host = self.host(host)?;
        ensure_nft()?;
        // Deleting a table that is not there fails; whether it was is moot.
        let _ = host.run("nft", &["delete", "table", "inet", LOSS_TABLE]);
        if percent == 0 {
            return Ok(());
        }
        // `numgen random mod 100` is 0..=99: "< 100" is out of its range.
        let chance = if percent == 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let rules = format!(
            "table inet {LOSS_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; iifname \"{HOST_INTERFACE}\" {chance}drop; }}\n\
             chain output {{ type filter hook output priority 0; oifname \"{HOST_INTERFACE}\" {chance}drop; }}\n\
             }}\n"
        );
        let mut nft = host
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        std::io::Write::write_all(
            &mut nft.stdin.take().context("nft stdin")?,
            rules.as_bytes(),
        )?;
        let out = nft.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nftables refused the loss rules on {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether `from` gets an ICMP echo reply from `to` (one request, a
    /// one-second wait): `Ok(false)` when it does not, an error only when
    /// `ping` cannot run (`apt-get install iputils-ping`).
    pub fn reachable(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let target = self.host(to)?.address.to_string();
        let status = self
            .host(from)?
            .command("ping")
            .args(["-c", "1", "-W", "1", "-q", &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ping (Debian: apt-get install iputils-ping)")?;
        Ok(status.success())
    }

    /// Waits (up to 10 s) until `from` reaches `to` by ICMP echo; fails
    /// otherwise. A fresh bridge port may take a moment to forward.
    pub fn ping(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.reachable(from, to)? {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{from} cannot reach {to} ({})", self.host(to)?.address);
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A namespace goes with its veth ends; the switch's with the bridge.
        for namespace in self
            .hosts
            .iter()
            .map(|h| h.namespace.as_str())
            .chain([self.switch.as_str()])
        {
            if let Err(e) = run("ip", &["netns", "del", namespace]) {
                eprintln!("{e}; run `ip netns del {namespace}`");
            }
        }
    }
}

/// The switch's end of host `i`'s veth pair (interface names are at most
/// 15 bytes, so not the host's name).
fn switch_port(i: usize) -> String {
    format!("port{i}")
}

/// Where [`Host::spawn_jitter_relay`] tells the re-run test binary to
/// listen, where to forward, and the largest delay in milliseconds.
const RELAY_ENV: [&str; 3] = [
    "AGAD_TEST_RELAY_LISTEN",
    "AGAD_TEST_RELAY_TARGET",
    "AGAD_TEST_RELAY_MAX_DELAY_MS",
];

/// A [`jitter_relay`] running inside a host; killed on drop.
#[derive(Debug)]
pub struct Relay {
    child: std::process::Child,
    address: String,
}

impl Relay {
    /// Where it listens (`<host address>:<port>`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Fails if the relay exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the jitter relay at {} exited ({status})", self.address);
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// Starts a [`jitter_relay`] inside this host, listening on `port` of
    /// its address and forwarding to `target` with 0..=`max_delay` of delay
    /// per chunk; returns once it listens. A test binary has no relay
    /// program of its own, so it is the current test binary again, running
    /// only `test`: an `#[ignore]`d test (full path, `module::name`) whose
    /// body is [`serve_jitter_relay_if_asked`].
    pub fn spawn_jitter_relay(
        &self,
        test: &str,
        port: u16,
        target: &str,
        max_delay: Duration,
    ) -> anyhow::Result<Relay> {
        let address = format!("{}:{port}", self.address);
        let child = self
            .command(std::env::current_exe().context("the test binary")?)
            .args([test, "--exact", "--include-ignored", "--nocapture"])
            .env(RELAY_ENV[0], &address)
            .env(RELAY_ENV[1], target)
            .env(RELAY_ENV[2], max_delay.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the jitter relay")?;
        let mut relay = Relay { child, address };
        let start = Instant::now();
        // `ss` (iproute2) inside the host: the root namespace cannot connect.
        while !self
            .run("ss", &["-Hltn", &format!("sport = :{port}")])?
            .contains(&format!(":{port}"))
        {
            relay.check()?;
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the jitter relay on {} did not listen within 30 s",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(relay)
    }
}

/// The body of the `#[ignore]`d test [`Host::spawn_jitter_relay`] runs:
/// serves the relay its environment asks for until killed; returns at once
/// when run any other way (`cargo test -- --include-ignored`).
pub fn serve_jitter_relay_if_asked() -> anyhow::Result<()> {
    let (Ok(listen), Ok(target), Ok(max_delay_ms)) = (
        std::env::var(RELAY_ENV[0]),
        std::env::var(RELAY_ENV[1]),
        std::env::var(RELAY_ENV[2]),
    ) else {
        return Ok(());
    };
    let max_delay = Duration::from_millis(max_delay_ms.parse().context(RELAY_ENV[2])?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("relay: binding {listen}"))?;
            jitter_relay(listener, target, max_delay).await;
            Ok(())
        })
}

/// nftables drops the packets; installed from Debian when missing.
pub fn ensure_nft() -> anyhow::Result<()> {
    if Command::new("nft").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("installing nftables (apt-get) for the packet-loss rules");
    run("apt-get", &["update", "-qq"])?;
    run("apt-get", &["install", "-y", "-qq", "nftables"])
        .context("nftables is needed for packet loss: apt-get install nftables")
}

/// Forwards every connection accepted on `listener` to `target`, delaying
/// each chunk in each direction by a random 0..=`max_delay` while keeping
/// their order: jitter of mean `max_delay / 2` on a TCP path, where the
/// kernel has no `netem`. Runs until the listener fails.
pub async fn jitter_relay(listener: tokio::net::TcpListener, target: String, max_delay: Duration) {
    while let Ok((inbound, _)) = listener.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                delayed(in_read, out_write, max_delay),
                delayed(out_read, in_write, max_delay)
            );
        });
    }
}

/// One direction of [`jitter_relay`].
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    max_delay: Duration,
) {
    use rand::Rng;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let max_ms = max_delay.as_millis() as u64;
    let mut release = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let delay = Duration::from_millis(rand::thread_rng().gen_range(0..=max_ms));
        // Never before the previous chunk: TCP's byte order is kept.
        release = release.max(Instant::now() + delay);
        if tx.send((release, buffer[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
