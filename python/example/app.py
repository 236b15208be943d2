"""mem-watch: an example AGAD inspector in Python.

Raises `mem.high` when memory use stays above `threshold` percent for
`raise_after` ticks (clears after `clear_after` below) and sends one summary
of `mem.used-percent` per report window. The same check as the Rust
module `agad module new` writes.

Build: agad module build --key publisher.secret   (componentize-py against
wit/, world `inspector`), or by hand:
    componentize-py -d <agad>/wit -w inspector componentize app -p . -p <agad>/python -o mem-watch.wasm
"""

from agad_sdk import Check, Comparison, Config, Inspector, Output, exports, host

KEY = "mem.high"
METRIC = "mem.used-percent"


class MemWatch(Inspector):
    KEYS = ["threshold"]

    def configure(self, config: Config) -> None:
        self.check = Check(KEY, METRIC, Comparison.ABOVE, config.number("threshold", 90.0, 0.0, 100.0), unit="%")

    def poll(self, now_ms: int) -> Output:
        memory = host.os.memory()
        if memory.total_bytes == 0:
            return Output(alarms=[], summaries=[])
        used = memory.used_bytes * 100.0 / memory.total_bytes
        alarm = self.alarms.check(self.check, used)
        self.window.record(now_ms, METRIC, "", "%", used)
        return Output(alarms=[alarm] if alarm else [], summaries=self.window.take_due(now_ms))


WitWorld = exports(MemWatch)
