//! The guest side of AGAD: what a module author needs to write an inspector
//! or a specialist against the `agad:platform` WIT package (`wit/`).
//!
//! An inspector is a type implementing [`Inspector`] (configure, poll the
//! host, hand over its alarm set) plus one [`inspector!`] call, which also
//! keeps its raised alarms across restarts; [`inspector::Guest`] with
//! [`export_inspector!`] is the raw form underneath. A specialist (feature
//! `specialist`) is a type implementing `Specialist` (its argument keys and
//! one `run` returning a [`Diagnosis`]) plus one `specialist!` call;
//! `specialist::Guest` with `export_specialist!` is the raw form. The host
//! capabilities are the modules [`os`], [`snmp`], [`state`], [`log`],
//! [`clock`], [`disk`], [`probe`] and [`service`]; a component imports
//! only the interfaces whose functions it calls, and its manifest must list
//! at least those (a node refuses an undeclared import).
//!
//! [`inspector!`] itself calls two capabilities, so a module using it
//! declares `state` (its raised alarms are kept there) and `clock` (the
//! time handed to [`Inspector::poll`]) in its manifest besides those it
//! calls; `log` too if it logs. `agad module new` writes such a manifest.
//!
//! From outside the repository, depend on the crate by git or by path (it is
//! not on crates.io), and build with `cargo build --release --target
//! wasm32-wasip2` (or `agad module build`, which also signs):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # the component, and native unit tests
//!
//! [dependencies]
//! agad-sdk = { git = "https://example.org/agad.git" }   # your AGAD repository
//! # or: agad-sdk = { path = "/path/to/agad/sdk" }
//! ```
//!
//! A module author's guide is `docs/modules.md` in the repository.
//!
//! The rest of the crate is plain Rust, free of host calls unless a function
//! says otherwise, so the filtering logic of a module can be unit tested on
//! the build machine (`cargo test`); host functions themselves only work
//! inside the runtime and panic if called natively.
//!
//! Not for: the host side (that is `agad-runtime`, with its own `bindgen!`),
//! manifests and signing (`agad-protocol`), or building `.wasm` files
//! (`agad-modules`' build script).
//!
//! Layout:
//! - [`inspector`](mod@inspector), `specialist` (feature `specialist`): the generated
//!   bindings of the two worlds; the specialist world reuses the inspector's
//!   import bindings, so each WIT type has one Rust type.
//! - [`config`]: typed, strict reading of the `config` list.
//! - [`hysteresis`]: raise after N breaches, clear after M normal samples.
//! - [`alarm`](mod@alarm): alarm records, threshold checks, the raised set and its
//!   persistence through `state`.
//! - [`window`]: min/max/mean/last/count/coverage per series per report
//!   window, windows aligned on the wall clock.
//! - [`rate`]: counters to per-second rates, with wrap and reset handling.
//! - [`snmp_table`]: SNMP value conversions and multi-column GETBULK.
//! - [`Resident`]: where a module keeps its state between ticks.
//!
//! ```no_run
//! use agad_sdk::{Alarms, Check, Comparison, Config, Inspector, Output, Window, inspector, os};
//!
//! /// Raises `load.high` when the 1-minute load stays above `limit`, and
//! /// sends the load's min/max/mean/last once per report window.
//! struct Load { alarms: Alarms, window: Window, limit: f64 }
//!
//! impl Inspector for Load {
//!     fn configure(config: &[(String, String)]) -> Result<Self, String> {
//!         // Only the module's own keys: `raise_after`, `clear_after`,
//!         // `window_secs` (and the node's `period`) are accepted too.
//!         let config = Config::parse(config, &["limit"])?;
//!         let limit = config.number_in("limit", 4.0, 0.0, 1000.0)?;
//!         let common = config.common()?;
//!         Ok(Load {
//!             alarms: Alarms::new(common.raise_after, common.clear_after),
//!             window: Window::new(common.window_secs),
//!             limit,
//!         })
//!     }
//!     fn poll(&mut self, now_ms: u64) -> Output {
//!         let load = os::load_average().one;
//!         let check = Check::new("load.high", "load.one").threshold(Comparison::Above, self.limit);
//!         let alarms = self.alarms.check(&check, load).into_iter().collect();
//!         self.window.record(now_ms, "load.one", "", "", load);
//!         Output { alarms, summaries: self.window.take_due(now_ms) }
//!     }
//!     fn alarms(&mut self) -> &mut Alarms { &mut self.alarms }
//! }
//! inspector!(Load);
//! ```

#![warn(missing_docs)]

pub mod alarm;
pub mod config;
pub mod hysteresis;
pub mod rate;
pub mod snmp_table;
pub mod window;

/// Bindings of the `inspector` world: [`inspector::Guest`] (`init`, `tick`)
/// and the host imports. Use [`export_inspector!`] rather than the generated
/// `export!`.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod inspector {
    wit_bindgen::generate!({
        path: "../wit",
        world: "agad:platform/inspector",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "agad_sdk::inspector",
        additional_derives: [PartialEq],
    });
}

/// Bindings of the `specialist` world: `specialist::Guest` (`run`). The
/// imports are those of [`inspector`](mod@inspector), not a second copy.
///
/// Behind the `specialist` feature because every set of bindings links its
/// world's description into the `.wasm`: without the gate each inspector
/// would also carry the specialist world (an extra `diagnosis` type import).
#[cfg(feature = "specialist")]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod specialist {
    wit_bindgen::generate!({
        path: "../wit",
        world: "agad:platform/specialist",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "agad_sdk::specialist",
        with: {
            "agad:platform/os@0.1.0": crate::inspector::agad::platform::os,
            "agad:platform/snmp@0.1.0": crate::inspector::agad::platform::snmp,
            "agad:platform/state@0.1.0": crate::inspector::agad::platform::state,
            "agad:platform/log@0.1.0": crate::inspector::agad::platform::log,
            "agad:platform/clock@0.1.0": crate::inspector::agad::platform::clock,
            "agad:platform/types@0.1.0": crate::inspector::agad::platform::types,
            "agad:platform/disk@0.1.0": crate::inspector::agad::platform::disk,
            "agad:platform/probe@0.1.0": crate::inspector::agad::platform::probe,
            "agad:platform/service@0.1.0": crate::inspector::agad::platform::service,
        },
    });
}

pub use inspector::agad::platform::{clock, disk, log, os, probe, service, snmp, state, types};

pub use alarm::{Alarms, Check, alarm};
pub use config::{Common, Config, ConfigError};
pub use hysteresis::{Hysteresis, Transition};
pub use rate::{CounterWidth, Measured, Rate};
pub use types::{Alarm, Comparison, Diagnosis, Output, Severity, Summary};
pub use window::Window;

/// Exports `$ty` (which implements [`inspector::Guest`]) as the module's
/// `init` and `tick`. Call once, at the crate root or in any module.
#[macro_export]
macro_rules! export_inspector {
    ($ty:ident) => {
        // The generated glue is `unsafe` FFI by nature; the workspace denies
        // `unsafe_code` for hand-written code only.
        #[allow(unsafe_code)]
        const _: () = {
    $crate::inspector::export!($ty with_types_in $crate::inspector);
        };
    };
}

/// Exports `$ty` (which implements `specialist::Guest`) as the module's
/// `run`. Needs the `specialist` feature.
#[cfg(feature = "specialist")]
#[macro_export]
macro_rules! export_specialist {
    ($ty:ident) => {
        #[allow(unsafe_code)]
        const _: () = {
    $crate::specialist::export!($ty with_types_in $crate::specialist);
        };
    };
}

/// A resident inspector as its author writes it: configure once, then on
/// every tick read the host and decide what leaves the node. [`inspector!`]
/// turns it into the WIT exports and keeps its raised alarms in the `state`
/// capability, so a restarted module neither raises again nor forgets to
/// clear what it raised before.
pub trait Inspector: Sized + 'static {
    /// Validates `config` (refusing unknown keys) and builds the inspector.
    fn configure(config: &[(String, String)]) -> Result<Self, String>;
    /// Reads the host capabilities at `now_ms` and returns what must leave
    /// the node (usually nothing).
    fn poll(&mut self, now_ms: u64) -> Output;
    /// The inspector's raised-alarm set, persisted by the SDK.
    fn alarms(&mut self) -> &mut Alarms;
}

#[doc(hidden)]
pub fn __init<T: Inspector>(slot: &Resident<T>, config: types::Config) -> Result<(), String> {
    let mut inspector = T::configure(&config)?;
    inspector.alarms().restore_from_state();
    slot.set(inspector);
    Ok(())
}

#[doc(hidden)]
pub fn __tick<T: Inspector>(slot: &Resident<T>) -> Output {
    slot.with(|inspector| {
        let out = inspector.poll(clock::now_ms());
        inspector.alarms().persist();
        out
    })
    .unwrap_or_default()
}

/// Exports `$ty` (which implements [`Inspector`]) as the module's `init` and
/// `tick`. Call once, at the crate root.
#[macro_export]
macro_rules! inspector {
    ($ty:ty) => {
        const _: () = {
            static INSPECTOR: $crate::Resident<$ty> = $crate::Resident::new();
            // Named so it cannot shadow an author's own type passed as `$ty`.
            struct AgadInspectorExports;
            impl $crate::inspector::Guest for AgadInspectorExports {
                fn init(config: $crate::types::Config) -> Result<(), String> {
                    $crate::__init(&INSPECTOR, config)
                }
                fn tick() -> $crate::types::Output {
                    $crate::__tick(&INSPECTOR)
                }
            }
            $crate::export_inspector!(AgadInspectorExports);
        };
    };
}

/// A specialist as its author writes it: the argument keys it accepts and
/// one run. [`specialist!`] turns it into the WIT export `run`, refusing
/// unknown or repeated keys before [`Specialist::run`] is called.
///
/// Bad arguments, and failures the specialist can explain, are `Err` with
/// a message for the operator: the node records it as the run's failure.
/// A panic is a trap, reported as a fault of the module.
#[cfg(feature = "specialist")]
pub trait Specialist {
    /// The argument keys it accepts; any other is refused.
    const ARGS: &'static [&'static str];
    /// Runs once with the validated arguments.
    fn run(args: &Config) -> Result<Diagnosis, String>;
}

#[cfg(feature = "specialist")]
#[doc(hidden)]
pub fn __run<T: Specialist>(args: types::Config) -> Result<Diagnosis, String> {
    let config = Config::parse_strict(&args, T::ARGS)?;
    T::run(&config)
}

/// Exports `$ty` (which implements [`Specialist`]) as the module's `run`.
/// Call once, at the crate root. Needs the `specialist` feature.
#[cfg(feature = "specialist")]
#[macro_export]
macro_rules! specialist {
    ($ty:ty) => {
        const _: () = {
            struct AgadSpecialistExports;
            impl $crate::specialist::Guest for AgadSpecialistExports {
                fn run(args: $crate::types::Config) -> Result<$crate::types::Diagnosis, String> {
                    $crate::__run::<$ty>(args)
                }
            }
            $crate::export_specialist!(AgadSpecialistExports);
        };
    };
}

impl types::Diagnosis {
    /// A diagnosis with its one line for a person and no facts yet.
    pub fn new(summary: impl Into<String>) -> Diagnosis {
        Diagnosis {
            summary: summary.into(),
            facts: Vec::new(),
        }
    }

    /// Adds a fact (facts keep the order they are added in: most
    /// important first). A dispatcher branches on them, so keys are
    /// stable names (`cause`, `pid`, `path`, `restarted`).
    pub fn fact(mut self, key: &str, value: impl std::fmt::Display) -> Diagnosis {
        self.facts.push((key.to_owned(), value.to_string()));
        self
    }

    /// The value of fact `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Default for types::Output {
    /// Nothing to send, the usual result of a tick.
    fn default() -> Self {
        types::Output {
            alarms: Vec::new(),
            summaries: Vec::new(),
        }
    }
}

impl types::Output {
    /// Whether nothing leaves the node.
    pub fn is_empty(&self) -> bool {
        self.alarms.is_empty() && self.summaries.is_empty()
    }
}

/// Holds a module's state between calls.
///
/// The WIT exports are free functions, so the value built by `init` lives in
/// a static. A guest instance is single-threaded; the mutex only satisfies
/// `static`'s `Sync` bound. A trap (panic) kills the instance and the runtime
/// builds a new one, so a poisoned lock is never seen again; it is unwrapped
/// anyway rather than trusted.
#[derive(Debug)]
pub struct Resident<T> {
    slot: std::sync::Mutex<Option<T>>,
}

impl<T> Resident<T> {
    /// Empty until [`Resident::set`].
    pub const fn new() -> Self {
        Resident {
            slot: std::sync::Mutex::new(None),
        }
    }

    /// Replaces the held value (a second `init` starts over).
    pub fn set(&self, value: T) {
        *self.lock() = Some(value);
    }

    /// Runs `f` on the held value; `None` when nothing was set yet (a `tick`
    /// before a successful `init`).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.lock().as_mut().map(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Default for Resident<T> {
    fn default() -> Self {
        Resident::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resident_holds_state_between_calls() {
        static COUNTER: Resident<u32> = Resident::new();
        assert_eq!(COUNTER.with(|n| *n), None);
        COUNTER.set(1);
        COUNTER.with(|n| *n += 1);
        assert_eq!(COUNTER.with(|n| *n), Some(2));
    }

    #[test]
    fn default_output_is_empty() {
        assert!(Output::default().is_empty());
    }
}
