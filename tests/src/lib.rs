//! Whole-system test harness for AGAD: helpers that start the real programs
//! the system talks to (Debian's `snmpd`, and later managers and nodes), so
//! that the tests in `tests/all/` exercise real sockets, real processes and
//! real protocol stacks rather than fakes.
//!
//! It is not a mocking library and holds no assertions of its own: a helper
//! either gives the test a working process or panics with that process's log.
//!
//! Layout:
//! - [`snmpd`]: a throw-away net-snmp agent (v2c community and a v3
//!   authPriv user) on a free loopback UDP port, optionally inside a network
//!   namespace; killed on drop.

pub mod snmpd;
