//! Whole-system tests, built as one binary: real processes, real sockets.

mod os;
mod snmp;
