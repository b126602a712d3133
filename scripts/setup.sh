#!/usr/bin/env bash
# Installs everything Airlock needs on a fresh Debian 12 machine (as root) and builds it.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

PKGS=(containerd runc crun runsc busybox-static libseccomp-dev protobuf-compiler
      libelf-dev zlib1g-dev pkg-config iproute2 util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# containerd 2.1 for the compatibility tests, unpacked privately (never installed).
log "containerd 2.1 (private copy)"
bash integration/scripts/fetch-containerd2.sh "${AIRLOCK_CONTAINERD2_DIR:-/var/cache/airlock-test/containerd2}"

log "cargo build --release (shim, runtime, tools)"
cargo build --release --workspace --bins
