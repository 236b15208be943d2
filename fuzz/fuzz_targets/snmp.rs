//! An SNMP agent's answer as the node's `snmp` capability handles it: the
//! `snmp2` crate's PDU parser (same version and features as runtime/), then
//! the node's own conversion of every varbind (`agad_fuzz::snmp_walk`: the
//! runtime's functions, copied at build time).
//!
//! Input: `[mode][answer...]`. `mode % 4` picks the session the answer
//! arrives on: 0 v2c; 1 v3 before engine discovery; 2 v3 noAuthNoPriv after
//! discovery; 3 v3 authPriv (SHA/AES) after discovery, as the runtime's
//! `security_of` builds them (see `agad_fuzz::check_snmp`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agad_fuzz::check_snmp(data);
});
