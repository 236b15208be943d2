#!/usr/bin/env bash
# Runs AGAD's whole test suite on a fresh Debian machine with rustup and cargo:
# first the format check (rustfmt) and the lints (clippy, warnings are
# errors), then every test. CI runs exactly this (.ci/run).
# What else the tests need is installed here: the wasm32-wasip2 target and the
# rustfmt and clippy components (listed in rust-toolchain.toml) and Debian's
# real SNMP agent, snmpd, iproute2 (`ip`), iputils-ping and nftables (the test
# network's hosts and packet loss), chromium and chromium-driver (the web page
# in a real browser), componentize-py from PyPI (Python modules); fuzz/run.sh
# installs cargo-fuzz.
# Arguments go to `cargo test`, e.g. `./test.sh -p agad-net`.
set -euo pipefail
cd "$(dirname "$0")"

need_root() {
    echo "test.sh: $1 is missing and this is not root; install it with: $2" >&2
    exit 1
}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# rustup installs what rust-toolchain.toml lists only along with the toolchain.
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        rustup component add "$component"
    fi
done

if ! command -v snmpd >/dev/null && [ ! -x /usr/sbin/snmpd ]; then
    [ "$(id -u)" = 0 ] || need_root snmpd "sudo apt-get install snmpd"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmpd >/dev/null
fi
# `ip` makes the network namespaces and veth pairs of the if-health tests.
if ! command -v ip >/dev/null; then
    [ "$(id -u)" = 0 ] || need_root ip "sudo apt-get install iproute2"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
# `ping` checks a test network's hosts reach each other (tests/src/network.rs);
# `nft` drops a share of a host's packets (this kernel has no netem);
# Debian's `chromium` and `chromedriver` drive the web page in a real browser
# (agad/tests/browser.rs).
for pair in ping:iputils-ping nft:nftables chromium:chromium chromedriver:chromium-driver; do
    command_name=${pair%%:*} package=${pair#*:}
    if ! command -v "$command_name" >/dev/null && [ ! -x "/usr/sbin/$command_name" ]; then
        [ "$(id -u)" = 0 ] || need_root "$command_name" "sudo apt-get install $package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
    fi
done
# componentize-py builds Python modules (agad module build, agad/tests/module_new.rs,
# the module-cost benchmark); from PyPI, the release docs/modules.md measured.
COMPONENTIZE_PY_VERSION=0.25.1
if ! componentize-py --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    if ! command -v python3 >/dev/null; then
        [ "$(id -u)" = 0 ] || need_root python3 "sudo apt-get install python3 python3-pip"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
    fi
    if ! python3 -m pip install -q "componentize-py==$COMPONENTIZE_PY_VERSION" 2>/dev/null \
        && ! python3 -m pip install -q --break-system-packages "componentize-py==$COMPONENTIZE_PY_VERSION"; then
        echo "test.sh: cannot install componentize-py $COMPONENTIZE_PY_VERSION from PyPI (python3 -m pip install componentize-py==$COMPONENTIZE_PY_VERSION); Python modules cannot be built without it" >&2
        exit 1
    fi
    hash -r
    if ! componentize-py --version >/dev/null 2>&1; then
        echo "test.sh: componentize-py was installed but is not on PATH ($(python3 -m site --user-base)/bin?); add its folder to PATH" >&2
        exit 1
    fi
fi
# Debian starts the packaged agent on UDP 161; the tests run their own.
if command -v systemctl >/dev/null; then systemctl stop snmpd 2>/dev/null || true; fi

if ! cargo fmt --all --check; then
    echo "test.sh: the code above is not formatted as rustfmt would; run \`cargo fmt --all\` and commit the result" >&2
    exit 1
fi
if ! cargo clippy --workspace --all-targets -- -D warnings; then
    echo "test.sh: clippy found the problems above (warnings count as errors); fix them, or allow one with a reason where it is wrong" >&2
    exit 1
fi

# Also builds the benchmark programs (they are workspace members), so a
# change that breaks them fails here too.
cargo test --workspace "$@"

# The Python module SDK's own unit tests (python/agad_sdk.py), natively.
if [ $# -eq 0 ]; then
    python3 -m unittest discover -s python
fi

# Every decoder a peer, a module or an operator reaches, fuzzed for 20 s a
# target (fuzz/README.md; `fuzz/run.sh 600` for a long run). Only for the
# whole suite, not when arguments pick some tests.
if [ $# -eq 0 ]; then
    (cd fuzz && cargo fmt --check && cargo clippy --all-targets -- -D warnings)
    fuzz/run.sh 20
fi
