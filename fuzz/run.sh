#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time, one after the
# other, and fails if any of them finds a crash, a hang or an allocation past
# the limits below. See fuzz/README.md.
#
#   fuzz/run.sh                 20 s per target (CI)
#   fuzz/run.sh 600             10 min per target
#   fuzz/run.sh 60 frame snmp   only these targets
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_JOBS       parallel libFuzzer jobs per target (default 1)
#   CARGO_TARGET_DIR as usual (the instrumented build goes under
#                   <target dir>/x86_64-unknown-linux-gnu/)
#
# Inputs found while fuzzing go to fuzz/work/<target>/ (not committed); the
# committed seeds in fuzz/corpus/<target>/ are only read. A failing input is
# saved as fuzz/artifacts/<target>/{crash,timeout,oom,leak}-<sha1>; reproduce
# it with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` in fuzz/.
set -euo pipefail
trap 'echo "run.sh: FAILED: line $LINENO: $BASH_COMMAND" >&2' ERR

cd "$(dirname "$0")"

SECONDS_PER_TARGET=${1:-20}
shift || true
ALL_TARGETS=(frame frame_kinds bundle manifest topology snmp)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
SANITIZER=${FUZZ_SANITIZER:-address}
JOBS=${FUZZ_JOBS:-1}

case $SECONDS_PER_TARGET in
'' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac

# cargo fuzz needs nightly-only flags (-Z sanitizer, sancov passes); this
# repository pins stable, whose compiler accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is not installed; installing it (cargo install cargo-fuzz --locked)..."
    if ! cargo install cargo-fuzz --locked; then
        echo "run.sh: ERROR: could not install cargo-fuzz (no network or no crates.io?)." >&2
        echo "run.sh: install it by hand (cargo install cargo-fuzz --locked) and run again." >&2
        exit 1
    fi
fi

# Limits that make an unbounded allocation or a hang a failure, not a slow
# run:
# - rss_limit_mb: the whole process. A legitimate frame may inflate to
#   MAX_FRAME_LEN (32 MiB) and decode into MAX_DECODED_LEN (64 MiB); with
#   ASan's shadow and quarantine 2 GiB is far above what the bounds allow.
# - malloc_limit_mb: any single allocation; the largest legitimate one is
#   the inflated body's buffer (at most 64 MiB of capacity).
# - timeout: seconds for one input; the slowest legitimate input (a 32 MiB
#   inflate under ASan) takes well under one.
# - max_len: 128 KiB, past the 64 KiB that is deflated and enough for a
#   deflate stream that inflates to the 32 MiB cap (~33 KB).
LIBFUZZER_FLAGS=(
    -max_total_time="$SECONDS_PER_TARGET"
    -rss_limit_mb=2048
    -malloc_limit_mb=256
    -timeout=10
    -max_len=131072
    -print_final_stats=1
)
# -jobs (even -jobs=1) makes libFuzzer run the target in child processes
# that log to fuzz-<n>.log and whose crashes do not fail the parent: only
# ask for it when more than one job is wanted (failures are then found by
# the artifacts they leave).
if [ "$JOBS" -gt 1 ]; then
    LIBFUZZER_FLAGS+=(-jobs="$JOBS" -workers="$JOBS")
fi

for t in "${TARGETS[@]}"; do
    [ -d "corpus/$t" ] && continue
    echo "run.sh: no seeds in fuzz/corpus/$t; writing them (cargo run --example seeds)"
    cargo run --quiet --example seeds
done

echo "run.sh: building ${TARGETS[*]} (sanitizer: $SANITIZER)"
if [ "${TARGETS[*]}" = "${ALL_TARGETS[*]}" ]; then
    cargo fuzz build --sanitizer "$SANITIZER"
else
    # `cargo fuzz build <target>` takes one target at a time.
    for t in "${TARGETS[@]}"; do
        cargo fuzz build --sanitizer "$SANITIZER" "$t"
    done
fi

mkdir -p work/logs
failed=()
printf '%-12s %8s %14s %10s %8s  %s\n' target seconds executions "exec/s" corpus result
for t in "${TARGETS[@]}"; do
    mkdir -p "work/$t"
    log="work/logs/$t.log"
    start=$(date +%s)
    status=0
    mkdir -p "artifacts/$t"
    artifacts_before=$(find "artifacts/$t" -type f | wc -l)
    cargo fuzz run --sanitizer "$SANITIZER" "$t" "work/$t" "corpus/$t" -- \
        "${LIBFUZZER_FLAGS[@]}" >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))
    # With -jobs > 1 the jobs log to fuzz-<n>.log, which libFuzzer also
    # copies to its own output when a job ends: keep them aside, count once.
    for job_log in fuzz-*.log; do
        if [ -f "$job_log" ]; then mv "$job_log" "work/logs/$t.$job_log"; fi
    done
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" |
        awk '{ s += $1 } END { print s + 0 }')
    rate=$((execs / (elapsed > 0 ? elapsed : 1)))
    units=$(find "work/$t" -type f | wc -l)
    artifacts_after=$(find "artifacts/$t" -type f | wc -l)
    if [ "$status" -eq 0 ] && [ "$artifacts_after" -gt "$artifacts_before" ]; then
        status=1
    fi
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $status)"
        failed+=("$t")
    fi
    printf '%-12s %8s %14s %10s %8s  %s\n' "$t" "$elapsed" "$execs" "$rate" "$units" "$result"
    if [ "$status" -ne 0 ]; then
        echo "---- $t: last lines of $log ----"
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|artifact|deadly|out-of-memory|timeout' "$log" | tail -n 20
        echo "---- end of $t ----"
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "run.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/, logs under fuzz/work/logs/)" >&2
    exit 1
fi
echo "run.sh: all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s each without a crash, hang or OOM"
