//! The frame decoder as a receiver runs it on a peer's bytes: a 6-byte
//! header (`decode_header`), then the body through `decode_body` and
//! `decode_body_from` with both `Sender`s. Reaches every message type, the
//! deflate path and the decoding bounds (nesting, decoded heap).
//! Properties: see `agad_fuzz::check_body`.
#![no_main]

use agad_protocol::wire::HEADER_LEN;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((h, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    agad_fuzz::check_header(h);
    agad_fuzz::check_body(body);
});
