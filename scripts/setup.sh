#!/usr/bin/env bash
# Installs everything Airlock needs on a fresh Debian 12 machine (as root) and builds it.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

# The microVM mode and the cgroup v2 test node (integration/node/run.sh) boot Debian's cloud
# kernel under QEMU; libcap-ng is for building virtiofsd.
PKGS=(containerd runc crun runsc busybox-static libseccomp-dev protobuf-compiler
      libelf-dev zlib1g-dev pkg-config iproute2 util-linux containernetworking-plugins patch
      qemu-system-x86 linux-image-cloud-amd64 libcap-ng-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

export PATH="$PATH:$HOME/.cargo/bin:/usr/libexec"
# virtme-ng (`vng`) boots the cgroup v2 node with the host's root shared read-only over virtio-fs.
if [ "${AIRLOCK_SKIP_NODE:-0}" != 1 ] && ! command -v vng >/dev/null; then
  log "pip: installing virtme-ng"
  python3 -m pip --version >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip
  python3 -m pip install -q virtme-ng ||
    python3 -m pip install -q --break-system-packages virtme-ng
fi
# virtiofsd shares a container's rootfs with its VM (and the host's root with the node).
# Debian 12's QEMU no longer ships it and there is no virtiofsd package in bookworm (later
# Debian releases have one): take it from apt when the archive has it, else crates.io.
if ! command -v virtiofsd >/dev/null; then
  if apt-cache show virtiofsd >/dev/null 2>&1; then
    log "apt: installing virtiofsd"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends virtiofsd
  else
    log "cargo install virtiofsd (about 2-3 min on 2 cores)"
    cargo install --locked virtiofsd
  fi
fi

# containerd 2.1 for the compatibility tests, unpacked privately (never installed).
log "containerd 2.1 (private copy)"
bash integration/scripts/fetch-containerd2.sh "${AIRLOCK_CONTAINERD2_DIR:-/var/cache/airlock-test/containerd2}"

# The published crates that third_party/ patches, in cargo's registry cache, where
# `cargo test -p airlock-cli --test third_party` rebuilds each tree from them
# (third_party/README.md, "How the trees are made"). Name and version come from each tree.
crates=()
for manifest in third_party/*/Cargo.toml; do
  crate=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^name = / { n = $2 }
                     p && /^version = / { v = $2 } END { print n " " v }' "$manifest")
  compgen -G "${CARGO_HOME:-$HOME/.cargo}/registry/cache/*/${crate% *}-${crate#* }.crate" \
    >/dev/null || crates+=("$crate")
done
if [ "${#crates[@]}" -gt 0 ]; then
  log "cargo fetch: published ${crates[*]}"
  fetch_dir=$(mktemp -d)
  printf '[package]\nname = "airlock-fetch-published"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n' \
    >"$fetch_dir/Cargo.toml"
  for crate in "${crates[@]}"; do
    printf '%s = "=%s"\n' "${crate% *}" "${crate#* }" >>"$fetch_dir/Cargo.toml"
  done
  mkdir "$fetch_dir/src" && touch "$fetch_dir/src/lib.rs"
  cargo fetch --quiet --manifest-path "$fetch_dir/Cargo.toml" \
    --target "$(rustc -vV | sed -n 's/^host: //p')"
  rm -rf "$fetch_dir"
fi

bash scripts/build.sh
