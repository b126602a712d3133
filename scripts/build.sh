#!/usr/bin/env bash
# Builds Airlock and puts the binaries it ships in target/airlock-bin/, the directory the test
# suite, the benchmark and `airlock install` take them from.
#
# - containerd-shim-airlock-v2 is linked with musl (static-pie). containerd executes the shim
#   three times per container (`start`, the daemon, `delete`). glibc's start-up probes the CPU's
#   features and caches with CPUID, one instruction at a time, and each CPUID traps to the
#   hypervisor on a virtual machine. On this machine a glibc shim costs 0.65 ms of CPU to
#   start and print its version, and a musl shim 0.19 ms (`perf stat -r 200 ... -v`).
# - airlock-agent (the microVM guest's PID 1) is linked with musl too: less than half the glibc
#   binary's size (0.57 MB against 1.38 MB), which the guest's kernel unpacks at every boot.
# - Everything else is linked with glibc, static-pie (.cargo/config.toml). airlock-runtime
#   needs libbpf (C, for cgroup v2 device filters), and Debian has no musl build of its libelf.
#
# Without the musl target (`rustup target add x86_64-unknown-linux-musl`, which this script
# tries), the glibc build of the shim is shipped, with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

triple=$(sed -n 's/^target = "\(.*\)"/\1/p' .cargo/config.toml)
musl=${triple%-gnu}-musl
tdir=${CARGO_TARGET_DIR:-target}
out=$tdir/airlock-bin

log "cargo build --release ($triple: runtime, tools, and a glibc shim)"
cargo build --release --workspace --bins

shim=$tdir/$triple/release/containerd-shim-airlock-v2
agent=$tdir/$triple/release/airlock-agent
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
  { log "rustup target add $musl"; rustup target add "$musl"; }; then
  # The shim with profile `resident` (Cargo.toml): optimised for size.
  log "cargo build --profile resident -p airlock-shim ($musl)"
  cargo build --profile resident -p airlock-shim --bins --target "$musl"
  log "cargo build --release -p airlock-agent ($musl)"
  cargo build --release -p airlock-agent --bins --target "$musl"
  shim=$tdir/$musl/resident/containerd-shim-airlock-v2
  agent=$tdir/$musl/release/airlock-agent
else
  echo "warning: no $musl target; shipping the glibc shim (slower to start)" >&2
fi

mkdir -p "$out"
# Every binary of the workspace (the executables cargo put at the top of the profile dir).
find "$tdir/$triple/release" -maxdepth 1 -type f -executable \
  ! -name containerd-shim-airlock-v2 ! -name airlock-agent -exec install -m 0755 {} "$out/" \;
install -m 0755 "$shim" "$out/containerd-shim-airlock-v2"
# The same shim under the microVM mode's name (its name selects the mode): a hard link, since
# the shim re-executes itself by the path it was started as.
ln -f "$out/containerd-shim-airlock-v2" "$out/containerd-shim-airlock-vm-v2"
install -m 0755 "$agent" "$out/airlock-agent"
log "binaries in $out: $(cd "$out" && echo *)"
