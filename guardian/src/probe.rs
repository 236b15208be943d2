//! Is a silent element's host up? The thesis' confirmation: ICMP echo
//! requests to the host and, where ICMP is not permitted or filtered, a TCP
//! connection attempt. A host that answers either way is up (the element's
//! process failed: "agent down"); one that answers neither within the
//! deadline is down, or its link is ("host down").
//!
//! ICMP goes through a datagram ICMP socket where the kernel allows it
//! (`net.ipv4.ping_group_range`), else a raw socket (root or
//! `CAP_NET_RAW`); each request carries a random token, so replies to other
//! programs' pings (a raw socket sees them all) never count. A TCP attempt
//! that is refused counts as an answer too: only a live host sends the
//! reset.

use rand::Rng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How to probe one host.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Echo requests sent (spread over the first half of the deadline).
    pub echoes: u32,
    /// How long to wait for any answer.
    pub deadline: Duration,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            echoes: 3,
            deadline: Duration::from_secs(1),
        }
    }
}

/// Where to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub ip: IpAddr,
    /// A port to try a TCP connection on (the element's own, if it listens).
    pub tcp_port: Option<u16>,
}

/// What the probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub reachable: bool,
    /// Nothing could be sent: this host has no route to the target (its own
    /// interface or network is down). Nothing follows about the target.
    pub local_failure: bool,
    /// What answered, or what was tried without an answer, for the alarm.
    pub evidence: String,
}

/// Probes `target` by ICMP echo and TCP at once; at most `config.deadline`.
pub async fn probe(target: Target, config: &ProbeConfig) -> Probe {
    let (echoes, deadline) = (config.echoes.max(1), config.deadline);
    let icmp = tokio::task::spawn_blocking(move || echo(target.ip, echoes, deadline));
    let tcp = async {
        match target.tcp_port {
            Some(port) => Some(tcp(SocketAddr::new(target.ip, port), deadline).await),
            None => None,
        }
    };
    let (icmp, tcp) = tokio::join!(icmp, tcp);
    let icmp = icmp.unwrap_or_else(|e| Err(Failed::other(format!("ICMP probe failed: {e}"))));
    match (icmp, tcp) {
        (Ok(Some(rtt)), _) => Probe {
            reachable: true,
            local_failure: false,
            evidence: format!(
                "{} answers ICMP echo ({:.1} ms)",
                target.ip,
                rtt.as_secs_f64() * 1000.0
            ),
        },
        (_, Some(Ok(answer))) => Probe {
            reachable: true,
            local_failure: false,
            evidence: format!("{} answers TCP: {answer}", target.ip),
        },
        (icmp, tcp) => {
            let local_failure =
                matches!(&icmp, Err(f) if f.local) || matches!(&tcp, Some(Err(f)) if f.local);
            let icmp = match icmp {
                Ok(_) => format!("no answer to {echoes} ICMP echo requests"),
                Err(e) => e.message,
            };
            let tcp = match tcp {
                Some(Err(e)) => format!("; {}", e.message),
                _ => String::new(),
            };
            Probe {
                reachable: false,
                local_failure,
                evidence: format!(
                    "{} unreachable within {} ms: {icmp}{tcp}",
                    target.ip,
                    deadline.as_millis()
                ),
            }
        }
    }
}

/// Why one way of probing got no answer.
#[derive(Debug)]
struct Failed {
    message: String,
    /// This host could not send at all (no route: its own network is down).
    local: bool,
}

impl Failed {
    fn other(message: String) -> Failed {
        Failed {
            message,
            local: false,
        }
    }

    fn of(context: String, e: &std::io::Error) -> Failed {
        Failed {
            message: format!("{context}: {e}"),
            local: e.kind() == std::io::ErrorKind::NetworkUnreachable,
        }
    }
}

/// A TCP connection attempt: `Ok` says how the host answered.
async fn tcp(address: SocketAddr, deadline: Duration) -> Result<String, Failed> {
    match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(format!("port {} open", address.port())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Ok(format!("port {} refused (the host is up)", address.port()))
        }
        Ok(Err(e)) => Err(Failed::of(format!("TCP to port {}", address.port()), &e)),
        Err(_) => Err(Failed::other(format!(
            "no TCP answer on port {}",
            address.port()
        ))),
    }
}

/// Sends `count` echo requests to `ip`; the round trip of the first
/// answer, `None` if none came by `deadline`, `Err` if ICMP cannot be used.
fn echo(ip: IpAddr, count: u32, deadline: Duration) -> Result<Option<Duration>, Failed> {
    let (domain, protocol) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    // A raw IPv4 socket reads the IP header too; a datagram one does not.
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, false),
        Err(_) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            Ok(s) => (s, true),
            Err(e) => return Err(Failed::other(format!("ICMP not permitted here ({e})"))),
        },
    };
    let token: [u8; 8] = rand::thread_rng().r#gen();
    let id: u16 = rand::thread_rng().r#gen();
    let to = SockAddr::from(SocketAddr::new(ip, 0));
    let started = Instant::now();
    let spacing = deadline / (2 * count);
    let mut sent = 0u32;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if sent < count && now >= started + spacing * sent {
            let request = echo_request(ip.is_ipv6(), id, sent as u16, &token);
            socket
                .send_to(&request, &to)
                .map_err(|e| Failed::of(format!("cannot send ICMP echo to {ip}"), &e))?;
            sent += 1;
        }
        let next_send = if sent < count {
            started + spacing * sent
        } else {
            started + deadline
        };
        let until = next_send.min(started + deadline);
        let Some(wait) = until.checked_duration_since(Instant::now()) else {
            if sent >= count {
                return Ok(None);
            }
            continue;
        };
        socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| Failed::other(e.to_string()))?;
        match (&socket).read(&mut buf) {
            Ok(n) => {
                let packet = &buf[..n];
                let icmp = if raw && ip.is_ipv4() {
                    let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
                    packet.get(header..).unwrap_or_default()
                } else {
                    packet
                };
                if is_reply(icmp, ip.is_ipv6(), &token) {
                    return Ok(Some(started.elapsed()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Failed::of("ICMP receive failed".into(), &e)),
        }
        if sent >= count && started.elapsed() >= deadline {
            return Ok(None);
        }
    }
}

/// An echo request: type, code, checksum, identifier, sequence, token.
fn echo_request(v6: bool, id: u16, seq: u16, token: &[u8; 8]) -> Vec<u8> {
    let mut packet = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(token);
    packet.extend_from_slice(b"agad-guardian");
    // The kernel computes ICMPv6 checksums itself (they cover the IPv6
    // pseudo-header), and those of datagram ICMP sockets.
    if !v6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// Whether `icmp` is an echo reply carrying `token`. The identifier is not
/// compared: a datagram socket's kernel rewrites it.
fn is_reply(icmp: &[u8], v6: bool, token: &[u8; 8]) -> bool {
    let reply = if v6 { 129 } else { 0 };
    icmp.len() >= 16 && icmp[0] == reply && icmp[1] == 0 && &icmp[8..16] == token
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // Type 8, id 1, seq 1, no payload: 0xf7fd, as ping computes it.
        let packet = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&packet), 0xf7fd);
        // A packet with its checksum in place sums to zero.
        let request = echo_request(false, 7, 3, b"12345678");
        assert_eq!(checksum(&request), 0);
    }

    #[test]
    fn only_an_echo_reply_with_our_token_counts() {
        let token = *b"abcdefgh";
        let mut reply = echo_request(false, 1, 0, &token);
        assert!(!is_reply(&reply, false, &token), "a request is no reply");
        reply[0] = 0;
        assert!(is_reply(&reply, false, &token));
        assert!(!is_reply(&reply, false, b"ABCDEFGH"));
        assert!(!is_reply(&reply[..10], false, &token));
    }

    #[tokio::test]
    async fn loopback_answers_and_a_closed_port_proves_the_host_is_up() {
        // ICMP to 127.0.0.1 needs a datagram ICMP socket or root; the TCP
        // half answers either way: a refused connection is an answer.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let probe = probe(
            Target {
                ip: "127.0.0.1".parse().unwrap(),
                tcp_port: Some(port),
            },
            &ProbeConfig::default(),
        )
        .await;
        assert!(probe.reachable, "{probe:?}");
    }
}
