#!/usr/bin/env bash
# Builds milkglass and starts the demo: a fresh data directory with sample data, served
# on http://127.0.0.1:7700. Extra arguments go to `milkglass demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --locked -p milkglass -- demo "$@"
