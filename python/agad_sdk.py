"""The guest side of AGAD for Python modules: the same concepts as the Rust
SDK (`sdk/`, crate `agad-sdk`), for an inspector built with componentize-py
against the `inspector` world of `wit/`.

- `Config`: strict reading of the `config` list; unknown and repeated keys
  are refused, the common keys (`raise_after`, `clear_after`,
  `window_secs`) and the node's `period` are accepted besides a module's
  own.
- `Check` and `Alarms`: threshold conditions with raise/clear hysteresis,
  and the set of raised alarms (kept through the `state` capability, in the
  Rust SDK's format, so a restarted module neither raises again nor forgets
  to clear).
- `Window`: min/max/mean/last/count/coverage per series per report window,
  windows aligned on the wall clock, each gauge reading holding until the
  next (the Rust SDK's `Window::record`).
- `Inspector` and `exports`: an inspector as its author writes it
  (configure, poll) and the `WitWorld` class componentize-py exports.
- `host`: the WIT imports (`host.os.memory()`, `host.state.get(...)`),
  imported when the component is built; None natively.

Everything but `Alarms.persist`, `Alarms.restore_from_state` and the
`exports` glue is plain Python, so a module's logic is unit tested with the
host's own `python3` (the WIT types are stood in for when `wit_world` is
absent).

- `diagnosis` and `specialist_exports`: a specialist's result and the
  `WitWorld` class of the `specialist` world (arguments checked strictly).

Not for: anything that needs native extensions (componentize-py bundles
pure Python only).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import traceback

try:  # inside a component built by componentize-py
    # Everything a call may need is imported here, when componentize-py
    # builds the component: a node gives modules no filesystem, so a module
    # first imported during a call (`from wit_world.imports import clock`
    # inside `tick`) cannot be found and the call aborts.
    import wit_world.imports as host
    from componentize_py_types import Err
    import wit_world.imports.clock  # noqa: F401
    import wit_world.imports.disk  # noqa: F401
    import wit_world.imports.log  # noqa: F401
    import wit_world.imports.os  # noqa: F401
    import wit_world.imports.probe  # noqa: F401
    import wit_world.imports.service  # noqa: F401
    import wit_world.imports.snmp  # noqa: F401
    import wit_world.imports.state  # noqa: F401
    from wit_world.imports.types import Alarm, Comparison, Diagnosis, Output, Severity, Summary

    IN_COMPONENT = True
except ImportError:  # natively, for unit tests: the same shapes, no host
    import enum

    host = None  # type: ignore[assignment]
    IN_COMPONENT = False

    class Err(Exception):  # type: ignore[no-redef]
        """componentize-py's error result, natively."""

    class Severity(enum.Enum):  # type: ignore[no-redef]
        INFO = 0
        WARNING = 1
        MINOR = 2
        MAJOR = 3
        CRITICAL = 4

    class Comparison(enum.Enum):  # type: ignore[no-redef]
        ABOVE = 0
        BELOW = 1
        EQUAL = 2
        NOT_EQUAL = 3

    @dataclass
    class Alarm:  # type: ignore[no-redef]
        key: str
        metric: str
        subject: str
        severity: Severity
        raised: bool
        value: float
        threshold: float
        comparison: Comparison
        message: str

    @dataclass
    class Summary:  # type: ignore[no-redef]
        metric: str
        subject: str
        unit: str
        min: float
        max: float
        mean: float
        last: float
        count: int
        coverage: float
        window_start_ms: int
        window_end_ms: int

    @dataclass
    class Output:  # type: ignore[no-redef]
        alarms: List[Alarm]
        summaries: List[Summary]

    @dataclass
    class Diagnosis:  # type: ignore[no-redef]
        summary: str
        facts: List[Tuple[str, str]]


# ---------------------------------------------------------------- config

RESERVED_KEYS = ("period",)
COMMON_KEYS = ("raise_after", "clear_after", "window_secs")

SEVERITY_WORDS = {s.name.lower(): s for s in Severity}
COMPARISON_WORDS = {
    "above": Comparison.ABOVE,
    ">": Comparison.ABOVE,
    "below": Comparison.BELOW,
    "<": Comparison.BELOW,
    "equal": Comparison.EQUAL,
    "=": Comparison.EQUAL,
    "not-equal": Comparison.NOT_EQUAL,
    "!=": Comparison.NOT_EQUAL,
}


class ConfigError(ValueError):
    """A refused configuration; its text is handed back to whoever deployed
    the module (the same sentences as the Rust SDK)."""


@dataclass(frozen=True)
class Common:
    """Settings every inspector shares: hysteresis counts, report window."""

    raise_after: int = 2
    clear_after: int = 3
    window_secs: int = 60


class Config:
    """A validated configuration: no unknown keys, no duplicates, values
    trimmed; an empty value means "use the default"."""

    def __init__(self, pairs: Sequence[Tuple[str, str]], known: Sequence[str], strict: bool = False):
        allowed = list(known) + ([] if strict else [k for k in COMMON_KEYS if k not in known])
        self.values: Dict[str, str] = {}
        for key, value in pairs:
            key = key.strip()
            if key in RESERVED_KEYS:
                continue
            if key not in allowed:
                raise ConfigError(f'unknown config key "{key}" (known: {", ".join(allowed)})')
            if key in self.values:
                raise ConfigError(f"{key}: given more than once")
            self.values[key] = value.strip()

    def raw(self, key: str) -> Optional[str]:
        """The value as given, None when absent or empty."""
        value = self.values.get(key)
        return value if value else None

    def text(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.raw(key)
        return default if value is None else value

    def require(self, key: str) -> str:
        value = self.raw(key)
        if value is None:
            raise ConfigError(f"{key}: required but not set")
        return value

    def number(self, key: str, default: float, low: float = float("-inf"), high: float = float("inf")) -> float:
        """A finite number within low..=high, or `default` when absent."""
        value = self.raw(key)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f'{key}: "{value}" is not a number') from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f'{key}: "{value}" is not a finite number')
        if number < low or number > high:
            raise ConfigError(f'{key}: "{value}" is not between {_num(low)} and {_num(high)}')
        return number

    def integer(self, key: str, default: int, low: int = 0) -> int:
        """A whole number >= low, or `default` when absent."""
        value = self.raw(key)
        if value is None:
            return default
        if not value.isdigit():
            raise ConfigError(f'{key}: "{value}" is not a whole number')
        number = int(value)
        if number < low:
            raise ConfigError(f'{key}: "{value}" must be at least {low}')
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if value.lower() in ("true", "yes", "on", "1"):
            return True
        if value.lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f'{key}: "{value}" is not true or false')

    def severity(self, key: str, default: Severity) -> Severity:
        value = self.raw(key)
        if value is None:
            return default
        if value.lower() not in SEVERITY_WORDS:
            raise ConfigError(f'{key}: "{value}" is not one of info, warning, minor, major, critical')
        return SEVERITY_WORDS[value.lower()]

    def common(self) -> Common:
        """The common keys, with the SDK's defaults."""
        return Common(
            raise_after=self.integer("raise_after", Common.raise_after, 1),
            clear_after=self.integer("clear_after", Common.clear_after, 1),
            window_secs=self.integer("window_secs", Common.window_secs, 1),
        )


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


# ---------------------------------------------------------------- alarms

ACTIVE_ALARMS_STATE_KEY = "agad.active-alarms"

_COMPARISON_TEXT = {
    Comparison.ABOVE: ("above", "above"),
    Comparison.BELOW: ("below", "below"),
    Comparison.EQUAL: ("equal", "equal to"),
    Comparison.NOT_EQUAL: ("not-equal", "not equal to"),
}


def breached(comparison: Comparison, value: float, threshold: float) -> bool:
    """Whether `value` breaches `threshold` (equality within 1e-9 relative)."""
    if comparison == Comparison.ABOVE:
        return value > threshold
    if comparison == Comparison.BELOW:
        return value < threshold
    equal = abs(value - threshold) <= 1e-9 * max(1.0, abs(value), abs(threshold))
    return equal if comparison == Comparison.EQUAL else not equal


@dataclass
class Check:
    """One threshold condition of one series."""

    key: str
    metric: str
    comparison: Comparison = Comparison.ABOVE
    threshold: float = 0.0
    severity: Severity = Severity.MAJOR
    subject: str = ""
    unit: str = ""

    def message(self, raised: bool, value: float) -> str:
        words = _COMPARISON_TEXT[self.comparison][1]
        thr = f"{_num(self.threshold)}{self.unit}"
        subject = f" {self.subject}" if self.subject else ""
        if raised:
            return f"{self.metric}{subject} {value:.2f}{self.unit} {words} {thr}"
        return f"{self.metric}{subject} back to {value:.2f}{self.unit} (threshold: {words} {thr})"


class Alarms:
    """Runs checks through hysteresis (raise after `raise_after` breaching
    samples in a row, clear after `clear_after` normal ones) and keeps the
    set of raised alarms."""

    def __init__(self, raise_after: int = 2, clear_after: int = 3):
        self.raise_after = max(1, raise_after)
        self.clear_after = max(1, clear_after)
        self.streak: Dict[str, int] = {}
        # key -> (metric, subject, severity, comparison, threshold)
        self.raised: Dict[str, Tuple[str, str, Severity, Comparison, float]] = {}
        self.changed = False

    def check(self, check: Check, value: float) -> Optional[Alarm]:
        """The alarm to send when the condition has just been raised or
        cleared, else None."""
        active = check.key in self.raised
        disagrees = breached(check.comparison, value, check.threshold) != active
        streak = self.streak.get(check.key, 0) + 1 if disagrees else 0
        if streak < (self.clear_after if active else self.raise_after):
            self.streak[check.key] = streak
            return None
        self.streak[check.key] = 0
        self.changed = True
        if active:
            del self.raised[check.key]
        else:
            self.raised[check.key] = (check.metric, check.subject, check.severity, check.comparison, check.threshold)
        return Alarm(
            key=check.key,
            metric=check.metric,
            subject=check.subject,
            severity=check.severity,
            raised=not active,
            value=float(value),
            threshold=float(check.threshold),
            comparison=check.comparison,
            message=check.message(not active, value),
        )

    def is_raised(self, key: str) -> bool:
        return key in self.raised

    def encode(self) -> bytes:
        """The raised set, one line per alarm (the Rust SDK's format)."""
        esc = lambda f: f.replace("%", "%25").replace("\t", "%09").replace("\n", "%0A")  # noqa: E731
        lines = []
        for key, (metric, subject, severity, comparison, threshold) in sorted(self.raised.items()):
            fields = [key, metric, subject, severity.name.lower(), _COMPARISON_TEXT[comparison][0], repr(float(threshold))]
            lines.append("\t".join(esc(f) for f in fields) + "\n")
        return "".join(lines).encode()

    def restore(self, data: bytes) -> None:
        """Marks the alarms in `data` (from `encode`) as raised; malformed
        lines are skipped."""
        unesc = lambda f: f.replace("%0A", "\n").replace("%09", "\t").replace("%25", "%")  # noqa: E731
        comparisons = {v[0]: k for k, v in _COMPARISON_TEXT.items()}
        for line in data.decode(errors="replace").splitlines():
            fields = [unesc(f) for f in line.split("\t")]
            if len(fields) != 6 or fields[3] not in SEVERITY_WORDS or fields[4] not in comparisons:
                continue
            try:
                threshold = float(fields[5])
            except ValueError:
                continue
            self.raised[fields[0]] = (fields[1], fields[2], SEVERITY_WORDS[fields[3]], comparisons[fields[4]], threshold)

    def restore_from_state(self) -> None:
        """Host call: the raised set kept by the `state` capability."""
        data = host.state.get(ACTIVE_ALARMS_STATE_KEY)
        if data:
            self.restore(data)

    def persist(self) -> None:
        """Host call: writes the raised set when it changed; a refused
        write is tried again next time."""
        if not self.changed:
            return
        try:
            host.state.set(ACTIVE_ALARMS_STATE_KEY, self.encode())
            self.changed = False
        except Exception:  # quota or disk: keep `changed`, try again
            pass


# ---------------------------------------------------------------- windows


class _Series:
    __slots__ = ("min", "max", "weighted", "covered_ms", "count", "total", "last")

    def __init__(self) -> None:
        self.min = float("inf")
        self.max = float("-inf")
        self.weighted = 0.0
        self.covered_ms = 0
        self.count = 0
        self.total = 0.0
        self.last = 0.0

    def hold(self, value: float, ms: int) -> None:
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.weighted += value * ms
        self.covered_ms += ms


class Window:
    """Gauge readings consolidated into one Summary per series (metric,
    subject) per report window. Windows are [k*L, (k+1)*L) on the wall
    clock; a reading holds until the next reading of its series, so `mean`
    is time-weighted and `coverage` the share of the window readings
    covered. A window's summaries are due once it ended and every series in
    it was read at or after its end, or one window length after its end."""

    def __init__(self, window_secs: int = 60):
        self.length_ms = max(1, window_secs) * 1000
        self.open: Dict[int, Dict[Tuple[str, str], _Series]] = {}
        self.units: Dict[Tuple[str, str], str] = {}
        self.held: Dict[Tuple[str, str], Tuple[int, float]] = {}

    def start_of(self, at_ms: int) -> int:
        return at_ms - at_ms % self.length_ms

    def _series(self, start: int, key: Tuple[str, str]) -> _Series:
        return self.open.setdefault(start, {}).setdefault(key, _Series())

    def record(self, now_ms: int, metric: str, subject: str, unit: str, value: float) -> None:
        """A reading of a gauge at `now_ms`."""
        key = (metric, subject)
        self.units[key] = unit
        previous = self.held.get(key)
        if previous is not None and previous[0] < now_ms:
            at, held = previous
            while at < now_ms:  # the previous reading held until now
                end = min(now_ms, self.start_of(at) + self.length_ms)
                self._series(self.start_of(at), key).hold(held, end - at)
                at = end
        series = self._series(self.start_of(now_ms), key)
        series.count += 1
        series.total += value
        series.last = value
        series.min = min(series.min, value)
        series.max = max(series.max, value)
        self.held[key] = (now_ms, float(value))

    def take_due(self, now_ms: int) -> List[Summary]:
        """Summaries of the windows that are complete at `now_ms`."""
        out = []
        for start in sorted(self.open):
            end = start + self.length_ms
            if end > now_ms:
                break
            series = self.open[start]
            read_past_end = all(self.held.get(k, (0, 0.0))[0] >= end for k in series)
            if not read_past_end and now_ms < end + self.length_ms:
                break
            for (metric, subject), s in sorted(series.items()):
                if s.count == 0 and s.covered_ms == 0:
                    continue
                mean = s.weighted / s.covered_ms if s.covered_ms else s.total / max(1, s.count)
                out.append(
                    Summary(
                        metric=metric,
                        subject=subject,
                        unit=self.units.get((metric, subject), ""),
                        min=s.min,
                        max=s.max,
                        mean=mean,
                        last=s.last if s.count else mean,
                        count=s.count,
                        coverage=min(1.0, s.covered_ms / self.length_ms),
                        window_start_ms=start,
                        window_end_ms=end,
                    )
                )
            del self.open[start]
        return out


# ---------------------------------------------------------------- exports


class Inspector:
    """A resident inspector as its author writes it. Subclasses set `KEYS`
    (their own configuration keys) and implement `configure` and `poll`;
    `self.alarms` and `self.window` are made from the common keys before
    `configure` is called."""

    KEYS: Sequence[str] = ()

    def __init__(self, config: Config):
        common = config.common()
        self.common = common
        self.alarms = Alarms(common.raise_after, common.clear_after)
        self.window = Window(common.window_secs)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Reads the module's own keys; raise ConfigError to refuse."""

    def poll(self, now_ms: int) -> Output:
        """Reads the host at `now_ms`; returns what leaves the node."""
        raise NotImplementedError


def exports(cls):
    """The `WitWorld` class componentize-py exports for inspector `cls`:
    `init` builds it (refusing a bad configuration as the WIT error
    string) and restores its raised alarms; `tick` polls it and keeps its
    raised alarms. Needs the `state` and `clock` capabilities."""

    holder: Dict[str, Inspector] = {}

    class WitWorld:
        def init(self, config: List[Tuple[str, str]]) -> None:
            try:
                inspector = cls(Config(config, cls.KEYS))
                inspector.alarms.restore_from_state()
            except ConfigError as e:
                raise Err(str(e))
            except Exception:
                log_exception("init")
                raise
            holder["it"] = inspector

        def tick(self) -> Output:
            inspector = holder.get("it")
            if inspector is None:
                return Output(alarms=[], summaries=[])
            try:
                out = inspector.poll(host.clock.now_ms())
                inspector.alarms.persist()
            except Exception:
                log_exception("tick")
                raise
            return out

    return WitWorld


def log_exception(where: str) -> None:
    """Logs the exception being handled, with the end of its traceback,
    through the `log` capability (a node shows it with AGAD_LOG=error or
    more), before it becomes a trap the node reports as a fault."""
    text = traceback.format_exc()
    host.log.log(host.log.Level.ERROR, f"uncaught exception in {where}: {text[-900:]}")


def diagnosis(summary: str, *facts: Tuple[str, object]) -> Diagnosis:
    """A specialist's result: one line for a person, then facts (most
    important first; stable keys such as `cause`)."""
    return Diagnosis(summary=summary, facts=[(k, str(v)) for k, v in facts])


def specialist_exports(run, args: Sequence[str]):
    """The `WitWorld` class componentize-py exports for a specialist:
    `run(config)` is called with the arguments checked against `args`
    (unknown or repeated ones refused, the common keys too) and returns a
    Diagnosis; a ConfigError becomes the WIT error string."""

    class WitWorld:
        def run(self, pairs: List[Tuple[str, str]]) -> Diagnosis:
            try:
                return run(Config(pairs, args, strict=True))
            except ConfigError as e:
                raise Err(str(e))
            except Exception:
                log_exception("run")
                raise

    return WitWorld
