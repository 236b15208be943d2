//! A test inspector that misbehaves on request, so the runtime's sandbox and
//! supervision can be tested with a real component. Not a model of how an
//! inspector should behave: see `inspectors/` for that.
//!
//! Config `mode` (default `ok`; any other key but `period` is refused):
//! - `ok`: empty output; counts ticks in state key `ticks` (u64, little
//!   endian).
//! - `loop`: an infinite loop in `tick` (the epoch deadline must stop it).
//! - `bomb`: allocates until memory growth is refused (a trap).
//! - `trap`: panics in every `tick`.
//! - `trap-once`: panics on the first tick after an instantiation while state
//!   key `trapped` is absent, setting it first; so it recovers after one
//!   restart, and then raises alarm `recovered` once (state key `recovered`).
//! - `snmp`: GETs sysUpTime.0 from the default agent, so the component
//!   imports `snmp` (to test that an undeclared capability is refused);
//!   raises alarm `snmp-error` if the request fails.
//! - `alarm`: raises alarm `misbehave` on the first tick of each instance.
//! - `alarm-every-tick`: raises alarm `tick` on every tick (a load for tests).
//! - `trap-every-4th`: three clean ticks, then a panic, in every instance.
//! - `sleep`: sleeps an hour in `tick` (`std::thread::sleep`, a WASI poll:
//!   the guest waits in a host call, where no epoch check can reach it).
//! - `flood`: a million alarms (key `flood`) in every tick; needs about
//!   200 MiB of memory.
//! - `huge`: one alarm (key `huge`) whose message is 100 MiB, in every tick;
//!   needs about 300 MiB of memory.
//! - `fill`: writes 64 KiB of state under a new key in every tick, without
//!   end; raises alarm `state-full` (once per instance) when the node
//!   refuses a write for its quota.
//!
//! Layout: one file; [`Mode`] parses the config, `tick` acts on it.

use agad_sdk::inspector::Guest;
use agad_sdk::types::{Config, Output, Severity};
use agad_sdk::{Resident, alarm, export_inspector, snmp, state};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Loop,
    Bomb,
    Trap,
    TrapOnce,
    Snmp,
    Alarm,
    AlarmEveryTick,
    TrapEvery4th,
    Sleep,
    Flood,
    Huge,
    Fill,
    Stack,
}

impl Mode {
    fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "bomb" => Mode::Bomb,
            "trap" => Mode::Trap,
            "trap-once" => Mode::TrapOnce,
            "snmp" => Mode::Snmp,
            "alarm" => Mode::Alarm,
            "alarm-every-tick" => Mode::AlarmEveryTick,
            "trap-every-4th" => Mode::TrapEvery4th,
            "sleep" => Mode::Sleep,
            "flood" => Mode::Flood,
            "huge" => Mode::Huge,
            "fill" => Mode::Fill,
            "stack" => Mode::Stack,
            _ => return None,
        })
    }
}

struct Instance {
    mode: Mode,
    ticks: u64,
}

static INSTANCE: Resident<Instance> = Resident::new();

fn with_alarm(key: &str) -> Output {
    Output {
        alarms: vec![
            alarm(key, "test.misbehave")
                .severity(Severity::Minor)
                .value(1.0)
                .message(format!("misbehave: {key}"))
                .raised(),
        ],
        summaries: Vec::new(),
    }
}

/// True from the second call on, per instance.
fn i_said_full() -> bool {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
}

struct Misbehave;

impl Guest for Misbehave {
    fn init(config: Config) -> Result<(), String> {
        let mut mode = Mode::Ok;
        for (key, value) in config {
            match key.as_str() {
                "mode" => {
                    mode = Mode::parse(&value)
                        .ok_or_else(|| format!("mode: \"{value}\" is not a known mode"))?;
                }
                "period" => {}
                other => return Err(format!("unknown config key \"{other}\" (known: mode)")),
            }
        }
        INSTANCE.set(Instance { mode, ticks: 0 });
        Ok(())
    }

    fn tick() -> Output {
        let Some((mode, ticks)) = INSTANCE.with(|i| {
            i.ticks += 1;
            (i.mode, i.ticks)
        }) else {
            return Output::default();
        };
        match mode {
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Bomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Filled, so the pages are really committed.
                    hoard.push(vec![1u8; 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Stack => {
                // Recursion without end (not a tail call: the result is used).
                fn deeper(n: u64) -> u64 {
                    if n == u64::MAX {
                        return 0; // never: the stack ends long before
                    }
                    std::hint::black_box(deeper(std::hint::black_box(n + 1))) + 1
                }
                std::hint::black_box(deeper(0));
                Output::default()
            }
            Mode::Trap => panic!("misbehave: trap on request"),
            Mode::TrapOnce => {
                if state::get("trapped").is_none() {
                    // Set before panicking: the panic ends the call.
                    let _ = state::set("trapped", b"yes");
                    panic!("misbehave: first trap");
                }
                if state::get("recovered").is_none() {
                    let _ = state::set("recovered", b"yes");
                    return with_alarm("recovered");
                }
                Output::default()
            }
            Mode::Snmp => match snmp::get("", &["1.3.6.1.2.1.1.3.0".to_owned()]) {
                Ok(_) => Output::default(),
                Err(_) => with_alarm("snmp-error"),
            },
            Mode::Alarm if ticks == 1 => with_alarm("misbehave"),
            Mode::Alarm => Output::default(),
            Mode::AlarmEveryTick => with_alarm("tick"),
            Mode::TrapEvery4th if ticks % 4 == 0 => panic!("misbehave: fourth tick"),
            Mode::TrapEvery4th => Output::default(),
            Mode::Flood => Output {
                alarms: (0..1_000_000)
                    .map(|_| alarm("flood", "f").raised())
                    .collect(),
                summaries: Vec::new(),
            },
            Mode::Huge => Output {
                alarms: vec![
                    alarm("huge", "test.misbehave")
                        .message("x".repeat(100 * 1024 * 1024))
                        .raised(),
                ],
                summaries: Vec::new(),
            },
            Mode::Fill => {
                let key = format!("fill-{ticks}");
                match state::set(&key, &vec![7u8; 64 * 1024]) {
                    Ok(()) => Output::default(),
                    Err(state::StateError::QuotaExceeded(_)) if !i_said_full() => {
                        with_alarm("state-full")
                    }
                    Err(_) => Output::default(),
                }
            }
            Mode::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Output::default()
            }
            Mode::Ok => {
                let stored = state::get("ticks")
                    .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                if state::set("ticks", &(stored + 1).to_le_bytes()).is_err() {
                    return with_alarm("state-refused");
                }
                Output::default()
            }
        }
    }
}

export_inspector!(Misbehave);
