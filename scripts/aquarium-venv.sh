#!/usr/bin/env bash
# Makes (once) the virtual environment with Aquarium's own client, aquariumlearning 1.0.7 from PyPI, that
# the compatibility tests run unmodified (tests/python/test_aquarium.py, tests/ui/aquarium.test.mjs), and
# prints its python. The pins are those that make the client install today (shared/reference/aquarium-api.md).
set -euo pipefail
venv="${XDG_CACHE_HOME:-$HOME/.cache}/milkglass/aquarium-venv"
python="$venv/bin/python"
check="import importlib.metadata as m; assert m.version('aquariumlearning') == '1.0.7'"
if ! [ -x "$python" ] || ! "$python" -c "$check" >/dev/null 2>&1; then
    # Debian's python3 comes without `venv` unless python3-venv is installed; virtualenv (from PyPI, like
    # everything else here) makes the same environment.
    if ! python3 -m venv --clear "$venv" >&2 2>/dev/null; then
        rm -rf "$venv"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore virtualenv >&2
        python3 -m virtualenv --clear "$venv" >&2
    fi
    "$python" -m pip install --quiet --disable-pip-version-check \
        aquariumlearning==1.0.7 "urllib3<2" "pyarrow<21" "pandas<3" >&2
fi
echo "$python"
