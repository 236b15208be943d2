//! Host bindings generated from `wit/`: one `bindgen!` per world, the
//! specialist world reusing the inspector's import bindings so that every
//! capability has exactly one Rust trait.

pub mod inspector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agad:platform/inspector",
    });
}

pub mod specialist {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agad:platform/specialist",
        with: {
            "agad:platform": super::inspector::agad::platform,
        },
    });
}

pub use inspector::agad::platform::{clock, log, os, snmp, state, types};
