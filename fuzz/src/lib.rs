//! What the fuzz targets check, shared with the seed generator
//! (`examples/seeds.rs`) so that every seed is known to take the deep path.
//!
//! A target panics (libFuzzer reports a crash) only when a property below
//! breaks; an input the code refuses with an error is the expected outcome
//! for almost every input and is not a finding.

use agad_protocol::wire::{
    self, CodecError, HEADER_LEN, MAX_FRAME_LEN, Message, MessageKind, PROTOCOL_VERSION, Sender,
};
use agad_protocol::{Bundle, PublicKey, SecretKey};

/// The clock every target uses, so a run is reproducible: seeds are signed
/// at [`NOW`] and stay valid for a year.
pub const NOW: u64 = 1_800_000_000;

/// Longest error text a decoder may produce for a peer's frame: errors are
/// logged, and nothing from a peer may be logged unbounded (issue 8 item 1).
pub const MAX_ERROR_TEXT: usize = 1024;

/// The publisher key the seed bundles are signed with and the bundle target
/// trusts. Fixed, so a mutated seed still names a trusted signer and
/// reaches the signature and hash checks.
pub fn publisher() -> SecretKey {
    SecretKey::from_text(
        "agad-secret-key 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n",
    )
    .expect("a valid key line")
}

pub fn trusted() -> PublicKey {
    publisher().public()
}

/// `bytes` as a frame header: the body length and the current version.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    h
}

/// Every way a receiver decodes one body, and what must hold between them:
/// - the three decoders agree: a body any of them accepts decodes to the
///   same message, and the direction check refuses exactly the kinds
///   `may_come_from` says that end may not send;
/// - an accepted message survives `encode` → `decode_header` →
///   `decode_body` unchanged (compared as bytes, so NaN floats compare;
///   see [`round_trip`]);
/// - every error's text is short enough to log.
///
/// Returns the message kind when the body decoded.
pub fn check_body(body: &[u8]) -> Option<MessageKind> {
    let any = wire::decode_body(body);
    let from_parent = wire::decode_body_from(body, Sender::Parent, &mut wire::History::default());
    let from_child = wire::decode_body_from(body, Sender::Child, &mut wire::History::default());
    for result in [&any, &from_parent, &from_child] {
        if let Err(e) = result {
            check_error(e);
        }
    }
    let message = match any {
        Ok(message) => message,
        Err(_) => {
            // A direction check never makes a malformed body decode.
            assert!(from_parent.is_err() && from_child.is_err());
            return None;
        }
    };
    let kind = MessageKind::of(&message);
    assert_eq!(message.kind(), kind.as_str());
    for (from, result) in [(Sender::Parent, &from_parent), (Sender::Child, &from_child)] {
        match result {
            Ok(m) => {
                assert!(kind.may_come_from(from), "{kind} accepted from a {from}");
                assert_eq!(wire::encode_value(m), wire::encode_value(&message));
            }
            Err(CodecError::Forbidden { kind: k, from: f }) => {
                assert!(!kind.may_come_from(from), "{kind} refused from a {from}");
                assert_eq!((*k, *f), (kind, from));
            }
            Err(e) => {
                panic!("decode_body accepted a {kind} that decode_body_from({from}) refused: {e}")
            }
        }
    }
    round_trip(&message);
    Some(kind)
}

/// Below this, a round trip also goes through `encode` (deflate included);
/// above, deflating at level 6 would cost more than the decoding under
/// test, so the body is re-encoded plain.
const FULL_ROUND_TRIP: usize = 4096;

fn round_trip(message: &Message) {
    let plain = wire::encode_value(message);
    let frame = if plain.len() < FULL_ROUND_TRIP {
        wire::encode(message).expect("a decoded message encodes")
    } else {
        let mut frame = header(plain.len() + 1).to_vec();
        frame.push(0);
        frame.extend_from_slice(&plain);
        frame
    };
    let (h, body) = frame.split_at(HEADER_LEN);
    let h: &[u8; HEADER_LEN] = h.try_into().expect("split at HEADER_LEN");
    // A body inflated to exactly the cap is one byte too long plain.
    if body.len() <= MAX_FRAME_LEN {
        assert_eq!(wire::decode_header(h).expect("own header"), body.len());
    }
    let again = wire::decode_body(body).expect("an encoded message decodes");
    assert_eq!(wire::encode_value(&again), plain);
}

/// A header from a peer: accepted only with this version and a length the
/// receiver is willing to allocate as the body arrives.
pub fn check_header(h: &[u8; HEADER_LEN]) {
    match wire::decode_header(h) {
        Ok(len) => {
            assert!(len <= MAX_FRAME_LEN);
            assert_eq!(u16::from_be_bytes([h[4], h[5]]), PROTOCOL_VERSION);
        }
        Err(e) => check_error(&e),
    }
}

pub fn check_error(e: &CodecError) {
    let text = e.to_string();
    assert!(
        text.len() <= MAX_ERROR_TEXT,
        "a decoding error of {} bytes would be logged: {}...",
        text.len(),
        text.chars().take(200).collect::<String>()
    );
}

/// A bundle file or replica entry: parse, then every check a receiver makes.
/// What parses must write back the same bytes, and only the trusted key can
/// have signed it.
pub fn check_bundle(bytes: &[u8]) {
    let Ok(bundle) = Bundle::from_bytes(bytes) else {
        return;
    };
    // Compared decoded, not as bytes: bincode also reads varints written
    // longer than needed, which is harmless (the signature covers the
    // manifest as re-encoded by `canonical_bytes`).
    let again = Bundle::from_bytes(&bundle.to_bytes()).expect("a written bundle reads back");
    assert_eq!(again, bundle, "a bundle reads back differently");
    let verdict = bundle.verify(&[trusted()], NOW);
    assert!(
        bundle.verify(&[], NOW).is_err(),
        "verified with no trusted key"
    );
    if verdict.is_ok() {
        // Accepted bytes are exactly the signed ones; the same bundle
        // without them never verifies.
        assert!(bundle.without_bytes().verify(&[trusted()], NOW).is_err());
    }
    let _ = bundle.without_bytes().has_bytes();
}

/// An SNMP answer `[mode][bytes...]` (see the `snmp` target) parsed on the
/// session `mode` picks and walked as the node walks it. Returns how many
/// varbinds converted, when the PDU parsed.
pub fn check_snmp(data: &[u8]) -> Option<Result<usize, String>> {
    let (mode, answer) = data.split_first()?;
    // A buffer of its own: the v3 parser writes into the bytes it is given
    // through a shared reference (it zeroes the HMAC field in place), which
    // it does to the node's receive buffer but must not do to libFuzzer's
    // input (libFuzzer would report "fuzz target overwrites its const input").
    let buf = answer.to_vec();
    let mut security = snmp_walk::sessions()[usize::from(mode % 4)].clone();
    let len = buf.len();
    let pdu = match security.as_mut() {
        None => snmp2::Pdu::from_bytes(&buf),
        Some(security) => snmp2::Pdu::from_bytes_with_security(&buf, Some(security)),
    }
    .ok()?;
    let _ = (
        pdu.req_id,
        pdu.error_status,
        pdu.error_index,
        pdu.message_type,
    );
    Some(snmp_walk::varbinds(pdu.varbinds, len).map(|v| v.len()))
}

/// The node's conversion of an SNMP answer, as it runs in
/// runtime/src/host/snmp.rs: `oid_text`, `is_exception` and `convert_value`
/// are that file's own text, copied by build.rs at every build (see there);
/// [`snmp_walk::varbinds`] is the loop of its `exchange`.
pub mod snmp_walk {
    #![allow(dead_code)]

    use snmp2::Value as Raw;
    use snmp2::v3;
    use std::sync::OnceLock;

    /// The WIT `snmp` interface's `value` (wit/snmp.wit), as wasmtime's
    /// bindgen names it in the runtime's `crate::bindings::snmp`.
    pub mod snmp {
        #[derive(Debug, Clone, PartialEq)]
        pub enum Value {
            Integer(i64),
            OctetString(Vec<u8>),
            ObjectId(String),
            IpAddress((u8, u8, u8, u8)),
            Counter32(u32),
            Unsigned32(u32),
            Timeticks(u32),
            Counter64(u64),
            Opaque(Vec<u8>),
            Boolean(bool),
            Null,
            NoSuchObject,
            NoSuchInstance,
            EndOfMibView,
        }
    }

    include!(concat!(env!("OUT_DIR"), "/runtime_snmp.rs"));

    /// Engine id, boots and time the "after discovery" sessions hold (and the
    /// v3 seeds carry).
    pub const ENGINE_ID: &[u8] = b"\x80\x00\x1f\x88\x80agad-fuzz";
    pub const BOOTS: i64 = 3;
    pub const TIME: i64 = 1000;

    /// The four sessions, built once: deriving USM keys from passwords hashes a
    /// megabyte, which would otherwise dominate every run.
    pub fn sessions() -> &'static [Option<v3::Security>; 4] {
        static SESSIONS: OnceLock<[Option<v3::Security>; 4]> = OnceLock::new();
        SESSIONS.get_or_init(|| {
            [
                None,
                Some(v3::Security::new(b"agad", b"").with_auth(v3::Auth::NoAuthNoPriv)),
                Some(
                    v3::Security::new(b"agad", b"")
                        .with_auth(v3::Auth::NoAuthNoPriv)
                        .with_engine_id(ENGINE_ID)
                        .expect("no key to derive")
                        .with_engine_boots_and_time(BOOTS, TIME),
                ),
                Some(
                    v3::Security::new(b"agad", b"auth-password")
                        .with_auth_protocol(v3::AuthProtocol::Sha1)
                        .with_auth(v3::Auth::AuthPriv {
                            cipher: v3::Cipher::Aes128,
                            privacy_password: b"priv-password".to_vec(),
                        })
                        .with_engine_id(ENGINE_ID)
                        .expect("keys derive from passwords")
                        .with_engine_boots_and_time(BOOTS, TIME),
                ),
            ]
        })
    }

    /// What the node makes of an answer's varbinds: arcs and values, or the
    /// error its module would see. Output is bounded by the answer's size.
    pub fn varbinds(
        varbinds: snmp2::Varbinds<'_>,
        answer_len: usize,
    ) -> Result<Vec<(String, snmp::Value)>, String> {
        let mut out = Vec::new();
        for (oid, raw) in varbinds {
            let arcs: Vec<u64> = oid
                .iter()
                .ok_or_else(|| "varbind OID with an oversized arc".to_owned())?
                .collect();
            let value = convert_value(raw)?;
            let _ = is_exception(&value);
            out.push((oid_text(&arcs), value));
            // Each varbind takes at least a few bytes of the answer.
            assert!(out.len() <= answer_len, "more varbinds than bytes");
        }
        Ok(out)
    }
}
