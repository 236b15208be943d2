//! Whole-system test harness for AGAD: helpers that start the real programs
//! the system talks to (Debian's `snmpd`) and the system itself (the top
//! manager, domain managers and nodes as `agad` processes), so that the
//! tests in `tests/all/` and `agad/tests/`, and the benchmarks, exercise
//! real sockets, real processes and real protocol stacks rather than fakes.
//!
//! It is not a mocking library and holds no assertions of its own: a helper
//! either gives the caller a working process or says why not, with that
//! process's log.
//!
//! Layout:
//! - [`faults`]: faults injected on this machine and undone on drop (a
//!   CPU hog, a small service killed, a small tmpfs filled).
//! - [`hierarchy`]: a whole deployment as real `agad` processes in a
//!   temporary folder (certificates, publishing, topology, enrollment), and
//!   stopping, killing, restarting, freezing and thawing them by name.
//! - [`peer`]: raw TLS peers written by hand, for tests that play an
//!   attacker holding a certificate.
//! - [`netns`]: network namespaces with many interfaces (needs root).
//! - [`network`]: a switched network of separate hosts, one namespace each,
//!   with real faults (interface down, packet loss) and a jitter relay
//!   (needs root).
//! - [`snmpd`]: a throw-away net-snmp agent (v2c community and a v3
//!   authPriv user) on a free loopback UDP port, optionally inside a network
//!   namespace; killed on drop.

pub mod faults;
pub mod hierarchy;
pub mod netns;
pub mod network;
pub mod peer;
pub mod snmpd;
