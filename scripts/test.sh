#!/usr/bin/env bash
# Runs every test of milkglass. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# Python packages for the protocol and SDK tests (ADBC, Polars, pandas), and ONNX Runtime with the
# embedding model for milkglass-embed's tests.
pip() { python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }
pip -r tests/python/requirements.txt
./scripts/install-model.sh >/dev/null
# The web app, and Debian's headless Chromium for its browser tests.
./scripts/build-web.sh
if ! command -v chromium-headless-shell >/dev/null && [ -z "${CHROMIUM_PATH:-}" ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Protocol and SDK tests with real clients (ADBC, Polars, the milkglass package) against the binary cargo
# just built.
pip --force-reinstall --no-deps ./python
MILKGLASS_BIN="${CARGO_TARGET_DIR:-target}/debug/milkglass" python3 -m pytest -q tests/python

# Browser tests of the web app (Playwright with Debian's Chromium) against the same binary.
MILKGLASS_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/milkglass" node --test --test-concurrency=1 tests/ui/
