//! An author's `manifest.toml` (`ManifestSpec::from_toml`), then what
//! `agad module sign` does with it: a manifest that parses signs into a
//! bundle that reads back and verifies (until it expires).
#![no_main]

use agad_fuzz::{NOW, publisher, trusted};
use agad_protocol::{Bundle, BundleError, ManifestSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = ManifestSpec::from_toml(text) else {
        return;
    };
    let days = spec.valid_for_days;
    let bundle = Bundle::sign(spec, b"\0asm\x01\0\0\0".to_vec(), &publisher(), NOW);
    let again = Bundle::from_bytes(&bundle.to_bytes()).expect("a signed bundle reads back");
    assert_eq!(again, bundle);
    match again.verify(&[trusted()], NOW) {
        Ok(()) => assert!(days > 0),
        Err(BundleError::Expired { .. }) => assert_eq!(days, 0),
        Err(e) => panic!("a freshly signed bundle does not verify: {e}"),
    }
});
