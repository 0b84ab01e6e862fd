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

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Protocol and SDK tests with real clients (ADBC, Polars, the milkglass package) against the binary cargo
# just built.
pip --force-reinstall --no-deps ./python
MILKGLASS_BIN="${CARGO_TARGET_DIR:-target}/debug/milkglass" python3 -m pytest -q tests/python
