//! Host bindings generated from `wit/`: one `bindgen!` per world, the
//! specialist world reusing the inspector's import bindings so that every
//! capability has exactly one Rust trait.
//!
//! Calls into a module are async (the node drops a call that outlives the
//! module's deadline, wherever the guest is waiting), and so are the
//! capabilities that may block (os, snmp, state, disk, probe, service): their work runs on the
//! node's bounded pool for blocking host work ([`crate::host::blocking`]),
//! never on the threads that run modules. They are `trappable` because a
//! host-side failure of that pool (a panicked worker) is not the guest's to
//! handle.

pub mod inspector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agad:platform/inspector",
        imports: {
            "agad:platform/os": async | trappable,
            "agad:platform/snmp": async | trappable,
            "agad:platform/state": async | trappable,
            "agad:platform/disk": async | trappable,
            "agad:platform/probe": async | trappable,
            "agad:platform/service": async | trappable,
        },
        exports: { default: async },
    });
}

pub mod specialist {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agad:platform/specialist",
        exports: { default: async },
        with: {
            "agad:platform": super::inspector::agad::platform,
        },
    });
}

pub use inspector::agad::platform::{clock, disk, log, os, probe, service, snmp, state, types};
