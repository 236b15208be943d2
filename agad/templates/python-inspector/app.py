"""{{name}}: an AGAD inspector in Python.

Raises `mem.high` when memory use stays above `threshold` percent for
`raise_after` ticks (and clears it after `clear_after` ticks below), and
sends one summary of `mem.used-percent` per report window. Replace the
check with yours: `observe` is plain Python tested natively
(`python3 -m unittest`); `poll` reads the host.

Build and sign: agad module build --key publisher.secret (componentize-py
against wit/, world `inspector`); try it:
agad node run --bundle {{name}}.agad --trust publisher.pub --config threshold=1
"""

from agad_sdk import Check, Comparison, Config, Inspector, Output, exports, host

KEY = "mem.high"
METRIC = "mem.used-percent"


class Module(Inspector):
    # The module's own configuration keys (the common ones come with agad_sdk).
    KEYS = ["threshold"]

    def configure(self, config: Config) -> None:
        threshold = config.number("threshold", 90.0, 0.0, 100.0)
        self.check = Check(KEY, METRIC, Comparison.ABOVE, threshold, unit="%")

    def observe(self, now_ms: int, used_percent: float) -> Output:
        """What one reading sends upward."""
        alarm = self.alarms.check(self.check, used_percent)
        self.window.record(now_ms, METRIC, "", "%", used_percent)
        return Output(alarms=[alarm] if alarm else [], summaries=self.window.take_due(now_ms))

    def poll(self, now_ms: int) -> Output:
        # The WIT imports: agad_sdk imports them all when the component is
        # built (a node gives modules no filesystem to import from later).
        memory = host.os.memory()
        if memory.total_bytes == 0:
            return Output(alarms=[], summaries=[])
        return self.observe(now_ms, memory.used_bytes * 100.0 / memory.total_bytes)


# What componentize-py exports: init and tick of the `inspector` world.
WitWorld = exports(Module)
