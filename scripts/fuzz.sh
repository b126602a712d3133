#!/usr/bin/env bash
# Coverage-guided fuzzing (AFL++ through cargo-afl, on the stable toolchain) of the policy
# parser, the annotation parser and the spec lowering: fuzz/src/lib.rs says what each target
# checks. Starts from the corpus kept in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [SECONDS]   each target for SECONDS (default 20: the test suite's short run)
#
# AFL++'s findings go to target/fuzz/<target>/default/: new inputs in queue/ (copy the useful
# ones into the corpus), and any input that made a target panic in crashes/, which fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
export PATH="$PATH:$HOME/.cargo/bin"
log() { printf '\n== %s\n' "$*" >&2; }

if ! cargo afl --version >/dev/null 2>&1; then
  log "cargo install cargo-afl"
  cargo install --locked cargo-afl
fi
# AFL++ itself (its runtime and afl-fuzz), built from the crate's bundled source into its data
# dir when cargo-afl is installed; this builds it only where that did not happen (it refuses,
# harmlessly, when the build is there).
cargo afl config --build >/dev/null 2>&1 || true

out=$(realpath -m "${CARGO_TARGET_DIR:-target}")/fuzz
export CARGO_TARGET_DIR="$out/build"
cd fuzz
log "corpus replay without AFL (cargo test)"
cargo test --release --quiet
log "cargo afl build"
cargo afl build --release --quiet

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_SHUFFLE_QUEUE=0
# The repository's .cargo/config.toml names the build's target triple: binaries land below it.
triple=$(sed -n 's/^target = "\(.*\)"/\1/p' ../.cargo/config.toml)
bin="$CARGO_TARGET_DIR/${triple:+$triple/}release"
failed=0
for t in policy annotations lowering; do
  log "afl-fuzz $t for ${secs} s"
  rm -rf "${out:?}/$t"
  cargo afl fuzz -V "$secs" -i "corpus/$t" -o "$out/$t" "$bin/$t" \
    >"$out/$t.log" 2>&1 || { tail -20 "$out/$t.log" >&2; failed=1; continue; }
  stats="$out/$t/default/fuzzer_stats"
  execs=$(sed -n 's/^execs_done *: *//p' "$stats")
  paths=$(sed -n 's/^corpus_count *: *//p' "$stats")
  crashes=$(find "$out/$t/default/crashes" -type f ! -name README.txt | wc -l)
  echo "fuzz $t: $execs execs, $paths inputs in the queue, $crashes crashes" >&2
  if [ "$crashes" -gt 0 ]; then
    echo "fuzz $t: crashing inputs in $out/$t/default/crashes" >&2
    failed=1
  fi
done
exit "$failed"
