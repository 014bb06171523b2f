#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the integration
# tests in tests/, which start the real binary on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# tests/media.rs puts s3s-fs behind stunnel, with a certificate it makes
# with the openssl CLI, to test an external S3 over https.
apt_install stunnel4 openssl
# tests/calls.rs checks the TURN credentials against a real TURN server:
# coturn's turnserver, turnutils_uclient and turnutils_peer.
apt_install coturn
# tests/cluster.rs runs several nodes on a real Redis: Debian's redis-server
# (started by the tests themselves on free ports, never as a service).
apt_install redis-server
# tests/web.rs drives the web client and the operator console in Debian's
# Chromium with Playwright (playwright-core, pinned in
# tests/web/package-lock.json; it uses /usr/bin/chromium and downloads no
# browser). Node.js and npm come with the machine; apt's when missing.
apt_install chromium
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
# npm ci when node_modules is missing or older than the lock file.
if [ ! -d tests/web/node_modules/playwright-core ] ||
  [ tests/web/package-lock.json -nt tests/web/node_modules/.package-lock.json ]; then
  echo "test: installing the browser tests' npm packages" >&2
  npm ci --prefix tests/web --no-audit --no-fund >/dev/null
fi

# tests/media.rs checks our presigned URLs against a third-party S3 server,
# s3s-fs, which it finds on PATH or in ~/.cargo/bin. Install the pinned
# version when it is missing (about 2 minutes of build), in a target dir of
# its own so it never mixes with the project's.
S3S_FS_VERSION=0.14.1
export PATH="$HOME/.cargo/bin:$PATH"
if ! s3s-fs --version 2>/dev/null | grep -qF "$S3S_FS_VERSION"; then
  echo "test: installing s3s-fs $S3S_FS_VERSION" >&2
  (
    unset CARGO_TARGET_DIR
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --force \
      --target-dir "$HOME/.cache/s3s-fs-target"
  )
fi

# `faults` compiles the test-only fault switch into the binary under test.
cargo build --release --workspace --all-targets --features ephemera/faults
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast --features ephemera/faults -- --test-threads 2 2>&1 | tee "$log" || status=$?
# The HTTP API against its schema, on a live server (counted as one test).
if scripts/schemathesis.sh "$CARGO_TARGET_DIR/release/ephemera" 2>&1 | tee -a "$log"; then
  echo "test result: ok. 1 passed; 0 failed; (schemathesis against schema/openapi.json)" | tee -a "$log"
else
  status=1
  echo "test result: FAILED. 0 passed; 1 failed; (schemathesis against schema/openapi.json)" | tee -a "$log"
fi
# One closing line for the whole suite (cargo prints one per test binary,
# the last of which may be a binary without tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
