#!/usr/bin/env bash
# Screenshots of the web app for the docs: builds web/, starts `milkglass demo` on free ports, drives
# headless Chromium through sign-in, projects, grid, frame view, filters, keys, settings, and the map,
# issues, metrics, segments and find-similar views, and writes
# 1280x800 PNGs to docs/screenshots/.
# Needs: npm (web/ dependencies: `npm ci --prefix web`), chromium-headless-shell, the milkglass binary
# (MILKGLASS_BIN, default the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d web/node_modules ] || npm ci --prefix web
npm --prefix web run build
node tests/ui/screenshots.mjs
