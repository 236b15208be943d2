//! Whole-system tests, built as one binary: real processes, real sockets,
//! real wasm components built from this repository.

mod inspectors;
mod os;
mod runtime;
mod snmp;
