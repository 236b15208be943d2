//! The plain data that AGAD's parts exchange, with no I/O of its own.
//!
//! What it is for: the types every process agrees on — module manifests and
//! their Ed25519 signatures, signed module bundles, and the alarms and reports
//! that leave a node. What it is not for: networking, storage or running
//! modules; those live in the crates that do I/O and depend on this one.
//!
//! Layout:
//! - [`attest`]: a parent's nonce and a child's proof that it holds the
//!   exact code it was given.
//! - [`manifest`]: what a module is and may do (the author's TOML and the
//!   signed, filled-in form).
//! - [`keys`]: signing keys, trusted public keys and their ids.
//! - [`bundle`]: a manifest, its signature and the exact wasm bytes, as one
//!   file (`.agad`), and the checks a receiver makes before compiling it.
//! - [`duration`]: `500ms` / `10s` / `2m` / `1h`, as operators write them.
//! - [`message`]: alarms, summaries and reports as they travel upward.
//! - [`run`]: specialist runs and the knowledge base's cases (alarm,
//!   rule, results, state).
//! - [`source`]: `file:line:column: reason` errors for files operators
//!   write (topology, rules), and the byte-span → position computation.
//! - [`status`]: the typed state of an element's components (keep-alives,
//!   `agad status --json`).
//! - [`text`]: peer text made safe to log ([`text::excerpt`]) and what a
//!   name may be.
//! - [`topology`]: BTPG (the network as an operator describes it) and BTPD
//!   (one domain's slice).
//! - [`wire`]: the messages between levels and their one codec (framing,
//!   protocol version, size cap).

pub mod attest;
pub mod bundle;
pub mod duration;
pub mod keys;
pub mod manifest;
pub mod message;
pub mod run;
pub mod source;
pub mod status;
pub mod text;
pub mod topology;
pub mod wire;

pub use bundle::{Bundle, BundleError, MAX_BUNDLE_BYTES};
pub use duration::parse_duration;
pub use keys::{KeyError, KeyId, PublicKey, SecretKey};
pub use manifest::{
    Area, Capability, ConfigKey, ConfigType, Emits, Kind, Limits, Manifest, ManifestSpec,
    NameError, SpecError, validate_module_name,
};
