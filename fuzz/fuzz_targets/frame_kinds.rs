//! Frames of every `MessageKind` built around arbitrary bodies, so each
//! kind's fields are decoded (a flat byte target spends most of its time
//! on the variant indices). Input: `[kind][flags][fields...]`, where
//! `kind % ALL.len()` picks `MessageKind::ALL[kind]`, whose variant indices are
//! written before the fields, and flag bit 0 deflates the body as `encode`
//! does. The frame then goes through `decode_header` and every body decoder,
//! and must decode as the kind it was built as.
#![no_main]

use agad_fuzz::{check_body, header};
use agad_protocol::wire::{self, HEADER_LEN, MessageKind};
use libfuzzer_sys::fuzz_target;

/// `Message`'s and `Control`'s variant indices (bincode: one byte each
/// below 251) for each kind, in `MessageKind::ALL` order.
fn prefix(kind: MessageKind) -> &'static [u8] {
    match kind {
        MessageKind::Hello => &[0, 0],
        MessageKind::Welcome => &[0, 1],
        MessageKind::AssignDomain => &[0, 2],
        MessageKind::Replicate => &[0, 3],
        MessageKind::ReplicaAck => &[0, 4],
        MessageKind::Enroll => &[0, 5],
        MessageKind::Deploy => &[0, 6],
        MessageKind::DeployAck => &[0, 7],
        MessageKind::KeepAlive => &[0, 8],
        MessageKind::Ack => &[0, 9],
        MessageKind::Unassign => &[0, 10],
        MessageKind::Redirect => &[0, 11],
        MessageKind::StepDown => &[0, 12],
        MessageKind::Alarm => &[1],
        MessageKind::Reports => &[2],
        MessageKind::Attest => &[0, 13],
        MessageKind::Attestation => &[0, 14],
        MessageKind::Run => &[0, 15],
        MessageKind::DeployProgress => &[0, 16],
    }
}

fuzz_target!(|data: &[u8]| {
    let [k, flags, fields @ ..] = data else {
        return;
    };
    let kind = MessageKind::ALL[usize::from(*k) % MessageKind::ALL.len()];
    let mut plain = prefix(kind).to_vec();
    plain.extend_from_slice(fields);
    let mut body = Vec::with_capacity(plain.len() + 1);
    if flags & 1 == 1 {
        body.push(1);
        body.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&plain, 1));
    } else {
        body.push(0);
        body.extend_from_slice(&plain);
    }
    let h = header(body.len());
    let len = wire::decode_header(&h).expect("a header this side wrote");
    assert_eq!(len, body.len());
    let mut frame = h.to_vec();
    frame.extend_from_slice(&body);
    if let Some(decoded) = check_body(&frame[HEADER_LEN..]) {
        assert_eq!(decoded, kind, "built as {kind}, decoded as {decoded}");
    }
});
