#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (as root): install and build everything, start a
# private containerd with Airlock registered, run an agent container through it under the
# default sandbox (agent-strict), and print what the sandbox enforced (next to runc's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AIRLOCK_BIN_DIR="$PWD/target/release"
exec "$PWD/target/release/airlock-demo"
