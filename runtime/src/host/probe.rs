//! The `probe` capability: echo round trips and the route path from the
//! node to a target.
//!
//! ICMP, in order of preference:
//! 1. an unprivileged ICMP socket (`SOCK_DGRAM`/`IPPROTO_ICMP`), which
//!    Linux gives to the groups in `net.ipv4.ping_group_range` (Debian's
//!    kernel default `1 0` allows none; systemd's sysctl defaults allow
//!    every group);
//! 2. a raw ICMP socket, for a node running as root or with CAP_NET_RAW.
//!
//! Where neither is permitted, `auto` falls back to TCP connect to the
//! port the module names: an accepted or refused connection is an answer
//! (a RST proves the host is there as well as an echo reply does). No
//! external program is run: `ping` may be missing or setuid-less in a
//! container, and its output is not a stable interface.
//!
//! The route path (`trace-path`) sends one echo per time to live and reads
//! the ICMP time-exceeded answers, which only a raw socket receives; on a
//! node without one it is refused with `not-permitted`.
//!
//! ICMP echoes are sent `interval` apart without waiting for each answer
//! (as `ping -i` does), and answers are matched by sequence number: a lost
//! echo costs no more time than the wait for the last one, so a lossy link
//! is measured as fast as a clean one. TCP connects go one after another.
//!
//! Every call is bounded by its arguments' caps (count, timeout, hops);
//! the module's deadline still applies on top.

use crate::bindings::probe::{self, Hop, Method, PingOptions, PingResult, ProbeError};
use crate::host::blocking::Offloaded;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tracing::debug_span;

/// Most echoes one `ping` sends.
pub const MAX_COUNT: u32 = 100;
/// Longest wait for one answer, in milliseconds.
pub const MAX_TIMEOUT_MS: u32 = 5_000;
/// Longest pause between echoes, in milliseconds.
pub const MAX_INTERVAL_MS: u32 = 1_000;
/// Most hops one `trace-path` tries.
pub const MAX_HOPS: u32 = 30;
/// Longest one call keeps probing, whatever its count and timeouts allow
/// (100 echoes of 5 s would be minutes): past it no further probe is sent,
/// and the answer covers the probes sent. A call dropped at the module's
/// deadline leaves its blocking work running; this is what ends it.
pub const MAX_CALL: Duration = Duration::from_secs(30);

const ECHO_REPLY: u8 = 0;
const DEST_UNREACHABLE: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;

/// Host side of `probe` for one module instance.
pub struct Prober {
    module: String,
}

impl Prober {
    pub fn new(module: &str) -> Prober {
        Prober {
            module: module.to_owned(),
        }
    }

    pub fn ping(&mut self, target: String, options: PingOptions) -> Result<PingResult, ProbeError> {
        let _span = debug_span!("probe.ping", module = %self.module, target = %target.escape_debug(), count = options.count).entered();
        if options.count == 0 || options.count > MAX_COUNT {
            return Err(ProbeError::BadRequest(format!(
                "count {} is not between 1 and {MAX_COUNT}",
                options.count
            )));
        }
        if options.timeout_ms == 0 || options.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ProbeError::BadRequest(format!(
                "timeout-ms {} is not between 1 and {MAX_TIMEOUT_MS}",
                options.timeout_ms
            )));
        }
        if options.interval_ms > MAX_INTERVAL_MS {
            return Err(ProbeError::BadRequest(format!(
                "interval-ms {} is above {MAX_INTERVAL_MS}",
                options.interval_ms
            )));
        }
        let address = resolve(&target)?;
        let timeout = Duration::from_millis(options.timeout_ms.into());
        let interval = Duration::from_millis(options.interval_ms.into());
        let icmp = match (options.method, address) {
            (Method::Tcp, _) => None,
            (_, IpAddr::V4(v4)) => match IcmpSocket::open() {
                Ok(socket) => Some((socket, v4)),
                Err(e) if options.method == Method::Icmp || options.tcp_port.is_none() => {
                    return Err(ProbeError::NotPermitted(format!(
                        "this node may not send ICMP echo ({e}); give a TCP port to fall back to"
                    )));
                }
                Err(_) => None,
            },
            (Method::Icmp, IpAddr::V6(_)) | (Method::Auto, IpAddr::V6(_))
                if options.tcp_port.is_none() || options.method == Method::Icmp =>
            {
                return Err(ProbeError::NotPermitted(
                    "ICMP echo is sent to IPv4 targets only; give a TCP port for an IPv6 one"
                        .into(),
                ));
            }
            (_, IpAddr::V6(_)) => None,
        };
        let mut rtts = Vec::new();
        let until = Instant::now() + MAX_CALL;
        let mut sent = 0;
        let method = match icmp {
            Some((socket, v4)) => {
                let (went, answers) = socket
                    .echoes(v4, options.count, interval, timeout, until)
                    .map_err(|e| ProbeError::Io(e.to_string()))?;
                sent = went;
                rtts.extend(
                    answers
                        .into_iter()
                        .flatten()
                        .map(|rtt| rtt.as_micros() as u64),
                );
                Method::Icmp
            }
            None => {
                let Some(port) = options.tcp_port else {
                    return Err(ProbeError::BadRequest("method tcp needs a tcp-port".into()));
                };
                let to = SocketAddr::new(address, port);
                for seq in 0..options.count {
                    if seq > 0 {
                        std::thread::sleep(interval);
                    }
                    if Instant::now() >= until {
                        break;
                    }
                    sent += 1;
                    if let Some(rtt) = tcp_connect(to, timeout) {
                        rtts.push(rtt.as_micros() as u64);
                    }
                }
                Method::Tcp
            }
        };
        Ok(PingResult {
            address: address.to_string(),
            method,
            sent,
            received: rtts.len() as u32,
            rtts_us: rtts,
        })
    }

    pub fn trace_path(
        &mut self,
        target: String,
        max_hops: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Hop>, ProbeError> {
        let _span = debug_span!("probe.trace_path", module = %self.module, target = %target.escape_debug(), max_hops).entered();
        if max_hops == 0 || max_hops > MAX_HOPS {
            return Err(ProbeError::BadRequest(format!(
                "max-hops {max_hops} is not between 1 and {MAX_HOPS}"
            )));
        }
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(ProbeError::BadRequest(format!(
                "timeout-ms {timeout_ms} is not between 1 and {MAX_TIMEOUT_MS}"
            )));
        }
        let IpAddr::V4(v4) = resolve(&target)? else {
            return Err(ProbeError::NotPermitted(
                "the path is traced to IPv4 targets only".into(),
            ));
        };
        let socket = IcmpSocket::open_raw().map_err(|e| {
            ProbeError::NotPermitted(format!(
                "tracing a path needs a raw ICMP socket (root or CAP_NET_RAW): {e}"
            ))
        })?;
        let timeout = Duration::from_millis(timeout_ms.into());
        let until = Instant::now() + MAX_CALL;
        let mut hops = Vec::new();
        for ttl in 1..=max_hops {
            if Instant::now() >= until {
                break;
            }
            let answer = socket
                .echo(v4, Some(ttl), ttl as u16, timeout)
                .map_err(|e| ProbeError::Io(e.to_string()))?;
            let reached = matches!(
                answer,
                Some(Answer {
                    kind: AnswerKind::Reply | AnswerKind::Unreachable,
                    ..
                })
            );
            hops.push(Hop {
                ttl,
                address: answer.as_ref().map(|a| a.from.to_string()),
                rtt_us: answer.as_ref().map(|a| a.rtt.as_micros() as u64),
            });
            if reached {
                break;
            }
        }
        Ok(hops)
    }
}

/// The first address `target` (an IP address or a host name) resolves to,
/// IPv4 preferred.
fn resolve(target: &str) -> Result<IpAddr, ProbeError> {
    if target.is_empty() || target.len() > 253 {
        return Err(ProbeError::Resolve(
            "the target is empty or too long".into(),
        ));
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = (target, 0)
        .to_socket_addrs()
        .map_err(|e| ProbeError::Resolve(format!("`{}`: {e}", target.escape_debug())))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| ProbeError::Resolve(format!("`{}` has no address", target.escape_debug())))
}

/// The handshake time to `to`, or `None` when nobody answered in time. A
/// refused connection is an answer: the host sent the RST.
fn tcp_connect(to: SocketAddr, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Some(start.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(start.elapsed()),
        Err(_) => None,
    }
}

/// An ICMP socket, datagram (unprivileged) or raw.
struct IcmpSocket {
    socket: Socket,
    raw: bool,
    /// Echo identifier of a raw socket (a datagram socket's is the
    /// kernel's, and the kernel only hands it its own answers).
    id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerKind {
    Reply,
    TimeExceeded,
    Unreachable,
}

struct Answer {
    from: Ipv4Addr,
    rtt: Duration,
    kind: AnswerKind,
}

impl IcmpSocket {
    fn open() -> std::io::Result<IcmpSocket> {
        match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(socket) => Ok(IcmpSocket {
                socket,
                raw: false,
                id: 0,
            }),
            Err(dgram) => IcmpSocket::open_raw().map_err(|raw| {
                std::io::Error::new(
                    raw.kind(),
                    format!("ICMP datagram socket: {dgram}; raw socket: {raw}"),
                )
            }),
        }
    }

    fn open_raw() -> std::io::Result<IcmpSocket> {
        static NEXT_ID: AtomicU16 = AtomicU16::new(0);
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        // Every raw ICMP socket sees every ICMP packet: the identifier
        // tells this socket's answers from other probes' (another module,
        // a `ping` running meanwhile).
        let id = (std::process::id() as u16)
            .wrapping_mul(31)
            .wrapping_add(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        Ok(IcmpSocket {
            socket,
            raw: true,
            id,
        })
    }

    /// Sends one echo request (with `ttl`, if given) and waits up to
    /// `timeout` for its answer.
    fn echo(
        &self,
        to: Ipv4Addr,
        ttl: Option<u32>,
        seq: u16,
        timeout: Duration,
    ) -> std::io::Result<Option<Answer>> {
        if let Some(ttl) = ttl {
            self.socket.set_ttl_v4(ttl)?;
        }
        let packet = echo_request(self.id, seq);
        let start = Instant::now();
        self.socket
            .send_to(&packet, &SockAddr::from(SocketAddr::new(IpAddr::V4(to), 0)))?;
        let deadline = start + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            let n = match (&self.socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let rtt = start.elapsed();
            if let Some((from, answered, kind)) = self.parse(&buf[..n], to)
                && answered == seq
            {
                return Ok(Some(Answer { from, rtt, kind }));
            }
        }
    }

    /// Sends `count` echo requests `interval` apart (sequence numbers 0,
    /// 1, ...), not sent past `until`, and collects their replies until
    /// each has had `timeout`. How many went, and the round trip of each
    /// (`None`: no reply in time), in the order sent.
    fn echoes(
        &self,
        to: Ipv4Addr,
        count: u32,
        interval: Duration,
        timeout: Duration,
        until: Instant,
    ) -> std::io::Result<(u32, Vec<Option<Duration>>)> {
        let address = SockAddr::from(SocketAddr::new(IpAddr::V4(to), 0));
        let start = Instant::now();
        let mut sent_at: Vec<Instant> = Vec::new();
        let mut rtts: Vec<Option<Duration>> = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            let next = (sent_at.len() < count as usize && now < until)
                .then(|| start + interval * sent_at.len() as u32);
            if next.is_some_and(|at| now >= at) {
                let seq = sent_at.len() as u16;
                // Before the send: over a veth the answer can be in before
                // `send_to` returns.
                sent_at.push(Instant::now());
                rtts.push(None);
                self.socket.send_to(&echo_request(self.id, seq), &address)?;
                continue;
            }
            let waiting = sent_at
                .iter()
                .zip(&rtts)
                .filter(|(_, rtt)| rtt.is_none())
                .map(|(at, _)| *at + timeout)
                .filter(|expiry| *expiry > now)
                .max();
            let Some(wake) = [next, waiting].into_iter().flatten().min() else {
                return Ok((sent_at.len() as u32, rtts));
            };
            self.socket.set_read_timeout(Some(
                wake.saturating_duration_since(now)
                    .max(Duration::from_micros(100)),
            ))?;
            let n = match (&self.socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let received = Instant::now();
            if let Some((_, seq, AnswerKind::Reply)) = self.parse(&buf[..n], to)
                && let Some(at) = sent_at.get(usize::from(seq))
                && received.duration_since(*at) <= timeout
                && let Some(rtt @ None) = rtts.get_mut(usize::from(seq))
            {
                *rtt = Some(received.duration_since(*at));
            }
        }
    }

    /// An answer to one of this socket's echoes: who sent it, the echo's
    /// sequence number, and what it says.
    fn parse(&self, packet: &[u8], to: Ipv4Addr) -> Option<(Ipv4Addr, u16, AnswerKind)> {
        if self.raw {
            parse_raw(packet, self.id)
        } else {
            parse_dgram(packet).map(|(seq, kind)| (to, seq, kind))
        }
    }
}

/// An ICMP echo request with its checksum (a datagram socket's kernel
/// replaces the identifier and the checksum).
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![0u8; 8 + 16];
    packet[0] = ECHO_REQUEST;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in packet[8..].iter_mut().enumerate() {
        *b = b'a' + i as u8;
    }
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A datagram ICMP socket receives the ICMP message without the IP header,
/// and only answers to its own echoes: an echo reply's sequence number.
fn parse_dgram(icmp: &[u8]) -> Option<(u16, AnswerKind)> {
    (icmp.len() >= 8 && icmp[0] == ECHO_REPLY)
        .then(|| (u16::from_be_bytes([icmp[6], icmp[7]]), AnswerKind::Reply))
}

/// A raw socket receives whole IP packets, any ICMP message to the host:
/// an echo reply to one of this socket's echoes (identifier `id`), or an
/// error carrying the start of one; with that echo's sequence number.
fn parse_raw(packet: &[u8], id: u16) -> Option<(Ipv4Addr, u16, AnswerKind)> {
    let (from, icmp) = split_ipv4(packet)?;
    if icmp.len() < 8 {
        return None;
    }
    let ours = |echo: &[u8]| {
        (echo.len() >= 8 && echo[4..6] == id.to_be_bytes())
            .then(|| u16::from_be_bytes([echo[6], echo[7]]))
    };
    match icmp[0] {
        ECHO_REPLY => ours(icmp).map(|seq| (from, seq, AnswerKind::Reply)),
        TIME_EXCEEDED | DEST_UNREACHABLE => {
            let (_, inner) = split_ipv4(&icmp[8..])?;
            if inner.first() != Some(&ECHO_REQUEST) {
                return None;
            }
            let kind = if icmp[0] == TIME_EXCEEDED {
                AnswerKind::TimeExceeded
            } else {
                AnswerKind::Unreachable
            };
            ours(inner).map(|seq| (from, seq, kind))
        }
        _ => None,
    }
}

/// The source address and payload of an IPv4 packet.
fn split_ipv4(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 || packet.len() < header {
        return None;
    }
    let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((from, &packet[header..]))
}

impl probe::Host for Offloaded<Prober> {
    async fn ping(
        &mut self,
        target: String,
        options: PingOptions,
    ) -> wasmtime::Result<Result<PingResult, ProbeError>> {
        self.run("probe.ping", move |p| p.ping(target, options))
            .await
    }

    async fn trace_path(
        &mut self,
        target: String,
        max_hops: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<Hop>, ProbeError>> {
        self.run("probe.trace-path", move |p| {
            p.trace_path(target, max_hops, timeout_ms)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(checksum(&packet), 0);
        assert_eq!(packet[0], ECHO_REQUEST);
    }

    #[test]
    fn raw_answers_are_matched_by_id_and_seq() {
        let ip = |payload: &[u8], from: [u8; 4]| {
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            p.extend_from_slice(&from);
            p.extend_from_slice(&[127, 0, 0, 1]);
            p.extend_from_slice(payload);
            p
        };
        let mut reply = echo_request(9, 3);
        reply[0] = ECHO_REPLY;
        let packet = ip(&reply, [10, 0, 0, 1]);
        assert_eq!(
            parse_raw(&packet, 9),
            Some((Ipv4Addr::new(10, 0, 0, 1), 3, AnswerKind::Reply))
        );
        assert_eq!(parse_raw(&packet, 8), None);
        // Time exceeded from a router, quoting our echo.
        let mut exceeded = vec![TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0];
        exceeded.extend(ip(&echo_request(9, 3), [127, 0, 0, 1]));
        let packet = ip(&exceeded, [192, 168, 1, 1]);
        assert_eq!(
            parse_raw(&packet, 9),
            Some((Ipv4Addr::new(192, 168, 1, 1), 3, AnswerKind::TimeExceeded))
        );
        // Our own request, looped back to a raw socket, is not an answer.
        assert_eq!(parse_raw(&ip(&echo_request(9, 3), [127, 0, 0, 1]), 9), None);
    }

    /// Needs an ICMP socket: root, or a group in `ping_group_range`.
    #[test]
    fn pipelined_echoes_are_matched_to_their_replies_by_sequence() {
        let socket = IcmpSocket::open().expect(
            "this test sends ICMP echoes to 127.0.0.1: run it as root or in a group \
             net.ipv4.ping_group_range admits",
        );
        let until = Instant::now() + MAX_CALL;
        // All 20 sent at once: the replies come back to whichever wait is on.
        let (sent, rtts) = socket
            .echoes(
                Ipv4Addr::LOCALHOST,
                20,
                Duration::ZERO,
                Duration::from_secs(2),
                until,
            )
            .unwrap();
        assert_eq!(sent, 20);
        assert_eq!(rtts.len(), 20);
        assert!(rtts.iter().all(Option::is_some), "{rtts:?}");
        // Spaced out, and none sent past `until`.
        let (sent, rtts) = socket
            .echoes(
                Ipv4Addr::LOCALHOST,
                3,
                Duration::from_millis(10),
                Duration::from_secs(2),
                until,
            )
            .unwrap();
        assert_eq!((sent, rtts.iter().flatten().count()), (3, 3));
        let (sent, _) = socket
            .echoes(
                Ipv4Addr::LOCALHOST,
                3,
                Duration::ZERO,
                Duration::from_secs(2),
                Instant::now(),
            )
            .unwrap();
        assert_eq!(sent, 0);
    }

    #[test]
    fn bad_arguments_are_error_values() {
        let mut p = Prober::new("t");
        let options = PingOptions {
            count: 0,
            interval_ms: 0,
            timeout_ms: 100,
            tcp_port: None,
            method: Method::Auto,
        };
        assert!(matches!(
            p.ping("127.0.0.1".into(), options),
            Err(ProbeError::BadRequest(_))
        ));
        assert!(matches!(
            p.trace_path("127.0.0.1".into(), 99, 100),
            Err(ProbeError::BadRequest(_))
        ));
    }

    #[test]
    fn tcp_connect_counts_a_refusal_as_an_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        drop(listener);
        assert!(tcp_connect(open, Duration::from_secs(1)).is_some());
    }
}
