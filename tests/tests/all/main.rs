//! Whole-system tests, built as one binary: real processes, real sockets,
//! real wasm components built from this repository.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

mod hostile;
mod inspectors;
mod network;
mod os;
mod runtime;
mod snmp;
mod specialists;
