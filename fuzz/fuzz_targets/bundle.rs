//! A module bundle (`.agad` file, BGC/BC/node store entry) as a receiver
//! reads it: `Bundle::from_bytes`, then `verify` against a trusted key (the
//! one the seeds are signed with, so mutations reach the signature, hash and
//! validity checks). Properties: see `agad_fuzz::check_bundle`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agad_fuzz::check_bundle(data);
});
