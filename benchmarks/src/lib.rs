//! Shared pieces of AGAD's benchmark programs (`src/bin/*.rs`).
//!
//! What it is for: the parts every benchmark needs and that must be the same
//! in all of them — the built-in inspectors signed with a throw-away key and
//! the configuration they are measured with, the "central SNMP poller" they
//! are compared against (OID discovery, one GET round, a byte-counting UDP
//! relay), `/proc` readings of a process's memory and CPU, and plain
//! statistics. What it is not for: assertions. Benchmarks print figures and
//! leave judging them to people (house style: benchmarks are programs).
//!
//! Layout:
//! - [`args`]: a tiny `--flag [value]` reader shared by the programs.
//! - [`builtins`]: signing the built-in inspectors; their benchmark configs.
//! - [`detection`]: a fault's onset → its alarm at the top manager.
//! - [`hierarchy`]: a top manager and domain manager in-process, simulated
//!   nodes with their own certificates (deploy latency, manager capacity).
//! - [`processes`]: the `agad` binary beside the benchmarks and the
//!   settings they run the shared harness ([`agad_tests::hierarchy`]) with:
//!   a whole deployment as real `agad` processes (alarm latency, wire bytes).
//! - [`poller`]: SNMP walks, the poll set a central station would GET, and
//!   the counting relay.
//! - [`procfs`]: RSS and CPU time of a process, root check.
//! - [`stats`]: mean and percentiles of durations; number formatting.

pub mod args;
pub mod builtins;
pub mod detection;
pub mod hierarchy;
pub mod poller;
pub mod processes;
pub mod procfs;
pub mod stats;
