#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (as root): install and build everything, start a
# private containerd with Airlock registered, run an agent container through it under the
# default sandbox (agent-strict), and print what the sandbox enforced (next to runc's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# scripts/build.sh (run by setup.sh) puts the shipped binaries in target/airlock-bin.
export AIRLOCK_BIN_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/airlock-bin"
exec "$AIRLOCK_BIN_DIR/airlock-demo"
