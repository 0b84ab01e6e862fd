#!/usr/bin/env bash
# Builds the web app (web/ -> web/dist), installing its npm packages first when they are
# missing or older than the lockfile. The Rust build does not need it: a binary built without
# web/dist serves a page that says how to build the app.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null; then
    echo "npm not found; installing Node.js from Debian" >&2
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "error: the web app's build (Vite) needs Node.js 20 or newer; found $(node --version)" >&2
    exit 1
fi
if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules ]; then
    npm ci --prefix web --no-audit --no-fund --loglevel=error
fi
npm --prefix web run build --silent
