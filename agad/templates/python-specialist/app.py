"""{{name}}: an AGAD specialist in Python, run once when a knowledge-base
rule picks it for an alarm (or by hand: agad node run --bundle {{name}}.agad
--trust publisher.pub --arg limit=50).

A sample diagnosis: how much memory is used and whether that is above
`limit`. Replace it with yours: `diagnose` is plain Python tested natively
(`python3 -m unittest`); `run` reads the host.
"""

from agad_sdk import Config, Diagnosis, diagnosis, host, specialist_exports

# The arguments it accepts; any other is refused before `run`.
ARGS = ["limit"]


def diagnose(used: int, total: int, limit: float) -> Diagnosis:
    percent = used * 100.0 / total if total else 0.0
    cause = "memory-high" if percent > limit else "memory-normal"
    return diagnosis(
        f"memory {percent:.1f}% used (limit {limit}%)",
        ("cause", cause),
        ("used_percent", f"{percent:.1f}"),
        ("used_bytes", used),
    )


def run(args: Config) -> Diagnosis:
    limit = args.number("limit", 90.0, 0.0, 100.0)
    memory = host.os.memory()
    return diagnose(memory.used_bytes, memory.total_bytes, limit)


# What componentize-py exports: run of the `specialist` world.
WitWorld = specialist_exports(run, ARGS)
