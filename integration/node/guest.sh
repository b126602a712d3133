#!/bin/bash
# Runs INSIDE the cgroup v2 test node (started by integration/node/run.sh through virtme-ng).
#
# The guest sees the host's root filesystem read-only over virtio-fs. Everything the tests write
# goes to tmpfs mounted here, inside the guest; the only host directory the guest may write is
# RESULTS (a dir under target/ that run.sh created and shared read-write), where the test
# binary's exit status is left for run.sh.
#
# usage: guest.sh RESULTS BIN_DIR TEST_BINARY [TEST_ARGS...]
set -u
results=$1 bin_dir=$2 test_bin=$3
shift 3

code=125
# The exit status reaches run.sh through this file (the VM's own exit status is virtme's).
trap 'echo "$code" >"$results/exit-code"' EXIT

say() { printf 'node: %s\n' "$*"; }
fail() {
  say "FATAL: $*"
  exit 1
}

say "booted in $(cut -d' ' -f1 /proc/uptime) s (guest uptime at the start of guest.sh)"
say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"

# cgroup v2 only: a cgroup2 mount at /sys/fs/cgroup and no v1 hierarchy anywhere.
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
  mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
fi
if awk '$3 == "cgroup" {found=1} END {exit !found}' /proc/mounts; then
  fail "a cgroup v1 hierarchy is mounted: $(awk '$3 == "cgroup"' /proc/mounts)"
fi
say "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

# Writable state on tmpfs: containerd's private root/state (under TMPDIR), shim sockets
# (/run/containerd/s), Airlock's state (/run/airlock), the image cache. virtme-ng makes /tmp an
# overlay over the host's (read-only) /tmp, which overlayfs refuses as an upperdir, so anything
# that is not a tmpfs already gets a fresh one.
tmpfs_on() {
  local d=$1
  mkdir -p "$d" 2>/dev/null || true
  if [ "$(stat -fc %T "$d")" != tmpfs ] || ! mountpoint -q "$d"; then
    mount -t tmpfs -o "mode=${3:-755},size=$2" tmpfs "$d" || fail "tmpfs on $d"
  fi
}
tmpfs_on /run 256m
# A checkout (or binaries) living under /tmp — CI clones anywhere — would vanish under the new
# /tmp: keep the old /tmp (with the results mount inside it) reachable and bind back what we need.
root=$(cd "$(dirname "$0")/../.." && pwd)
keep=()
for p in "$root" "$bin_dir" "$(dirname "$test_bin")" "$results"; do
  case "$p" in /tmp/*) keep+=("$p") ;; esac
done
if [ "${#keep[@]}" -gt 0 ]; then
  mkdir -p /run/airlock-host-tmp
  mount --rbind /tmp /run/airlock-host-tmp || fail "bind the host's /tmp aside"
fi
tmpfs_on /tmp 1g 1777
for p in "${keep[@]}"; do
  [ -e "$p" ] && continue # already reachable through an earlier bind
  mkdir -p "$p"
  mount --rbind "/run/airlock-host-tmp/${p#/tmp/}" "$p" || fail "bind $p back under the new /tmp"
done
# The private containerd 2.1 (integration/scripts/fetch-containerd2.sh) lives under /var/cache,
# which virtme's init covers with a tmpfs: reach it through a non-recursive bind of the shared
# root (which carries no submounts) and bind it aside, so the 2.1 tests run in the node too.
ctd2=${AIRLOCK_CONTAINERD2_DIR:-/var/cache/airlock-test/containerd2}
mkdir -p /run/airlock-hostroot /run/airlock-containerd2
mount --bind / /run/airlock-hostroot || fail "bind the shared root aside"
if [ -x "/run/airlock-hostroot$ctd2/usr/bin/containerd" ]; then
  mount --bind "/run/airlock-hostroot$ctd2" /run/airlock-containerd2 || fail "bind $ctd2 aside"
  export AIRLOCK_CONTAINERD2_DIR=/run/airlock-containerd2
  say "containerd 2.1 available ($ctd2)"
else
  say "containerd 2.1 not found at $ctd2 on the host: its node tests will fail; run integration/scripts/fetch-containerd2.sh"
fi
umount /run/airlock-hostroot
tmpfs_on /var/cache/airlock-test 256m
mkdir -p /run/containerd /run/airlock

# containerd's overlayfs snapshotter; the cloud kernel ships overlay as a module.
modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || fail "no overlay filesystem in the guest kernel"
# Loop devices give the io.max tests a block device to name (the root is virtio-fs, no disk).
modprobe loop 2>/dev/null || true

export AIRLOCK_BIN_DIR=$bin_dir
# The harness caches the busybox image under the target dir, which is read-only here.
export CARGO_TARGET_DIR=/var/cache/airlock-test/target
export TMPDIR=/tmp
export AIRLOCK_IN_NODE=1
export PATH=$bin_dir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say "running $(basename "$test_bin") $*"
start=$(date +%s.%N)
# One stream (stderr into stdout) keeps the lines in order; the whole log is also kept on the host.
"$test_bin" "$@" 2>&1 | tee "$results/tests.log"
code=${PIPESTATUS[0]}
say "tests exited $code after $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}') s"
