#!/usr/bin/env bash
# The cgroup v2 test node: boots Debian's cloud kernel (cgroup v2 only) with the host's root
# filesystem shared read-only over virtio-fs (virtme-ng), and runs the `cgroupv2` integration
# test binary inside it against a private containerd with Airlock registered.
#
#   integration/node/run.sh [TEST_BINARY_ARGS...]     e.g. run.sh pids_  or  run.sh --nocapture
#
# One boot runs every test of the group. Prints which accelerator it uses (KVM where hardware
# KVM exists, else QEMU software emulation), streams the tests' output, returns their exit status,
# and always tears the VM and its helpers (virtiofsd) down, also on failure or timeout.
#
# Environment: AIRLOCK_NODE_KNOWN_GAPS=1 (also run tests of known gaps), AIRLOCK_NODE_TIMEOUT (whole boot+tests, seconds, default 1200),
# AIRLOCK_NODE_ACCEL=kvm|tcg (override the choice), AIRLOCK_NODE_MEMORY (default 2G),
# AIRLOCK_NODE_CPUS (default 2), AIRLOCK_NODE_KERNEL (default: newest /boot/vmlinuz-*-cloud-amd64),
# AIRLOCK_BIN_DIR (shim + runtime binaries; default: scripts/build.sh, into target/airlock-bin).
# Installs: scripts/setup.sh (qemu-system-x86, linux-image-cloud-amd64, virtme-ng, virtiofsd).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PATH="$PATH:$HOME/.cargo/bin:/usr/libexec:/usr/lib/qemu"

say() { printf 'node: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 2
}

timeout_s=${AIRLOCK_NODE_TIMEOUT:-1200}
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
results=$target/node

# --- tools and kernel -------------------------------------------------------------------------
for t in vng qemu-system-x86_64 virtiofsd; do
  command -v "$t" >/dev/null || die "$t not found: run scripts/setup.sh"
done
kernel=${AIRLOCK_NODE_KERNEL:-$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)}
[ -n "$kernel" ] && [ -f "$kernel" ] ||
  die "no Debian cloud kernel in /boot: run scripts/setup.sh (apt linux-image-cloud-amd64)"

# --- accelerator ------------------------------------------------------------------------------
accel=${AIRLOCK_NODE_ACCEL:-}
if [ -z "$accel" ]; then
  hw=$(ls -d /sys/module/kvm_intel /sys/module/kvm_amd 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ' || true)
  if [ -c /dev/kvm ] && [ -n "$hw" ]; then
    accel=kvm
    why="hardware KVM (${hw% })"
  elif [ -d /sys/module/kvm_pvm ]; then
    accel=tcg
    why="/dev/kvm is PVM (kvm_pvm), which cannot run Debian's kernel"
  else
    accel=tcg
    why="no hardware KVM (/dev/kvm with kvm_intel or kvm_amd)"
  fi
else
  why="AIRLOCK_NODE_ACCEL=$accel"
fi
vng_accel=()
append=()
case "$accel" in
  kvm) say "accelerator: KVM - $why" ;;
  tcg)
    say "accelerator: QEMU software emulation (TCG) - $why; expect ~20 s to boot"
    vng_accel=(--disable-kvm)
    # Under emulation the TSC calibration against the emulated PIT is slow and unreliable.
    khz=$(awk -F': *' '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
    append=(--append "no_timer_check${khz:+ tsc_early_khz=$khz}")
    ;;
  *) die "AIRLOCK_NODE_ACCEL must be kvm or tcg, not '$accel'" ;;
esac

# --- binaries ---------------------------------------------------------------------------------
if [ -z "${AIRLOCK_BIN_DIR:-}" ]; then
  say "scripts/build.sh (shim, runtime)"
  bash "$root/scripts/build.sh" >&2
  bin_dir=$target/airlock-bin
else
  bin_dir=$AIRLOCK_BIN_DIR
fi
for b in containerd-shim-airlock-v2 airlock-runtime; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b missing (set AIRLOCK_BIN_DIR or build --release)"
done
say "cargo test --no-run (cgroupv2)"
test_bin=$(cargo test -p airlock-integration --test cgroupv2 --no-run --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/cgroupv2-' | tail -n 1)
[ -x "$test_bin" ] || die "could not locate the cgroupv2 test binary"

# --- boot and run -----------------------------------------------------------------------------
mkdir -p "$results"
rm -f "$results/exit-code" "$results/tests.log"
# The tests are #[ignore]d so that a host `cargo test` skips them; here they run.
args=(--ignored --test-threads="${AIRLOCK_NODE_TEST_THREADS:-2}")
# A known_gaps:: module, when there is one, holds tests of behaviour Airlock does not have yet.
if [ "${AIRLOCK_NODE_KNOWN_GAPS:-0}" != 1 ]; then
  args+=(--skip known_gaps::)
fi
args+=("$@")
guest_cmd=$(printf '%q ' "$root/integration/node/guest.sh" "$results" "$bin_dir" "$test_bin" "${args[@]}")

vm_pid=
cat_pid=
tmp=$(mktemp -d)
kill_session() {
  if [ -n "$vm_pid" ]; then
    # Everything we started (vng, qemu, virtiofsd) is in the session setsid gave vm_pid.
    local pids
    pids=$(ps -eo pid=,sid= | awk -v s="$vm_pid" '$2 == s {print $1}')
    if [ -n "$pids" ]; then
      kill -TERM $pids 2>/dev/null || true
      for _ in $(seq 50); do
        pids=$(ps -eo pid=,sid= | awk -v s="$vm_pid" '$2 == s {print $1}')
        [ -z "$pids" ] && break
        sleep 0.1
      done
      [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    fi
  fi
}
teardown() {
  local rc=$?
  kill_session
  if [ -n "$cat_pid" ]; then
    kill "$cat_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "booting $(basename "$kernel") (memory ${AIRLOCK_NODE_MEMORY:-2G}, ${AIRLOCK_NODE_CPUS:-2} cpus, timeout ${timeout_s} s)"
t0=$(date +%s.%N)
# vng/QEMU reopen their stdout (/proc/self/fd/1): on a regular file that is a new description at
# offset 0 that overwrites what came before, so their output goes through a pipe to us.
console=$tmp/console
mkfifo "$console"
cat "$console" &
cat_pid=$!
setsid timeout -k 10 "$timeout_s" vng --run "$kernel" "${vng_accel[@]}" "${append[@]}" \
  --memory "${AIRLOCK_NODE_MEMORY:-2G}" --cpus "${AIRLOCK_NODE_CPUS:-2}" \
  --rwdir "$results" --exec "$guest_cmd" </dev/null >"$console" 2>&1 &
vm_pid=$!
set +e
wait "$vm_pid"
vm_rc=$?
kill_session # helpers that outlived vng would keep the pipe open
wait "$cat_pid"
set -e
elapsed=$(awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 137 ]; then
  say "TIMEOUT: the node did not finish within ${timeout_s} s"
  exit 124
fi
if [ ! -f "$results/exit-code" ]; then
  say "the node exited ($vm_rc) after ${elapsed} s without a test result (boot failure?)"
  exit 2
fi
code=$(cat "$results/exit-code")
say "node run took ${elapsed} s in all (boot + tests + shutdown), tests exited $code" \
  "(full log: ${results#$root/}/tests.log)"
exit "$code"
