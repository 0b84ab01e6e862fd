#!/usr/bin/env bash
# Builds the web app and milkglass, and starts the demo: a fresh data directory with sample
# data, served on http://127.0.0.1:7700 (the web app at /). Extra arguments go to `milkglass demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-web.sh
exec cargo run --locked -p milkglass -- demo "$@"
