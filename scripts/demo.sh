#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine (as root): install and build everything, start a
# private containerd with Airlock registered, run an agent container through it under the
# default sandbox (agent-strict), and print what the sandbox enforced (next to runc's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# cargo builds for an explicit target (.cargo/config.toml): binaries are in target/<triple>/release.
export AIRLOCK_BIN_DIR="$PWD/target/$(sed -n 's/^target = "\(.*\)"/\1/p' .cargo/config.toml)/release"
exec "$AIRLOCK_BIN_DIR/airlock-demo"
