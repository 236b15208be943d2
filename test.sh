#!/usr/bin/env bash
# Runs AGAD's whole test suite on a fresh Debian machine with rustup and cargo.
# What else the tests need is installed here: the wasm32-wasip2 target
# (listed in rust-toolchain.toml) and Debian's real SNMP agent, snmpd.
set -euo pipefail
cd "$(dirname "$0")"

need_root() {
    echo "test.sh: $1 is missing and this is not root; install it with: $2" >&2
    exit 1
}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

if ! command -v snmpd >/dev/null && [ ! -x /usr/sbin/snmpd ]; then
    [ "$(id -u)" = 0 ] || need_root snmpd "sudo apt-get install snmpd"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmpd >/dev/null
fi
# Debian starts the packaged agent on UDP 161; the tests run their own.
if command -v systemctl >/dev/null; then systemctl stop snmpd 2>/dev/null || true; fi

# Also builds the benchmark programs (they are workspace members), so a
# change that breaks them fails here too.
cargo test --workspace "$@"
