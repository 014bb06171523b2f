#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for FUZZ_SECONDS each (default 3600: the
# hour-per-target run, by hand). Needs nightly (`rustup toolchain install
# nightly`); installs cargo-fuzz when it is missing. The suite never needs
# either: each target's body also runs in the stable tests over its seeds
# and a few thousand deterministic mutations.
#
#   FUZZ_SECONDS=150 scripts/fuzz.sh           # every target, 2.5 minutes
#   FUZZ_SECONDS=600 scripts/fuzz.sh sigv4     # one target
#
# Crashes are written to fuzz/artifacts/<target>/; the corpus grows in
# fuzz/corpus/<target>/ (ignored by git), seeded from fuzz/seeds/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# cargo-fuzz builds into fuzz/target; never into the workspace's target dir.
unset CARGO_TARGET_DIR
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-3600}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

status=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  # The blobstore target builds an actix App per input, and actix-router
  # leaks each route's tail name on purpose (a few bytes per App; the
  # server builds one per worker): LeakSanitizer would stop on it at once,
  # and again at exit.
  leaks=()
  asan="${ASAN_OPTIONS:-}"
  if [ "$target" = blobstore ]; then
    leaks=(-detect_leaks=0)
    asan="${asan:+$asan:}detect_leaks=0"
  fi
  echo "fuzz: $target for ${seconds}s" >&2
  # -print_final_stats: the executions and coverage go in the log, for the
  # README's table.
  if ! ASAN_OPTIONS="$asan" cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${leaks[@]}"; then
    echo "fuzz: $target CRASHED (input in fuzz/artifacts/$target/)" >&2
    status=1
  fi
done
exit $status
